"""Quorum-gated trips, on every lane of the harness: the fleet's breaker opens only
when its condition holds and enough distinct voters reported the failures it counts;
a process whose own failures alone would trip isolates itself instead, and sends its
own trial when that ends. ``quorum = 1`` keeps no vote at all."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any

import pytest

from breaker import CircuitBreaker, CircuitOpenError, ConfigurationError, redis_from_url
from tests.conftest import Harness
from tests.support.lanes import HARNESS_BACKEND_TIMEOUT
from tests.support.quorum_worker import Voter


def fail(cb: CircuitBreaker) -> str:
    """One failing call: "failed", or how it was refused."""
    try:
        with cb:
            raise RuntimeError("upstream down")
    except RuntimeError:
        return "failed"
    except CircuitOpenError as refused:
        return refused.reason or refused.state
    raise AssertionError("unreachable")


def isolated(cb: CircuitBreaker) -> bool:
    """Whether ``cb``'s process refuses its own calls now (its view alone says so)."""
    refusal = cb.would_reject()
    return refusal is not None and refusal.reason == "isolated"


def process_of(voter: str) -> str:
    """How the admin view names this process, voting for ``voter``."""
    return f"{voter}/{os.getpid()}"


def succeed(cb: CircuitBreaker) -> str:
    try:
        with cb:
            pass
    except CircuitOpenError as refused:
        return refused.reason or refused.state
    return "ok"


def test_one_voter_cannot_trip_a_quorum_of_two_and_isolates_itself(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    sick = harness.breaker(failure_threshold=3, quorum=2, voter="node-a")
    healthy = harness.breaker(failure_threshold=3, quorum=2, voter="node-b")
    with caplog.at_level(logging.WARNING, logger="breaker"):
        assert [fail(sick) for _ in range(5)] == ["failed"] * 3 + ["isolated"] * 2
    snapshot = healthy.snapshot()
    assert (snapshot.state, snapshot.failures, snapshot.streak_voters) == ("closed", 3, ("node-a",))
    assert snapshot.isolated == {process_of("node-a"): harness.clock.epoch_ms() + 10_000}
    assert isolated(sick)
    assert not isolated(healthy)
    assert "isolates itself" in caplog.text
    assert succeed(healthy) == "ok"  # the rest of the fleet goes on
    # Two isolated rejections reached the fleet's count of rejected calls.
    harness.clock.advance(1.0)
    assert fail(sick) == "isolated"


def test_a_second_voter_makes_the_quorum_and_the_fleet_opens(harness: Harness) -> None:
    a = harness.breaker(failure_threshold=3, quorum=2, voter="node-a")
    b = harness.breaker(failure_threshold=3, quorum=2, voter="node-b")
    assert [fail(a), fail(a), fail(b)] == ["failed"] * 3
    snapshot = a.snapshot()
    assert snapshot.state == "open"
    assert sorted(snapshot.streak_voters) == ["node-a", "node-b"]
    assert fail(b) == "open"


def test_a_success_ends_the_streak_and_its_voters(harness: Harness) -> None:
    a = harness.breaker(failure_threshold=3, quorum=2, voter="node-a")
    b = harness.breaker(failure_threshold=3, quorum=2, voter="node-b")
    fail(a)
    fail(a)
    assert succeed(b) == "ok"
    assert a.snapshot().streak_voters == ()
    fail(a)
    fail(b)
    assert a.snapshot().state == "closed"  # 2 failures since the success
    fail(b)
    assert a.snapshot().state == "open"


def test_an_isolated_process_sends_one_trial_and_a_success_ends_its_isolation(
    harness: Harness,
) -> None:
    sick = harness.breaker(failure_threshold=2, quorum=2, voter="node-a")
    fail(sick)
    fail(sick)
    assert succeed(sick) == "isolated"
    harness.clock.advance(10.0)
    trial = sick.acquire()  # the one trial
    assert succeed(sick) == "isolated"  # the others wait for it
    trial.success()
    assert succeed(sick) == "ok"
    assert sick.snapshot().isolated == {}


def test_a_failed_trial_isolates_it_again(harness: Harness) -> None:
    sick = harness.breaker(failure_threshold=2, quorum=2, voter="node-a")
    fail(sick)
    fail(sick)
    harness.clock.advance(10.0)
    assert fail(sick) == "failed"  # the trial
    assert succeed(sick) == "isolated"
    assert sick.snapshot().state == "closed"


def test_an_operator_reset_ends_every_isolation(harness: Harness) -> None:
    sick = harness.breaker(failure_threshold=2, quorum=2, voter="node-a")
    operator = harness.breaker(failure_threshold=2, quorum=2, voter="node-b")
    fail(sick)
    fail(sick)
    assert sick.snapshot().isolated
    operator.reset()
    assert operator.snapshot().isolated == {}
    sick.reset()  # its own process hears it at once (another hears it on the channel)
    assert succeed(sick) == "ok"


def test_a_failure_rate_needs_its_quorum_too(harness: Harness) -> None:
    settings: dict[str, Any] = {
        "failure_threshold": 100,
        "failure_rate_threshold": 0.5,
        "minimum_calls": 4,
        "quorum": 2,
    }
    a = harness.breaker(voter="node-a", **settings)
    b = harness.breaker(voter="node-b", **settings)
    for _ in range(2):
        succeed(b)
    # 2 of 4 failed, then 4 of 6: the rate holds, but a alone voted; a's own window
    # reaches minimum_calls (all failed) with its 4th, and a isolates itself.
    assert [fail(a) for _ in range(4)] == ["failed"] * 4
    assert b.snapshot().state == "closed"
    assert fail(a) == "isolated"
    fail(b)
    assert b.snapshot().state == "open"


def test_a_fraction_counts_the_voters_live_in_the_window(harness: Harness) -> None:
    settings: dict[str, Any] = {"failure_threshold": 3, "quorum": 0.5, "window": 10.0}
    voters = [harness.breaker(voter=f"node-{n}", **settings) for n in "abc"]
    for cb in voters:
        succeed(cb)  # each heartbeat: 3 live, a quorum is 2
    assert voters[0].snapshot().live_voters == 3
    assert [fail(voters[0]) for _ in range(3)] == ["failed"] * 3
    assert voters[0].snapshot().state == "closed"
    # b and c go quiet (or die): their liveness leaves the window, and a alone is half
    # of the one voter left.
    harness.clock.advance(11.0)
    voters[0].reset()
    assert [fail(voters[0]) for _ in range(3)] == ["failed"] * 3
    snapshot = voters[0].snapshot()
    assert (snapshot.state, snapshot.live_voters) == ("open", 1)


def test_without_a_quorum_no_vote_is_kept(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=3, voter="node-a")
    fail(cb)
    fail(cb)
    snapshot = cb.snapshot()
    assert (snapshot.streak_voters, snapshot.live_voters, snapshot.isolated) == ((), 0, {})
    if harness.lane != "fallback":
        window = harness.hash(cb.keys.window)
        assert not [field for field in window if ":F:" in field or ":S:" in field]
    fail(cb)
    assert cb.snapshot().state == "open"


def test_the_fallback_lane_decides_alone_without_a_quorum() -> None:
    """Redis away: the process's fallback trips on its own failures, as its lane is
    one process (a quorum there could never be met)."""
    cb = CircuitBreaker(
        "quorum-fallback",
        redis=redis_from_url("redis://127.0.0.1:9/0"),  # nothing listens
        failure_threshold=2,
        quorum=2,
        backend_timeout=0.05,
    )
    with contextlib.closing(cb):
        assert [fail(cb) for _ in range(3)] == ["failed", "failed", "open"]


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("quorum", 0),
        ("quorum", 1.5),
        ("quorum", -1),
        ("quorum", True),
        ("voter", "a b"),
        ("voter", ""),
        ("voter", "x" * 65),
        ("voter", "a,b"),
    ],
)
def test_bad_quorum_settings_name_the_key(setting: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=setting):
        CircuitBreaker("bad", **{setting: value})  # type: ignore[arg-type]


def test_a_trial_the_fleet_refuses_leaves_the_next_call_its_trial(harness: Harness) -> None:
    """Its isolation ends while the fleet's breaker is open: the fleet refuses the
    trial, so the isolation's trial is still to come (not spent on a call never made)."""
    sick = harness.breaker(failure_threshold=2, quorum=2, voter="node-a")
    other = harness.breaker(failure_threshold=2, quorum=2, voter="node-b")
    fail(sick)
    fail(sick)  # isolated until t+10
    harness.clock.advance(5.0)
    fail(other)  # the streak's voters: a and b: the fleet opens until t+15
    assert other.snapshot().state == "open"
    harness.clock.advance(5.0)
    assert succeed(sick) == "open"  # its trial, refused by the fleet
    harness.clock.advance(5.0)
    assert succeed(sick) == "ok"  # its trial again, and the fleet's: both end
    assert not isolated(sick)
    assert sick.snapshot().state == "closed"


def test_with_a_fraction_the_survivor_of_a_kill_9_trips_once_the_dead_expire(
    redis_url: str, sync_redis: Any
) -> None:
    """Three processes, three voters, ``quorum = 0.5``: two are SIGKILLed. At once the
    survivor's failures are one vote of the three live (it isolates itself); once the
    dead's heartbeats leave the window (3 s here), it is half of the one voter left,
    and its next failure (its isolation's trial) trips the fleet."""
    settings = {
        "failure_threshold": 3,
        "quorum": 0.5,
        "window": 3.0,
        "window_bucket": 0.5,
        "reset_timeout": 4.0,
        "backend_timeout": HARNESS_BACKEND_TIMEOUT,
    }
    voters = [Voter(redis_url, f"node-{n}", **settings) for n in "abc"]
    try:
        assert [voter.ask("succeed") for voter in voters] == ["ok"] * 3
        assert voters[0].ask("snapshot").live_voters == 3
        killed_at = time.monotonic()
        for dead in voters[1:]:
            dead.kill()
        survivor = voters[0]
        assert [survivor.ask("fail") for _ in range(3)] == ["failed"] * 3
        assert survivor.ask("snapshot").state == "closed"  # 1 vote of 3 live: no quorum
        assert survivor.ask("fail") == "isolated"
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline:  # bounded: the trial comes after 4 s
            if survivor.ask("fail") == "failed":  # its trial, with the dead expired
                break
            time.sleep(0.1)
        snapshot = survivor.ask("snapshot")
        assert snapshot.state == "open"
        assert snapshot.live_voters == 1
        assert time.monotonic() - killed_at >= 3.0  # not before the dead's liveness left
    finally:
        for voter in voters:
            voter.close()
