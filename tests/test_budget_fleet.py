"""The retry budget holds across a fleet: 4 OS processes hammer an upstream that fails
every request, through one breaker in the real Redis.

Without a budget every request makes ``attempts`` attempts. With one, the fleet's
retries stay within ``ratio`` x its requests (or the floor), whichever process sends
them. The figures are printed (``pytest -s``) for the issue note.
"""

from __future__ import annotations

import pytest
import redis

from breaker import RetryBudget
from tests.support.budget_worker import run_fleet
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

    floor = BUDGET.min_retries_per_second * WINDOW
    # The bound: (1 + ratio) x requests, plus the floor.
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
    # Tighter: a retry is granted only while the retries granted stay under the limit.
    assert with_budget - requests <= max(BUDGET.ratio * requests, floor)
