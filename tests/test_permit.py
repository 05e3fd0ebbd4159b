"""The permit, the primitive every guard is built on: acquire, then settle once; on
every backend, sync and async; and the outcome events it tells."""

from __future__ import annotations

import gc

import pytest

from breaker import BreakerListener, CircuitOpenError, OutcomeEvent, PermitSettledError
from tests.conftest import AsyncHarness, Harness

# Retry, fallback, permit and async behaviour is the same on every topology: Redis and
# the embedded backend only (the Lua and backend tests keep every topology).
pytestmark = pytest.mark.lanes("redis", "redis-async", "embedded")


class Outcomes(BreakerListener, list[OutcomeEvent]):
    def outcome(self, event: OutcomeEvent) -> None:
        self.append(event)


def test_a_permit_counts_what_it_is_told(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=2)
    cb.acquire().failure(ConnectionError("refused"))
    cb.acquire().ignore()
    assert cb.snapshot().failures == 1
    cb.acquire().failure()
    assert cb.snapshot().state == "open"
    with pytest.raises(CircuitOpenError):
        cb.acquire()


def test_settle_judges_by_the_breakers_own_rules(harness: Harness) -> None:
    cb = harness.breaker(record_exceptions=(ConnectionError,), failure_predicate=lambda r: r == 500)
    assert cb.acquire().settle(ConnectionError()) == "failure"
    assert cb.acquire().settle(ValueError()) == "ignored"
    assert cb.acquire().settle(result=500) == "failure"
    assert cb.acquire().settle(result=200) == "success"
    assert cb.snapshot().window_calls == 3


def test_a_permit_settles_once(harness: Harness) -> None:
    cb = harness.breaker()
    permit = cb.acquire()
    permit.success()
    assert permit.settled
    with pytest.raises(PermitSettledError):
        permit.failure()
    assert cb.snapshot().window_calls == 1


def test_a_dropped_trial_gives_its_lease_back_on_the_next_call(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=1, reset_timeout=5.0, half_open_lease=60.0)
    cb.acquire().failure()
    harness.clock.advance(5.0)
    permit = cb.acquire()
    assert permit.trial
    del permit  # never settled, as code that lost it on an unexpected path
    gc.collect()  # only to make the drop happen now, on any Python
    # Its lease would block the breaker for 60 s; it is given back instead.
    assert cb.acquire().trial


def test_close_gives_back_the_leases_of_dropped_permits(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=1, reset_timeout=5.0, half_open_lease=60.0)
    cb.acquire().failure()
    harness.clock.advance(5.0)
    cb.acquire()  # dropped at once
    gc.collect()
    cb.close()
    other = harness.breaker(failure_threshold=1, reset_timeout=5.0)
    assert other.snapshot().half_open_leases == 0


def test_a_breaker_with_a_permit_unsettled_is_not_idle(harness: Harness) -> None:
    cb = harness.breaker()
    assert cb.idle  # nothing done yet
    permit = cb.acquire()
    assert not cb.idle
    permit.success()
    assert cb.idle
    cb.acquire()  # dropped unsettled: it counts as nothing, and holds nothing
    gc.collect()
    assert cb.idle


def test_an_open_breaker_is_not_idle(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=1, reset_timeout=5.0)
    cb.acquire().failure()
    assert not cb.idle
    harness.clock.advance(5.0)
    cb.acquire().success()  # the trial closes it
    assert cb.idle


def test_a_breaker_with_batched_counts_due_is_not_idle(harness: Harness) -> None:
    cb = harness.breaker(batch_interval=5.0)
    cb.acquire().success()  # counted here, for the next flush
    assert not cb.idle
    cb.flush()
    assert cb.idle


def test_outcome_events_tell_every_call_with_its_duration_and_reason(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=2, reset_timeout=5.0)
    heard = Outcomes()
    cb.add_listener(heard)
    permit = cb.acquire()
    harness.clock.advance(0.25)
    permit.failure(TimeoutError())
    cb.call(lambda: "ok")
    with pytest.raises(ValueError, match="bad"):
        cb.call(_raise, ValueError("bad"))
    cb.acquire().failure()
    with pytest.raises(CircuitOpenError):
        cb.acquire()
    assert [(e.outcome, e.reason) for e in heard] == [
        ("failure", "TimeoutError"),
        ("success", ""),
        ("failure", "ValueError"),
        ("failure", ""),
        ("rejected", "open"),
    ]
    assert heard[0].duration == pytest.approx(0.25)
    assert heard[-1].duration is None
    assert {e.backend for e in heard} == {harness.kind}


def _raise(error: Exception) -> None:
    raise error


def test_async_permits_are_the_same_primitive_awaited(async_harness: AsyncHarness) -> None:
    async def scenario() -> None:
        cb = async_harness.breaker(failure_threshold=1, reset_timeout=5.0)
        heard = Outcomes()
        cb.add_listener(heard)
        permit = await cb.aacquire()
        assert await permit.settle(result=None) == "success"
        with pytest.raises(PermitSettledError):
            await permit.success()
        await (await cb.aacquire()).failure(OSError())
        with pytest.raises(CircuitOpenError):
            await cb.aacquire()
        async_harness.clock.advance(5.0)
        trial = await cb.aacquire()
        assert trial.trial
        await trial.ignore()  # a cancelled trial: the lease goes back, nothing counts
        assert (await cb.asnapshot()).state == "half_open"
        assert [e.outcome for e in heard] == ["success", "failure", "rejected", "ignored"]

    async_harness.run(scenario)
