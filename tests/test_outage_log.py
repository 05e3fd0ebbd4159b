"""A follower that can't reach Redis logs its outage, not each reconnection: the first
failure, then at most a line a minute, then one line when it is back."""

from __future__ import annotations

import logging
import time

import pytest

from breaker._outage import OutageLog
from tests.conftest import Breakers
from tests.support.servers import RedisServer, Refuser

WHAT = "events channel breaker:events"


def test_the_first_failure_is_logged_with_its_reason() -> None:
    assert OutageLog(WHAT).failed("Error 111", now=10.0) == f"{WHAT} lost: Error 111"


def test_failures_within_a_minute_of_the_last_line_are_not_logged() -> None:
    log = OutageLog(WHAT)
    log.failed("Error 111", now=0.0)
    assert [log.failed("Error 111", now=t) for t in (0.05, 0.15, 5.0, 59.9)] == [None] * 4


def test_a_lasting_outage_is_logged_again_once_a_minute() -> None:
    log = OutageLog(WHAT)
    lines = [log.failed("Error 111", now=float(t)) for t in range(0, 181, 5)]
    assert [line for line in lines if line is not None] == [
        f"{WHAT} lost: Error 111",
        f"{WHAT} still lost after 60 s (13 failed attempts): Error 111",
        f"{WHAT} still lost after 120 s (25 failed attempts): Error 111",
        f"{WHAT} still lost after 180 s (37 failed attempts): Error 111",
    ]


def test_the_end_of_an_outage_is_logged_once() -> None:
    log = OutageLog(WHAT)
    log.failed("Error 111", now=100.0)
    log.failed("Error 111", now=103.0)
    assert log.recovered(now=104.5) == f"{WHAT} back after 4 s (2 failed attempts)"
    assert log.recovered(now=200.0) is None


def test_a_connection_that_never_failed_logs_nothing_when_it_connects() -> None:
    assert OutageLog(WHAT).recovered(now=1.0) is None


def test_a_new_outage_is_logged_from_its_own_first_failure() -> None:
    log = OutageLog(WHAT)
    log.failed("Error 111", now=0.0)
    log.recovered(now=1.0)
    assert log.failed("Timeout", now=2.0) == f"{WHAT} lost: Timeout"


def test_a_follower_logs_a_real_outage_once_and_its_end(
    breakers: Breakers, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="breaker")
    cb = breakers("p", redis=redis_server.client())
    assert cb.follow_events(timeout=5.0)
    redis_server.kill()
    refuser = Refuser(redis_server.port)  # counts the follower's reconnections
    try:
        assert refuser.wait_accepted(4) >= 4
    finally:
        refuser.close()
    redis_server.start()
    deadline = time.monotonic() + 10.0  # the follower's backoff is at most 5 s
    while "back after" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.01)
    lines = [record.getMessage() for record in caplog.records if record.name == "breaker"]
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"{WHAT} lost: ")
    assert lines[1].startswith(f"{WHAT} back after ")
