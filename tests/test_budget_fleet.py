"""The retry budget holds across a fleet: 4 OS processes hammer an upstream that fails
every request, through one breaker in the real Redis.

Without a budget every request makes ``attempts`` attempts. With one, the fleet's
retries stay within ``ratio`` x its requests plus the floor, whichever process sends
them. A burst at one instant gets the ratio plus one second of the floor, across
gateway replicas. The figures are printed (``pytest -s``) for the issue note.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from breaker import RetryBudget
from tests.support.budget_worker import run_fleet
from tests.support.gateway_process import replicas_of
from tests.support.load import burst
from tests.support.servers import RedisServer
from tests.support.upstream import Reply, Upstream

pytestmark = pytest.mark.slow

PROCESSES = 4
REQUESTS_PER_PROCESS = 100
THREADS = 4
ATTEMPTS = 3
BUDGET = RetryBudget(ratio=0.2, min_retries_per_second=0.1)
WINDOW = 60.0  # the workers' breaker window: the whole run fits in it


def test_the_fleet_budget_caps_retries_across_processes(
    upstream: Upstream, redis_url: str, sync_redis: redis.Redis
) -> None:
    upstream.plan("/down", Reply(503))
    requests = PROCESSES * REQUESTS_PER_PROCESS

    unbudgeted = run_fleet(
        PROCESSES, upstream.url, redis_url, "no-budget", None, REQUESTS_PER_PROCESS, THREADS
    )
    without = len(upstream.hits_on("/down"))
    budgeted = run_fleet(
        PROCESSES, upstream.url, redis_url, "budget", BUDGET, REQUESTS_PER_PROCESS, THREADS
    )
    with_budget = len(upstream.hits_on("/down")) - without

    # The floor's bucket holds one token at this rate, and refills one per 10 s.
    floor = 1 + BUDGET.min_retries_per_second * WINDOW
    # (1 + ratio) x requests, plus what the floor can have granted in the run.
    bound = (1 + BUDGET.ratio) * requests + floor
    print(
        f"\n{PROCESSES} processes x {REQUESTS_PER_PROCESS} requests, attempts={ATTEMPTS}, "
        f"upstream 100 % 503: without budget {without} upstream attempts "
        f"({without / requests:.2f} per request); with budget ratio={BUDGET.ratio} "
        f"floor={floor:g}/window: {with_budget} ({with_budget / requests:.2f} per request, "
        f"bound {bound:g})"
    )
    # Every request was answered (the last 503 passes through), in both runs.
    assert [sum(r.values()) for r in unbudgeted + budgeted] == [REQUESTS_PER_PROCESS] * 8
    assert without == ATTEMPTS * requests
    assert requests <= with_budget <= bound
    # Tighter: the ratio's grants stay under its limit (one more at most, as the
    # limit is checked before the grant), and the floor's under its tokens.
    assert with_budget - requests <= BUDGET.ratio * requests + 1 + floor


def test_a_burst_on_a_dead_upstream_gets_the_ratio_plus_one_second_of_floor(
    tmp_path: Path, upstream: Upstream, redis_server: RedisServer
) -> None:
    """100 requests at one instant through 3 replicas x 2 workers, 3 attempts each,
    the default budget: at most 100 x 1.2 + one second of floor (10) reach the upstream
    (the floor's bucket holds 2.5 tokens; the rest refills while the burst lasts, so a
    burst a loaded machine stretches gets the floor's rate for as long as it lasts).
    The floor was once a whole window's allowance (100 retries), spent at t=0."""
    upstream.plan("/down", Reply(503))
    config = f"""
        [defaults.breaker]
        failure_threshold = 1000000   # the budget alone holds the retries back
        backend_timeout = 2.0         # a starved CI machine: never the fallback's budget
        [defaults.retry]
        attempts = 3
        backoff = 0
        [upstreams.dead]
        url = "{upstream.url}"
        [upstreams.warm]
        url = "{upstream.url}"
        """
    with replicas_of(tmp_path, redis_server, config, workers=2, prefixes=[(), (), ()]) as fleet:
        # Every worker's pools (Redis, upstream) open and its scripts load first.
        assert set(burst([f"{replica.url}/proxy/warm/ok" for replica in fleet], 60)) == {200}
        started = time.monotonic()
        statuses = burst([f"{replica.url}/proxy/dead/down" for replica in fleet], 100)
        took = time.monotonic() - started
    hits = len(upstream.hits_on("/down"))
    print(
        f"\n100 requests at once on a dead upstream, 3 replicas: {hits} upstream hits, {took:.2f} s"
    )
    assert statuses == [503] * 100
    # RetryBudget's promise: ratio x N + max(1, rate / 4) + rate x d retries for N first
    # attempts failing within d seconds (+1: the limit is checked before the grant).
    # On an idle machine the burst lasts well under a second: 100 x 1.2 + 10.
    assert 100 <= hits <= 100 * 1.2 + 2.5 + 10 * took + 1, f"the burst took {took:.2f} s"
