"""``python -m bench.bulkhead [--calls N] [--cancel N] [--adaptive S] [--fleet S]``:
what the bulkhead costs a call, beside the breaker alone, on the benchmark's own
redis-server; the leases left after many asyncio calls, a tenth of them cancelled
mid-flight; an adaptive limit learnt by six processes; and ``max_concurrent`` at full
scale (``bench.bulkhead_fleet``).

Four cases, interleaved round by round so that a noisy machine slows each alike:
the breaker alone (exact mode: every call recorded), the breaker and the bulkhead,
the bulkhead alone, and a bare call. Per case: the per-call latency at p50 and p99
(a call that does nothing, so all of it is the guards'), and the Redis round trips
per call (MONITOR, ``BenchRedis.counting``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import redis
import redis.asyncio

from breaker import AdaptiveLimit, Bulkhead, BulkheadFullError, CircuitBreaker

from .bulkhead_fleet import render, run
from .server import BenchRedis

ROUNDS = 10


def _percentile(samples: list[float], share: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


@contextlib.contextmanager
def _guarded_cases(url: str) -> Iterator[dict[str, Callable[[], None]]]:
    """Each case's call, by label: a bare call, then through the breaker (exact mode),
    the breaker and a bulkhead, the bulkhead; on a client and guards of their own."""
    client = redis.Redis.from_url(url)
    name = f"bench-{uuid.uuid4().hex[:6]}"
    breaker = CircuitBreaker(name, redis=client, failure_threshold=10_000)
    bulkhead = Bulkhead(name, redis=client, limit=1_000)

    def bare() -> None:
        return None

    def breaker_only() -> None:
        with breaker:
            pass

    def both() -> None:
        with breaker, bulkhead:
            pass

    def bulkhead_only() -> None:
        with bulkhead:
            pass

    try:
        yield {
            "bare call": bare,
            "breaker alone": breaker_only,
            "breaker + bulkhead": both,
            "bulkhead alone": bulkhead_only,
        }
    finally:
        bulkhead.close()
        breaker.close()
        client.close()


def latency(url: str, calls: int) -> dict[str, dict[str, float]]:
    """Per-call seconds of each case, ``calls`` each, in ``ROUNDS`` interleaved rounds."""
    with _guarded_cases(url) as cases:
        samples: dict[str, list[float]] = {label: [] for label in cases}
        for case in cases.values():  # warm: scripts loaded, pools filled
            for _ in range(50):
                case()
        per_round = max(1, calls // ROUNDS)
        for _ in range(ROUNDS):
            for label, case in cases.items():
                for _ in range(per_round):
                    started = time.perf_counter()
                    case()
                    samples[label].append(time.perf_counter() - started)
    return {
        label: {
            "p50": statistics.median(values),
            "p99": _percentile(values, 0.99),
            "calls": float(len(values)),
        }
        for label, values in samples.items()
    }


def round_trips(bench: BenchRedis, calls: int = 200) -> dict[str, float]:
    """Redis round trips per call of each guarded case."""
    with _guarded_cases(bench.url) as cases:
        del cases["bare call"]
        for _ in range(20):  # warm
            cases["breaker + bulkhead"]()
        result: dict[str, float] = {}
        for label, case in cases.items():
            with bench.counting() as counted:
                for _ in range(calls):
                    case()
            result[label] = counted.round_trips / calls
    return result


async def _cancelled(url: str, requests: int, share: float) -> dict[str, Any]:
    """``requests`` asyncio calls through a bulkhead, 200 at a time, each holding its
    lease 1-5 ms; ``share`` of them cancelled mid-flight. The leases left after."""
    client = redis.asyncio.Redis.from_url(url)
    name = f"bench-cancel-{uuid.uuid4().hex[:6]}"
    bulkhead = Bulkhead(name, redis=client, limit=50, max_wait=5.0, backend_timeout=5.0)
    rng = random.Random(7)
    outcomes = {"done": 0, "cancelled": 0, "full": 0}

    async def call() -> None:
        async with bulkhead:
            await asyncio.sleep(rng.uniform(0.001, 0.005))

    for start in range(0, requests, 200):
        tasks = [asyncio.create_task(call()) for _ in range(min(200, requests - start))]
        await asyncio.sleep(0.002)
        for task in tasks:
            if rng.random() < share:
                task.cancel()
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, asyncio.CancelledError):
                outcomes["cancelled"] += 1
            elif isinstance(result, Exception):
                outcomes["full"] += 1
            else:
                outcomes["done"] += 1
    await asyncio.sleep(1.0)
    left = await client.zcard(bulkhead.keys.slots)
    await bulkhead.aclose()
    await client.aclose()
    return {**outcomes, "leases_left": left}


class Capacity:
    """An upstream that serves ``capacity`` calls at once, each in ``base`` seconds, and
    queues the rest (first come, first served): past its capacity, latency grows with
    the calls in flight, as a real server's does once its workers are all busy."""

    def __init__(self, capacity: int, base: float) -> None:
        self.capacity = capacity
        self.base = base
        self.serving = 0
        self.in_flight = 0
        self.most = 0
        self._freed: asyncio.Condition | None = None

    async def call(self) -> None:
        if self._freed is None:
            self._freed = asyncio.Condition()
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            async with self._freed:
                await self._freed.wait_for(lambda: self.serving < self.capacity)
                self.serving += 1
            try:
                await asyncio.sleep(self.base)
            finally:
                async with self._freed:
                    self.serving -= 1
                    self._freed.notify_all()
        finally:
            self.in_flight -= 1

    async def set_capacity(self, capacity: int) -> None:
        assert self._freed is not None
        async with self._freed:
            self.capacity = capacity
            self._freed.notify_all()


async def _adaptive(url: str, processes: int, callers: int, seconds: float) -> dict[str, Any]:
    """``processes`` bulkheads (each a process of the fleet, with an id of its own) on one
    adaptive limit, ``callers`` each calling without pause; the upstream's capacity
    drops from 40 to 15 at a third of the run. The fleet's limit, sampled every 0.1 s."""
    client = redis.asyncio.Redis.from_url(url)
    name = f"bench-adaptive-{uuid.uuid4().hex[:6]}"
    adaptive = AdaptiveLimit(min=4, max=200, initial=20)
    fleet = [
        Bulkhead(name, redis=client, limit=adaptive, backend_timeout=5.0) for _ in range(processes)
    ]
    upstream = Capacity(40, 0.1)
    stop = asyncio.Event()
    calls = {"done": 0, "full": 0}

    async def caller(bulkhead: Bulkhead) -> None:
        while not stop.is_set():
            try:
                async with bulkhead:
                    await upstream.call()
                calls["done"] += 1
            except BulkheadFullError as full:
                calls["full"] += 1
                await asyncio.sleep(min(full.retry_after, 0.05))

    tasks = [asyncio.create_task(caller(b)) for b in fleet for _ in range(callers)]
    started = time.monotonic()
    drop_at = started + seconds / 3
    trace: list[tuple[float, int, int]] = []
    dropped = False
    while time.monotonic() - started < seconds:
        await asyncio.sleep(0.1)
        if not dropped and time.monotonic() >= drop_at:
            await upstream.set_capacity(15)
            dropped = True
        limit = int(await client.hget(fleet[0].keys.bulkhead, "limit") or 0)
        trace.append((time.monotonic() - drop_at, limit, upstream.in_flight))
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    for bulkhead in fleet:
        await bulkhead.aclose()
    await client.aclose()
    before = [limit for t, limit, _ in trace if -2.0 <= t < 0]
    settled_at = None
    for index, (t, _limit, _) in enumerate(trace):
        if t >= 0 and all(12 <= later <= 18 for _, later, _ in trace[index:]):
            settled_at = t
            break
    after = [limit for t, limit, _ in trace if t >= seconds * 2 / 3 - seconds / 3 - 3]
    return {
        "limit before the drop (last 2 s)": f"{min(before)}..{max(before)}",
        "settled within 12..18 after the drop": (
            "never" if settled_at is None else f"{settled_at:.1f} s"
        ),
        "limit over the last 3 s": f"{min(after)}..{max(after)}",
        "calls": calls,
    }


def section(
    bench: BenchRedis, calls: int, cancel: int, adaptive_seconds: float, fleet_seconds: float
) -> list[str]:
    """BENCHMARKS.md's bulkhead section: the cost per call beside the breaker alone, the
    round trips, the leases left after cancellations, the adaptive limit learnt by a
    fleet, and ``max_concurrent`` at full scale (``bench.bulkhead_fleet``)."""
    measured = latency(bench.url, calls)
    alone = measured["breaker alone"]
    trips = round_trips(bench)
    lines = [
        "## Bulkhead (`max_concurrent`)",
        "",
        f"`python -m bench.bulkhead`: {calls} calls per case, interleaved in {ROUNDS} rounds; a "
        "call that does nothing, so all of it is the guards' (the breaker in exact mode). "
        "Round trips: commands per call, counted by MONITOR.",
        "",
        "| case | p50 (µs) | p99 (µs) | added to the breaker alone, p50 / p99 (µs) "
        "| round trips per call |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, figures in measured.items():
        added = (
            f"{(figures['p50'] - alone['p50']) * 1e6:.0f} / "
            f"{(figures['p99'] - alone['p99']) * 1e6:.0f}"
            if label == "breaker + bulkhead"
            else ""
        )
        count = f"{trips[label]:.2f}" if label in trips else "0"
        lines.append(
            f"| {label} | {figures['p50'] * 1e6:.0f} | {figures['p99'] * 1e6:.0f} | {added} "
            f"| {count} |"
        )
    left = asyncio.run(_cancelled(bench.url, cancel, 0.10))
    learnt = asyncio.run(_adaptive(bench.url, 6, 10, adaptive_seconds))
    lines += [
        "",
        "Through the gateway's transport, the lease's give is sent beside the breaker's "
        "record when the body ends (tests/test_bulkhead.py checks they overlap): a call "
        "waits two round trips, the take and then both, for three commands.",
        "",
        f"- **Cancellations:** {cancel} asyncio calls through a bulkhead of 50, 200 at a "
        f"time, a tenth cancelled mid-flight: {left['done']} done, {left['cancelled']} "
        f"cancelled, {left['full']} refused; **{left['leases_left']} leases left** 1 s "
        "after the end.",
        f"- **Adaptive limit:** 6 processes x 10 callers on one `AdaptiveLimit(min=4, max=200, "
        f"initial=20)`, the upstream's capacity 40 then 15 at a third of a "
        f"{adaptive_seconds:g} s run: "
        + "; ".join(f"{key}: {value}" for key, value in learnt.items() if key != "calls")
        + ".",
        "",
    ]
    for refused, kill in (("retry-after", True), ("eager", False)):
        lines += render(run(bench.url, fleet_seconds, kill=kill, refused=refused))
        lines.append("")
    lines += [
        "The fleet: `python -m bench.bulkhead_fleet [--refused eager]`. "
        "`retry-after` clients wait what the 503's `Retry-After` asks (±25 %); `eager` ones "
        "0.25-0.75 s, under it, which doubles the refusals on the same 2 cores.",
        "",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bulkhead")
    parser.add_argument("--calls", type=int, default=5_000, help="per case (default 5000)")
    parser.add_argument("--cancel", type=int, default=100_000, help="asyncio calls, 10%% cancelled")
    parser.add_argument("--adaptive", type=float, default=30.0, help="seconds of the adaptive run")
    parser.add_argument("--fleet", type=float, default=10.0, help="seconds of the fleet's load")
    options = parser.parse_args()
    logging.getLogger("breaker").setLevel(logging.ERROR)
    with BenchRedis() as bench:
        print(f"redis-server {bench.version()}")
        lines = section(bench, options.calls, options.cancel, options.adaptive, options.fleet)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
