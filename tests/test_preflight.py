"""What ``serve`` checks before it prints anything: a taken port (the proxy's or the
admin listener's) is refused in one line, and an unreachable Redis is said once, or
refused where the configuration requires it."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.cli import main
from app.cli.exits import EXIT_UNREACHABLE, EXIT_USAGE
from app.config.preflight import listen_problem, redis_problem, unreachable_redis
from tests.support.gateway import gateway_config
from tests.support.gateway_process import GatewayProcess
from tests.support.ports import free_port
from tests.support.servers import Refuser


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No BREAKER_* from the caller, the admin listener on a free port; what serve
    sets is undone after the test."""
    for name in ("REDIS_URL", "CONFIG", "UPSTREAMS", "ADMIN_TOKEN"):
        monkeypatch.delenv(f"BREAKER_{name}", raising=False)
    monkeypatch.setenv("BREAKER_PUBLIC_URL", "http://127.0.0.1:8000")
    monkeypatch.setenv("BREAKER_ADMIN_HOST", "127.0.0.1")
    monkeypatch.setenv("BREAKER_ADMIN_PORT", str(free_port()))
    return monkeypatch


def dead_redis() -> str:
    return f"redis://user:secret@127.0.0.1:{free_port()}/0"


def test_a_taken_port_is_named_in_one_line(taken_port: int) -> None:
    assert listen_problem("127.0.0.1", taken_port) == (
        f"port {taken_port} on 127.0.0.1 is in use: pick another with --port"
    )


def test_a_free_port_is_no_problem() -> None:
    assert listen_problem("127.0.0.1", free_port()) is None


def test_serve_on_a_taken_port_exits_2_before_any_banner_or_token(
    environment: pytest.MonkeyPatch, taken_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--port", str(taken_port)]) == EXIT_USAGE
    printed = capsys.readouterr()
    assert printed.out == ""
    assert printed.err == (
        f"fleetbreaker: port {taken_port} on 127.0.0.1 is in use: pick another with --port\n"
    )


def test_serve_with_a_taken_admin_port_exits_2_before_any_banner_or_token(
    environment: pytest.MonkeyPatch, taken_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    assert main(["serve", "--port", str(port), "--admin-port", str(taken_port)]) == EXIT_USAGE
    printed = capsys.readouterr()
    assert printed.out == ""
    assert printed.err == (
        f"fleetbreaker: port {taken_port} on 127.0.0.1 is in use: pick another with --admin-port\n"
    )


def test_serve_refuses_one_port_for_the_proxy_and_the_admin_listener(
    environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    assert main(["serve", "--port", str(port), "--admin-port", str(port)]) == EXIT_USAGE
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"fleetbreaker: port {port} is the proxy's (--port) and the admin")
    assert line.endswith("pick another with --admin-port")


def test_serve_refuses_a_short_admin_token_naming_the_variable(
    environment: pytest.MonkeyPatch, taken_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 1-character token was accepted, and guessed. It is refused before anything
    listens: before the ports are checked (a taken one here, so that a serve that
    accepted the token would stop there, not serve)."""
    environment.setenv("BREAKER_ADMIN_TOKEN", "x")
    assert main(["serve", "--port", str(taken_port)]) == EXIT_USAGE
    printed = capsys.readouterr()
    assert printed.out == ""
    [line] = printed.err.splitlines()
    assert line.startswith(
        "fleetbreaker: invalid configuration: BREAKER_ADMIN_TOKEN: must be at least 16 "
        "characters, got 1"
    )


def test_the_demo_upstream_on_a_taken_port_exits_2_before_its_address(
    environment: pytest.MonkeyPatch, taken_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo-upstream", "--port", str(taken_port)]) == EXIT_USAGE
    printed = capsys.readouterr()
    assert printed.out == ""
    assert f"port {taken_port} on 127.0.0.1 is in use" in printed.err


def test_a_dead_redis_is_a_problem_with_its_reason() -> None:
    reason = redis_problem(dead_redis(), timeout=1.0)
    assert reason is not None
    assert "Connection refused" in reason


def test_without_redis_fail_open_upstreams_serve_on_per_process_breakers(
    tmp_path: Path,
) -> None:
    url = "redis://user:secret@redis.internal:6379/0"
    config = gateway_config(tmp_path, redis_url=url, upstreams="api=http://h")
    assert unreachable_redis(config, "Error 111") == (
        "Redis at redis://***@redis.internal:6379/0 unreachable (Error 111): "
        "serving with per-process breakers (fail_open) until it answers"
    )


def test_without_redis_each_upstream_follows_its_own_policy(tmp_path: Path) -> None:
    config = gateway_config(
        tmp_path,
        """
        [upstreams.payments]
        url = "http://payments"
        breaker = { on_backend_error = "fail_closed" }
        [upstreams.search]
        url = "http://search"
        [upstreams.static]
        url = "http://static"
        breaker = false
        """,
        redis_url=dead_redis(),
    )
    assert unreachable_redis(config, "Error 111").endswith(
        "(Error 111): serving with per-process breakers (fail_open): search; "
        "answering 503 (fail_closed): payments until it answers"
    )


def test_require_redis_refuses_to_start_when_redis_is_unreachable(
    environment: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text("[gateway]\nrequire_redis = true\n")
    environment.setenv("BREAKER_CONFIG", str(config))
    environment.setenv("BREAKER_REDIS_URL", dead_redis())
    assert main(["serve", "--port", str(free_port())]) == EXIT_UNREACHABLE
    printed = capsys.readouterr()
    assert printed.out == ""
    [line] = printed.err.splitlines()
    assert line.startswith("fleetbreaker: Redis at redis://***@127.0.0.1:")
    assert line.endswith("not starting, as gateway.require_redis is true")


def test_require_redis_without_a_redis_url_is_a_configuration_error(
    environment: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text("[gateway]\nrequire_redis = true\n")
    environment.setenv("BREAKER_CONFIG", str(config))
    assert main(["serve", "--port", str(free_port())]) == EXIT_USAGE
    assert capsys.readouterr().err == (
        "fleetbreaker: invalid configuration: "
        "gateway.require_redis: true, but BREAKER_REDIS_URL is not set\n"
    )


@pytest.mark.slow  # a real serve, on a Redis that refuses every connection
def test_serve_on_a_dead_redis_says_so_once_and_logs_the_outage_once(tmp_path: Path) -> None:
    refuser = Refuser(free_port())
    url = f"redis://127.0.0.1:{refuser.sock.getsockname()[1]}/0"
    gateway = GatewayProcess(tmp_path, {"BREAKER_REDIS_URL": url}, workers=1)
    try:
        gateway.start()
        # The start-up PING, then the events follower's first tries (backoff from 50 ms).
        assert refuser.wait_accepted(6) >= 6
    finally:
        gateway.stop()
        refuser.close()
    first, *rest = gateway.log().splitlines()
    assert first.startswith(f"fleetbreaker: warning: Redis at {url} unreachable (")
    assert first.endswith("): serving with per-process breakers (fail_open) until it answers")
    logged = [json.loads(line)["msg"] for line in rest if line.startswith("{")]
    [lost] = [line for line in logged if line.startswith("events channel")]
    assert lost.startswith("events channel breaker:events lost: ")
