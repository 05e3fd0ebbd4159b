"""``python -m bench.otel [--calls N] [--rounds R]``: what OpenTelemetry costs a guarded
call, as ratios taken in one run on a ``redis-server`` of its own.

Cases, each a closed-breaker success (one ``record`` round trip):

- ``plain``: ``cb.call(fn)``, nothing instrumented (what every user pays: nothing
  of OpenTelemetry is imported, ``import breaker`` included);
- ``api only``: traced, OpenTelemetry's API with no SDK configured (spans are
  non-recording, as in an application that installed the extra but exports nothing);
- ``sdk``: traced into an SDK ``TracerProvider`` (spans recorded, then dropped: no
  exporter, so the figure is the instrumentation's, not an exporter's);
- the same three through a retrier (``RetryPolicy(attempts=1).bind(cb)``), which
  adds the operation span.

Rounds interleave the cases, so that a noisy neighbour slows them all alike; each
figure is the median over rounds of the mean time per call.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import redis

from breaker import CircuitBreaker, RetryPolicy
from breaker._retry.operation import set_operation_tracer
from breaker.otel import BreakerTracing

from .server import BenchRedis

Case = Callable[[], object]


def _work() -> str:
    return "ok"


def _timed(case: Case, tracing: BreakerTracing | None, calls: int) -> float:
    """Mean seconds per call; retriers trace their operations with ``tracing``."""
    set_operation_tracer(tracing)  # what instrument() does, switched per case
    try:
        started = time.perf_counter()
        for _ in range(calls):
            case()
        return (time.perf_counter() - started) / calls
    finally:
        set_operation_tracer(None)


def measure(url: str, calls: int, rounds: int) -> dict[str, float]:
    """Median seconds per call, by case."""
    from opentelemetry.sdk.trace import TracerProvider

    client = redis.Redis.from_url(url)
    plain = CircuitBreaker("bench-plain", redis=client)
    api = CircuitBreaker("bench-api", redis=client)
    sdk = CircuitBreaker("bench-sdk", redis=client)
    api_tracing = BreakerTracing()  # the global provider: none configured, so a no-op
    api_tracing.watch(api)
    sdk_tracing = BreakerTracing(TracerProvider())
    sdk_tracing.watch(sdk)
    once = RetryPolicy(attempts=1, budget=None)
    retried = {name: once.bind(cb) for name, cb in (("plain", plain), ("api", api), ("sdk", sdk))}

    cases: dict[str, tuple[Case, BreakerTracing | None]] = {
        "plain": (lambda: plain.call(_work), None),
        "api only": (lambda: api.call(_work), None),
        "sdk": (lambda: sdk.call(_work), None),
        "retrier, plain": (lambda: retried["plain"].call(_work), None),
        "retrier, api only": (lambda: retried["api"].call(_work), api_tracing),
        "retrier, sdk": (lambda: retried["sdk"].call(_work), sdk_tracing),
    }
    try:
        for case, tracing in cases.values():  # warm up: scripts loaded, views fresh
            _timed(case, tracing, 50)
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(rounds):
            for name, (case, tracing) in cases.items():
                samples[name].append(_timed(case, tracing, calls))
        return {name: statistics.median(values) for name, values in samples.items()}
    finally:
        for cb in (plain, api, sdk):
            cb.close()
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.otel", description=__doc__)
    parser.add_argument("--calls", type=int, default=2000, help="calls per case and round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with BenchRedis() as server:
        figures = measure(server.url, args.calls, args.rounds)
    print(f"guarded call, closed breaker, success; {args.rounds} rounds x {args.calls} calls")
    for name, seconds in figures.items():
        base = figures["retrier, plain" if name.startswith("retrier") else "plain"]
        print(f"  {name:<18} {seconds * 1e6:8.1f} µs  {seconds / base:5.2f}x")


if __name__ == "__main__":
    main()
