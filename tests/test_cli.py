"""``fleetbreaker status | reset | open | disable | watch`` against a real Redis: what
they print, what they change, and their exit codes."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from app.cli.breakers import NO_REDIS
from app.localfleet.services import fleetbreaker_command
from breaker import CircuitBreaker
from breaker.testing import ManualClock
from tests.conftest import Breakers
from tests.support.ports import free_port
from tests.support.servers import RedisServer
from tests.test_round_trips import fail

pytestmark = pytest.mark.slow  # each test runs the console script, as a user would

_TIMEOUT = 60


def cli(*args: str, **environ: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **environ}
    return subprocess.run(
        [*fleetbreaker_command(), *args], env=env, capture_output=True, text=True, timeout=_TIMEOUT
    )


def tripped(
    breakers: Breakers, server: RedisServer, name: str, threshold: int = 2
) -> CircuitBreaker:
    cb = breakers(name, redis=server.client(), clock=ManualClock(), failure_threshold=threshold)
    for _ in range(threshold):
        fail(cb)
    return cb


def test_status_prints_a_table_of_every_breaker_in_redis(
    breakers: Breakers, redis_server: RedisServer
) -> None:
    tripped(breakers, redis_server, "payments")
    breakers("search", redis=redis_server.client()).reset()
    result = cli("status", "--redis-url", redis_server.url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "NAME",
        "STATE",
        "FAILURES",
        "OPEN",
        "FOR",
        "WINDOW",
        "CALLS",
        "WINDOW",
        "FAILED",
    ]
    assert lines[1].split()[:3] == ["payments", "open", "2"]
    assert lines[2].split()[:3] == ["search", "closed", "0"]


def test_status_json_reads_the_url_from_the_environment(
    breakers: Breakers, redis_server: RedisServer
) -> None:
    tripped(breakers, redis_server, "a{b}")  # an escaped name comes back as it was
    result = cli("status", "--json", BREAKER_REDIS_URL=redis_server.url)
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    snapshot = json.loads(line)
    assert (snapshot["name"], snapshot["state"], snapshot["failures"]) == ("a{b}", "open", 2)


def test_status_includes_configured_upstreams_not_yet_in_redis(
    redis_server: RedisServer,
) -> None:
    result = cli(
        "status",
        BREAKER_REDIS_URL=redis_server.url,
        BREAKER_UPSTREAMS="api=http://127.0.0.1:1",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].split()[:2] == ["api", "closed"]


@pytest.mark.parametrize(
    ("command", "state"),
    [("reset", "closed"), ("open", "forced_open"), ("disable", "disabled")],
)
def test_control_commands_change_the_shared_state(
    breakers: Breakers, redis_server: RedisServer, command: str, state: str
) -> None:
    cb = tripped(breakers, redis_server, "payments")
    result = cli(command, "payments", "--redis-url", redis_server.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"payments: {state}\n"
    assert cb.snapshot().state == state


def test_an_unknown_name_is_exit_2_with_the_known_ones(
    breakers: Breakers, redis_server: RedisServer
) -> None:
    tripped(breakers, redis_server, "payments")
    result = cli("reset", "nope", "--redis-url", redis_server.url)
    assert result.returncode == 2
    assert result.stderr == "fleetbreaker: no breaker named 'nope' (known: payments)\n"


def test_no_redis_url_is_exit_2(tmp_path: Path) -> None:
    result = cli("status")
    assert result.returncode == 2
    assert result.stderr == f"fleetbreaker: {NO_REDIS}\n"


def test_unreachable_redis_is_exit_1_in_one_line() -> None:
    url = f"redis://user:secret@127.0.0.1:{free_port()}/0"
    result = cli("reset", "x", "--redis-url", url)
    assert result.returncode == 1
    assert result.stderr.startswith("fleetbreaker: cannot reach Redis at redis://***@127.0.0.1:")
    assert "secret" not in result.stderr
    assert result.stderr.count("\n") == 1


def test_watch_prints_transitions_and_stops_cleanly_on_ctrl_c(
    breakers: Breakers,
    redis_server: RedisServer,
) -> None:
    # Started with SIGINT ignored, as a background job's children are: it must still
    # stop on Ctrl-C. (Before it set its own handler, it never did, and this test
    # failed whenever the suite itself ran with SIGINT ignored.)
    watcher = subprocess.Popen(
        [*fleetbreaker_command(), "watch", "--redis-url", redis_server.url],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        assert watcher.stderr is not None
        assert watcher.stdout is not None
        assert watcher.stderr.readline().startswith("watching breaker:events")
        tripped(breakers, redis_server, "payments")
        line = watcher.stdout.readline()
        assert line.split()[1:] == ["payments:", "closed", "->", "open", "(failure_threshold)"]
        at = datetime.datetime.fromisoformat(line.split()[0])  # ISO 8601, not epoch ms
        assert at.utcoffset() is not None  # local time, with its offset
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(_TIMEOUT) == 0
    finally:
        watcher.kill()
        watcher.wait(_TIMEOUT)


def test_watch_prints_only_the_transitions_of_its_own_database(
    breakers: Breakers,
    redis_server: RedisServer,
) -> None:
    """``watch`` on db 10 while a breaker of db 9 trips, then one of db 10: it prints
    the second only (it printed both before the channel named the database)."""
    watcher = subprocess.Popen(
        [*fleetbreaker_command(), "watch", "--redis-url", redis_server.url_of(10)],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stderr is not None
        assert watcher.stdout is not None
        assert watcher.stderr.readline().startswith("watching breaker:events:db10")
        staging = breakers("pricing", redis=redis_server.client(9), failure_threshold=1)
        fail(staging)
        production = breakers("payments", redis=redis_server.client(10), failure_threshold=1)
        fail(production)
        # The first line printed: db 9's transition would have come first.
        assert watcher.stdout.readline().split()[1:3] == ["payments:", "closed"]
    finally:
        watcher.kill()
        watcher.wait(_TIMEOUT)


def test_reset_acts_with_the_breakers_own_key_ttl_not_a_default(
    breakers: Breakers, redis_server: RedisServer
) -> None:
    tripped(breakers, redis_server, "short-lived", threshold=1)
    short = breakers("short-lived", redis=redis_server.client(), key_ttl=60.0)
    short.acquire().success()  # its calls store its settings with its state
    result = cli("reset", "short-lived", "--redis-url", redis_server.url)
    assert result.returncode == 0, result.stderr
    client = redis_server.client()
    assert 0 < client.pttl("breaker:{short-lived}") <= 60_000
    client.close()


def test_status_sums_the_window_with_the_breakers_own_buckets(
    breakers: Breakers, redis_server: RedisServer
) -> None:
    # The CLI reads Redis's own clock, later than this one by however long the CLI
    # takes to start; 15 s ago stays inside a 20 s window of 2 s buckets (at least
    # the last 18 s) for 3 s of that, and no bucket boundary can drop it sooner.
    clock = ManualClock(start=time.time() - 15.0)
    cb = breakers(
        "coarse", redis=redis_server.client(), clock=clock, window_bucket=2.0, window=20.0
    )
    for _ in range(3):  # 15 s ago, 8 s ago, 1 s ago: all inside its 20 s window
        cb.acquire().failure()
        clock.advance(7.0)
    result = cli("status", "--json", "--redis-url", redis_server.url)
    [line] = [json.loads(line) for line in result.stdout.splitlines()]
    # A default window (10 x 1 s) would have counted 2 of them.
    assert (line["name"], line["window_calls"]) == ("coarse", 3)


def test_status_says_when_an_open_breaker_turns_half_open(
    breakers: Breakers, redis_server: RedisServer
) -> None:
    cb = breakers("past", redis=redis_server.client(), failure_threshold=1, reset_timeout=300)
    cb.acquire().failure()
    result = cli("status", "--redis-url", redis_server.url)
    assert "half-open on next call" not in result.stdout
    client = redis_server.client()
    client.hset("breaker:{past}", "open_until", 1)  # its open time ended long ago
    client.close()
    result = cli("status", "--redis-url", redis_server.url)
    assert "half-open on next call" in result.stdout


# -- what Redis says is printed escaped ------------------------------------------------

#: Breaker names a terminal would obey if they were printed raw: clear the screen and
#: paint red; a newline that adds a row; an OSC that retitles the window; a bidi
#: override that shows "exe.txt" as "txt.exe"; a C1 CSI (U+009B).
HOSTILE = {
    "evil\x1b[2J\x1b[31mPWNED": r"evil\x1b[2J\x1b[31mPWNED",
    "fake\npayments closed": r"fake\npayments closed",
    "title\x1b]0;owned\x07": r"title\x1b]0;owned\x07",
    "bidi\u202etxt.exe": r"bidi\u202etxt.exe",
    "csi\x9b2J": r"csi\x9b2J",
}


def is_inert(text: str) -> bool:
    """Nothing a terminal would act on: no control, format or separator character
    other than the newlines that end lines."""
    return all(char.isprintable() for line in text.splitlines() for char in line)


def test_status_prints_hostile_names_escaped(breakers: Breakers, redis_server: RedisServer) -> None:
    for name in HOSTILE:
        breakers(name, redis=redis_server.client()).acquire().failure()
    result = cli("status", "--redis-url", redis_server.url)
    assert result.returncode == 0, result.stderr
    assert is_inert(result.stdout)
    names = [line.split("  ")[0] for line in result.stdout.splitlines()[1:]]
    assert sorted(names) == sorted(HOSTILE.values())  # one row each, no more


def test_watch_prints_hostile_names_and_reasons_escaped(
    breakers: Breakers, redis_server: RedisServer
) -> None:
    watcher = subprocess.Popen(
        [*fleetbreaker_command(), "watch", "--redis-url", redis_server.url],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stderr is not None
        assert watcher.stdout is not None
        assert watcher.stderr.readline().startswith("watching breaker:events")
        forged = {  # anyone who may PUBLISH can say this
            "name": "evil\x1b[2J",
            "from": "closed\n12:00 payments: open",
            "to": "open\u202e",
            "reason": "\x1b]0;owned\x07",
            "at": 1,
            "created_at": 1,
            "generation": 1,
            "open_until": 0,
        }
        client = redis_server.client()
        client.publish("breaker:events", json.dumps(forged))
        client.close()
        line = watcher.stdout.readline()
        assert is_inert(line)
        assert line.split(" ", 1)[1] == (
            r"evil\x1b[2J: closed\n12:00 payments: open -> open\u202e (\x1b]0;owned\x07)" "\n"
        )
    finally:
        watcher.kill()
        watcher.wait(_TIMEOUT)


def test_reset_of_an_unknown_name_lists_hostile_names_escaped(
    breakers: Breakers, redis_server: RedisServer
) -> None:
    for name in HOSTILE:
        breakers(name, redis=redis_server.client()).acquire().failure()
    result = cli("reset", "nope\x1b[2J", "--redis-url", redis_server.url)
    assert result.returncode == 2
    assert is_inert(result.stderr)
    assert result.stderr.count("\n") == 1  # one line, as every error
    known = ", ".join(HOSTILE[name] for name in sorted(HOSTILE))  # the CLI sorts raw names
    assert result.stderr == f"fleetbreaker: no breaker named 'nope\\x1b[2J' (known: {known})\n"
