"""Redis round trips per guarded call, counted by the server (INFO commandstats).

Each test runs against a redis-server of its own, so nothing else moves the counts.
``commandstats`` also counts the commands a script runs inside Redis; those are not
round trips, so the commands the Lua sources call are left out of the count.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from breaker import CircuitBreaker, CircuitOpenError, RetryPolicy
from breaker._types import ScriptMode
from breaker.testing import ManualClock
from tests.conftest import Breakers, afollowing
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


@dataclass(frozen=True)
class Mode:
    """How Redis runs the library, and the command a round trip then is."""

    script_mode: ScriptMode
    command: str


@pytest.fixture(
    params=[Mode("functions", "fcall"), Mode("eval", "evalsha")], ids=["functions", "eval"]
)
def mode(request: pytest.FixtureRequest) -> Mode:
    made: Mode = request.param
    return made


def test_closed_success_costs_one_round_trip(
    breakers: Breakers, redis_server: RedisServer, clock: ManualClock, mode: Mode
) -> None:
    cb = breakers("p", redis=redis_server.client(), clock=clock, script_mode=mode.script_mode)
    succeed(cb)  # the first call of a process also asks acquire
    assert commands_during(redis_server, repeat(50, lambda: succeed(cb))) == {mode.command: 50}


def test_a_success_that_changes_nothing_reads_one_hash_and_counts_once(
    breakers: Breakers, redis_server: RedisServer, clock: ManualClock, mode: Mode
) -> None:
    """Server work, not round trips: a fast success in a healthy closed breaker reads
    the fields it needs and increments one counter; no HSET of an unchanged state, and
    the TTLs and the window's pruning wait for the next bucket."""
    cb = breakers("p", redis=redis_server.client(), clock=clock, script_mode=mode.script_mode)
    succeed(cb)  # the first call of this bucket refreshed the TTLs
    before = redis_server.command_calls()
    repeat(20, lambda: succeed(cb))()
    after = redis_server.command_calls()
    ran = {name: after[name] - before.get(name, 0) for name in after if name in _INSIDE_SCRIPTS}
    assert {name: n for name, n in ran.items() if n} == {"hmget": 20, "hincrby": 20}


def test_ttls_are_refreshed_once_a_bucket_and_outlive_the_last_write_by_at_most_one(
    breakers: Breakers, redis_server: RedisServer, clock: ManualClock, mode: Mode
) -> None:
    cb = breakers(
        "p",
        redis=redis_server.client(),
        clock=clock,
        script_mode=mode.script_mode,
        key_ttl=60.0,
        window_bucket=5.0,
        window=10.0,
    )
    client = redis_server.client()
    succeed(cb)
    before = redis_server.command_calls().get("pexpire", 0)
    for _ in range(4):  # 4 buckets of 5 s, 3 calls in each
        for _ in range(3):
            succeed(cb)
        clock.advance(5.0)
    assert redis_server.command_calls()["pexpire"] - before == 3 * 3  # 3 keys, 3 new buckets
    # The last write was in the current bucket, whose first call refreshed every key:
    # no key outlives it by more than key_ttl (+ one bucket, at most).
    for key in cb.keys.as_list()[:2]:
        assert 0 < client.pttl(key) <= 60_000
    client.close()


def test_closed_failure_costs_one_round_trip(
    breakers: Breakers, redis_server: RedisServer, clock: ManualClock, mode: Mode
) -> None:
    cb = breakers(
        "p",
        redis=redis_server.client(),
        clock=clock,
        script_mode=mode.script_mode,
        failure_threshold=100,
    )
    succeed(cb)
    assert commands_during(redis_server, repeat(50, lambda: fail(cb))) == {mode.command: 50}


def test_open_rejection_costs_nothing(
    breakers: Breakers, redis_server: RedisServer, clock: ManualClock, mode: Mode
) -> None:
    cb = breakers(
        "p",
        redis=redis_server.client(),
        clock=clock,
        script_mode=mode.script_mode,
        failure_threshold=1,
    )
    fail(cb)
    assert commands_during(redis_server, repeat(50, lambda: reject(cb))) == {}


def test_half_open_trial_costs_two_round_trips(
    breakers: Breakers, redis_server: RedisServer, clock: ManualClock, mode: Mode
) -> None:
    cb = breakers(
        "p",
        redis=redis_server.client(),
        clock=clock,
        script_mode=mode.script_mode,
        failure_threshold=1,
    )
    fail(cb)
    clock.advance(10.0)
    assert commands_during(redis_server, lambda: succeed(cb)) == {mode.command: 2}


def test_batched_successes_cost_under_five_hundredths_per_call(
    breakers: Breakers, redis_server: RedisServer, clock: ManualClock, mode: Mode
) -> None:
    cb = breakers(
        "p",
        redis=redis_server.client(),
        clock=clock,
        script_mode=mode.script_mode,
        batch_interval=0.05,
    )
    succeed(cb)

    def thousand_calls_in_one_second() -> None:
        for _ in range(1000):
            succeed(cb)
            clock.advance(0.001)

    calls = commands_during(redis_server, thousand_calls_in_one_second)
    assert calls[mode.command] / 1000 <= 0.05
    cb.flush()
    assert cb.snapshot().window_calls == 1001


def test_batched_successes_ride_along_with_the_next_failure(
    breakers: Breakers, redis_server: RedisServer, clock: ManualClock, mode: Mode
) -> None:
    cb = breakers(
        "p",
        redis=redis_server.client(),
        clock=clock,
        script_mode=mode.script_mode,
        batch_interval=60.0,
    )
    succeed(cb)
    fail(cb)
    assert commands_during(redis_server, repeat(10, lambda: succeed(cb))) == {}
    assert commands_during(redis_server, lambda: fail(cb)) == {mode.command: 1}
    snapshot = cb.snapshot()
    assert (snapshot.window_calls, snapshot.window_failures) == (13, 2)
    # The ten successes came after the first failure: the streak restarted at them.
    assert snapshot.failures == 1


def test_after_script_flush_one_call_reloads_and_succeeds(
    breakers: Breakers, redis_server: RedisServer, clock: ManualClock, mode: Mode
) -> None:
    cb = breakers("p", redis=redis_server.client(), clock=clock, script_mode=mode.script_mode)
    succeed(cb)
    if mode.script_mode == "eval":
        redis_server.client().script_flush()
        loaded = {"script|load": 1}
    else:
        redis_server.client().function_flush()
        loaded = {"function|load": 1}
    assert commands_during(redis_server, lambda: succeed(cb)) == {mode.command: 2, **loaded}


def test_async_closed_success_costs_one_round_trip(
    breakers: Breakers, redis_server: RedisServer, clock: ManualClock, mode: Mode
) -> None:
    async def scenario() -> dict[str, int]:
        client = aioredis.Redis.from_url(redis_server.url)
        cb = CircuitBreaker("p", redis=client, clock=clock, script_mode=mode.script_mode)
        async with cb:
            pass
        await afollowing(cb)  # its closed view decides alone from now on
        before = redis_server.command_calls()
        for _ in range(20):
            async with cb:
                pass
        after = redis_server.command_calls()
        await cb.aclose()
        await client.aclose()
        return {k: after[k] - before.get(k, 0) for k in after if k not in _NOT_CALLS}

    delta = asyncio.run(scenario())
    assert {k: v for k, v in delta.items() if v} == {mode.command: 20}


def test_a_retried_call_that_succeeds_at_once_costs_no_more(
    breakers: Breakers, redis_server: RedisServer, clock: ManualClock, mode: Mode
) -> None:
    cb = breakers("p", redis=redis_server.client(), clock=clock, script_mode=mode.script_mode)
    retrier = RetryPolicy().bind(cb)
    succeed(cb)
    assert commands_during(redis_server, repeat(50, lambda: retrier.call(lambda: None))) == {
        mode.command: 50
    }


def test_a_retry_costs_one_budget_round_trip(
    breakers: Breakers, redis_server: RedisServer, clock: ManualClock, mode: Mode
) -> None:
    cb = breakers(
        "p",
        redis=redis_server.client(),
        clock=clock,
        script_mode=mode.script_mode,
        failure_threshold=100,
    )
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
    assert commands_during(redis_server, lambda: retrier.call(fails_once())) == {mode.command: 3}


def test_batched_successes_reach_redis_on_time_without_another_call(
    breakers: Breakers, redis_server: RedisServer
) -> None:
    """The events follower flushes a batch once it is due: a quiet process does not
    keep its counts (within the interval, and a poll of the follower)."""
    clock = ManualClock()
    cb = breakers("p", redis=redis_server.client(), clock=clock, batch_interval=0.05)
    assert cb.follow_events(timeout=5.0)
    for _ in range(4):
        succeed(cb)  # counted in the process (the first asked Redis only to admit)
    assert cb.snapshot().window_calls == 0
    clock.advance(0.05)
    deadline = time.monotonic() + 5.0
    while cb.snapshot().window_calls != 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cb.snapshot().window_calls == 4


def test_async_batched_successes_reach_redis_on_time_without_another_call(
    redis_server: RedisServer, clock: ManualClock
) -> None:
    async def scenario() -> int:
        client = aioredis.Redis.from_url(redis_server.url)
        cb = CircuitBreaker("p", redis=client, clock=clock, batch_interval=0.05)
        cb.follow_events()
        for _ in range(4):
            async with cb:
                pass
        clock.advance(0.05)
        calls = 0
        for _ in range(500):  # bounded: 5 s
            calls = (await cb.asnapshot()).window_calls
            if calls == 4:
                break
            await asyncio.sleep(0.01)
        await cb.aclose()
        await client.aclose()
        return calls

    assert asyncio.run(scenario()) == 4


def test_rejections_reach_redis_within_a_second_without_another_call(
    breakers: Breakers, redis_server: RedisServer
) -> None:
    """While a breaker is open, each process reports its rejections at most once a
    second; the periodic flush sends what is due even when no call comes, so the
    admin view's count equals the clients' within that second (and a poll)."""
    clock = ManualClock()
    made = [
        breakers(
            "p",
            redis=redis_server.client(),
            clock=clock,
            batch_interval=0.05,
            failure_threshold=1,
            reset_timeout=60,
        )
        for _ in range(2)
    ]  # two processes' breakers, each with its own view and counts
    for cb in made:
        assert cb.follow_events(timeout=5.0)
    fail(made[0])
    rejected = 0
    for cb in made:
        for _ in range(6):
            reject(cb)
            rejected += 1
    clock.advance(1.0)  # every report is due now; no call follows
    deadline = time.monotonic() + 5.0
    while made[0].snapshot().window_rejections != rejected and time.monotonic() < deadline:
        time.sleep(0.01)
    assert made[0].snapshot().window_rejections == rejected
