"""Prints the packages whose installed version (``pip freeze`` lines on stdin) differs
from the version that uv.lock (the argument) pins: what a drift run tried that the
lock does not."""

from __future__ import annotations

import sys
import tomllib


def main() -> None:
    with open(sys.argv[1], "rb") as lock:
        pinned = {p["name"]: p.get("version", "") for p in tomllib.load(lock)["package"]}
    for line in sys.stdin:
        name, sep, version = line.strip().partition("==")
        key = name.lower().replace("_", "-")
        if sep and pinned.get(key) not in (None, version):
            print(f"  {key}: {pinned[key]} (lock) -> {version}")


if __name__ == "__main__":
    main()
