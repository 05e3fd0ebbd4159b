"""The load generator of the throughput scenario: ``wrk`` when it is installed (the
figures of record), else this asyncio one: ``connections`` keep-alive connections, each
sending its next GET as soon as the answer to the last one is read, for ``seconds``.

Latency is per request, from the write to the last byte of the answer. On a small
machine this generator competes with the gateway for the CPU: figures from the two
generators are not comparable, ratios taken with the same one are.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Load:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    tool: str


def wrk_path() -> str | None:
    return shutil.which("wrk")


def run_load(url: str, seconds: float, connections: int) -> Load:
    wrk = wrk_path()
    if wrk is not None:
        return _wrk(wrk, url, seconds, connections)
    return asyncio.run(_asyncio_load(url, seconds, connections))


def _wrk(wrk: str, url: str, seconds: float, connections: int) -> Load:
    result = subprocess.run(  # noqa: S603 - wrk found on PATH, our own arguments  # nosec B603
        [
            wrk,
            "-t2",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "30s",
            "--latency",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    out = result.stdout
    rate = float(_search(r"Requests/sec:\s+([\d.]+)", out))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(non_2xx[1]) if non_2xx else 0
    return Load(
        requests_per_second=rate,
        p50_ms=_millis(_search(r"\n\s+50%\s+(\S+)", out)),
        p99_ms=_millis(_search(r"\n\s+99%\s+(\S+)", out)),
        errors=errors,
        tool="wrk -t2",
    )


def _search(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    if found is None:
        raise RuntimeError(f"wrk printed no {pattern!r}:\n{text}")
    return found[1]


def _millis(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


async def _asyncio_load(url: str, seconds: float, connections: int) -> Load:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        "Connection: keep-alive\r\n\r\n"
    ).encode()
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds

    async def connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                if length is None:
                    raise RuntimeError("an answer without content-length")
                await reader.readexactly(int(length[1]))
                latencies.append(time.perf_counter() - started)
                if not head.startswith(b"HTTP/1.1 2"):
                    errors += 1
        finally:
            writer.close()

    started = time.monotonic()
    await asyncio.gather(*(connection() for _ in range(connections)))
    elapsed = time.monotonic() - started
    ordered = sorted(latencies)
    return Load(
        requests_per_second=len(latencies) / elapsed,
        p50_ms=statistics.median(ordered) * 1000,
        p99_ms=ordered[int(len(ordered) * 0.99) - 1] * 1000,
        errors=errors,
        tool="bench.loadgen (asyncio)",
    )
