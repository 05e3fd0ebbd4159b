"""The fleet-wide retry budget (``budget.lua``) on every backend: how much room the
window gives, what counts against it, and what operators see of it."""

from __future__ import annotations

import pytest

from breaker import CircuitBreaker, RetryBudget
from tests.conftest import Breakers, Harness
from tests.support.servers import RedisServer
from tests.test_backend_outage import dead_redis_breaker

NO_FLOOR = 0.0


def first_attempts(cb: CircuitBreaker, count: int) -> None:
    for _ in range(count):
        cb.call(lambda: None)


def grants(cb: CircuitBreaker, budget: RetryBudget, asks: int) -> list[bool]:
    return [cb.spend_retry(budget).granted for _ in range(asks)]


def test_retries_may_add_the_ratio_of_the_fleets_first_attempts(harness: Harness) -> None:
    cb = harness.breaker()
    first_attempts(cb, 10)
    budget = RetryBudget(ratio=0.2, min_retries_per_second=NO_FLOOR)
    assert grants(cb, budget, 4) == [True, True, False, False]


def test_the_verdict_tells_the_window_figures_it_judged_by(harness: Harness) -> None:
    cb = harness.breaker()
    first_attempts(cb, 10)
    budget = RetryBudget(ratio=0.2, min_retries_per_second=NO_FLOOR)
    cb.spend_retry(budget)
    verdict = cb.spend_retry(budget)
    # The first retry counts at once, but its own call only once it is recorded:
    # meanwhile first attempts read calls - retries = 10 - 1, erring towards fewer.
    assert (verdict.granted, verdict.retries, verdict.requests) == (True, 1, 9)
    assert verdict.limit == pytest.approx(1.8)


def test_a_recorded_retry_does_not_count_as_a_first_attempt(harness: Harness) -> None:
    cb = harness.breaker()
    first_attempts(cb, 10)
    budget = RetryBudget(ratio=0.2, min_retries_per_second=NO_FLOOR)
    assert grants(cb, budget, 2) == [True, True]
    first_attempts(cb, 2)  # the two retries' own calls
    # Twelve calls recorded, two of them retries: still ten first attempts.
    assert cb.spend_retry(budget).granted is False


def test_the_floor_lets_a_quiet_service_retry(harness: Harness) -> None:
    cb = harness.breaker(window=10.0)
    budget = RetryBudget(ratio=0.2, min_retries_per_second=12.0)
    # No traffic at all: the floor's bucket holds a quarter of a second of its rate.
    assert grants(cb, budget, 4) == [True, True, True, False]


def test_the_floor_refills_at_its_rate_not_a_window_at_once(harness: Harness) -> None:
    cb = harness.breaker(window=10.0)
    budget = RetryBudget(ratio=0.0, min_retries_per_second=10.0)
    # A window's worth (100) was once spent in an instant; now a quarter second's.
    assert grants(cb, budget, 3) == [True, True, False]  # half a token is left
    harness.clock.advance(0.02)
    assert grants(cb, budget, 1) == [False]  # 0.7 of a token
    harness.clock.advance(0.03)
    assert grants(cb, budget, 2) == [True, False]
    harness.clock.advance(60.0)  # the bucket refills to a quarter second, never beyond
    assert grants(cb, budget, 3) == [True, True, False]


def test_a_slow_floor_still_grants_a_whole_retry(harness: Harness) -> None:
    cb = harness.breaker(window=10.0)
    budget = RetryBudget(ratio=0.0, min_retries_per_second=0.1)
    assert grants(cb, budget, 2) == [True, False]
    harness.clock.advance(5.0)
    assert grants(cb, budget, 1) == [False]  # half a token
    harness.clock.advance(5.0)
    assert grants(cb, budget, 2) == [True, False]


def test_a_burst_gets_the_ratio_plus_the_floors_bucket(harness: Harness) -> None:
    cb = harness.breaker()
    first_attempts(cb, 100)
    budget = RetryBudget(ratio=0.2, min_retries_per_second=10.0)
    granted = 0
    for _ in range(40):
        if cb.spend_retry(budget).granted:
            granted += 1
            first_attempts(cb, 1)  # the retry's own call
    assert granted == 20 + 2


def test_retries_slide_out_with_the_window(harness: Harness) -> None:
    cb = harness.breaker(window=10.0)
    first_attempts(cb, 10)
    budget = RetryBudget(ratio=0.2, min_retries_per_second=0.0)
    assert grants(cb, budget, 3) == [True, True, False]
    harness.clock.advance(10.0)
    first_attempts(cb, 10)
    assert grants(cb, budget, 3) == [True, True, False]


def test_operators_see_retries_and_refusals_in_the_snapshot(harness: Harness) -> None:
    cb = harness.breaker()
    first_attempts(cb, 5)
    grants(cb, RetryBudget(ratio=0.2, min_retries_per_second=NO_FLOOR), 3)
    snapshot = cb.snapshot()
    assert (snapshot.window_retries, snapshot.window_retries_refused) == (1, 2)


def test_the_budget_counters_live_in_the_breakers_window_hash(harness: Harness) -> None:
    cb = harness.breaker()
    grants(cb, RetryBudget(ratio=0.0, min_retries_per_second=0.1), 2)
    fields = harness.hash(cb.keys.window)
    counters = sorted(field.split(":")[1] for field in fields if field[0].isdigit())
    assert counters == ["d", "r", "t"]
    assert sorted(field for field in fields if field.startswith("floor:")) == [
        "floor:at",
        "floor:tokens",
    ]
    assert harness.raw.pttl(cb.keys.window) > 0


def test_a_breaker_that_closes_again_starts_a_fresh_budget(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=1, reset_timeout=5.0)
    budget = RetryBudget(ratio=0.0, min_retries_per_second=0.1)
    assert grants(cb, budget, 2) == [True, False]
    with pytest.raises(ConnectionError):
        cb.call(_refused)
    harness.clock.advance(5.0)
    cb.call(lambda: None)  # the trial closes it
    assert grants(cb, budget, 1) == [True]


def _refused() -> None:
    raise ConnectionError


def test_with_redis_dead_fail_open_budgets_against_the_fallback(
    breakers: Breakers, redis_server: RedisServer
) -> None:
    cb = dead_redis_breaker(breakers, redis_server, window=10.0)
    budget = RetryBudget(ratio=0.0, min_retries_per_second=0.1)
    # The in-process fallback keeps its own window: its floor still bounds retries.
    assert grants(cb, budget, 2) == [True, False]


def test_with_redis_dead_fail_closed_refuses_every_retry(
    breakers: Breakers, redis_server: RedisServer
) -> None:
    cb = dead_redis_breaker(breakers, redis_server, on_backend_error="fail_closed")
    assert grants(cb, RetryBudget(), 1) == [False]
