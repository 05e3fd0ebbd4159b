"""A breaker's settings live with its state in Redis: sent by a process's first call,
never again; the newest process's win, and a process running with other settings
than its own says so, loudly, once per settings stored: an ERROR naming both sides,
its listeners, and a reset through it stores its own again."""

from __future__ import annotations

import logging

import pytest

from breaker import BreakerListener, CircuitOpenError, SettingsConflict
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


class Heard(BreakerListener, list[SettingsConflict | None]):
    def settings(self, name: str, conflict: SettingsConflict | None) -> None:
        self.append(conflict)


def test_a_conflict_is_an_error_naming_both_settings_and_a_reset_here_ends_it(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """Another app with the same prefix and a breaker of the same name rewrote its
    settings (2 failures, open an hour): loud, with both sides named; this process's
    reset stores its own again."""
    ours = harness.breaker(failure_threshold=5, reset_timeout=10.0)
    heard = Heard()
    ours.add_listener(heard)
    succeed(ours)
    theirs = harness.breaker(failure_threshold=2, reset_timeout=3600.0)
    succeed(theirs)  # stores its settings: the newest process's win
    with caplog.at_level(logging.ERROR, logger="breaker"):
        succeed(ours)
        succeed(ours)  # once per stored digest, not per call
    [error] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "failure_threshold 2 (stored) / 5 (here)" in error
    assert "reset_timeout 3600000 (stored) / 10000 (here)" in error
    assert "give each its own" in error
    [conflict] = heard
    assert conflict is not None
    assert conflict.differences == {
        "failure_threshold": (2, 5),
        "reset_timeout": (3600000, 10000),
    }
    assert ours.settings_conflict(ours.snapshot()) == conflict
    ours.reset()
    assert harness.hash(ours.keys.state)["failure_threshold"] == "5"
    assert heard[-1] is None
    assert ours.settings_conflict(ours.snapshot()) is None
