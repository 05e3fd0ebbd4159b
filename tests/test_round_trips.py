"""Redis round trips per guarded call, counted by the server (INFO commandstats).

Each test runs against a redis-server of its own, so nothing else moves the counts.
``commandstats`` also counts the commands a script runs inside Redis; those are not
round trips, so the commands the Lua sources call are left out of the count.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from breaker import CircuitBreaker, CircuitOpenError, RetryPolicy
from breaker.testing import ManualClock
from tests.conftest import Breakers
from tests.support.servers import RedisServer

LUA = Path(__file__).parent.parent / "lua"
_INSIDE_SCRIPTS = {
    name.lower()
    for path in LUA.glob("*.lua")
    for name in re.findall(r"redis\.call\('([A-Z]+)'", path.read_text())
}
# Not a guarded call's either: the counting itself and the events channel.
_NOT_CALLS = {"info", "subscribe", "ping", "client|setinfo", "hello"} | _INSIDE_SCRIPTS


def commands_during(server: RedisServer, action: Callable[[], object]) -> dict[str, int]:
    before = server.command_calls()
    action()
    after = server.command_calls()
    delta = {name: after[name] - before.get(name, 0) for name in after}
    return {name: n for name, n in delta.items() if n and name not in _NOT_CALLS}


def repeat(times: int, step: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        for _ in range(times):
            step()

    return run


def succeed(cb: CircuitBreaker) -> None:
    with cb:
        pass


def fail(cb: CircuitBreaker) -> None:
    try:
        with cb:
            raise ConnectionError
    except ConnectionError:
        pass


def reject(cb: CircuitBreaker) -> None:
    with pytest.raises(CircuitOpenError):
        succeed(cb)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def test_closed_success_costs_one_round_trip(
    breakers: Breakers, redis_server: RedisServer, clock: ManualClock
) -> None:
    cb = breakers("p", redis=redis_server.client(), clock=clock)
    succeed(cb)  # the first call of a process also asks acquire
    assert commands_during(redis_server, repeat(50, lambda: succeed(cb))) == {"evalsha": 50}


def test_a_success_that_changes_nothing_writes_only_ttls_inside_redis(
    breakers: Breakers, redis_server: RedisServer, clock: ManualClock
) -> None:
    """Server work, not round trips: no HSET of an unchanged state, and the window is
    read (to prune it) only by the first call of each bucket when no rate is set."""
    cb = breakers("p", redis=redis_server.client(), clock=clock)
    succeed(cb)
    before = redis_server.command_calls()
    repeat(20, lambda: succeed(cb))()
    after = redis_server.command_calls()
    ran = {name: after[name] - before.get(name, 0) for name in after}
    assert ran.get("hset", 0) == 0
    assert ran["hgetall"] == 20  # the state hash, once per call
    assert ran["hincrby"] == 20  # the window still counts every call
    assert ran["pexpire"] == 60  # every key's TTL is refreshed


def test_closed_failure_costs_one_round_trip(
    breakers: Breakers, redis_server: RedisServer, clock: ManualClock
) -> None:
    cb = breakers("p", redis=redis_server.client(), clock=clock, failure_threshold=100)
    succeed(cb)
    assert commands_during(redis_server, repeat(50, lambda: fail(cb))) == {"evalsha": 50}


def test_open_rejection_costs_nothing(
    breakers: Breakers, redis_server: RedisServer, clock: ManualClock
) -> None:
    cb = breakers("p", redis=redis_server.client(), clock=clock, failure_threshold=1)
    fail(cb)
    assert commands_during(redis_server, repeat(50, lambda: reject(cb))) == {}


def test_half_open_trial_costs_two_round_trips(
    breakers: Breakers, redis_server: RedisServer, clock: ManualClock
) -> None:
    cb = breakers("p", redis=redis_server.client(), clock=clock, failure_threshold=1)
    fail(cb)
    clock.advance(10.0)
    assert commands_during(redis_server, lambda: succeed(cb)) == {"evalsha": 2}


def test_batched_successes_cost_under_five_hundredths_per_call(
    breakers: Breakers, redis_server: RedisServer, clock: ManualClock
) -> None:
    cb = breakers("p", redis=redis_server.client(), clock=clock, batch_interval=0.05)
    succeed(cb)

    def thousand_calls_in_one_second() -> None:
        for _ in range(1000):
            succeed(cb)
            clock.advance(0.001)

    calls = commands_during(redis_server, thousand_calls_in_one_second)
    assert calls["evalsha"] / 1000 <= 0.05
    cb.flush()
    assert cb.snapshot().window_calls == 1001


def test_batched_successes_ride_along_with_the_next_failure(
    breakers: Breakers, redis_server: RedisServer, clock: ManualClock
) -> None:
    cb = breakers("p", redis=redis_server.client(), clock=clock, batch_interval=60.0)
    succeed(cb)
    fail(cb)
    assert commands_during(redis_server, repeat(10, lambda: succeed(cb))) == {}
    assert commands_during(redis_server, lambda: fail(cb)) == {"evalsha": 1}
    snapshot = cb.snapshot()
    assert (snapshot.window_calls, snapshot.window_failures) == (13, 2)
    # The ten successes came after the first failure: the streak restarted at them.
    assert snapshot.failures == 1


def test_after_script_flush_one_call_reloads_and_succeeds(
    breakers: Breakers, redis_server: RedisServer, clock: ManualClock
) -> None:
    cb = breakers("p", redis=redis_server.client(), clock=clock)
    succeed(cb)
    redis_server.client().script_flush()
    assert commands_during(redis_server, lambda: succeed(cb)) == {
        "evalsha": 2,
        "script|load": 1,
    }


def test_async_closed_success_costs_one_round_trip(
    breakers: Breakers, redis_server: RedisServer, clock: ManualClock
) -> None:
    async def scenario() -> dict[str, int]:
        client = aioredis.Redis.from_url(redis_server.url)
        cb = CircuitBreaker("p", redis=client, clock=clock)
        async with cb:
            pass
        before = redis_server.command_calls()
        for _ in range(20):
            async with cb:
                pass
        after = redis_server.command_calls()
        await client.aclose()
        return {k: after[k] - before.get(k, 0) for k in after if k not in _NOT_CALLS}

    delta = asyncio.run(scenario())
    assert {k: v for k, v in delta.items() if v} == {"evalsha": 20}


def test_a_retried_call_that_succeeds_at_once_costs_no_more(
    breakers: Breakers, redis_server: RedisServer, clock: ManualClock
) -> None:
    cb = breakers("p", redis=redis_server.client(), clock=clock)
    retrier = RetryPolicy().bind(cb)
    succeed(cb)
    assert commands_during(redis_server, repeat(50, lambda: retrier.call(lambda: None))) == {
        "evalsha": 50
    }


def test_a_retry_costs_one_budget_round_trip(
    breakers: Breakers, redis_server: RedisServer, clock: ManualClock
) -> None:
    cb = breakers("p", redis=redis_server.client(), clock=clock, failure_threshold=100)
    retrier = RetryPolicy(attempts=2).bind(cb)
    succeed(cb)

    def fails_once() -> Callable[[], None]:
        calls = []

        def call() -> None:
            calls.append(1)
            if len(calls) == 1:
                raise ConnectionError

        return call

    retrier.call(fails_once())  # loads the budget script
    # record the failure, ask the budget, record the success.
    assert commands_during(redis_server, lambda: retrier.call(fails_once())) == {"evalsha": 3}
