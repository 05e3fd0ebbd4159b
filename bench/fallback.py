"""``python -m bench.fallback``: what a decision costs while Redis is away.

Two figures, from one run:

- **per call:** one closed-success ``record`` on each lane, in µs: the fallback lane
  (``LocalEngine``, the same Lua in-process), the embedded backend (fakeredis), and
  a real Redis round trip for scale;
- **loop lag:** ``fleetbreaker serve`` (one worker) proxies ``CONCURRENT`` (200)
  keep-alive connections' worth of GETs, for a few seconds, to a fast local upstream
  (the throughput scenario's load generator: ``wrk`` when installed): with the breaker
  off (the gateway's own floor), with its Redis up, then with its Redis dead (every
  decision on the fallback lane). The worker samples how late its event loop runs a
  timer (``fleetbreaker_event_loop_lag_seconds``, every 0.1 s); the p99 is read from
  that histogram, as the upper bound of its bucket. The load generator shares the 2
  cores, so the lag includes time the worker waited for a CPU.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from app.localfleet.ports import free_port
from app.localfleet.services import Service, http_ok, serve_command, wait_ready
from breaker import BreakerConfig
from breaker._store.backend import embedded_backend
from breaker._store.local import LocalEngine
from breaker._store.scripts import function_name, library_source
from breaker._store.wire import Wired, record_args

from .loadgen import Load, run_load
from .server import BenchRedis

_ROOT = Path(__file__).resolve().parent.parent
CONCURRENT = 200
_KEYS = ["fb:{bench}", "fb:{bench}:window", "fb:{bench}:leases"]


_WIRED = Wired.of(BreakerConfig(prefix="fb", failure_threshold=10**9), "bench")


def _record(offer: bool = False) -> list[str | int]:
    return record_args(
        _WIRED,
        version=(0, 0),
        lease_id="",
        outcome="success",
        duration_ms=1,
        batch=None,
        now_ms=None,
        offer=offer,
    )


def per_call(calls: int, redis_url: str) -> dict[str, float]:
    """µs per closed-success ``record`` on each lane (the median of 5 batches)."""
    local = LocalEngine()
    embedded = embedded_backend()
    client = redis.Redis.from_url(redis_url)
    client.function_load(library_source(), replace=True)
    record = function_name("record")
    local.run("record", _KEYS, _record(offer=True))
    embedded.run("bench", "record", _KEYS, _record(offer=True), 0.0)
    client.fcall(record, 3, *_KEYS, *_record(offer=True))
    runs: dict[str, Callable[[], object]] = {
        "fallback lane (LocalEngine)": lambda: local.run("record", _KEYS, _record()),
        "embedded (fakeredis)": lambda: embedded.run("bench", "record", _KEYS, _record(), 0.0),
        "Redis round trip (FCALL)": lambda: client.fcall(record, 3, *_KEYS, *_record()),
    }
    figures = {}
    for name, run in runs.items():
        run()
        batches = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(calls):
                run()
            batches.append((time.perf_counter() - started) / calls * 1e6)
        figures[name] = sorted(batches)[2]
    client.close()
    return figures


@dataclass(frozen=True)
class Lag:
    scenario: str
    load: Load
    p99_at_most: float  # seconds: the upper bound of the bucket holding the p99
    samples: int


def loop_lag(redis_url: str, seconds: float) -> list[Lag]:
    output = io.StringIO()
    lock = threading.Lock()
    results = []
    with tempfile.TemporaryDirectory(prefix="fleetbreaker-lag-") as folder:
        upstream_port = free_port()
        upstream = Service(
            name="upstream",
            argv=[sys.executable, "-m", "bench.upstream", str(upstream_port)],
            environ={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(_ROOT)},
            ready=lambda: http_ok(f"http://127.0.0.1:{upstream_port}/"),
        )
        upstream.start(output, lock)
        try:
            wait_ready([upstream])
            dead = f"redis://127.0.0.1:{free_port()}/0"
            for scenario, url, breaker in (
                ("breaker off", redis_url, False),
                ("Redis up", redis_url, True),
                ("Redis dead: fallback", dead, True),
            ):
                lag = _lag_of(scenario, url, breaker, upstream_port, Path(folder), seconds)
                results.append(lag)
        finally:
            upstream.stop()
    return results


def _lag_of(
    scenario: str,
    redis_url: str,
    breaker: bool,
    upstream_port: int,
    folder: Path,
    seconds: float,
) -> Lag:
    config = folder / f"{free_port()}.toml"
    config.write_text(
        f'[upstreams.api]\nurl = "http://127.0.0.1:{upstream_port}"\n'
        + ("" if breaker else "breaker = false\n")
    )
    port, admin_port = free_port(), free_port()
    gateway = Service(
        name="gateway",
        argv=serve_command(port, admin_port, log_level="warning"),
        environ={
            "PATH": "/usr/bin:/bin",
            "BREAKER_REDIS_URL": redis_url,
            "BREAKER_CONFIG": str(config),
        },
        ready=lambda: http_ok(f"http://127.0.0.1:{port}/healthz"),
    )
    gateway.start(io.StringIO(), threading.Lock())
    try:
        wait_ready([gateway])
        base = f"http://127.0.0.1:{port}"
        admin = f"http://127.0.0.1:{admin_port}"  # where /metrics is
        run_load(f"{base}/proxy/api/item", 1.0, CONCURRENT)  # connections opened, warm
        before = _buckets(admin)
        load = run_load(f"{base}/proxy/api/item", seconds, CONCURRENT)
        after = _buckets(admin)
    finally:
        gateway.stop()
    counts = {bound: after[bound] - before.get(bound, 0.0) for bound in after}
    total = counts[float("inf")]
    p99 = next(bound for bound, count in sorted(counts.items()) if count >= 0.99 * total)
    return Lag(scenario, load, p99, int(total))


def _buckets(admin: str) -> dict[float, float]:
    text = httpx.get(f"{admin}/metrics", timeout=10).text
    found = {}
    for line in text.splitlines():
        if line.startswith("fleetbreaker_event_loop_lag_seconds_bucket{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            found[float(bound)] = float(line.rsplit(" ", 1)[1])
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fallback", description=__doc__)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    with BenchRedis() as server:
        for name, micros in per_call(args.calls, server.url).items():
            print(f"per call  {name:<30} {micros:8.1f} µs")
        for lag in loop_lag(server.url, args.seconds):
            print(
                f"loop lag  {lag.scenario:<30} p99 <= {lag.p99_at_most * 1000:g} ms "
                f"({lag.samples} samples; {lag.load.requests_per_second:.0f} requests/s, "
                f"{lag.load.errors} errors, {lag.load.tool})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
