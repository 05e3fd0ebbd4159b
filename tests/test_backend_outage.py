"""Redis unreachable: the policy decides, no raw redis exception escapes, and a dead
Redis is left alone while it is down. Every fault here is real: a redis-server of the
test's own is SIGKILLed, or a server that never answers stands in for a hung Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from breaker import BackendUnavailableError, CircuitBreaker, CircuitOpenError
from breaker.testing import ManualClock
from tests.support.servers import BlackHole, RedisServer
from tests.test_round_trips import commands_during, fail, succeed


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


def dead_redis_breaker(server: RedisServer, **settings: object) -> CircuitBreaker:
    cb = CircuitBreaker("p", redis=server.client(), clock=ManualClock(), **settings)  # type: ignore[arg-type]
    succeed(cb)
    server.kill()
    return cb


def test_fail_open_lets_calls_through_while_redis_is_dead(redis_server: RedisServer) -> None:
    cb = dead_redis_breaker(redis_server, reset_timeout=0.001)
    results = [cb.call(lambda: "served") for _ in range(5)]
    assert results == ["served"] * 5


def test_fallback_breaker_still_trips_on_a_dead_upstream(redis_server: RedisServer) -> None:
    cb = dead_redis_breaker(redis_server, failure_threshold=3)
    cb._backend.health.clock = ManualClock().monotonic  # stay in backoff: use the fallback
    for _ in range(3):
        fail(cb)
    with pytest.raises(CircuitOpenError):
        succeed(cb)


def test_fail_closed_raises_backend_unavailable_without_calling(
    redis_server: RedisServer,
) -> None:
    cb = dead_redis_breaker(redis_server, on_backend_error="fail_closed", reset_timeout=0.001)
    cb._core.view = None  # forget the closed view: the next call must ask Redis
    called: list[int] = []
    with pytest.raises(BackendUnavailableError) as refused:
        cb.call(called.append, 1)
    assert called == []
    assert refused.value.name == "p"
    assert isinstance(refused.value.__cause__, redis.ConnectionError)


def test_fail_closed_asks_redis_before_the_next_call_once_redis_has_failed(
    redis_server: RedisServer,
) -> None:
    cb = dead_redis_breaker(redis_server, on_backend_error="fail_closed", reset_timeout=300)
    health_clock = ManualClock()
    cb._backend.health.clock = health_clock.monotonic
    called: list[int] = []
    cb.call(called.append, 1)  # the closed view admits it; its record finds Redis dead
    health_clock.advance(10.0)  # past any backoff: the closed view would admit again
    with pytest.raises(BackendUnavailableError):
        cb.call(called.append, 2)
    assert called == [1]


def test_operator_actions_raise_breaker_errors_not_redis_errors(
    redis_server: RedisServer,
) -> None:
    cb = dead_redis_breaker(redis_server)
    for action in (cb.reset, cb.force_open, cb.disable, cb.snapshot):
        with pytest.raises(BackendUnavailableError):
            action()


def test_a_hung_redis_costs_a_call_at_most_the_backend_timeout(black_hole: BlackHole) -> None:
    client = redis.Redis(port=black_hole.port)
    cb = CircuitBreaker("p", redis=client, clock=ManualClock(), backend_timeout=0.1)
    started = time.monotonic()
    assert cb.call(lambda: "served") == "served"
    # A hang check, not a speed check: redis-py's defaults would take about a minute.
    assert time.monotonic() - started < 5.0
    assert "Timeout" in cb._backend.health.last_error


def test_a_dead_redis_is_left_alone_during_the_backoff(black_hole: BlackHole) -> None:
    client = redis.Redis(port=black_hole.port)
    cb = CircuitBreaker("p", redis=client, clock=ManualClock(), backend_timeout=0.1)
    health_clock = ManualClock()
    cb._backend.health.clock = health_clock.monotonic
    succeed(cb)
    tried = black_hole.wait_accepted(1)
    for _ in range(20):
        succeed(cb)
    assert black_hole.accepted == tried
    health_clock.advance(0.2)  # the first backoff is at most 0.1 s: one probe again
    succeed(cb)
    assert black_hole.wait_accepted(tried + 1) == tried + 1


def test_backoff_grows_with_consecutive_failures_and_is_capped() -> None:
    from breaker._backend import BackendHealth

    clock = ManualClock(start=0.0)
    health = BackendHealth(clock=clock.monotonic)
    ceilings = []
    for _ in range(10):
        health.failed("down")
        down_for = health._down_until - clock.monotonic()
        ceilings.append(down_for)
    assert 0.05 <= ceilings[0] <= 0.1
    assert 0.1 <= ceilings[1] <= 0.2
    assert all(2.5 <= down_for <= 5.0 for down_for in ceilings[7:])
    health.succeeded()
    assert not health.is_down()


def test_state_resyncs_from_redis_when_it_returns(redis_server: RedisServer) -> None:
    cb = dead_redis_breaker(redis_server, failure_threshold=2)
    health_clock = ManualClock()
    cb._backend.health.clock = health_clock.monotonic
    fail(cb)
    fail(cb)  # the fallback breaker opens
    with pytest.raises(CircuitOpenError):
        succeed(cb)
    redis_server.start()  # back, empty, on the same port
    health_clock.advance(10.0)
    succeed(cb)  # Redis says closed: its state wins again
    snapshot = cb.snapshot()
    assert (snapshot.backend, snapshot.state, snapshot.window_calls) == ("redis", "closed", 1)


def test_async_fail_open_lets_calls_through_while_redis_is_dead(
    redis_server: RedisServer,
) -> None:
    async def scenario() -> list[str]:
        client = aioredis.Redis.from_url(redis_server.url)
        cb = CircuitBreaker("p", redis=client, clock=ManualClock(), reset_timeout=0.001)
        async with cb:
            pass
        redis_server.kill()

        async def upstream() -> str:
            return "served"

        results = [await cb.call(upstream) for _ in range(3)]
        await client.aclose()
        return results

    assert asyncio.run(scenario()) == ["served"] * 3


def test_a_redis_restarted_empty_is_followed_although_generations_restart(
    redis_server: RedisServer,
) -> None:
    clock = ManualClock()
    cb = CircuitBreaker("p", redis=redis_server.client(), clock=clock, failure_threshold=2)
    for _ in range(3):  # the process's view reaches generation 6
        fail(cb)
        fail(cb)
        cb.reset()
    redis_server.kill()
    redis_server.start()  # back, empty: its next breaker hash starts at generation 0
    cb._backend.health.clock = ManualClock().monotonic
    clock.advance(60.0)  # the closed view is no longer trusted
    fail(cb)
    fail(cb)
    snapshot = cb.snapshot()
    assert (snapshot.state, snapshot.window_failures) == ("open", 2)

    def rejected() -> None:
        with pytest.raises(CircuitOpenError):
            succeed(cb)

    # The process follows the new hash: it knows open_until, so rejecting is free.
    assert commands_during(redis_server, rejected) == {}


def test_backend_error_listener_hears_each_failure_once(redis_server: RedisServer) -> None:
    client = redis_server.client()
    first = CircuitBreaker("a", redis=client, clock=ManualClock(), reset_timeout=0.001)
    second = CircuitBreaker("b", redis=client, clock=ManualClock())
    reasons: list[str] = []
    first.add_backend_error_listener(reasons.append)
    second.add_backend_error_listener(reasons.append)  # same backend, same listener
    succeed(first)
    redis_server.kill()
    first._core.view = None  # the next call must ask Redis
    succeed(first)
    assert len(reasons) == 1
    assert "ConnectionError" in reasons[0]
