"""Transitions are published on <prefix>:events (<prefix>:events:db<N> on db N), and
other processes' views follow them, once Redis confirms what the channel said.

A breaker on a second client has a backend (and events subscriber) of its own, as a
breaker in another process has; the OS-process version is in test_fleet_processes.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import redis

from breaker import (
    BreakerListener,
    CircuitBreaker,
    CircuitOpenError,
    EventFollower,
    TransitionEvent,
    events_channel,
)
from breaker.testing import ManualClock
from tests.conftest import TEST_DB, Breakers
from tests.support.servers import RedisServer
from tests.test_round_trips import commands_during, fail, succeed

_DELIVERY_TIMEOUT = 10.0  # a bound on waiting for a message, never a delay


def test_transition_is_published_as_json(breakers: Breakers, sync_redis: redis.Redis) -> None:
    pubsub = sync_redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(events_channel("breaker", TEST_DB))
    clock = ManualClock()
    cb = breakers("payments", redis=sync_redis, clock=clock, failure_threshold=1)
    fail(cb)
    deadline = time.monotonic() + _DELIVERY_TIMEOUT
    message = None
    # get_message returns None when it consumed the subscribe confirmation.
    while message is None and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=1.0)
    pubsub.close()
    assert message is not None
    event = json.loads(message["data"])
    assert event == {
        "name": "payments",
        "from": "closed",
        "to": "open",
        "at": clock.epoch_ms(),
        "reason": "failure_threshold",
        "created_at": clock.epoch_ms(),
        "generation": 1,
        "open_until": clock.epoch_ms() + 10_000,
    }


def test_another_process_learns_of_a_trip_without_a_call(
    breakers: Breakers, redis_server: RedisServer
) -> None:
    clock = ManualClock()
    here = breakers("p", redis=redis_server.client(), clock=clock, failure_threshold=2)
    there = breakers("p", redis=redis_server.client(), clock=clock, failure_threshold=2)
    heard = threading.Event()
    there.add_listener(lambda event: heard.set() if event.to_state == "open" else None)
    succeed(there)  # its view: closed, trusted
    assert there.follow_events(timeout=_DELIVERY_TIMEOUT)
    fail(here)
    fail(here)
    assert heard.wait(_DELIVERY_TIMEOUT)

    def rejected() -> None:
        with pytest.raises(CircuitOpenError):
            succeed(there)

    assert commands_during(redis_server, rejected) == {}


def test_operator_reset_reaches_a_process_that_holds_the_open_view(
    breakers: Breakers,
    redis_server: RedisServer,
) -> None:
    clock = ManualClock()
    here = breakers("p", redis=redis_server.client(), clock=clock, failure_threshold=1)
    there = breakers("p", redis=redis_server.client(), clock=clock, failure_threshold=1)
    closed_again = threading.Event()
    there.add_listener(lambda event: closed_again.set() if event.reason == "reset" else None)
    succeed(there)
    assert there.follow_events(timeout=_DELIVERY_TIMEOUT)
    fail(there)
    here.reset()
    assert closed_again.wait(_DELIVERY_TIMEOUT)
    succeed(there)  # open_until is far away, yet the reset let it through at once


def test_listener_hears_other_processes_transitions_once(
    breakers: Breakers, redis_server: RedisServer
) -> None:
    clock = ManualClock()
    here = breakers("p", redis=redis_server.client(), clock=clock, failure_threshold=1)
    heard: list[TransitionEvent] = []
    done = threading.Event()
    there = breakers("p", redis=redis_server.client(), clock=clock)

    def listen(event: TransitionEvent) -> None:
        heard.append(event)
        if event.reason == "reset":
            done.set()

    there.add_listener(listen)
    succeed(there)
    assert there.follow_events(timeout=_DELIVERY_TIMEOUT)
    fail(here)
    here.reset()
    assert done.wait(_DELIVERY_TIMEOUT)
    assert [(e.to_state, e.generation) for e in heard] == [("open", 1), ("closed", 2)]


def test_a_malformed_message_on_the_channel_is_ignored(
    breakers: Breakers, redis_server: RedisServer
) -> None:
    clock = ManualClock()
    cb = breakers("p", redis=redis_server.client(), clock=clock, failure_threshold=1)
    heard = threading.Event()
    cb.add_listener(lambda event: heard.set())
    succeed(cb)
    assert cb.follow_events(timeout=_DELIVERY_TIMEOUT)
    publisher = redis_server.client()
    publisher.publish("breaker:events", b"{not json")
    publisher.publish("breaker:events", json.dumps({"name": "p"}))
    other = breakers("p", redis=redis_server.client(), clock=clock, failure_threshold=1)
    fail(other)
    assert heard.wait(_DELIVERY_TIMEOUT)  # the subscriber survived the bad messages
    assert cb.snapshot().state == "open"


def test_sync_calls_from_many_threads_run_concurrently(
    breakers: Breakers, sync_redis: redis.Redis
) -> None:
    cb = breakers("p", redis=sync_redis)
    # Every thread must be inside the protected call at once to pass the barrier: a
    # breaker that held a lock around the call would break it (BrokenBarrierError).
    barrier = threading.Barrier(8, timeout=30)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            cb.call(barrier.wait)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert cb.snapshot().window_calls == 8


def test_made_here_listener_hears_only_this_objects_transitions(
    breakers: Breakers,
    redis_server: RedisServer,
) -> None:
    clock = ManualClock()
    here = breakers("p", redis=redis_server.client(), clock=clock, failure_threshold=1)
    there = breakers("p", redis=redis_server.client(), clock=clock, failure_threshold=1)
    made_here: list[str] = []
    made_there: list[str] = []
    heard_there: list[str] = []
    tripped = threading.Event()
    done = threading.Event()
    here.add_listener(lambda event: made_here.append(event.reason), made_here_only=True)
    there.add_listener(lambda event: made_there.append(event.reason), made_here_only=True)

    def hear(event: TransitionEvent) -> None:
        heard_there.append(event.reason)
        (done if event.reason == "reset" else tripped).set()

    there.add_listener(hear)
    there.follow_events()
    assert there.follow_events(timeout=_DELIVERY_TIMEOUT)
    fail(here)  # here opens it
    # there hears the trip through the channel: a reset made before it arrives would
    # make it stale (listeners hear each version once, the newest first), so wait.
    assert tripped.wait(_DELIVERY_TIMEOUT)
    there.reset()  # there closes it
    assert done.wait(_DELIVERY_TIMEOUT)
    assert made_here == ["failure_threshold"]
    assert made_there == ["reset"]
    assert heard_there == ["failure_threshold", "reset"]


def test_follow_events_subscribes_before_any_call(
    breakers: Breakers, redis_server: RedisServer
) -> None:
    cb = breakers("p", redis=redis_server.client(), clock=ManualClock())
    cb.follow_events()
    assert cb.follow_events(timeout=_DELIVERY_TIMEOUT)


class Store(BreakerListener):
    """What the shared lane told: scripts with their round trips, resubscriptions."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []
        self.subscriptions: list[str] = []

    def backend_call(self, script: str, seconds: float) -> None:
        self.calls.append((script, seconds))

    def subscribed(self, channel: str) -> None:
        self.subscriptions.append(channel)


def test_a_listener_hears_each_round_trip_and_each_subscription(
    breakers: Breakers, redis_server: RedisServer
) -> None:
    cb = breakers("p", redis=redis_server.client(), clock=ManualClock(), follow=False)
    heard = Store()
    cb.add_listener(heard)
    assert cb.follow_events(timeout=_DELIVERY_TIMEOUT)
    cb.acquire().success()
    assert [script for script, _ in heard.calls] == ["acquire", "record"]
    assert all(0 < seconds < 5 for _, seconds in heard.calls)
    assert heard.subscriptions == ["breaker:events"]


def test_close_wakes_the_follower_and_logs_no_lost_channel(
    sync_redis: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """``close`` shuts the follower's socket down to wake it from its read: the
    follower ends (the autouse guard checks that no thread is left) and takes that
    for the stop it is, not for a lost channel."""
    cb = CircuitBreaker("woken", redis=sync_redis)
    assert cb.follow_events(timeout=5.0)
    with caplog.at_level("WARNING", logger="breaker"):
        cb.close()
    assert [r.getMessage() for r in caplog.records if "lost" in r.getMessage()] == []


def _heard_from(cb: CircuitBreaker, to_state: str) -> threading.Event:
    """Set once ``cb``'s listeners hear a transition to ``to_state``."""
    heard = threading.Event()
    cb.add_listener(lambda event: heard.set() if event.to_state == to_state else None)
    return heard


def _barrier(breakers: Breakers, server: RedisServer, db: int) -> threading.Event:
    """A transition of another breaker, ``marker``, on ``db``, made once the caller is
    ready: a follower of ``db`` hears every message published before it first (one
    connection delivers in order), so hearing it means the earlier ones were heard."""
    follower = breakers("marker", redis=server.client(db), clock=ManualClock())
    heard = _heard_from(follower, "forced_open")
    succeed(follower)
    assert follower.follow_events(timeout=_DELIVERY_TIMEOUT)
    return heard


def test_a_trip_in_another_database_never_reaches_this_one(
    breakers: Breakers, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Staging on db 9 and production on db 10 of one Redis, each with a breaker called
    pricing: staging's trip must not refuse production's calls, move its version, or
    reach its listeners (pub/sub spans databases; the channel names the database)."""
    production = breakers("pricing", redis=redis_server.client(10), failure_threshold=2)
    heard: list[TransitionEvent] = []
    production.add_listener(heard.append)
    succeed(production)
    assert production.follow_events(timeout=_DELIVERY_TIMEOUT)
    marker_heard = _barrier(breakers, redis_server, 10)
    staging = breakers("pricing", redis=redis_server.client(9), failure_threshold=2)
    with caplog.at_level("INFO", logger="breaker"):
        fail(staging)
        fail(staging)
        assert staging.snapshot().state == "open"
        breakers("marker", redis=redis_server.client(10)).force_open()
        assert marker_heard.wait(_DELIVERY_TIMEOUT)
        for _ in range(20):
            succeed(production)  # CircuitOpenError here was the defect
    assert heard == []
    assert production.snapshot().generation == 0
    assert not [r for r in caplog.records if "older version" in r.getMessage()]


def test_a_forged_event_on_the_channel_moves_no_view_no_version_no_listener(
    breakers: Breakers, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Anyone who may PUBLISH can write an event: it is a hint, confirmed with Redis
    (one read), and Redis says the breaker is closed at generation 0."""
    cb = breakers("demo", redis=redis_server.client(), failure_threshold=5)
    heard: list[TransitionEvent] = []
    cb.add_listener(heard.append)
    succeed(cb)
    assert cb.follow_events(timeout=_DELIVERY_TIMEOUT)
    stored = cb.snapshot()
    marker_heard = _barrier(breakers, redis_server, 0)
    forged = {
        "name": "demo",
        "from": "closed",
        "to": "open",
        "at": stored.created_at,
        "reason": "failure_threshold",
        "created_at": stored.created_at,
        "generation": 99,
        "open_until": 9_000_000_000_000,
    }
    publisher = redis_server.client()
    with caplog.at_level("WARNING", logger="breaker"):
        for _ in range(5):
            publisher.publish(events_channel("breaker"), json.dumps(forged))
        breakers("marker", redis=redis_server.client()).force_open()
        assert marker_heard.wait(_DELIVERY_TIMEOUT)
        for _ in range(20):
            succeed(cb)  # refused for 9,000,000,000 s before the fix
    publisher.close()
    after = cb.snapshot()
    assert (after.state, after.generation, after.created_at) == ("closed", 0, stored.created_at)
    assert heard == []
    assert any("does not hold" in r.getMessage() for r in caplog.records)


def test_a_hint_makes_the_next_call_ask_redis_until_it_is_confirmed(
    breakers: Breakers, redis_server: RedisServer
) -> None:
    """Between a hint and its confirmation the view decides nothing alone: a call
    asks Redis (the real state), whatever the message said."""
    clock = ManualClock()
    cb = breakers("demo", redis=redis_server.client(), clock=clock)
    succeed(cb)
    engine = cb._engine
    view = engine.shared.view
    assert view is not None
    forged = TransitionEvent(
        "demo", "closed", "forced_open", 0, "force_open", view.created_at, 7, 0
    )
    engine.calling(True)  # as if a round trip were under way: the follower waits
    engine.receive(forged, confirmed=False)
    assert engine.shared.admit_locally(engine.health.epoch) is None
    engine.calling(False)
    assert commands_during(redis_server, lambda: succeed(cb)) == {"fcall": 2}


def test_no_view_keeps_a_call_out_longer_than_its_settings_can_open_it() -> None:
    """A store (or a message) naming an open time past the breaker's longest one is
    capped: reset_timeout (or its max) plus the jitter's share."""
    from breaker._config import BreakerConfig
    from breaker._decisions.core import BreakerCore
    from breaker._store.wire import Reply

    config = BreakerConfig(reset_timeout=10.0, reset_timeout_jitter=0.5)
    core = BreakerCore("demo", config, ManualClock(), fallback=False)
    core.apply(Reply("reject", "open", 1, 1, 9_000_000_000_000, 0, 0, 0, "", "", ()))
    assert core.view is not None
    assert core.view.open_until - ManualClock().monotonic() <= 15.0


def test_the_event_follower_hands_over_every_breakers_transitions(
    breakers: Breakers, sync_redis: redis.Redis
) -> None:
    heard: list[tuple[str, str]] = []
    arrived = threading.Event()

    def on_event(event: TransitionEvent) -> None:
        heard.append((event.name, event.to_state))
        if len(heard) == 2:
            arrived.set()

    with EventFollower(sync_redis, on_event=on_event) as follower:
        assert follower.channel == events_channel("breaker", TEST_DB)
        assert follower.wait_subscribed(_DELIVERY_TIMEOUT)
        for name in ("payments", "search"):
            fail(breakers(name, redis=sync_redis, failure_threshold=1))
        assert arrived.wait(_DELIVERY_TIMEOUT)
    assert heard == [("payments", "open"), ("search", "open")]
