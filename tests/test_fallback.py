"""Fallbacks, on every backend: they answer only for the reasons they are given, are
never counted by the breaker, and a fallback that raises says so, chained to the error
it stood in for. Time is a ManualClock: no test waits."""

from __future__ import annotations

import asyncio
import traceback
from typing import Any

import httpx
import pytest
import redis

from breaker import (
    STOPPED_EXTENSION,
    BackendUnavailableError,
    BreakerListener,
    CircuitBreaker,
    CircuitOpenError,
    ConfigurationError,
    Fallback,
    FallbackError,
    FallbackReason,
    OutcomeEvent,
    ResilientTransport,
    RetryBudget,
    RetryPolicy,
)
from breaker.testing import ManualClock
from tests.conftest import AsyncHarness, Breakers, Harness
from tests.support.ports import free_port

# Retry, fallback, permit and async behaviour is the same on every topology: Redis and
# the embedded backend only (the Lua and backend tests keep every topology).
pytestmark = pytest.mark.lanes("redis", "redis-async", "embedded")

NO_WAIT = RetryPolicy(attempts=3, backoff=0, budget=None)


class Outcomes(BreakerListener, list[str]):
    """Every outcome the breaker counted, in order."""

    def outcome(self, event: OutcomeEvent) -> None:
        self.append(event.outcome)


def refused() -> str:
    raise ConnectionError("the upstream refused the connection")


def tripped(harness: Harness, **settings: Any) -> CircuitBreaker:
    cb = harness.breaker(failure_threshold=1, reset_timeout=30.0, **settings)
    with pytest.raises(ConnectionError):
        cb.call(refused)
    return cb


class Heard(list[FallbackReason]):
    """A fallback function: answers "cached", and keeps every reason it was given."""

    def __call__(self, reason: FallbackReason) -> str:
        self.append(reason)
        return "cached"


def told(reason: FallbackReason) -> str:
    """A fallback function that answers with why it answers."""
    return f"{reason.kind} after {reason.attempts}"


class Streamed(httpx.SyncByteStream):
    """A body still to be read, as from the network; it notes when it is closed."""

    closed = False

    def __iter__(self) -> Any:
        yield b"busy"

    def close(self) -> None:
        self.closed = True


# -- the breaker's call and decorator ------------------------------------------------


def test_an_open_breaker_answers_with_the_fallback_and_does_not_call(harness: Harness) -> None:
    cb = tripped(harness)
    called: list[str] = []
    assert cb.with_fallback("cached").call(called.append, "x") == "cached"
    assert called == []


def test_a_fallback_function_hears_why_it_answers(harness: Harness) -> None:
    cb = tripped(harness)
    heard = Heard()
    assert cb.with_fallback(heard).call(refused) == "cached"
    [reason] = heard
    assert (reason.kind, reason.name, reason.attempts) == ("open", "payments", None)
    assert isinstance(reason.error, CircuitOpenError)
    assert reason.retry_after == pytest.approx(30.0)


def test_a_fallback_is_never_counted_as_a_success_or_a_failure(harness: Harness) -> None:
    cb = tripped(harness)
    outcomes = Outcomes()
    cb.add_listener(outcomes)
    before = cb.snapshot()
    assert cb.with_fallback(lambda reason: "cached").call(refused) == "cached"
    after = cb.snapshot()
    assert outcomes == ["rejected"]
    assert (after.window_calls, after.window_failures) == (
        before.window_calls,
        before.window_failures,
    )


def test_by_default_an_error_of_the_call_is_raised_not_answered(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=5)
    with pytest.raises(ConnectionError):
        cb.with_fallback("cached").call(refused)


def test_a_fallback_on_error_answers_after_the_failure_is_counted(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=5)
    outcomes = Outcomes()
    cb.add_listener(outcomes)
    guarded = cb.with_fallback(Fallback("cached", on={"error"}))
    assert guarded.call(refused) == "cached"
    assert outcomes == ["failure"]
    assert cb.snapshot().failures == 1


def test_a_fallback_answers_backend_unavailable_only_when_given_it(breakers: Breakers) -> None:
    nobody = redis.Redis(port=free_port(), socket_connect_timeout=1)
    cb = breakers(
        "p", redis=nobody, clock=ManualClock(), on_backend_error="fail_closed", follow=False
    )
    with pytest.raises(BackendUnavailableError):
        cb.with_fallback("cached").call(refused)
    covered = cb.with_fallback(Fallback(lambda reason: reason.kind, on="backend_unavailable"))
    cb.clock.advance(60.0)  # type: ignore[attr-defined]  # past the backoff: Redis is asked
    assert covered.call(refused) == "backend_unavailable"
    nobody.close()


def test_call_hands_every_keyword_to_the_function_even_one_named_fallback(
    harness: Harness,
) -> None:
    cb = harness.breaker()

    def lookup(sku: str, *, fallback: str) -> str:
        return f"{sku}:{fallback}"

    assert cb.with_fallback("cached").call(lookup, "42", fallback="its own") == "42:its own"


def test_the_decorator_answers_an_open_breaker(harness: Harness) -> None:
    cb = tripped(harness)

    @cb.with_fallback(lambda reason: -1)
    def stock(sku: str) -> int:
        raise AssertionError("an open breaker must not call it")

    assert stock("42") == -1
    assert stock.__name__ == "stock"


def test_an_async_function_stays_async_and_its_fallback_is_awaited(
    async_harness: AsyncHarness,
) -> None:
    async def scenario() -> None:
        cb = async_harness.breaker(failure_threshold=1)

        async def answer(reason: FallbackReason) -> str:
            await asyncio.sleep(0)
            return f"cached ({reason.kind})"

        @cb.with_fallback(answer)
        async def stock() -> str:
            raise ConnectionError("down")

        assert asyncio.iscoroutinefunction(stock)
        with pytest.raises(ConnectionError):
            await stock()
        assert await stock() == "cached (open)"

    async_harness.run(scenario)


# -- a fallback that fails -----------------------------------------------------------


def test_a_fallback_that_raises_is_reported_chained_to_the_original(harness: Harness) -> None:
    cb = tripped(harness)

    def broken(reason: FallbackReason) -> str:
        return {"cached": "x"}["missing"]

    with pytest.raises(FallbackError) as failed:
        cb.with_fallback(broken).call(refused)
    error = failed.value
    assert str(error).startswith(
        "the fallback of 'payments' raised KeyError: 'missing'; it was answering for open: "
        "circuit 'payments' is open"
    )
    assert (error.name, error.kind) == ("payments", "open")
    assert isinstance(error.original, CircuitOpenError)
    assert isinstance(error.__cause__, KeyError)
    assert error.__cause__.__context__ is error.original
    printed = "".join(traceback.format_exception(error))
    assert (
        printed.index("CircuitOpenError")
        < printed.index("KeyError")
        < printed.index("FallbackError")
    )


def test_a_retriers_failing_fallback_is_chained_to_the_error_it_gave_up_on() -> None:
    def broken(reason: FallbackReason) -> str:
        raise RuntimeError("the cache is gone too")

    with pytest.raises(FallbackError) as failed:
        NO_WAIT.bind(None).with_fallback(broken).call(refused)
    assert failed.value.kind == "exhausted"
    assert isinstance(failed.value.original, ConnectionError)
    assert isinstance(failed.value.__cause__, RuntimeError)
    assert failed.value.__cause__.__context__ is failed.value.original


def test_an_async_fallback_cannot_answer_a_sync_call(harness: Harness) -> None:
    cb = tripped(harness)

    async def answer(reason: FallbackReason) -> str:
        return "cached"

    with pytest.raises(FallbackError) as failed:
        cb.with_fallback(answer).call(refused)
    assert isinstance(failed.value.__cause__, TypeError)
    assert "async fallback" in str(failed.value)


def test_a_fallback_that_raises_in_an_async_call_is_reported_too(
    async_harness: AsyncHarness,
) -> None:
    async def scenario() -> None:
        cb = async_harness.breaker(failure_threshold=1)

        async def down() -> str:
            raise ConnectionError("down")

        async def broken(reason: FallbackReason) -> str:
            raise LookupError("no cached copy")

        with pytest.raises(ConnectionError):
            await cb.call(down)
        with pytest.raises(FallbackError) as failed:
            await cb.with_fallback(broken).call(down)
        assert isinstance(failed.value.__cause__, LookupError)
        assert isinstance(failed.value.__cause__.__context__, CircuitOpenError)

    async_harness.run(scenario)


# -- the retrier ---------------------------------------------------------------------


def test_a_retrier_answers_when_retries_run_out_on_an_exception(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=10)
    heard = Heard()
    assert NO_WAIT.bind(cb).with_fallback(heard).call(refused) == "cached"
    [reason] = heard
    assert (reason.kind, reason.name, reason.attempts) == ("exhausted", "payments", 3)
    assert isinstance(reason.error, ConnectionError)
    assert cb.snapshot().failures == 3  # the attempts count; the answer does not


def test_a_retrier_answers_when_retries_run_out_on_a_result_and_closes_it(
    harness: Harness,
) -> None:
    cb = harness.breaker(failure_threshold=10)
    bodies: list[Streamed] = []

    def busy() -> httpx.Response | str:
        bodies.append(Streamed())
        return httpx.Response(503, stream=bodies[-1])

    heard = Heard()
    assert NO_WAIT.bind(cb).with_fallback(heard).call(busy) == "cached"
    [reason] = heard
    assert (reason.kind, reason.error, reason.attempts) == ("exhausted", None, 3)
    assert reason.result.status_code == 503
    assert all(body.closed for body in bodies)


def test_a_budget_refusal_is_exhausted_too(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=10)
    stingy = NO_WAIT.replace(budget=RetryBudget(ratio=0.01, min_retries_per_second=0.001))
    retrier = stingy.bind(cb).with_fallback(told)
    retrier.call(refused)  # spends the floor's token
    assert retrier.call(refused) == "exhausted after 1"  # its first retry is refused


def test_a_retrier_answers_a_breaker_that_opened_during_the_operation(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=2, reset_timeout=30.0)
    assert NO_WAIT.bind(cb).with_fallback(told).call(refused) == "open after 2"


def test_a_retrier_passes_on_what_it_did_not_give_up_on(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=10)
    retrier = NO_WAIT.bind(cb).with_fallback("cached")
    not_found = httpx.Response(404)
    assert retrier.call(lambda: not_found) is not_found

    def bug() -> str:
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError, match="a bug"):
        retrier.call(bug)


def test_an_async_retrier_awaits_its_fallback(async_harness: AsyncHarness) -> None:
    async def scenario() -> None:
        cb = async_harness.breaker(failure_threshold=10)

        async def down() -> str:
            raise TimeoutError("no answer")

        async def answer(reason: FallbackReason) -> str:
            return f"cached after {reason.attempts}"

        assert await NO_WAIT.bind(cb).with_fallback(answer).call(down) == "cached after 3"

    async_harness.run(scenario)


# -- around a client guarded by its transport ---------------------------------------


def cannot_connect(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


async def fetch(client: httpx.AsyncClient, url: str) -> str:
    response = await client.get(url)
    assert response.extensions[STOPPED_EXTENSION] == "attempts"
    return response.raise_for_status().text


def test_a_fallback_around_a_guarded_client_knows_its_retries_ran_out() -> None:
    unreachable = httpx.MockTransport(cannot_connect)
    busy = httpx.MockTransport(lambda request: httpx.Response(503))
    answer = Fallback(told)

    async def scenario() -> None:
        for inner, url in ((unreachable, "http://down.test/"), (busy, "http://busy.test/")):
            transport = ResilientTransport(inner, retry=NO_WAIT)
            async with httpx.AsyncClient(transport=transport) as client:
                assert await answer.call(fetch, client, url) == "exhausted after 3"

    asyncio.run(scenario())


def test_a_fallback_around_code_does_not_answer_an_error_nobody_gave_up_on() -> None:
    def broken() -> str:
        raise httpx.HTTPStatusError(
            "500", request=httpx.Request("GET", "http://x.test"), response=httpx.Response(500)
        )

    with pytest.raises(httpx.HTTPStatusError):
        Fallback("cached").call(broken)
    assert Fallback("cached", on={"error"}).call(broken) == "cached"


# -- the value -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("on", "problem"),
    [
        ({"opened"}, "unknown reason 'opened'"),
        ((), "must name at least one reason"),
        (3, "must be a set of reasons"),
    ],
)
def test_an_invalid_set_of_reasons_is_refused_naming_the_key(on: Any, problem: str) -> None:
    with pytest.raises(ConfigurationError) as refused_with:
        Fallback("cached", on=on)
    assert refused_with.value.field == "on"
    assert problem in str(refused_with.value)


def test_one_reason_may_be_given_alone() -> None:
    assert Fallback("cached", on="error").on == frozenset({"error"})
    assert Fallback("cached").on == frozenset({"open", "exhausted"})
