"""The breaker's state machine, over every backend, with time injected."""

from __future__ import annotations

import pytest

from breaker import CircuitBreaker, CircuitOpenError
from tests.conftest import Harness


class Boom(Exception):
    """The upstream failed."""


def fail(cb: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        with pytest.raises(Boom), cb:
            raise Boom


def succeed(cb: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        with cb:
            pass


def test_trips_after_exactly_failure_threshold_consecutive_failures(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=3)
    fail(cb, 2)
    succeed(cb)
    assert cb.snapshot().state == "closed"
    assert harness.hash("breaker:{payments}")["state"] == "closed"
    fail(cb, 3)
    assert harness.hash("breaker:{payments}")["state"] == "open"


def test_a_success_resets_the_consecutive_failure_count(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=3)
    fail(cb, 2)
    succeed(cb)
    assert cb.snapshot().failures == 0
    fail(cb, 2)
    assert cb.snapshot().state == "closed"


def test_open_breaker_rejects_without_calling_and_says_when_to_retry(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=1, reset_timeout=30.0)
    fail(cb)
    harness.clock.advance(10.0)
    called: list[int] = []
    with pytest.raises(CircuitOpenError) as rejected:
        cb.call(called.append, 1)
    assert called == []
    assert rejected.value.name == "payments"
    assert rejected.value.retry_after == pytest.approx(20.0)


def test_hash_holds_state_in_words_and_epoch_ms_times(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=2, reset_timeout=10.0)
    fail(cb, 2)
    stored = harness.hash("breaker:{payments}")
    now_ms = harness.clock.epoch_ms()
    assert stored["state"] == "open"
    assert stored["failures"] == "2"
    assert stored["last_failure_at"] == str(now_ms)
    assert stored["opened_at"] == str(now_ms)
    assert stored["open_until"] == str(now_ms + 10_000)


def test_every_key_has_a_ttl_refreshed_on_write(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=1, reset_timeout=5.0, key_ttl=3600.0)
    fail(cb)
    harness.clock.advance(5.0)
    held = cb.acquire()  # a half-open lease: the third key
    keys = sorted(harness.keys("breaker:*"))
    assert keys == ["breaker:{payments}", "breaker:{payments}:leases", "breaker:{payments}:window"]
    for key in keys:
        assert 3_500_000 < harness.raw.pttl(key) <= 3_600_000
    held.ignore()


def test_half_open_after_reset_timeout_admits_a_trial_that_closes_on_success(
    harness: Harness,
) -> None:
    cb = harness.breaker(failure_threshold=1, reset_timeout=5.0)
    fail(cb)
    harness.clock.advance(5.0)
    with cb:
        assert cb.snapshot().state == "half_open"
    assert cb.snapshot().state == "closed"


def test_half_open_admits_at_most_half_open_max_calls_at_once(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=1, reset_timeout=5.0, half_open_max_calls=2)
    fail(cb)
    harness.clock.advance(5.0)
    first, second = cb.acquire(), cb.acquire()
    assert first.trial
    assert second.trial
    with pytest.raises(CircuitOpenError) as rejected:
        cb.acquire()
    assert rejected.value.state == "half_open"
    assert cb.snapshot().half_open_leases == 2


def test_success_threshold_trials_are_needed_to_close(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=1, reset_timeout=5.0, success_threshold=2)
    fail(cb)
    harness.clock.advance(5.0)
    succeed(cb)
    assert cb.snapshot().state == "half_open"
    succeed(cb)
    assert cb.snapshot().state == "closed"


def test_a_failed_trial_reopens_for_a_fresh_reset_timeout(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=1, reset_timeout=5.0)
    fail(cb)
    harness.clock.advance(5.0)
    fail(cb)
    snapshot = cb.snapshot()
    assert snapshot.state == "open"
    assert snapshot.open_until == harness.clock.epoch_ms() + 5000


def test_consecutive_reopens_grow_the_open_time_up_to_its_maximum(harness: Harness) -> None:
    cb = harness.breaker(
        failure_threshold=1, reset_timeout=2.0, reset_timeout_max=7.0, reset_timeout_multiplier=2.0
    )
    fail(cb)
    durations = []
    for _ in range(4):
        snapshot = cb.snapshot()
        durations.append((snapshot.open_until - snapshot.opened_at) / 1000)
        harness.clock.advance(snapshot.retry_after)
        fail(cb)  # the trial fails: re-open
    assert durations == [2.0, 4.0, 7.0, 7.0]
    harness.clock.advance(cb.snapshot().retry_after)
    succeed(cb)
    fail(cb)
    snapshot = cb.snapshot()
    assert (snapshot.open_until - snapshot.opened_at) / 1000 == 2.0


def test_open_time_jitter_adds_at_most_its_fraction(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=1, reset_timeout=10.0, reset_timeout_jitter=0.5)
    seen = set()
    for _ in range(8):
        fail(cb)
        snapshot = cb.snapshot()
        duration = snapshot.open_until - snapshot.opened_at
        assert 10_000 <= duration <= 15_000
        seen.add(duration)
        cb.reset()
    assert len(seen) > 1


def test_an_expired_lease_frees_its_slot_for_the_next_trial(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=1, reset_timeout=5.0, half_open_lease=3.0)
    fail(cb)
    harness.clock.advance(5.0)
    held = cb.acquire()  # a holder that never reports, as if its process died
    with pytest.raises(CircuitOpenError) as rejected:
        cb.acquire()
    assert rejected.value.retry_after == pytest.approx(3.0)
    harness.clock.advance(3.0)
    assert cb.acquire().trial
    assert held.trial


def test_outcome_of_an_expired_and_reassigned_lease_is_ignored(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=1, reset_timeout=5.0, half_open_lease=3.0)
    fail(cb)
    harness.clock.advance(5.0)
    late = cb.acquire()
    harness.clock.advance(3.0)
    current = cb.acquire()
    late.failure()
    assert cb.snapshot().state == "half_open"
    current.success()
    assert cb.snapshot().state == "closed"


def test_failure_rate_over_the_window_trips_once_minimum_calls_are_seen(harness: Harness) -> None:
    cb = harness.breaker(
        failure_threshold=100, failure_rate_threshold=0.5, minimum_calls=10, window=10.0
    )
    for _ in range(4):
        succeed(cb)
        fail(cb)
    assert cb.snapshot().state == "closed"  # 8 calls: below minimum_calls
    succeed(cb)
    fail(cb)
    assert cb.snapshot().state == "open"
    assert harness.hash("breaker:{payments}")["state"] == "open"


def test_failures_that_slid_out_of_the_window_do_not_count(harness: Harness) -> None:
    cb = harness.breaker(
        failure_threshold=100,
        failure_rate_threshold=0.5,
        minimum_calls=4,
        window=10.0,
        window_bucket=1.0,
    )
    fail(cb, 3)
    harness.clock.advance(11.0)
    succeed(cb, 3)
    fail(cb)
    snapshot = cb.snapshot()
    assert snapshot.state == "closed"
    assert (snapshot.window_calls, snapshot.window_failures) == (4, 1)


def test_window_keeps_at_most_one_set_of_counters_per_bucket(harness: Harness) -> None:
    cb = harness.breaker(window=5.0, window_bucket=1.0)
    for _ in range(30):
        succeed(cb)
        harness.clock.advance(1.0)
    assert len(harness.raw.hgetall("breaker:{payments}:window")) <= 6


def test_slow_call_rate_trips(harness: Harness) -> None:
    cb = harness.breaker(
        failure_threshold=100,
        slow_call_duration=2.0,
        slow_call_rate_threshold=0.5,
        minimum_calls=4,
    )
    for _ in range(2):
        succeed(cb)
        with cb:
            harness.clock.advance(2.5)
    snapshot = cb.snapshot()
    assert snapshot.state == "open"
    assert snapshot.window_slow_calls == 2


def test_ignored_exceptions_count_as_nothing(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=1, ignore_exceptions=(KeyError,))
    with pytest.raises(KeyError), cb:
        raise KeyError("not found is not an outage")
    snapshot = cb.snapshot()
    assert (snapshot.state, snapshot.window_calls) == ("closed", 0)


def test_only_record_exceptions_are_failures(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=1, record_exceptions=(ConnectionError,))
    with pytest.raises(ValueError, match="bug"), cb:
        raise ValueError("bug")
    assert cb.snapshot().state == "closed"
    with pytest.raises(ConnectionError), cb:
        raise ConnectionError
    assert cb.snapshot().state == "open"


def test_failure_predicate_makes_a_result_a_failure(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=2, failure_predicate=lambda status: status >= 500)
    assert cb.call(lambda: 404) == 404
    assert cb.call(lambda: 503) == 503
    assert cb.snapshot().failures == 1
    cb.call(lambda: 502)
    assert cb.snapshot().state == "open"


def test_force_open_rejects_every_call_until_reset(harness: Harness) -> None:
    cb = harness.breaker(reset_timeout=7.0)
    cb.force_open()
    harness.clock.advance(3600.0)
    with pytest.raises(CircuitOpenError) as rejected:
        succeed(cb)
    assert (rejected.value.state, rejected.value.retry_after) == ("forced_open", 7.0)
    assert harness.hash("breaker:{payments}")["state"] == "forced_open"
    cb.reset()
    succeed(cb)


def test_disabled_breaker_lets_everything_through_and_keeps_counting(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=2)
    cb.disable()
    fail(cb, 5)
    snapshot = cb.snapshot()
    assert (snapshot.state, snapshot.failures, snapshot.window_failures) == ("disabled", 5, 5)


def test_reset_closes_and_clears_counters_leases_and_window(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=2, reset_timeout=5.0)
    fail(cb, 2)
    harness.clock.advance(5.0)
    held = cb.acquire()
    cb.reset()
    snapshot = cb.snapshot()
    assert (snapshot.state, snapshot.failures, snapshot.window_calls) == ("closed", 0, 0)
    assert snapshot.half_open_leases == 0
    assert held.trial


def test_outcome_of_a_call_admitted_before_a_reset_is_ignored(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=1)
    permit = cb.acquire()
    cb.reset()
    permit.failure()
    assert cb.snapshot().state == "closed"


def test_breakers_with_different_names_do_not_share_state(harness: Harness) -> None:
    payments = harness.breaker("payments", failure_threshold=1)
    inventory = harness.breaker("https://inventory.internal:8443", failure_threshold=1)
    fail(payments)
    succeed(inventory)
    assert inventory.snapshot().state == "closed"
    assert harness.hash("breaker:{https://inventory.internal:8443}")["state"] == "closed"


def test_two_breaker_objects_with_one_name_share_one_breaker(harness: Harness) -> None:
    first = harness.breaker(failure_threshold=2)
    second = harness.breaker(failure_threshold=2)
    fail(first)
    fail(second)
    assert first.snapshot().state == "open"
    harness.clock.advance(0.001)
    with pytest.raises(CircuitOpenError):
        succeed(first)


def test_decorator_guards_the_function(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=1)

    @cb
    def flaky(fail_it: bool) -> str:
        if fail_it:
            raise Boom
        return "ok"

    assert flaky(False) == "ok"
    with pytest.raises(Boom):
        flaky(True)
    with pytest.raises(CircuitOpenError):
        flaky(False)
    assert flaky.__name__ == "flaky"


def test_listeners_hear_each_transition_once(harness: Harness) -> None:
    heard: list[tuple[str, str, str]] = []
    cb = harness.breaker(failure_threshold=1, reset_timeout=5.0)
    cb.add_listener(lambda event: heard.append((event.from_state, event.to_state, event.reason)))
    fail(cb)
    harness.clock.advance(5.0)
    succeed(cb)
    cb.force_open()
    cb.reset()
    assert heard == [
        ("closed", "open", "failure_threshold"),
        ("open", "half_open", "reset_timeout"),
        ("half_open", "closed", "trial_succeeded"),
        ("closed", "forced_open", "force_open"),
        ("forced_open", "closed", "reset"),
    ]


def test_batched_successes_do_not_reset_failures_they_cannot_be_ordered_after(
    harness: Harness,
) -> None:
    batching = harness.breaker(failure_threshold=3, batch_interval=60.0)
    other = harness.breaker(failure_threshold=3)
    succeed(batching)
    fail(other, 2)  # after the batching process last heard from Redis
    succeed(batching, 5)
    batching.flush()
    snapshot = batching.snapshot()
    assert (snapshot.window_calls, snapshot.failures) == (8, 2)
    fail(other)
    assert batching.snapshot().state == "open"


def test_closing_records_the_successes_counted_locally(harness: Harness) -> None:
    batching = harness.breaker(failure_threshold=3, batch_interval=60.0)
    reader = harness.breaker(failure_threshold=3)
    succeed(batching, 6)  # the first asks Redis; 5 are counted locally
    batching.close()
    assert reader.snapshot().window_calls == 6


def test_a_success_that_brings_the_window_to_minimum_calls_can_trip_it(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=10, failure_rate_threshold=0.5, minimum_calls=4)
    fail(cb, 2)
    succeed(cb)
    assert cb.snapshot().state == "closed"  # 3 calls: fewer than minimum_calls
    succeed(cb)  # 2 of 4 failed: the rate is reached
    assert cb.snapshot().state == "open"
