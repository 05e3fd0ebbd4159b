"""Prints the packages whose installed version (``pip freeze`` lines on stdin) differs
from the version that uv.lock (the argument) pins: what a drift run tried that the
lock does not."""

from __future__ import annotations

import sys
import tomllib


def main() -> None:
    pinned: dict[str, set[str]] = {}
    with open(sys.argv[1], "rb") as lock:
        for package in tomllib.load(lock)["package"]:
            # A universal lock may pin a package twice (by Python version, platform).
            pinned.setdefault(package["name"], set()).add(package.get("version", ""))
    for line in sys.stdin:
        name, sep, version = line.strip().partition("==")
        key = name.lower().replace("_", "-")
        if sep and key in pinned and version not in pinned[key]:
            print(f"  {key}: {', '.join(sorted(pinned[key]))} (lock) -> {version}")


if __name__ == "__main__":
    main()
