"""A breaker's settings live with its state in Redis: sent by a process's first call,
never again; the newest process's win, and a process running with other settings
than its own says so, once."""

from __future__ import annotations

import logging

import pytest

from breaker import CircuitOpenError
from tests.conftest import Harness
from tests.test_round_trips import fail, succeed


def test_the_settings_are_stored_with_the_state(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=7, window_bucket=2.0, window=20.0, key_ttl=120.0)
    succeed(cb)
    stored = harness.hash(cb.keys.state)
    assert (stored["failure_threshold"], stored["window_bucket"], stored["buckets"]) == (
        "7",
        "2000",
        "10",
    )
    assert (stored["key_ttl"], stored["name"]) == ("120000", "payments")
    assert stored["settings"]


def test_the_newest_process_settings_win_and_the_other_says_so_once(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    older = harness.breaker(failure_threshold=5)
    succeed(older)  # stores its settings: 5 failures trip
    newer = harness.breaker(failure_threshold=2)
    succeed(newer)  # a rolling deploy: the newer process's settings replace them
    with caplog.at_level(logging.WARNING, logger="breaker"):
        fail(older)
        fail(older)  # the older process runs with the stored settings: 2 trip
        with pytest.raises(CircuitOpenError):
            succeed(newer)
    warnings = [r.message for r in caplog.records if "another process stored" in r.message]
    assert len(warnings) == 1


def test_a_breaker_whose_settings_were_lost_sends_them_again(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=1)
    succeed(cb)
    harness.raw.delete(cb.keys.state)  # as a FLUSHALL, or an expired hash, would
    fail(cb)  # the first answer is "unconfigured": the call goes again with the settings
    assert cb.snapshot().state == "open"
    assert harness.hash(cb.keys.state)["failure_threshold"] == "1"


def test_rejections_reach_the_fleets_window_at_most_once_a_second(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=1, reset_timeout=60.0)
    fail(cb)
    for _ in range(5):
        with pytest.raises(CircuitOpenError):
            succeed(cb)
    assert cb.snapshot().window_rejections == 0  # counted here, not yet sent
    harness.clock.advance(1.0)
    with pytest.raises(CircuitOpenError):
        succeed(cb)  # due: this one reports the six
    assert cb.snapshot().window_rejections == 6
