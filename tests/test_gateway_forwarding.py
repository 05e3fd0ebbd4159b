"""What a proxied request becomes: the target URL on the configured origin, and the
headers on each side. Pure functions, no server."""

from __future__ import annotations

import httpx
import pytest

from app.proxy.errors import BadRequest, UnsafePath
from app.proxy.forwarding import (
    check_tail,
    declared_length,
    request_headers,
    response_headers,
    target_url,
)

BASE = httpx.URL("http://10.0.0.5:9000/api/v1")


@pytest.mark.parametrize(
    ("tail", "query", "expected"),
    [
        pytest.param(b"orders/42", b"", "http://10.0.0.5:9000/api/v1/orders/42", id="path"),
        pytest.param(b"", b"", "http://10.0.0.5:9000/api/v1/", id="base"),
        pytest.param(
            b"search", b"q=a%20b&x=1", "http://10.0.0.5:9000/api/v1/search?q=a%20b&x=1", id="query"
        ),
        pytest.param(
            b"files/a%2Fb", b"", "http://10.0.0.5:9000/api/v1/files/a%2Fb", id="kept-encoding"
        ),
        pytest.param(b"users/@me", b"", "http://10.0.0.5:9000/api/v1/users/@me", id="at-sign"),
        pytest.param(b"a/b..c/...", b"", "http://10.0.0.5:9000/api/v1/a/b..c/...", id="dots"),
    ],
)
def test_target_is_the_base_plus_the_path_as_sent(tail: bytes, query: bytes, expected: str) -> None:
    assert str(target_url(BASE, tail, query)) == expected


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(b"..", id="dotdot"),
        pytest.param(b"a/../../admin", id="dotdot-inside"),
        pytest.param(b"./a", id="dot"),
        pytest.param(b"%2e%2e/admin", id="encoded-dotdot"),
        pytest.param(b"%2E%2E%2Fadmin", id="encoded-dotdot-slash"),
        pytest.param(b"..%2fadmin", id="dotdot-encoded-slash"),
        pytest.param(b"%252e%252e/admin", id="double-encoded"),
        pytest.param(b"%25252e%25252e/admin", id="triple-encoded"),
        pytest.param(b"%2525252e%2525252e", id="too-deep"),
        pytest.param(b"/evil.example/x", id="double-slash"),
        pytest.param(b"%2F%2Fevil.example", id="encoded-double-slash"),
        pytest.param(b"http://evil.example/", id="absolute-url"),
        pytest.param(b"http:%2F%2Fevil.example", id="absolute-encoded"),
        pytest.param(b"a\\..\\b", id="backslash"),
        pytest.param(b"%5c%5cevil.example", id="encoded-backslash"),
        pytest.param(b"a%00b", id="nul"),
        pytest.param(b"a%0d%0aHost:%20evil", id="crlf"),
        pytest.param("é".encode(), id="non-ascii"),
    ],
)
def test_a_path_that_could_leave_the_base_is_refused(tail: bytes) -> None:
    with pytest.raises(UnsafePath):
        target_url(BASE, tail, b"")


def test_check_tail_accepts_ordinary_encoded_paths() -> None:
    check_tail(b"caf%C3%A9/100%25/a+b")


def test_hop_by_hop_and_connection_listed_headers_are_not_forwarded() -> None:
    raw = [
        (b"Host", b"gateway.example"),
        (b"Connection", b"keep-alive, X-Secret-Hop"),
        (b"Keep-Alive", b"timeout=5"),
        (b"X-Secret-Hop", b"1"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Upgrade", b"websocket"),
        (b"Proxy-Authorization", b"Basic abc"),
        (b"TE", b"trailers"),
        (b"Authorization", b"Bearer upstream-credential"),
        (b"Accept", b"application/json"),
    ]
    sent = request_headers(raw, client_host="203.0.113.7", scheme="https")
    assert sent == [
        (b"authorization", b"Bearer upstream-credential"),
        (b"accept", b"application/json"),
        (b"x-forwarded-for", b"203.0.113.7"),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"gateway.example"),
        (b"via", b"1.1 fleetbreaker"),
    ]


def test_via_extends_what_an_earlier_proxy_said() -> None:
    raw = [(b"Via", b"1.0 fred"), (b"via", b"1.1 lb")]
    sent = request_headers(raw, client_host=None, scheme="http")
    assert [value for name, value in sent if name == b"via"] == [
        b"1.0 fred, 1.1 lb, 1.1 fleetbreaker"
    ]


def test_forwarded_headers_extend_what_an_earlier_proxy_said() -> None:
    raw = [
        (b"host", b"gateway:8000"),
        (b"x-forwarded-for", b"198.51.100.1"),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"public.example"),
    ]
    sent = dict(request_headers(raw, client_host="10.0.0.2", scheme="http"))
    assert sent[b"x-forwarded-for"] == b"198.51.100.1, 10.0.0.2"
    assert sent[b"x-forwarded-proto"] == b"https"
    assert sent[b"x-forwarded-host"] == b"public.example"


def test_response_headers_keep_repeats_and_drop_hop_by_hop() -> None:
    raw = [
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"Connection", b"close"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Date", b"Sat, 28 Nov 2026 10:00:00 GMT"),
        (b"Server", b"upstream"),
        (b"Content-Type", b"text/plain"),
    ]
    assert response_headers(raw) == [
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"content-type", b"text/plain"),
    ]


def test_response_headers_never_widen_a_service_workers_scope() -> None:
    """Every upstream shares the proxy's origin: ``Service-Worker-Allowed: /`` would let
    one upstream's worker control every path of it."""
    raw = [
        (b"Content-Type", b"text/javascript"),
        (b"Service-Worker-Allowed", b"/"),
        (b"service-worker-allowed", b"/proxy/"),
    ]
    assert response_headers(raw) == [(b"content-type", b"text/javascript")]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param([], None, id="absent"),
        pytest.param([(b"content-length", b"12")], 12, id="number"),
        pytest.param([(b"Content-Length", b"5"), (b"content-length", b"5")], 5, id="same-twice"),
    ],
)
def test_declared_length(raw: list[tuple[bytes, bytes]], expected: int | None) -> None:
    assert declared_length(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param([(b"content-length", b"-1")], id="negative"),
        pytest.param([(b"content-length", b"1e3")], id="not-digits"),
        pytest.param([(b"content-length", b"1"), (b"content-length", b"2")], id="conflicting"),
    ],
)
def test_a_malformed_length_is_a_bad_request(raw: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(BadRequest):
        declared_length(raw)
