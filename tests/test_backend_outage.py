"""Redis unreachable: the policy decides, no raw redis exception escapes, and a dead
Redis is left alone while it is down. Every fault here is real: a redis-server of the
test's own is SIGKILLed, or a server that never answers stands in for a hung Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from breaker import BackendUnavailableError, BreakerListener, CircuitBreaker, CircuitOpenError
from breaker._store.connections import BackendHealth
from breaker.testing import ManualClock
from tests.conftest import Breakers
from tests.support.servers import BlackHole, RedisServer
from tests.test_round_trips import commands_during, fail, succeed


class Errors(BreakerListener, list[str]):
    """The reasons of the Redis errors it heard."""

    def backend_error(self, reason: str) -> None:
        self.append(reason)


class Subscriptions(BreakerListener, list[str]):
    """The channels its breaker's follower subscribed to, once per subscription."""

    def subscribed(self, channel: str) -> None:
        self.append(channel)

    def reach(self, count: int, within: float = 5.0) -> int:
        """Wait (bounded) until the follower has subscribed ``count`` times in all;
        returns how many times it has."""
        deadline = time.monotonic() + within
        while len(self) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(self)


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


def dead_redis_breaker(breakers: Breakers, server: RedisServer, **settings: Any) -> CircuitBreaker:
    """A breaker that has used ``server``, which is then SIGKILLed. Time is a
    ManualClock: the backoff after a failure lasts until the test moves it."""
    cb = breakers("p", redis=server.client(), clock=ManualClock(), **settings)
    succeed(cb)
    server.kill()
    return cb


def test_fail_open_lets_calls_through_while_redis_is_dead(
    breakers: Breakers, redis_server: RedisServer
) -> None:
    cb = dead_redis_breaker(breakers, redis_server, reset_timeout=0.001)
    results = [cb.call(lambda: "served") for _ in range(5)]
    assert results == ["served"] * 5


def test_fallback_breaker_still_trips_on_a_dead_upstream(
    breakers: Breakers, redis_server: RedisServer
) -> None:
    cb = dead_redis_breaker(breakers, redis_server, failure_threshold=3)
    for _ in range(3):  # the clock stands still: Redis stays in backoff, the fallback decides
        fail(cb)
    with pytest.raises(CircuitOpenError):
        succeed(cb)


def test_fail_closed_raises_backend_unavailable_without_calling(
    breakers: Breakers, redis_server: RedisServer
) -> None:
    cb = dead_redis_breaker(
        breakers, redis_server, on_backend_error="fail_closed", reset_timeout=0.001
    )
    cb.clock.advance(1.0)  # type: ignore[attr-defined]  # the closed view is no longer trusted
    called: list[int] = []
    with pytest.raises(BackendUnavailableError) as refused:
        cb.call(called.append, 1)
    assert called == []
    assert refused.value.name == "p"
    assert isinstance(refused.value.__cause__, redis.ConnectionError)


def test_fail_closed_asks_redis_before_the_next_call_once_redis_has_failed(
    breakers: Breakers, redis_server: RedisServer
) -> None:
    """A record that failed makes the view suspect: past the backoff, the next call
    asks Redis (and is refused) instead of trusting the closed view. Redis is paused
    for writes, not killed, so the events channel stays up: the failure is the
    record's alone."""
    cb = breakers(
        "p",
        redis=redis_server.client(),
        clock=ManualClock(),
        on_backend_error="fail_closed",
        reset_timeout=300,
        backend_timeout=0.2,
    )
    assert cb.follow_events(timeout=5.0)
    succeed(cb)  # the view: closed, trusted for 300 s
    admin = redis_server.client()
    admin.client_pause(10_000, all=False)  # writes only
    try:
        called: list[int] = []
        cb.call(called.append, 1)  # the closed view admits it; its record times out
        cb.clock.advance(10.0)  # type: ignore[attr-defined]  # past any backoff, not the view's trust
        assert cb.following  # nothing else told it
        with pytest.raises(BackendUnavailableError):
            cb.call(called.append, 2)
        assert called == [1]
    finally:
        admin.client_unpause()
        admin.close()


def test_operator_actions_raise_breaker_errors_not_redis_errors(
    breakers: Breakers, redis_server: RedisServer
) -> None:
    cb = dead_redis_breaker(breakers, redis_server)
    for action in (cb.reset, cb.force_open, cb.disable, cb.snapshot):
        with pytest.raises(BackendUnavailableError):
            action()


def test_a_hung_redis_costs_a_call_at_most_the_backend_timeout(
    breakers: Breakers, black_hole: BlackHole
) -> None:
    client = redis.Redis(port=black_hole.port)
    cb = breakers("p", redis=client, clock=ManualClock(), backend_timeout=0.1, follow=False)
    reasons = Errors()
    cb.add_listener(reasons)
    started = time.monotonic()
    assert cb.call(lambda: "served") == "served"
    # A hang check, not a speed check: redis-py's defaults would take about a minute.
    assert time.monotonic() - started < 5.0
    assert "Timeout" in reasons[0]


def test_a_dead_redis_is_left_alone_during_the_backoff(
    breakers: Breakers, black_hole: BlackHole
) -> None:
    client = redis.Redis(port=black_hole.port)
    clock = ManualClock()
    cb = breakers("p", redis=client, clock=clock, backend_timeout=0.1, follow=False)
    succeed(cb)
    tried = black_hole.wait_accepted(1)
    for _ in range(20):
        succeed(cb)
    assert black_hole.accepted == tried
    clock.advance(0.2)  # the first backoff is at most 0.1 s: one probe again
    succeed(cb)
    assert black_hole.wait_accepted(tried + 1) == tried + 1


def test_backoff_grows_with_consecutive_failures_and_is_capped() -> None:
    health = BackendHealth()
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]  # probed at least once a second
    now = 0.0
    for low, high in ((ceiling / 2, ceiling) for ceiling in ceilings):
        health.failed("down", now)
        assert health.is_down(now + low - 1e-9)  # down for at least half the ceiling
        assert not health.is_down(now + high)  # and at most the ceiling
        now += 100.0
    epoch = health.epoch
    health.succeeded()
    assert not health.is_down(now)
    assert health.epoch == epoch + 1  # back: every view taken before is distrusted


def test_state_resyncs_from_redis_when_it_returns(
    breakers: Breakers, redis_server: RedisServer
) -> None:
    cb = dead_redis_breaker(breakers, redis_server, failure_threshold=2)
    fail(cb)
    fail(cb)  # the fallback breaker opens
    with pytest.raises(CircuitOpenError):
        succeed(cb)
    redis_server.start()  # back, empty, on the same port
    cb.clock.advance(10.0)  # type: ignore[attr-defined]  # past the backoff and the open time
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
        await cb.aclose()
        await client.aclose()
        return results

    assert asyncio.run(scenario()) == ["served"] * 3


def test_a_redis_restarted_empty_is_followed_although_generations_restart(
    breakers: Breakers, redis_server: RedisServer
) -> None:
    clock = ManualClock()
    cb = breakers("p", redis=redis_server.client(), clock=clock, failure_threshold=2, follow=False)
    subscriptions = Subscriptions()
    cb.add_listener(subscriptions)
    assert cb.follow_events(timeout=5.0)
    for _ in range(3):  # the process's view reaches generation 6
        fail(cb)
        fail(cb)
        cb.reset()
    redis_server.kill()
    redis_server.start()  # back, empty: its next breaker hash starts at generation 0
    # The follower is back too (its loss and its return each distrust the view: once
    # both are behind, what follows is what this test is about).
    assert subscriptions.reach(2) == 2
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


def test_an_async_breaker_replaces_connections_a_restarted_redis_closed(
    redis_server: RedisServer,
) -> None:
    """The connections a breaker keeps idle are dead once Redis restarts: each is
    found closed before anything is sent on it, so no call after the restart fails."""

    async def scenario() -> tuple[list[str], str]:
        client = aioredis.Redis.from_url(redis_server.url)
        clock = ManualClock()
        # Not a test of timeouts: a loaded machine must not fail the calls before.
        cb = CircuitBreaker(
            "p", redis=client, clock=clock, failure_threshold=2, backend_timeout=5.0
        )
        errors = Errors()

        async def upstream() -> str:
            return "served"

        await asyncio.gather(*(cb.call(upstream) for _ in range(4)))  # several idle
        cb.add_listener(errors)  # from here on: the restart
        # Off the loop, as a restart happens: the loop sees each connection closed.
        await asyncio.to_thread(redis_server.kill)
        await asyncio.to_thread(redis_server.start)
        clock.advance(60.0)  # the closed view is no longer trusted: each call asks
        results = [await cb.call(upstream) for _ in range(4)]
        snapshot = await cb.asnapshot()
        await cb.aclose()
        await client.aclose()
        return results + errors, f"{snapshot.backend} {snapshot.window_calls}"

    assert asyncio.run(scenario()) == (["served"] * 4, "redis 4")


def test_backend_error_listener_hears_each_failure_once(
    breakers: Breakers, redis_server: RedisServer
) -> None:
    client = redis_server.client()
    clock = ManualClock()
    first = breakers("a", redis=client, clock=clock, reset_timeout=0.001)
    second = breakers("b", redis=client, clock=ManualClock())
    reasons = Errors()
    first.add_listener(reasons)
    second.add_listener(reasons)  # same backend, same listener
    succeed(first)
    redis_server.kill()
    clock.advance(1.0)  # the closed view is no longer trusted: the next call asks Redis
    succeed(first)
    assert len(reasons) == 1
    assert "ConnectionError" in reasons[0]


def test_a_view_is_read_again_after_its_follower_resubscribes(
    breakers: Breakers, redis_server: RedisServer
) -> None:
    """Events published while the follower was away are lost: once it is back, the
    next call asks Redis instead of trusting what the view held."""
    cb = breakers("p", redis=redis_server.client(), failure_threshold=5, follow=False)
    subscriptions = Subscriptions()
    cb.add_listener(subscriptions)
    assert cb.follow_events(timeout=5.0)
    succeed(cb)  # the view: closed, trusted
    assert commands_during(redis_server, lambda: succeed(cb)) == {"fcall": 1}
    redis_server.client().client_kill_filter(_type="pubsub")
    assert subscriptions.reach(2) == 2
    assert commands_during(redis_server, lambda: succeed(cb)) == {"fcall": 2}  # acquire too
    assert commands_during(redis_server, lambda: succeed(cb)) == {"fcall": 1}


@pytest.mark.parametrize("batch_interval", [None, 0.05])
def test_fail_closed_lets_nothing_through_unasked_once_its_follower_lost_redis(
    breakers: Breakers, redis_server: RedisServer, batch_interval: float | None
) -> None:
    """A process that made no call since Redis died still holds a closed view it
    trusts (for ``reset_timeout``). Its follower lost the channel, though: from then
    on, the next call asks Redis, finds it dead, and is refused without calling."""
    cb = breakers(
        "p",
        redis=redis_server.client(),
        on_backend_error="fail_closed",
        reset_timeout=300,
        batch_interval=batch_interval,
    )
    assert cb.follow_events(timeout=5.0)
    succeed(cb)  # the view: closed, trusted for 300 s
    redis_server.kill()
    deadline = time.monotonic() + 5.0
    while cb.following and time.monotonic() < deadline:  # bounded: the kernel closes its socket
        time.sleep(0.01)
    assert not cb.following
    called: list[int] = []
    with pytest.raises(BackendUnavailableError):
        cb.call(called.append, 1)
    assert called == []


@pytest.mark.parametrize(
    ("policy", "instead"),
    [
        ("fail_open", "deciding its calls in this process alone"),
        ("fail_closed", "refusing its calls (on_backend_error=fail_closed)"),
    ],
)
def test_an_unreachable_redis_is_one_warning_naming_the_breaker_then_one_line_when_back(
    breakers: Breakers,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
    policy: str,
    instead: str,
) -> None:
    cb = dead_redis_breaker(breakers, redis_server, on_backend_error=policy)
    clock = cb.clock
    assert isinstance(clock, ManualClock)
    with caplog.at_level("INFO", logger="breaker"):
        for _ in range(3):
            clock.advance(2.0)  # past each backoff: every call probes Redis again
            with contextlib.suppress(BackendUnavailableError):
                succeed(cb)
        redis_server.start()  # back, on the same port
        clock.advance(2.0)
        succeed(cb)
    lines = [
        (r.levelname, r.getMessage())
        for r in caplog.records
        if r.getMessage().startswith("breaker p:")
    ]
    assert len(lines) == 2, lines
    (warned, warning), (told, back) = lines
    assert warned == "WARNING"
    assert warning.startswith("breaker p: Redis is unreachable: ")
    assert instead in warning
    assert warning.endswith("until Redis answers")
    assert told == "INFO"
    assert back.startswith("breaker p: Redis answers again after ")
