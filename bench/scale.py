"""Scenario 7: Redis memory per breaker with 1,000 breakers, keys without a TTL, and the
per-call cost with 10,000 live breakers against the cost with one. Each peer runs in a
process of its own, so that what it leaves running (pollers) ends with it."""

from __future__ import annotations

import multiprocessing
import statistics
import time
from dataclasses import dataclass
from typing import Any

import redis

from .calls import Driver
from .peers import PEERS, AsyncGuard, Settings, SyncGuard

_CONTEXT = multiprocessing.get_context("spawn")
_TIMEOUT = 600.0
SETTINGS = Settings(threshold=3, reset_timeout=600.0)
#: Peers that cannot hold 10,000 breakers in one process, and why.
NO_LARGE_FLEET = {
    "interlock-cb 2.8.2": "one polling thread per breaker: 10,000 threads",
}


@dataclass(frozen=True)
class Scale:
    bytes_per_breaker: float
    keys_per_breaker: float
    keys_without_ttl: int
    cost_ratio: float | None  # per-call cost with many breakers / with one
    cost_one_us: float | None
    cost_many_us: float | None
    note: str = ""


def scale(peer_name: str, url: str, breakers: int, live: int, batches: int) -> Scale:
    results: Any = _CONTEXT.Queue()
    process = _CONTEXT.Process(
        target=_scale_worker, args=(peer_name, url, breakers, live, batches, results)
    )
    process.start()
    result: Scale = results.get(timeout=_TIMEOUT)
    process.join(_TIMEOUT)
    return result


def _scale_worker(
    peer_name: str, url: str, breakers: int, live: int, batches: int, results: Any
) -> None:
    client = redis.Redis.from_url(url)
    client.flushall()
    driver = Driver()
    peer = PEERS[peer_name]

    # Memory: every breaker has seen successes, then tripped (its keys as in use).
    guards = [driver.guard(peer, url, SETTINGS) for _ in range(breakers)]
    for guard in guards:
        driver.calls(guard, 3)
        driver.calls(guard, SETTINGS.threshold, fail=True)
    keys = _settled_keys(client)
    memory = sum(int(client.memory_usage(key) or 0) for key in keys)
    without_ttl = sum(1 for key in keys if client.ttl(key) == -1)

    cost_one = cost_many = ratio = None
    note = NO_LARGE_FLEET.get(peer_name, "")
    if not note:
        settings = Settings(threshold=10_000, reset_timeout=600.0)
        many = [driver.guard(peer, url, settings) for _ in range(live)]
        for guard in many:
            driver.calls(guard, 1)
        one = many[:1]
        calls = min(live, 2000)
        one_samples, many_samples = [], []
        offset = 0
        for _ in range(batches):
            one_samples.append(_timed(driver, one, calls, 0))
            many_samples.append(_timed(driver, many, calls, offset))
            offset = (offset + calls) % live
        cost_one = statistics.median(one_samples)
        cost_many = statistics.median(many_samples)
        ratio = cost_many / cost_one
    results.put(
        Scale(
            bytes_per_breaker=memory / breakers,
            keys_per_breaker=len(keys) / breakers,
            keys_without_ttl=without_ttl,
            cost_ratio=ratio,
            cost_one_us=cost_one,
            cost_many_us=cost_many,
            note=note,
        )
    )


def _settled_keys(client: redis.Redis) -> list[bytes]:
    """The keys, once peers that write in the background have stopped adding any."""
    keys: list[bytes] = list(client.scan_iter(count=1000))
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now: list[bytes] = list(client.scan_iter(count=1000))
        if len(now) == len(keys):
            break
        keys = now
    return keys


def _timed(driver: Driver, guards: list[SyncGuard | AsyncGuard], calls: int, offset: int) -> float:
    """µs per closed+success call, cycling over ``guards`` from ``offset``."""
    chosen = [guards[(offset + i) % len(guards)] for i in range(calls)]
    if isinstance(chosen[0], SyncGuard):
        started = time.perf_counter()
        for guard in chosen:
            driver.calls(guard, 1)
        return (time.perf_counter() - started) / calls * 1e6

    async def run() -> float:
        async def ok() -> None:
            return None

        begun = time.perf_counter()
        for guard in chosen:
            assert isinstance(guard, AsyncGuard)
            await guard.call(ok)
        return (time.perf_counter() - begun) / calls * 1e6

    return driver.loop.run_until_complete(run())
