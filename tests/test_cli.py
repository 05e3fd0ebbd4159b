"""``fleetbreaker status | reset | open | disable | watch`` against a real Redis: what
they print, what they change, and their exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from app.fleet import fleetbreaker_command, free_port
from breaker import CircuitBreaker
from breaker.testing import ManualClock
from tests.support.servers import RedisServer
from tests.test_round_trips import fail

_TIMEOUT = 60


def cli(*args: str, **environ: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **environ}
    return subprocess.run(
        [*fleetbreaker_command(), *args], env=env, capture_output=True, text=True, timeout=_TIMEOUT
    )


def tripped(server: RedisServer, name: str, threshold: int = 2) -> CircuitBreaker:
    cb = CircuitBreaker(
        name, redis=server.client(), clock=ManualClock(), failure_threshold=threshold
    )
    for _ in range(threshold):
        fail(cb)
    return cb


def test_status_prints_a_table_of_every_breaker_in_redis(redis_server: RedisServer) -> None:
    tripped(redis_server, "payments")
    CircuitBreaker("search", redis=redis_server.client()).reset()
    result = cli("status", "--redis-url", redis_server.url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "NAME",
        "STATE",
        "FAILURES",
        "RETRY",
        "AFTER",
        "WINDOW",
        "CALLS",
        "WINDOW",
        "FAILED",
    ]
    assert lines[1].split()[:3] == ["payments", "open", "2"]
    assert lines[2].split()[:3] == ["search", "closed", "0"]


def test_status_json_reads_the_url_from_the_environment(redis_server: RedisServer) -> None:
    tripped(redis_server, "a{b}")  # an escaped name comes back as it was
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
    redis_server: RedisServer, command: str, state: str
) -> None:
    cb = tripped(redis_server, "payments")
    result = cli(command, "payments", "--redis-url", redis_server.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"payments: {state}\n"
    assert cb.snapshot().state == state


def test_an_unknown_name_is_exit_2_with_the_known_ones(redis_server: RedisServer) -> None:
    tripped(redis_server, "payments")
    result = cli("reset", "nope", "--redis-url", redis_server.url)
    assert result.returncode == 2
    assert result.stderr == "fleetbreaker: no breaker named 'nope' (known: payments)\n"


def test_no_redis_url_is_exit_2(tmp_path: Path) -> None:
    result = cli("status")
    assert result.returncode == 2
    assert result.stderr == (
        "fleetbreaker: no Redis to talk to: pass --redis-url or set BREAKER_REDIS_URL\n"
    )


def test_unreachable_redis_is_exit_1_in_one_line() -> None:
    url = f"redis://user:secret@127.0.0.1:{free_port()}/0"
    result = cli("reset", "x", "--redis-url", url)
    assert result.returncode == 1
    assert result.stderr.startswith("fleetbreaker: cannot reach Redis at redis://***@127.0.0.1:")
    assert "secret" not in result.stderr
    assert result.stderr.count("\n") == 1


def test_watch_prints_transitions_and_stops_cleanly_on_ctrl_c(
    redis_server: RedisServer,
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
        tripped(redis_server, "payments")
        line = watcher.stdout.readline()
        assert line.split()[1:] == ["payments:", "closed", "->", "open", "(failure_threshold)"]
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(_TIMEOUT) == 0
    finally:
        watcher.kill()
        watcher.wait(_TIMEOUT)
