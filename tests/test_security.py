"""Hostile input: path escapes and SSRF, header injection, hop-by-hop headers, oversized
heads, service workers, the admin token, and breaker names that try to reach other keys.

The gateway runs in uvicorn (its production HTTP parser) in this process, its admin
listener next to it as ``serve`` runs it, so that raw bytes reach it as a client would
send them, and so that every outgoing connection it makes (``socket.connect``) and
every name it resolves (``getaddrinfo``) is recorded.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
import redis
import uvicorn

from app import GatewayConfig, create_app
from breaker import (
    BackendUnavailableError,
    BreakerConfig,
    CircuitBreaker,
    CircuitOpenError,
    RetryPolicy,
    SyncResilientTransport,
)
from breaker._keys import BreakerKeys
from tests.conftest import Harness
from tests.support import web
from tests.support.gateway import AUTH, TOKEN, gateway_config
from tests.support.gateway_process import GatewayProcess
from tests.support.ports import free_port
from tests.support.reliability import Reliability, answer_label
from tests.support.servers import RedisServer
from tests.support.upstream import Reply, Upstream

MAX_HEAD = 8192


@dataclass
class Recorder:
    """Every TCP connection and name lookup this process makes while installed."""

    connects: list[Any] = field(default_factory=list)
    lookups: list[Any] = field(default_factory=list)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    record = Recorder()
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def recording_connect(sock: socket.socket, address: Any) -> None:
        record.connects.append(address)
        connect(sock, address)

    def recording_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        record.lookups.append(host)
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", recording_connect)
    monkeypatch.setattr(socket, "getaddrinfo", recording_getaddrinfo)
    return record


@dataclass
class LiveGateway:
    port: int
    admin_port: int
    server: uvicorn.Server

    def send(self, head: bytes, port: int | None = None) -> tuple[int, bytes]:
        """Send a raw request head (to the proxy's port, by default); the status and
        body of the answer."""
        address = ("127.0.0.1", port or self.port)
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(head)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        status_line, _, rest = answer.partition(b"\r\n")
        _, _, body = rest.partition(b"\r\n\r\n")
        return int(status_line.split()[1]), body

    def get(self, target: bytes, *headers: bytes) -> tuple[int, bytes]:
        return self.send(_head(target, headers))

    def admin_get(self, target: bytes, *headers: bytes) -> tuple[int, bytes]:
        """The admin listener's answer."""
        return self.send(_head(target, headers), self.admin_port)


def _head(target: bytes, headers: tuple[bytes, ...]) -> bytes:
    lines = [b"GET " + target + b" HTTP/1.1", b"Host: gateway", *headers]
    return b"\r\n".join([*lines, b"Connection: close", b"", b""])


@contextlib.contextmanager
def serving(config: GatewayConfig) -> Iterator[LiveGateway]:
    """The gateway with ``config`` in uvicorn, in a thread, on a free port; its admin
    listener on the port ``config`` names (``live_config`` picks a free one)."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config), host="127.0.0.1", port=port, loop="asyncio", log_level="error"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started
    yield LiveGateway(port, config.admin_port, server)
    server.should_exit = True
    thread.join(10)


def live_config(tmp_path: Path, toml: str, *, redis_url: str | None = None) -> GatewayConfig:
    """``toml``, with the test's admin token and a free port for the admin listener."""
    return gateway_config(tmp_path, toml, redis_url=redis_url, admin_port=str(free_port()))


@pytest.fixture
def live(tmp_path: Path, upstream: Upstream) -> Iterator[LiveGateway]:
    config = live_config(
        tmp_path,
        f"""
        [gateway]
        max_header_bytes = {MAX_HEAD}
        [upstreams.api]
        url = "{upstream.url}/base/"
        retry = {{ attempts = 1 }}
        """,
    )
    with serving(config) as gateway:
        yield gateway


# -- path escapes and SSRF -------------------------------------------------------------

REFUSED, FORWARDED, PARSER, UNKNOWN = "refused", "forwarded", "parser", "unknown"
ESCAPES = [
    (b"/proxy/api/../admin/breakers", REFUSED),
    (b"/proxy/api/..%2fadmin", REFUSED),
    (b"/proxy/api/%2e%2e/%2e%2e/admin", REFUSED),
    (b"/proxy/api/%2E%2E%2Fadmin", REFUSED),
    (b"/proxy/api/v1/../../x", REFUSED),
    (b"/proxy/api/%252e%252e/admin", REFUSED),  # double encoding
    (b"/proxy/api/%25252e%25252e/admin", REFUSED),  # triple
    (b"/proxy/api/%2525252e%2525252e/admin", REFUSED),  # past the decoding rounds
    (b"/proxy/api//evil.example/x", REFUSED),
    (b"/proxy/api/%2f%2fevil.example/x", REFUSED),
    (b"/proxy/api/http://evil.example/", REFUSED),
    (b"/proxy/api/http:%2f%2fevil.example/", REFUSED),
    (b"/proxy/api/\\\\evil.example/x", REFUSED),
    (b"/proxy/api/..\\..\\admin", REFUSED),
    (b"/proxy/api/%5c%5cevil.example", REFUSED),
    (b"/proxy/api/user:pass@evil.example/x", REFUSED),
    (b"/proxy/api/@evil.example/x", FORWARDED),  # only a path segment upstream
    (b"/proxy/api/%40evil.example", FORWARDED),
    (b"/proxy/api/x?next=http://evil.example/", FORWARDED),  # only a query upstream
    (b"/proxy/api/%00", REFUSED),
    (b"/proxy/api/a%0d%0aHost:%20evil.example", REFUSED),
    (b"/proxy/api/a%250d%250aHost:evil.example", REFUSED),
    (b"/proxy/api/a\x00b", PARSER),
    # The parser ends the request line at the CR/LF: what follows is headers, and the
    # request one for /base/a, on the configured host.
    (b"/proxy/api/a\r\nHost: evil.example\r\nX: b", FORWARDED),
    (b"/proxy/%2e%2e/admin", UNKNOWN),
    # The router decodes the upstream's segment: its name must come as it is, or part
    # of the path would vanish (sec%2F..%2F..%2F__reset/x routed to sec, path /x).
    (b"/proxy/api%2F..%2F..%2F__reset/x", REFUSED),
    (b"/proxy/api%2fx/y", REFUSED),
    (b"/proxy/ap%69/x", REFUSED),
    # The absolute form: the server takes the path and ignores the host (RFC 9112 3.2.2).
    (b"http://evil.example/proxy/api/x", FORWARDED),
]


@pytest.mark.parametrize(("target", "expected"), ESCAPES, ids=[repr(t)[2:-1] for t, _ in ESCAPES])
def test_no_path_makes_the_gateway_contact_anything_but_its_upstream(
    live: LiveGateway, upstream: Upstream, recorder: Recorder, target: bytes, expected: str
) -> None:
    status, body = live.get(target)
    _ESCAPE_ANSWERS.append(_label(status, body))
    upstream_address = ("127.0.0.1", upstream.port)
    outgoing = [address for address in recorder.connects if address != ("127.0.0.1", live.port)]
    assert set(outgoing) <= {upstream_address}
    assert set(recorder.lookups) <= {"127.0.0.1"}
    for hit in upstream.hits:
        assert hit.raw_path.startswith(b"/base/")
        assert ".." not in unquote(unquote(hit.raw_path.decode())).split("/")
    if expected == FORWARDED:
        assert (status, len(upstream.hits)) == (200, 1)
        return
    assert upstream.hits == []
    assert outgoing == []
    if expected == PARSER:
        assert status == 400  # uvicorn's own parser: plain text, before any route
    elif expected == UNKNOWN:
        assert status == 404
        assert json.loads(body)["error"] in ("unknown_upstream", "not_found")
    else:
        assert (status, json.loads(body)["error"]) == (400, "invalid_path")


def _label(status: int, body: bytes) -> str:
    """Here a plain-text error can only be uvicorn's parser's: nothing reached an upstream
    that answers with one."""
    return answer_label(status, body, plain_from="uvicorn's parser")


_ESCAPE_ANSWERS: list[str] = []
_HEADER_ANSWERS: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _tables(reliability: Reliability) -> Iterator[None]:
    """The escape and header tables become RELIABILITY.md rows once the module is done,
    and only when every case of a table ran in this process (xdist may split a module
    between workers; ``./scripts/reliability`` runs it whole)."""
    yield
    if len(_ESCAPE_ANSWERS) == len(ESCAPES):
        reliability.record(
            "test_security::path_escapes",
            f"{len(ESCAPES)} path escapes and SSRF forms (`..`, `%2e%2e`, `//host`, "
            "`http://`, backslashes, `@`, double and triple encoding, NUL, CR/LF, an "
            "encoded upstream name)",
            answers=_ESCAPE_ANSWERS,
            lost="nothing: no connection to anything but the configured upstream host; "
            "each 200 a path under its base (`@`, `%40`, a query, a request line split at "
            "CR/LF, the absolute form)",
        )
    if len(_HEADER_ANSWERS) == len(INJECTIONS) + 3:
        reliability.record(
            "test_security::headers",
            f"CR, LF, NUL and folding in headers ({len(INJECTIONS)} forms); heads over "
            f"`max_header_bytes` ({MAX_HEAD} B in the test): one header, 100 headers, a "
            "path",
            answers=_HEADER_ANSWERS,
            lost="nothing: each form was refused by the parser or forwarded with no CR, LF "
            "or NUL in any header; oversized heads reached nothing",
        )


# -- headers -----------------------------------------------------------------------------

#: What the gateway adds on the way to the upstream, and nothing else: the upstream's
#: Host, its own Via, and the X-Forwarded-* of the client.
ADDED = {b"host", b"via", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}
CLIENTS = {
    "none": [],
    "curl": [b"User-Agent: curl/8.5.0", b"Accept: */*"],
    "asks-gzip": [b"Accept-Encoding: gzip", b"User-Agent: app/1.0"],
    "repeated": [b"X-Tag: a", b"x-tag: b", b"Accept-Language: fr"],
}


@pytest.mark.parametrize("client", CLIENTS.values(), ids=CLIENTS.keys())
def test_the_upstream_gets_exactly_the_headers_the_client_sent(
    live: LiveGateway, upstream: Upstream, client: list[bytes]
) -> None:
    status, _ = live.get(b"/proxy/api/echo", *client)
    assert status == 200
    (hit,) = upstream.hits
    received = [(name, value) for name, value in hit.raw_headers if name not in ADDED]
    sent = [tuple(line.split(b": ", 1)) for line in client]
    assert received == [(name.lower(), value) for name, value in sent]
    assert dict(hit.raw_headers)[b"via"] == b"1.1 fleetbreaker"


def test_a_compressed_body_comes_back_as_the_upstream_sent_it_only_when_asked(
    live: LiveGateway, upstream: Upstream
) -> None:
    gzipped = gzip.compress(b"hello " * 100)
    upstream.plan("/base/z", Reply(body=gzipped, headers=(("Content-Encoding", "gzip"),)))
    status, body = live.get(b"/proxy/api/z", b"Accept-Encoding: gzip")
    assert (status, body) == (200, gzipped)
    status, _ = live.get(b"/proxy/api/plain")
    (_, plain) = upstream.hits
    assert b"accept-encoding" not in dict(plain.raw_headers)  # never asked for on its own


def test_a_cookie_an_upstream_sets_for_one_client_never_reaches_another(
    live: LiveGateway, upstream: Upstream
) -> None:
    upstream.plan("/base/login", Reply(headers=(("Set-Cookie", "session=alice; Path=/"),)))
    live.get(b"/proxy/api/login")
    live.get(b"/proxy/api/other")
    assert "cookie" not in upstream.hits_on("/base/other")[0].headers


HOP_BY_HOP = [
    b"Connection: keep-alive, X-Private",
    b"X-Private: must-not-pass",
    b"Keep-Alive: timeout=5",
    b"TE: trailers",
    b"Upgrade: h2c",
    b"Proxy-Authorization: Basic c2VjcmV0",
    b"Proxy-Connection: keep-alive",
    b"Trailer: X-After",
]


def test_hop_by_hop_and_connection_listed_headers_never_reach_the_upstream(
    live: LiveGateway, upstream: Upstream
) -> None:
    status, _ = live.get(b"/proxy/api/h", *HOP_BY_HOP, b"X-Kept: yes")
    assert status == 200
    (hit,) = upstream.hits
    assert hit.headers["x-kept"] == "yes"
    for name in ("x-private", "keep-alive", "te", "upgrade", "proxy-authorization"):
        assert name not in hit.headers
    assert hit.headers.get("connection", "keep-alive") == "keep-alive"  # httpx's own


def test_hop_by_hop_headers_of_the_upstream_never_reach_the_client(
    live: LiveGateway, upstream: Upstream
) -> None:
    upstream.plan(
        "/base/r",
        Reply(headers=(("Connection", "X-Internal"), ("X-Internal", "1"), ("X-Public", "2"))),
    )
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        sock.sendall(b"GET /proxy/api/r HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head = answer.partition(b"\r\n\r\n")[0].lower()
    assert b"x-public: 2" in head
    assert b"x-internal" not in head


# -- what upstream content may do in a browser -------------------------------------------


@pytest.mark.parametrize("value", [b"script", b"Script ", b"SCRIPT"])
def test_a_service_workers_script_is_never_fetched_through_the_proxy(
    live: LiveGateway, upstream: Upstream, value: bytes
) -> None:
    """A worker registered there would run with the origin every upstream shares, and
    take over the pages of all of them."""
    status, body = live.get(b"/proxy/api/sw.js", b"Service-Worker: " + value)
    assert (status, json.loads(body)["error"]) == (403, "service_worker_refused")
    assert upstream.hits == []


def test_service_worker_allowed_never_reaches_the_client(
    live: LiveGateway, upstream: Upstream
) -> None:
    """An upstream's ``Service-Worker-Allowed: /`` would let a worker of its path
    claim every path of the proxy's origin."""
    upstream.plan(
        "/base/worker.js",
        Reply(headers=(("Service-Worker-Allowed", "/"), ("Content-Type", "text/javascript"))),
    )
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        sock.sendall(b"GET /proxy/api/worker.js HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head = answer.partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 200")
    assert b"content-type: text/javascript" in head
    assert b"service-worker-allowed" not in head


@pytest.mark.parametrize(
    "target",
    [
        b"/admin/breakers",
        b"/dashboard",
        b"/dashboard/fleet",
        b"/metrics",
        b"/docs",
        b"/openapi.json",
    ],
)
def test_the_proxys_port_answers_none_of_the_admin_listeners_routes(
    live: LiveGateway, target: bytes
) -> None:
    auth = b"Authorization: Bearer " + TOKEN.encode()
    status, body = live.get(target, auth)
    assert (status, json.loads(body)["error"]) == (404, "not_found")
    assert live.admin_get(target, auth)[0] == 200


INJECTIONS = [
    b"X-A: a\r\n folded: into-the-value",  # obsolete line folding
    b"X-A: a\rInjected: 1",  # a bare CR
    b"X-A: a\x00b",  # NUL
    b"X A: b",  # a space in a name
    b"X-A: a\nInjected: 1",  # a bare LF: one more header, at most
]


@pytest.mark.parametrize("header", INJECTIONS, ids=[repr(h)[2:-1] for h in INJECTIONS])
def test_a_cr_or_lf_in_a_header_is_refused_or_never_forwarded_inside_a_value(
    live: LiveGateway, upstream: Upstream, header: bytes
) -> None:
    status, body = live.get(b"/proxy/api/inj", header)
    _HEADER_ANSWERS.append(_label(status, body))
    assert status in (200, 400)
    for hit in upstream.hits:
        for name, value in hit.headers.items():
            assert not any(char in name + value for char in "\r\n\x00")


def test_percent_encoded_cr_lf_in_a_header_is_forwarded_as_the_text_it_is(
    live: LiveGateway, upstream: Upstream
) -> None:
    status, _ = live.get(b"/proxy/api/pct", b"X-A: a%0d%0aInjected: 1")
    assert status == 200
    (hit,) = upstream.hits
    assert hit.headers["x-a"] == "a%0d%0aInjected: 1"
    assert "injected" not in hit.headers


# -- size limits ------------------------------------------------------------------------

MAX_BODY = 256 * 1024


@pytest.fixture
def limited(tmp_path: Path, upstream: Upstream) -> Iterator[LiveGateway]:
    """A gateway whose bodies may be 256 KiB, buffered up to 16 KiB."""
    config = live_config(
        tmp_path,
        f"""
        [gateway]
        max_body_bytes = {MAX_BODY}
        retry_buffer_bytes = {16 * 1024}
        [upstreams.api]
        url = "{upstream.url}/base/"
        """,
    )
    with serving(config) as gateway:
        yield gateway


def read_answer(sock: socket.socket, pending: bytes = b"") -> tuple[int, bytes, bytes]:
    """One HTTP answer from ``sock``: its status, head and body (by Content-Length)."""
    data = pending
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed after {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "the connection closed mid-body"
        rest += chunk
    return int(head.split()[1]), head, rest[:length]


def chunked(body: bytes, size: int = 8192) -> bytes:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"


UPLOADS = {
    "declared": lambda body: b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
    "chunked": lambda body: b"Transfer-Encoding: chunked\r\n\r\n" + chunked(body),
}


@pytest.mark.parametrize("framing", UPLOADS.values(), ids=UPLOADS.keys())
@pytest.mark.parametrize("connection", [b"keep-alive", b"close"])
def test_a_refused_upload_is_drained_so_its_connection_ends_cleanly(
    limited: LiveGateway, upstream: Upstream, framing: Any, connection: bytes
) -> None:
    """Answered and closed while the client still sends (nginx asks ``Connection:
    close``), a refusal ends in a reset, which nginx takes for a dead replica: the
    rest of the body is read first, then the connection closes, or serves the next."""
    body = b"x" * (MAX_BODY + MAX_BODY // 2)
    with socket.create_connection(("127.0.0.1", limited.port), timeout=10) as sock:
        sock.sendall(
            b"POST /proxy/api/upload HTTP/1.1\r\nHost: g\r\nConnection: %s\r\n%s"
            % (connection, framing(body))
        )
        status, _, answer = read_answer(sock)
        assert (status, json.loads(answer)["error"]) == (413, "body_too_large")
        if connection == b"close":
            assert sock.recv(65536) == b""  # an orderly end, not ECONNRESET
        else:
            sock.sendall(b"GET /proxy/api/next HTTP/1.1\r\nHost: g\r\n\r\n")
            assert read_answer(sock)[0] == 200
    # A body over the retry buffer streams to the upstream as it comes: it may have
    # seen the start of it, never the whole.
    assert all(len(hit.body) < MAX_BODY for hit in upstream.hits_on("/base/upload"))


def test_a_client_gone_mid_upload_is_one_log_line_and_counts_for_nobody(
    limited: LiveGateway, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fleetbreaker.gateway")
    with socket.create_connection(("127.0.0.1", limited.port), timeout=10) as sock:
        sock.sendall(
            b"POST /proxy/api/upload HTTP/1.1\r\nHost: g\r\nContent-Length: %d\r\n\r\n" % MAX_BODY
        )
        sock.sendall(b"x" * (MAX_BODY // 2))  # past the retry buffer: streaming
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not _refusals(caplog):
        time.sleep(0.02)
    assert [record.fields["error"] for record in _refusals(caplog)] == ["client_disconnected"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    _, body = limited.admin_get(b"/admin/breakers/api", b"Authorization: Bearer " + TOKEN.encode())
    assert json.loads(body)["window_calls"] == 0


def _refusals(caplog: pytest.LogCaptureFixture) -> list[Any]:
    return [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "refused"]


# -- slow clients: a local overload is never the upstream's failure ----------------------

POOL = 3  # connections of each upstream's pool, in this test's gateway
IDLE = 1.5  # seconds a request body may stay silent


@pytest.fixture
def two_upstreams(tmp_path: Path, upstream: Upstream) -> Iterator[LiveGateway]:
    """``other`` takes uploads, ``files`` serves pages: two upstreams, each with a pool
    of ``POOL`` connections, a pool wait of 0.5 s, and bodies cut after ``IDLE`` s."""
    config = live_config(
        tmp_path,
        f"""
        [gateway]
        body_idle_timeout = {IDLE}
        [client]
        max_connections = {POOL}
        pool_timeout = 0.5
        [upstreams.other]
        url = "{upstream.url}/other/"
        [upstreams.files]
        url = "{upstream.url}/files/"
        """,
    )
    with serving(config) as gateway:
        yield gateway


def _trickle(port: int, sent: bytes) -> socket.socket:
    """A client that sends an upload's head and its first 70,000 bytes of 1,000,000,
    then nothing more."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        b"POST /proxy/other/upload HTTP/1.1\r\nHost: g\r\nContent-Length: 1000000\r\n\r\n" + sent
    )
    return sock


def _view(gateway: LiveGateway, name: str) -> dict[str, Any]:
    _, body = gateway.admin_get(
        b"/admin/breakers/" + name.encode(), b"Authorization: Bearer " + TOKEN.encode()
    )
    view: dict[str, Any] = json.loads(body)
    return view


def test_trickled_uploads_never_open_a_breaker_nor_starve_another_upstream(
    two_upstreams: LiveGateway, upstream: Upstream, reliability: Reliability
) -> None:
    """The attack: more clients than ``other`` has connections start a 1 MB upload,
    send 70,000 bytes, and stall. Before: one pool served every upstream, so a plain
    GET to the healthy ``files`` waited for it (504), and the pool's own time-outs
    counted as ``files``'s failures until its breaker opened, fleet-wide."""
    upstream.plan("/files/page.html", Reply(200, body=b"<p>page</p>"))
    clients = [_trickle(two_upstreams.port, b"x" * 70_000) for _ in range(POOL + 2)]
    try:
        page = two_upstreams.get(b"/proxy/files/page.html")
        answers = [read_answer(sock) for sock in clients]  # bounded: each socket's 10 s
    finally:
        for sock in clients:
            sock.close()
    # POOL uploads held other's connections until their bodies went silent for IDLE s;
    # the rest waited 0.5 s for a connection: this worker's overload, not other's.
    codes = sorted(json.loads(body)["error"] for _, _, body in answers)
    assert codes == ["overloaded"] * 2 + ["request_timeout"] * POOL
    assert page == (200, b"<p>page</p>")
    for name in ("other", "files"):
        view = _view(two_upstreams, name)
        assert (view["state"], view["failures"], view["window_failures"]) == ("closed", 0, 0)
    assert two_upstreams.get(b"/proxy/other/after")[0] == 200  # its pool is free again
    reliability.record(
        "test_security::trickled_uploads",
        f"{POOL + 2} clients start a 1 MB upload to `other` (a pool of {POOL}), send "
        "70,000 bytes and stall; meanwhile a GET to the healthy `files`",
        answers=[answer_label(status, body) for status, _, body in answers] + [answer_label(*page)],
        lost="nothing: `files` answered at once (a pool per upstream); the pool's wait "
        "was a 503 overloaded and a stalled body a 408, neither a failure of any breaker",
    )


def test_a_client_that_expects_100_continue_is_refused_before_it_sends(
    limited: LiveGateway, upstream: Upstream
) -> None:
    with socket.create_connection(("127.0.0.1", limited.port), timeout=10) as sock:
        sock.sendall(
            b"POST /proxy/api/upload HTTP/1.1\r\nHost: g\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1)
        )
        status, head, _ = read_answer(sock)
    assert status == 413
    assert b"100 continue" not in head.lower()
    assert upstream.hits == []


@pytest.mark.parametrize(
    "head",
    [
        (b"X-Big: " + b"a" * MAX_HEAD,),
        tuple(b"X-Many-%d: %s" % (n, b"b" * 100) for n in range(100)),
    ],
    ids=["one big header", "many headers"],
)
def test_a_head_over_the_limit_is_431_with_a_json_body_and_sent_nowhere(
    live: LiveGateway, upstream: Upstream, head: tuple[bytes, ...]
) -> None:
    status, body = live.get(b"/proxy/api/big", *head)
    _HEADER_ANSWERS.append(_label(status, body))
    assert status == 431
    answer = json.loads(body)
    assert answer["error"] == "headers_too_large"
    assert f"the limit is {MAX_HEAD}" in answer["detail"]
    assert upstream.hits == []


def test_a_long_path_counts_toward_the_head_limit(live: LiveGateway, upstream: Upstream) -> None:
    status, body = live.get(b"/proxy/api/" + b"p" * MAX_HEAD)
    _HEADER_ANSWERS.append(_label(status, body))
    assert (status, json.loads(body)["error"]) == (431, "headers_too_large")
    assert upstream.hits == []


def test_a_head_under_the_limit_passes(live: LiveGateway, upstream: Upstream) -> None:
    status, _ = live.get(b"/proxy/api/ok", b"X-Big: " + b"a" * (MAX_HEAD // 2))
    assert status == 200


# -- the admin token ---------------------------------------------------------------------


def test_the_token_is_compared_with_hmac_compare_digest(
    live: LiveGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hmac

    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(given: bytes, expected: bytes) -> bool:
        compared.append((given, expected))
        return real(given, expected)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # app.admin.api calls hmac.compare_digest
    status, _ = live.admin_get(b"/admin/breakers", b"Authorization: Bearer wrong")
    assert status == 401
    assert compared == [(b"wrong", TOKEN.encode())]


@pytest.mark.parametrize("parameter", [b"token", b"Token", b"access_token", b"admin_token"])
def test_a_token_in_the_query_string_is_refused_even_when_right(
    live: LiveGateway, parameter: bytes
) -> None:
    status, body = live.admin_get(
        b"/admin/breakers?" + parameter + b"=" + TOKEN.encode(),
        *[b"Authorization: Bearer " + TOKEN.encode()],
    )
    assert (status, json.loads(body)["error"]) == (400, "bad_request")
    assert TOKEN.encode() not in body


@pytest.mark.slow
def test_the_token_never_reaches_the_logs(
    tmp_path: Path, upstream: Upstream, reliability: Reliability
) -> None:
    wrong = "wrong-token-9f8e7d6c5b4a"
    process = GatewayProcess(
        tmp_path,
        {"BREAKER_UPSTREAMS": f"api={upstream.url}", "BREAKER_ADMIN_TOKEN": TOKEN},
        workers=1,
        extra_args=("--access-log", "--log-level", "debug"),
    )
    process.start()
    try:
        admin = process.admin_url
        answers = [
            web.get(f"{admin}/admin/breakers", headers=AUTH, timeout=5),
            web.get(
                f"{admin}/admin/breakers",
                headers={"Authorization": f"Bearer {wrong}"},
                timeout=5,
            ),
            web.get(f"{admin}/admin/breakers?token={TOKEN}", timeout=5),
            web.get(f"{admin}/admin/breakers?access_token={wrong}", timeout=5),
            web.get(f"{process.url}/proxy/api/x", headers=AUTH, timeout=5),
        ]
    finally:
        process.stop()
    log = process.log()
    assert [answer.status_code for answer in answers] == [200, 401, 400, 400, 200]
    assert "/admin/breakers?token=[redacted]" in log  # the admin listener's access log ran
    assert "admin API: refused a missing or wrong token from 127.0.0.1" in log
    assert TOKEN not in log
    assert wrong not in log
    reliability.record(
        "test_security::token_in_logs",
        "Admin token sent right, wrong, and in the query string, access log at debug",
        answers=[str(answer.status_code) for answer in answers],
        lost="nothing: neither token appears anywhere in the gateway's output",
    )


# -- breaker names -----------------------------------------------------------------------

HOSTILE_NAMES = [
    "payments}:window",
    "payments}",
    "{payments}",
    "payments:leases",
    "*",
    "breaker:{payments}",
    "x\r\nFLUSHALL\r\n",
    "a\x00b",
    "%7Bpayments%7D",
    "payments }",
]


def test_hostile_breaker_names_only_ever_touch_their_own_keys(
    harness: Harness, reliability: Reliability
) -> None:
    victim = harness.breaker("payments", failure_threshold=2)
    victim.force_open()
    victim_state = harness.hash("breaker:{payments}")
    names = {"payments", *HOSTILE_NAMES}
    for name in HOSTILE_NAMES:
        hostile = harness.breaker(name, failure_threshold=1)
        with pytest.raises(ZeroDivisionError):
            hostile.call(lambda: 1 / 0)
        hostile.reset()
        hostile.snapshot()
    assert harness.hash("breaker:{payments}") == victim_state
    own_keys = {key for name in names for key in BreakerKeys.of("breaker", name).as_list()}
    present = harness.keys()
    assert present <= own_keys
    assert {BreakerKeys.of("breaker", name).state for name in HOSTILE_NAMES} <= present
    reliability.record(
        f"test_security::breaker_names[{harness.lane}]",
        f"{len(HOSTILE_NAMES)} hostile breaker names through the library API "
        f"(`}}`, `{{...}}`, `*`, another breaker's key, CR/LF, NUL), {harness.lane} lane",
        answers=["own keys only"] * len(HOSTILE_NAMES),
        lost="nothing: every key written is the name's own (escaped inside its hash tag); "
        "the victim breaker's state is unchanged",
    )


def test_a_breaker_name_is_a_redis_key_argument_never_a_command(harness: Harness) -> None:
    cb = harness.breaker("x\r\n*1\r\n$8\r\nFLUSHALL\r\n", failure_threshold=1)
    marker = harness.breaker("marker")
    marker.force_open()
    with pytest.raises(ZeroDivisionError):
        cb.call(lambda: 1 / 0)
    assert harness.hash("breaker:{marker}")["state"] == "forced_open"
    assert isinstance(cb, CircuitBreaker)


# -- a careless neighbour on the same Redis ---------------------------------------------

SECRET = "neighbour-secret-0123456789"


def _post(gateway: LiveGateway, target: bytes) -> tuple[int, bytes]:
    """An admin POST, on the admin listener."""
    return gateway.send(
        b"POST " + target + b" HTTP/1.1\r\nHost: gateway\r\nContent-Length: 0\r\n"
        b"Authorization: Bearer " + TOKEN.encode() + b"\r\nConnection: close\r\n\r\n",
        gateway.admin_port,
    )


def test_a_neighbour_that_rewrites_a_breakers_settings_is_loud_and_a_reset_restores_ours(
    tmp_path: Path,
    redis_server: RedisServer,
    upstream: Upstream,
    caplog: pytest.LogCaptureFixture,
    reliability: Reliability,
) -> None:
    """Another app on the gateway's Redis, with the library's default prefix, one
    breaker per host (2 failures, an hour open), calls a host named like an upstream.
    Before: the gateway only logged a warning, and kept answering 503 for the hour,
    and after an admin reset, two 500s opened it for the hour again."""
    config = live_config(
        tmp_path,
        f"""
        [upstreams.demo]
        url = "{upstream.url}"
        breaker = {{ failure_threshold = 5, reset_timeout = 10 }}
        retry = {{ attempts = 1 }}
        """,
        redis_url=redis_server.url,
    )
    neighbour = redis_server.client()
    answers = []
    with serving(config) as gateway, caplog.at_level(logging.ERROR, logger="breaker"):
        answers.append(gateway.get(b"/proxy/demo/x"))  # stores the gateway's settings
        transport = SyncResilientTransport(
            redis=neighbour,
            breaker_config=BreakerConfig(failure_threshold=2, reset_timeout=3600.0),
            breaker_name=lambda request: "demo",
            retry=RetryPolicy(attempts=1),
        )
        with httpx.Client(transport=transport) as careless:
            for _ in range(3):
                with contextlib.suppress(httpx.TransportError, CircuitOpenError):
                    careless.get("http://127.0.0.1:1/")
        answers.append(gateway.get(b"/proxy/demo/x"))  # the neighbour's open: 503
        _, body = gateway.admin_get(
            b"/admin/breakers/demo", b"Authorization: Bearer " + TOKEN.encode()
        )
        conflict = json.loads(body)["settings_conflict"]
        _, metrics = gateway.admin_get(b"/metrics")
        status, reset = _post(gateway, b"/admin/breakers/demo/reset")
        answers.append(gateway.get(b"/proxy/demo/x"))
        _, after = gateway.admin_get(b"/metrics")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert [status for status, _ in answers] == [200, 503, 200]
    assert conflict == {
        "failure_threshold": {"stored": 2, "here": 5},
        "reset_timeout": {"stored": 3600000, "here": 10000},
    }
    assert b'fleetbreaker_breaker_settings_conflict{upstream="demo"} 1.0' in metrics
    assert status == 200
    assert json.loads(reset)["settings_conflict"] is None
    assert neighbour.hget("breaker:{demo}", "failure_threshold") == b"5"
    assert b'fleetbreaker_breaker_settings_conflict{upstream="demo"} 0.0' in after
    assert any("failure_threshold 2 (stored) / 5 (here)" in line for line in errors), errors
    transport.close()
    neighbour.close()
    reliability.record(
        "test_security::neighbour_rewrites_settings",
        "another app, default prefix, breaker `demo` with 2 failures and 1 h open, trips "
        "it on the gateway's Redis; the admin resets it through the gateway",
        answers=[answer_label(*answer) for answer in answers],
        lost="the neighbour's trip was obeyed (the breaker is one); it was loud: an "
        "ERROR naming both settings, the admin view's settings_conflict, the "
        "fleetbreaker_breaker_settings_conflict gauge; the reset stored the gateway's "
        "settings again. The fix is a prefix per app (an ACL user per prefix: below)",
    )


def test_an_acl_user_held_to_its_prefix_runs_its_breakers_and_touches_no_other_prefix(
    redis_server: RedisServer,
) -> None:
    """The README's ACL: a user that may only touch keys and channels of its own
    prefix runs its breakers there (FUNCTION LOAD, FCALL, PUBLISH, SUBSCRIBE), and a
    breaker of another prefix on that user can read or write nothing there."""
    admin = redis_server.client()
    admin.execute_command(  # type: ignore[no-untyped-call]
        "ACL", "SETUSER", "payments-app", "on", f">{SECRET}", "~payments:*", "&payments:*",
        "+@read", "+@write", "+@scripting", "+@pubsub", "+@connection", "+time",
    )  # fmt: skip
    admin.hset("breaker:{pay}", mapping={"state": "closed", "failures": "0"})
    client = redis.Redis(port=redis_server.port, username="payments-app", password=SECRET)
    ours = CircuitBreaker("pay", redis=client, prefix="payments", failure_threshold=1)
    theirs = CircuitBreaker("pay", redis=client, prefix="breaker", failure_threshold=1)
    try:
        with contextlib.suppress(ConnectionError), ours:
            raise ConnectionError("the upstream is down")
        assert (ours.snapshot().state, ours.snapshot().backend) == ("open", "redis")
        assert ours.follow_events(timeout=5.0)  # its channel, payments:events
        with contextlib.suppress(ConnectionError), theirs:
            raise ConnectionError  # decided by its fallback: Redis refuses it
        with pytest.raises(BackendUnavailableError, match="NoPermission"):
            theirs.snapshot()
    finally:
        ours.close()
        theirs.close()
        client.close()
    assert admin.hgetall("breaker:{pay}") == {b"state": b"closed", b"failures": b"0"}
    assert sorted(admin.keys("payments:*")) == [b"payments:{pay}", b"payments:{pay}:window"]
    admin.close()
