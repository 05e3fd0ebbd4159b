"""The asyncio API, over an asyncio Redis client and the embedded backend."""

from __future__ import annotations

import asyncio

import pytest

from breaker import CircuitBreaker, CircuitOpenError
from tests.conftest import AsyncHarness

# Retry, fallback, permit and async behaviour is the same on every topology: Redis and
# the embedded backend only (the Lua and backend tests keep every topology).
pytestmark = pytest.mark.lanes("redis", "redis-async", "embedded")


async def fail(cb: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        with pytest.raises(ConnectionError):
            async with cb:
                raise ConnectionError


async def cancel_in_flight(cb: CircuitBreaker) -> None:
    """Start a call through ``cb`` that never finishes, then cancel it mid-flight."""
    started = asyncio.Event()

    async def hangs() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(cb.call(hangs))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_async_with_trips_and_rejects(async_harness: AsyncHarness) -> None:
    async def scenario() -> None:
        cb = async_harness.breaker(failure_threshold=2, reset_timeout=10.0)
        async with cb:
            pass
        await fail(cb, 2)
        with pytest.raises(CircuitOpenError) as rejected:
            async with cb:
                pass
        assert rejected.value.retry_after == pytest.approx(10.0)
        assert (await cb.asnapshot()).state == "open"

    async_harness.run(scenario)


def test_await_call_returns_the_coroutines_result(async_harness: AsyncHarness) -> None:
    async def double(x: int) -> int:
        return 2 * x

    async def scenario() -> None:
        cb = async_harness.breaker()
        assert await cb.call(double, 21) == 42

    async_harness.run(scenario)


def test_async_decorator_guards_a_coroutine_function(async_harness: AsyncHarness) -> None:
    async def scenario() -> None:
        cb = async_harness.breaker(failure_threshold=1)

        @cb
        async def upstream() -> str:
            raise ConnectionError

        with pytest.raises(ConnectionError):
            await upstream()
        with pytest.raises(CircuitOpenError):
            await upstream()

    async_harness.run(scenario)


def test_cancellation_counts_as_nothing(async_harness: AsyncHarness) -> None:
    async def scenario() -> None:
        cb = async_harness.breaker(failure_threshold=1)
        await cancel_in_flight(cb)
        snapshot = await cb.asnapshot()
        assert (snapshot.state, snapshot.window_calls, snapshot.failures) == ("closed", 0, 0)

    async_harness.run(scenario)


def test_a_cancelled_trial_gives_its_lease_back(async_harness: AsyncHarness) -> None:
    async def scenario() -> None:
        cb = async_harness.breaker(failure_threshold=1, reset_timeout=5.0)
        await fail(cb)
        async_harness.clock.advance(5.0)
        await cancel_in_flight(cb)
        assert (await cb.asnapshot()).half_open_leases == 0
        async with cb:  # the slot is free again: the next trial closes the breaker
            pass
        assert (await cb.asnapshot()).state == "closed"

    async_harness.run(scenario)


def test_concurrent_calls_through_one_breaker_run_concurrently(
    async_harness: AsyncHarness,
) -> None:
    async def scenario() -> None:
        cb = async_harness.breaker()
        inside = 0
        most_inside = 0
        all_in = asyncio.Event()

        async def upstream() -> None:
            nonlocal inside, most_inside
            inside += 1
            most_inside = max(most_inside, inside)
            if inside == 16:
                all_in.set()
            # Would deadlock if the breaker serialized calls: only 16 at once set it.
            await asyncio.wait_for(all_in.wait(), timeout=30)
            inside -= 1

        await asyncio.gather(*(cb.call(upstream) for _ in range(16)))
        assert most_inside == 16

    async_harness.run(scenario)


def test_operator_actions_have_async_twins(async_harness: AsyncHarness) -> None:
    async def scenario() -> None:
        cb = async_harness.breaker()
        await cb.aforce_open()
        assert (await cb.asnapshot()).state == "forced_open"
        await cb.adisable()
        assert (await cb.asnapshot()).state == "disabled"
        await cb.areset()
        assert (await cb.asnapshot()).state == "closed"

    async_harness.run(scenario)


def test_sync_use_of_an_asyncio_breaker_is_a_clear_type_error(redis_url: str) -> None:
    import redis.asyncio as aioredis

    cb = CircuitBreaker("p", redis=aioredis.Redis.from_url(redis_url))
    with pytest.raises(TypeError, match="async with"), cb:
        pass
