"""The retry runner with a shared breaker, on every backend. Waits are recorded by a
``ManualClock``, never slept."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from breaker import (
    CircuitBreaker,
    CircuitOpenError,
    RetryBudget,
    RetryDetails,
    RetryPolicy,
    attempts_of,
    current_attempt,
)
from breaker.testing import ManualClock, set_testing
from tests.conftest import AsyncHarness, Harness

# Retry, fallback, permit and async behaviour is the same on every topology: Redis and
# the embedded backend only (the Lua and backend tests keep every topology).
pytestmark = pytest.mark.lanes("redis", "redis-async", "embedded")

NO_TRIP = 1_000_000


class Flaky:
    """A callable that fails ``failures`` times with ``error``, then returns "ok";
    each call takes ``takes`` seconds of the manual clock, or its attempt's timeout if
    that is shorter (as an HTTP call bounded by ``current_attempt().timeout`` would)."""

    def __init__(
        self,
        failures: int,
        error: Callable[[], Exception] = ConnectionError,
        clock: ManualClock | None = None,
        takes: float = 0.0,
    ) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0
        self.clock = clock
        self.takes = takes

    def __call__(self) -> str:
        self.calls += 1
        if self.clock is not None:
            attempt = current_attempt()
            timeout = attempt.timeout if attempt is not None else None
            self.clock.advance(self.takes if timeout is None else min(self.takes, timeout))
        if self.calls <= self.failures:
            raise self.error()
        return "ok"


def streamed(status: int, request: httpx.Request) -> httpx.Response:
    """A response whose body is still to be read, as from the network: it stays open
    until closed (a response built from bytes is closed from the start)."""
    return httpx.Response(status, content=iter([b"busy"]), request=request)


class Answer:
    """A response-like result: what a retry policy reads from an HTTP answer."""

    def __init__(self, status: int, retry_after: str | None = None) -> None:
        self.status_code = status
        self.headers = {"Retry-After": retry_after} if retry_after else {}


def test_a_first_success_makes_one_attempt_and_no_wait(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=NO_TRIP)
    flaky = Flaky(0)
    assert RetryPolicy().bind(cb).call(flaky) == "ok"
    assert (flaky.calls, harness.clock.sleeps) == (1, [])


def test_transient_failures_are_retried_until_success(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=NO_TRIP)
    flaky = Flaky(2)
    assert RetryPolicy(attempts=3).bind(cb).call(flaky) == "ok"
    assert flaky.calls == 3


def test_every_attempt_is_recorded_by_the_breaker(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=NO_TRIP)
    RetryPolicy(attempts=3).bind(cb).call(Flaky(2))
    snapshot = cb.snapshot()
    assert (snapshot.window_calls, snapshot.window_failures) == (3, 2)


def test_attempts_is_the_total_number_of_calls_not_one_more(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=NO_TRIP)
    flaky = Flaky(10)
    with pytest.raises(ConnectionError) as caught:
        RetryPolicy(attempts=3).bind(cb).call(flaky)
    assert flaky.calls == 3
    assert attempts_of(caught.value) == 3
    assert "fleetbreaker: 3 attempt(s) made" in caught.value.__notes__


def test_the_last_real_exception_comes_back_unwrapped(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=NO_TRIP)
    errors = iter([ConnectionError("first"), TimeoutError("second"), ConnectionError("last")])

    def fails() -> None:
        raise next(errors)

    with pytest.raises(ConnectionError, match="last") as caught:
        RetryPolicy(attempts=3).bind(cb).call(fails)
    assert type(caught.value) is ConnectionError


def test_a_non_retryable_exception_is_raised_after_one_attempt(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=NO_TRIP)
    flaky = Flaky(5, error=lambda: ValueError("bad input"))
    with pytest.raises(ValueError, match="bad input") as caught:
        RetryPolicy(attempts=5).bind(cb).call(flaky)
    assert (flaky.calls, attempts_of(caught.value), harness.clock.sleeps) == (1, 1, [])


def test_the_last_retryable_response_is_returned_with_its_attempt_count(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=NO_TRIP)
    request = httpx.Request("GET", "http://upstream.test/")
    calls: list[httpx.Response] = []

    def unavailable() -> httpx.Response:
        calls.append(streamed(503, request))
        return calls[-1]

    answer = RetryPolicy(attempts=4).bind(cb).call(unavailable)
    assert answer is calls[-1]
    assert (len(calls), answer.status_code, attempts_of(answer)) == (4, 503, 4)
    # The answers that were not returned were closed, freeing their connections.
    assert all(response.is_closed for response in calls[:-1])


def test_a_post_is_never_retried_by_default(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=NO_TRIP)
    request = httpx.Request("POST", "http://upstream.test/orders")
    flaky = Flaky(3, error=lambda: httpx.ConnectError("refused", request=request))
    with pytest.raises(httpx.ConnectError):
        RetryPolicy(attempts=4).bind(cb).call(flaky)
    assert flaky.calls == 1


def test_backoff_waits_fall_within_their_full_jitter_bounds(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=NO_TRIP)
    policy = RetryPolicy(attempts=8, backoff=0.1, max_backoff=1.0)
    for _ in range(20):
        harness.clock.sleeps.clear()
        with pytest.raises(ConnectionError):
            policy.bind(cb).call(Flaky(100))
        assert len(harness.clock.sleeps) <= 7
        ceilings = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
        for wait, ceiling in zip(harness.clock.sleeps, ceilings, strict=False):
            assert 0.0 <= wait <= ceiling


def test_hooks_hear_each_retry_then_why_it_stopped(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=NO_TRIP)
    heard: list[RetryDetails] = []
    with pytest.raises(ConnectionError):
        RetryPolicy(attempts=3, hooks=(heard.append,)).bind(cb).call(Flaky(9))
    assert [(d.name, d.attempt, d.stopped_by) for d in heard] == [
        ("payments", 1, None),
        ("payments", 2, None),
        ("payments", 3, "attempts"),
    ]
    assert [d.delay for d in heard[:2]] == harness.clock.sleeps
    assert all(isinstance(d.cause, ConnectionError) for d in heard)


def test_a_failing_hook_does_not_break_the_call(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=NO_TRIP)

    def broken(details: RetryDetails) -> None:
        raise RuntimeError("hook bug")

    assert RetryPolicy(hooks=(broken,)).bind(cb).call(Flaky(1)) == "ok"


def test_retry_after_sets_the_wait(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=NO_TRIP)
    answers = iter([Answer(503, retry_after="7"), Answer(200)])
    result = RetryPolicy().bind(cb).call(lambda: next(answers))
    assert (result.status_code, harness.clock.sleeps) == (200, [7.0])


def test_retry_after_beyond_the_deadline_ends_the_operation_without_waiting(
    harness: Harness,
) -> None:
    cb = harness.breaker(failure_threshold=NO_TRIP)
    heard: list[RetryDetails] = []
    answers = iter([Answer(503, retry_after="30"), Answer(200)])
    policy = RetryPolicy(deadline=10.0, hooks=(heard.append,))
    result = policy.bind(cb).call(lambda: next(answers))
    assert (result.status_code, harness.clock.sleeps) == (503, [])
    assert (heard[-1].stopped_by, heard[-1].delay) == ("deadline", 30.0)


def test_the_deadline_covers_attempts_and_waits(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=NO_TRIP)
    clock = harness.clock
    heard: list[RetryDetails] = []
    # Each attempt takes 0.4 s at most; the wait ceilings grow 1, 2, 4 s.
    flaky = Flaky(100, clock=clock, takes=0.4)
    policy = RetryPolicy(attempts=10, backoff=1.0, deadline=3.5, hooks=(heard.append,))
    for _ in range(10):
        clock.sleeps.clear()
        flaky.calls = 0
        started = clock.monotonic()
        with pytest.raises(ConnectionError):
            policy.bind(cb).call(flaky)
        assert clock.monotonic() - started <= 3.5
        assert heard[-1].stopped_by == "deadline"
        assert flaky.calls < 10


def test_each_attempt_is_told_its_timeout_within_the_deadline(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=NO_TRIP)
    clock = harness.clock
    seen: list[float | None] = []

    def slow_then_ok() -> str:
        attempt = current_attempt()
        assert attempt is not None
        seen.append(attempt.timeout)
        clock.advance(2.0)
        if attempt.number < 3:
            raise TimeoutError
        return "ok"

    policy = RetryPolicy(attempts=3, backoff=0.0, per_try_timeout=2.0, deadline=5.0)
    assert policy.bind(cb).call(slow_then_ok) == "ok"
    assert seen == [2.0, 2.0, 1.0]
    assert current_attempt() is None


def test_an_open_breaker_stops_the_retrying_at_once(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=2)
    flaky = Flaky(100)
    with pytest.raises(CircuitOpenError) as caught:
        RetryPolicy(attempts=5).bind(cb).call(flaky)
    # The second failure opened it: the retrier stopped there, without a second wait.
    assert flaky.calls == 2
    assert len(harness.clock.sleeps) == 1
    assert attempts_of(caught.value) == 2
    assert isinstance(caught.value.__cause__, ConnectionError)


def test_the_response_that_opened_the_breaker_is_closed_not_leaked(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=1, failure_predicate=lambda r: r.status_code >= 500)
    answer = streamed(503, httpx.Request("GET", "http://upstream.test/"))
    assert not answer.is_closed
    with pytest.raises(CircuitOpenError) as caught:
        RetryPolicy(attempts=3).bind(cb).call(lambda: answer)
    assert answer.is_closed
    assert attempts_of(caught.value) == 1


def test_an_already_open_breaker_refuses_before_any_attempt(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=1)
    cb.force_open()
    flaky = Flaky(0)
    with pytest.raises(CircuitOpenError) as caught:
        RetryPolicy(attempts=5).bind(cb).call(flaky)
    assert (flaky.calls, harness.clock.sleeps, attempts_of(caught.value)) == (0, [], 0)


def test_an_inner_breakers_rejection_is_not_retried(harness: Harness) -> None:
    outer = harness.breaker("outer", failure_threshold=NO_TRIP)
    inner = harness.breaker("inner", failure_threshold=1)
    inner.force_open()
    calls = []

    def through_inner() -> None:
        calls.append(1)
        inner.call(lambda: None)

    with pytest.raises(CircuitOpenError):
        RetryPolicy(attempts=3).bind(outer).call(through_inner)
    assert calls == [1]


def test_the_budget_refuses_a_retry_once_spent(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=NO_TRIP)
    heard: list[RetryDetails] = []
    no_room = RetryBudget(ratio=0.0, min_retries_per_second=0.0)
    flaky = Flaky(5)
    with pytest.raises(ConnectionError) as caught:
        RetryPolicy(attempts=5, budget=no_room, hooks=(heard.append,)).bind(cb).call(flaky)
    assert (flaky.calls, attempts_of(caught.value)) == (1, 1)
    assert [(d.attempt, d.stopped_by) for d in heard] == [(1, "budget")]
    assert cb.snapshot().window_retries_refused == 1


def test_without_a_breaker_there_is_no_budget_to_ask() -> None:
    clock = ManualClock()
    flaky = Flaky(2)
    policy = RetryPolicy(budget=RetryBudget(ratio=0.0, min_retries_per_second=0.0))
    assert policy.bind(None, clock=clock).call(flaky) == "ok"
    assert flaky.calls == 3


def test_a_policy_decorates_without_a_breaker() -> None:
    calls = []

    @RetryPolicy(attempts=2)
    def once_down() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError
        return "ok"

    set_testing(True)
    try:
        assert once_down() == "ok"
    finally:
        set_testing(False)
    assert len(calls) == 2


def test_set_testing_removes_every_wait_of_the_system_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slept: list[float] = []
    monkeypatch.setattr("breaker._clock.time.sleep", slept.append)
    heard: list[RetryDetails] = []
    policy = RetryPolicy(attempts=3, backoff=30.0, hooks=(heard.append,))
    set_testing(True)
    try:
        with pytest.raises(ConnectionError):
            policy.call(Flaky(9))
    finally:
        set_testing(False)
    assert slept == []
    assert [d.delay is not None for d in heard] == [True, True, False]
    # And with the switch off, the same wait would have been slept.
    with pytest.raises(ConnectionError):
        RetryPolicy(attempts=2, backoff=30.0).call(Flaky(9))
    assert len(slept) == 1


# -- the same runner, awaited ------------------------------------------------------


def test_async_retries_until_success_through_the_breaker(async_harness: AsyncHarness) -> None:
    async def scenario() -> None:
        cb = async_harness.breaker(failure_threshold=NO_TRIP)
        calls = []

        @RetryPolicy(attempts=3).bind(cb)
        async def flaky() -> str:
            calls.append(1)
            if len(calls) < 3:
                raise ConnectionError
            return "ok"

        assert await flaky() == "ok"
        assert len(calls) == 3
        assert len(async_harness.clock.sleeps) == 2
        assert (await cb.asnapshot()).window_calls == 3

    async_harness.run(scenario)


def test_async_per_try_timeout_cuts_a_hung_attempt(async_harness: AsyncHarness) -> None:
    async def scenario() -> None:
        cb = async_harness.breaker(failure_threshold=NO_TRIP)
        calls = []

        async def hangs() -> None:
            calls.append(1)
            await asyncio.Event().wait()

        policy = RetryPolicy(attempts=2, per_try_timeout=0.05)
        with pytest.raises(TimeoutError) as caught:
            await policy.bind(cb).call(hangs)
        assert (len(calls), attempts_of(caught.value)) == (2, 2)
        assert (await cb.asnapshot()).window_failures == 2

    async_harness.run(scenario)


def test_async_open_breaker_stops_the_retrying_at_once(async_harness: AsyncHarness) -> None:
    async def scenario() -> None:
        cb = async_harness.breaker(failure_threshold=1)
        calls = []

        async def down() -> None:
            calls.append(1)
            raise ConnectionError

        with pytest.raises(CircuitOpenError):
            await RetryPolicy(attempts=5).bind(cb).call(down)
        # The failure that opened it is the last attempt: no wait follows it.
        assert (len(calls), async_harness.clock.sleeps) == (1, [])

    async_harness.run(scenario)


def test_async_budget_is_asked_on_the_asyncio_client(async_harness: AsyncHarness) -> None:
    async def scenario() -> None:
        cb = async_harness.breaker(failure_threshold=NO_TRIP)
        calls = []

        async def down() -> None:
            calls.append(1)
            raise ConnectionError

        no_room = RetryBudget(ratio=0.0, min_retries_per_second=0.0)
        with pytest.raises(ConnectionError):
            await RetryPolicy(attempts=3, budget=no_room).bind(cb).call(down)
        assert len(calls) == 1
        assert (await cb.asnapshot()).window_retries_refused == 1

    async_harness.run(scenario)


def test_a_breaker_on_a_sync_client_refuses_an_async_function(harness: Harness) -> None:
    if harness.kind != "redis":
        pytest.skip("the embedded backend serves both styles")
    cb: CircuitBreaker = harness.breaker(failure_threshold=NO_TRIP)

    async def fn() -> None:
        return None

    with pytest.raises(TypeError, match="sync Redis client"):
        asyncio.run(RetryPolicy().bind(cb).call(fn))
