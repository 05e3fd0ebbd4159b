"""A process of a fleet that hammers one upstream through ``SyncResilientTransport``.

Each process has its own Redis client, transport and threads; they share one breaker
(and so one retry budget) by name. Waits are switched off (``set_testing``): the
budget, not time, is what limits the retries here.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import redis

from breaker import BreakerConfig, RetryBudget, RetryPolicy, SyncResilientTransport
from breaker.testing import set_testing

_WAIT = 60.0


def hammer(
    url: str,
    redis_url: str,
    name: str,
    budget: RetryBudget | None,
    requests: int,
    threads: int,
    start: Any,
    results: Any,
) -> None:
    set_testing(True)
    transport = SyncResilientTransport(
        redis=redis.Redis.from_url(redis_url),
        retry=RetryPolicy(attempts=3, budget=budget),
        # Never trips: the budget alone must hold the retries back.
        breaker_config=BreakerConfig(failure_threshold=1_000_000, window=60.0),
        # The warm-up goes through a breaker of its own, so that only the hammering
        # counts in the budget's window.
        breaker_name=lambda request: name if request.url.path == "/down" else f"{name}-warm-up",
    )
    with httpx.Client(transport=transport, timeout=10.0) as http:
        http.get(url + "/warm-up")  # the script loads and connections open before the race
        start.wait(_WAIT)
        with ThreadPoolExecutor(threads) as pool:
            statuses = list(
                pool.map(lambda _: http.get(url + "/down").status_code, range(requests))
            )
    results.put(dict(Counter(statuses)))


def run_fleet(
    processes: int,
    url: str,
    redis_url: str,
    name: str,
    budget: RetryBudget | None,
    requests: int,
    threads: int,
) -> list[dict[int, int]]:
    """Start ``processes`` hammers together; each sends ``requests`` requests."""
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(processes)
    results = context.Queue()
    workers = [
        context.Process(
            target=hammer,
            args=(url, redis_url, name, budget, requests, threads, start, results),
        )
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    try:
        return [results.get(timeout=_WAIT) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
                worker.join()
