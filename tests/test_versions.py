"""A breaker's version (created_at, generation) never goes backwards, also when its
store loses writes it had acknowledged: a replica promoted by a failover before it
had them all. Here the store is rolled back by hand, as such a replica would hold it;
the failover itself is in the topology tests."""

from __future__ import annotations

import pytest

from breaker import CircuitOpenError, TransitionEvent
from tests.conftest import Harness
from tests.test_round_trips import fail, succeed


def roll_back(harness: Harness, key: str, **fields: object) -> None:
    """Write ``fields`` into the state hash, as a replica that lagged would hold them."""
    harness.raw.hset(key, mapping={name: str(value) for name, value in fields.items()})


def test_a_store_behind_an_open_view_moves_past_it_and_the_view_follows(
    harness: Harness,
) -> None:
    cb = harness.breaker(failure_threshold=1, reset_timeout=5.0)
    cb.follow_events(timeout=5.0)  # subscribed first: no later epoch distrusts the view
    heard: list[TransitionEvent] = []
    cb.add_listener(heard.append)
    fail(cb)  # open, generation 1
    opened = cb.snapshot()
    # The store lost the trip: closed, generation 0, as before it.
    roll_back(harness, cb.keys.state, state="closed", generation=0, open_until=0)
    with pytest.raises(CircuitOpenError):
        succeed(cb)  # the view is open: rejected without asking
    harness.clock.advance(5.0)
    succeed(cb)  # asks: the store is behind what this process saw
    after = cb.snapshot()
    assert after.generation > opened.generation
    assert (after.state, after.created_at) == ("closed", opened.created_at)
    assert [e.to_state for e in heard] == ["open"]  # a resync is no transition


def test_an_outcome_admitted_under_a_version_the_store_lost_is_not_counted_there(
    harness: Harness,
) -> None:
    cb = harness.breaker(failure_threshold=3)
    fail(cb)
    fail(cb)
    cb.reset()  # generation 1, closed
    cb.reset()  # generation 2: this process's view
    roll_back(harness, cb.keys.state, generation=1)
    fail(cb)  # admitted locally under generation 2; the store holds 1
    snapshot = cb.snapshot()
    assert snapshot.generation == 3  # moved past generation 2
    assert (snapshot.state, snapshot.failures, snapshot.window_failures) == ("closed", 0, 0)
    fail(cb)  # the view followed the reply: counted again
    assert cb.snapshot().failures == 1


def test_an_operator_action_moves_a_store_past_what_its_process_saw(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=1)
    fail(cb)  # open, generation 1
    cb.reset()  # closed, generation 2
    roll_back(harness, cb.keys.state, generation=0)
    cb.force_open()
    snapshot = cb.snapshot()
    assert (snapshot.state, snapshot.generation) == ("forced_open", 4)  # 2, resync 3, 4


def test_a_store_made_again_is_newer_and_is_not_moved(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=1)
    fail(cb)
    cb.reset()
    before = cb.snapshot()
    harness.clock.advance(1.0)
    harness.raw.delete(cb.keys.state, cb.keys.window)  # a restart, or the TTL
    succeed(cb)
    after = cb.snapshot()
    assert after.created_at > before.created_at
    assert after.generation == 0
