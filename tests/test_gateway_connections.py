"""``fleetbreaker serve`` as a real process, against clients that never finish their
request head: a half-sent head is closed after ``head_timeout``, an unterminated head
is cut once it passes ``max_head_bytes``, and past ``max_connections`` the connection
that has waited longest makes room, so that ``/healthz`` still answers.

The timeouts are short here (0.5 s); every wait is a bounded loop or a socket timeout.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import web
from tests.support.gateway_process import GatewayProcess

pytestmark = pytest.mark.slow  # each test runs the gateway as a process

HEAD_TIMEOUT = 0.5
MAX_HEAD_BYTES = 65536
MAX_CONNECTIONS = 6
_BOUND = 10.0  # seconds: a bound on any wait, never a delay
HALF_HEAD = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n"  # no blank line: never whole


def serve(workdir: Path, head_timeout: float) -> GatewayProcess:
    """The gateway, one worker (the cap is per worker), with these limits."""
    config = workdir / "fleetbreaker.toml"
    config.write_text(
        f"""
        [gateway]
        head_timeout = {head_timeout}
        max_head_bytes = {MAX_HEAD_BYTES}
        max_connections = {MAX_CONNECTIONS}
        [upstreams.api]
        url = "http://127.0.0.1:9"
        retry = {{ attempts = 1 }}
        """
    )
    process = GatewayProcess(workdir, {"BREAKER_CONFIG": str(config)}, workers=1)
    process.start()
    return process


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    process = serve(tmp_path, HEAD_TIMEOUT)
    yield process
    process.stop()


@pytest.fixture
def patient(tmp_path: Path) -> Iterator[GatewayProcess]:
    """A head timeout no test reaches: what closes a connection is the cap."""
    process = serve(tmp_path, 300.0)
    yield process
    process.stop()


def connect(gateway: GatewayProcess, head: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=_BOUND)
    if head:
        sock.sendall(head)
    return sock


def closed_by_server(sock: socket.socket, within: float = _BOUND) -> bool:
    """Whether the server closes ``sock`` within ``within`` seconds, sending nothing."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    finally:
        sock.settimeout(_BOUND)


def still_open(sock: socket.socket) -> bool:
    return not closed_by_server(sock, within=0.05)


def healthy(gateway: GatewayProcess) -> bool:
    """``/healthz`` on a fresh connection answers 200."""
    return web.get(f"{gateway.url}/healthz", timeout=_BOUND).status_code == 200


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_a_half_sent_head_is_closed_after_the_head_timeout(gateway: GatewayProcess) -> None:
    with connect(gateway, HALF_HEAD) as sock:
        assert still_open(sock)  # not refused: it has head_timeout to finish
        started = time.monotonic()
        assert closed_by_server(sock)
        assert time.monotonic() - started < _BOUND  # a hang check, not a speed check


def test_a_connection_that_sends_nothing_is_closed_after_the_head_timeout(
    gateway: GatewayProcess,
) -> None:
    with connect(gateway) as sock:
        assert closed_by_server(sock)


def test_a_head_trickled_a_byte_at_a_time_is_closed_after_the_head_timeout(
    gateway: GatewayProcess,
) -> None:
    """Every byte that comes counts as activity to uvicorn, whose only timer (keep-alive)
    starts after a first response anyway: the head timer counts from the first byte."""
    with connect(gateway, HALF_HEAD + b"X-Slow: ") as sock:
        deadline = time.monotonic() + _BOUND
        while not closed_by_server(sock, within=0.05):
            assert time.monotonic() < deadline, "a trickled head kept its connection"
            try:
                sock.sendall(b"a")
            except OSError:
                break  # reset by the gateway


def test_an_unterminated_head_is_cut_before_it_grows_past_the_bound(
    gateway: GatewayProcess,
) -> None:
    assert gateway.process is not None
    before = rss_bytes(gateway.process.pid)
    limit = 64 * 1024 * 1024  # what the 4 connections of the report sent, each
    sent = 0
    with connect(gateway, HALF_HEAD + b"X-Big: ") as sock:
        try:
            while sent < limit:
                sock.sendall(b"a" * 65536)
                sent += 65536
        except OSError:
            pass  # reset by the gateway: what this test waits for
        assert sent < limit
        assert closed_by_server(sock)
    # What got through before the cut sat in kernel buffers on both sides; the
    # gateway kept at most the bound and one read of it.
    assert rss_bytes(gateway.process.pid) - before < 16 * 1024 * 1024
    assert healthy(gateway)


def test_past_the_cap_the_longest_waiting_connections_make_room(
    patient: GatewayProcess,
) -> None:
    socks = [connect(patient, HALF_HEAD) for _ in range(MAX_CONNECTIONS + 3)]
    try:
        # The three that waited longest were closed as the last three came in.
        assert [closed_by_server(sock, within=1.0) for sock in socks[:3]] == [True] * 3
        assert all(still_open(sock) for sock in socks[3:])
        assert healthy(patient)  # its connection, too, made room
    finally:
        for sock in socks:
            sock.close()


def test_past_the_cap_a_newcomer_is_refused_when_every_connection_has_a_request_under_way(
    patient: GatewayProcess,
) -> None:
    """A request whose body is still to come is under way: never closed to make room."""
    upload = (
        b"POST /proxy/api/x HTTP/1.1\r\nHost: gateway\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    busy = [connect(patient, upload) for _ in range(MAX_CONNECTIONS)]
    try:
        for sock in busy:  # the gateway read the head, and waits for the body
            assert sock.recv(25) == b"HTTP/1.1 100 Continue\r\n\r\n"
        with connect(patient) as newcomer:
            assert closed_by_server(newcomer, within=1.0)
        assert all(still_open(sock) for sock in busy)
        busy[0].sendall(b"12345")  # one request ends: its connection may make room
        assert busy[0].recv(12).startswith(b"HTTP/1.1 502")
        assert healthy(patient)
    finally:
        for sock in busy:
            sock.close()
