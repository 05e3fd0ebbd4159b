"""The proxy route, in-process (ASGI with lifespan), against a real HTTP upstream, on
both backends. Time is a ManualClock: no test waits for a breaker to reopen."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from breaker.testing import ManualClock
from tests.support.gateway import config_for
from tests.support.gateway import run_with_gateway as run
from tests.support.upstream import Reply, Upstream


def test_request_is_forwarded_with_method_path_query_headers_and_body(
    tmp_path: Path, upstream: Upstream, backend: str | None
) -> None:
    upstream.plan("/base/orders/7", Reply(201, body=b'{"id": 7}', headers=(("x-up", "1"),)))

    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.put(
            "/proxy/api/orders/7?expand=items&q=a%20b",
            content=b'{"qty": 2}',
            headers={"content-type": "application/json", "x-request-id": "r-1"},
        )
        assert response.status_code == 201
        assert response.content == b'{"id": 7}'
        assert response.headers["x-up"] == "1"
        assert response.headers["x-fleetbreaker-attempts"] == "1"

    run(config_for(tmp_path, upstream, backend), scenario)
    [hit] = upstream.hits_on("/base/orders/7")
    assert (hit.method, hit.query, hit.body) == ("PUT", b"expand=items&q=a%20b", b'{"qty": 2}')
    assert hit.headers["x-request-id"] == "r-1"
    assert hit.headers["x-forwarded-for"] == "203.0.113.7"
    assert hit.headers["x-forwarded-host"] == "gateway"
    assert hit.headers["host"] == f"127.0.0.1:{upstream.port}"


def test_a_transient_failure_is_retried_and_the_attempts_are_told(
    tmp_path: Path, upstream: Upstream, backend: str | None
) -> None:
    upstream.plan("/base/flaky", Reply(503), Reply(200, body=b"second"))

    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.get("/proxy/api/flaky")
        assert (response.status_code, response.content) == (200, b"second")
        assert response.headers["x-fleetbreaker-attempts"] == "2"

    run(config_for(tmp_path, upstream, backend), scenario)
    assert len(upstream.hits_on("/base/flaky")) == 2


def test_a_buffered_body_is_sent_again_on_retry(
    tmp_path: Path, upstream: Upstream, backend: str | None
) -> None:
    upstream.plan("/base/put", Reply(503), Reply(200))

    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.put("/proxy/api/put", content=b"x" * 1000)
        assert response.status_code == 200

    run(config_for(tmp_path, upstream, backend), scenario)
    assert [hit.body for hit in upstream.hits_on("/base/put")] == [b"x" * 1000] * 2


def test_a_body_over_the_retry_buffer_is_streamed_and_sent_once(
    tmp_path: Path, upstream: Upstream, backend: str | None
) -> None:
    upstream.plan("/base/put", Reply(503), Reply(200))
    body = bytes(range(256)) * 12  # 3072 bytes: over the 1024 buffer, under the 4096 limit

    async def chunks() -> object:
        for start in range(0, len(body), 500):
            yield body[start : start + 500]

    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.put("/proxy/api/put", content=chunks())  # type: ignore[arg-type]
        assert response.status_code == 503  # passed through: the body cannot be replayed
        assert response.headers["x-fleetbreaker-attempts"] == "1"

    run(config_for(tmp_path, upstream, backend), scenario)
    assert [hit.body for hit in upstream.hits_on("/base/put")] == [body]


def test_post_is_not_retried(tmp_path: Path, upstream: Upstream, backend: str | None) -> None:
    upstream.plan("/base/pay", Reply(503), Reply(200))

    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.post("/proxy/api/pay", content=b"{}")
        assert response.status_code == 503
        assert response.headers["x-fleetbreaker-attempts"] == "1"

    run(config_for(tmp_path, upstream, backend), scenario)
    assert len(upstream.hits_on("/base/pay")) == 1


def test_open_breaker_answers_503_with_retry_after_without_calling_upstream(
    tmp_path: Path, upstream: Upstream, backend: str | None
) -> None:
    upstream.plan("/base/down", Reply(500))
    clock = ManualClock()

    async def scenario(client: httpx.AsyncClient) -> None:
        for _ in range(3):
            assert (await client.get("/proxy/api/down")).status_code == 500
        clock.advance(0.2)
        response = await client.get("/proxy/api/down")
        assert response.status_code == 503
        assert response.headers["retry-after"] == "30"  # 29.8 s, rounded up
        assert response.headers["x-fleetbreaker-attempts"] == "0"
        assert response.json() == {
            "error": "circuit_open",
            "detail": "the circuit of 'api' is open; the upstream was not called",
            "upstream": "api",
            "retry_after": 30,
        }

    run(config_for(tmp_path, upstream, backend), scenario, clock)
    assert len(upstream.hits_on("/base/down")) == 3


def test_attempts_ended_by_the_breaker_opening_midway_say_so(
    tmp_path: Path, upstream: Upstream, backend: str | None
) -> None:
    upstream.plan("/base/down", Reply(503))

    async def scenario(client: httpx.AsyncClient) -> None:
        first = await client.get("/proxy/api/down")  # 3 attempts, 3 failures: opens
        assert first.status_code == 503
        assert first.headers["x-fleetbreaker-attempts"] == "3"
        second = await client.get("/proxy/api/down")
        assert second.json()["error"] == "circuit_open"

    run(config_for(tmp_path, upstream, backend, "retry = { attempts = 5 }"), scenario)
    assert len(upstream.hits_on("/base/down")) == 3


def test_connection_refused_after_retries_is_502(
    tmp_path: Path, upstream: Upstream, backend: str | None
) -> None:
    config = config_for(tmp_path, upstream, backend)
    upstream.close_port()

    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.get("/proxy/api/x")
        assert response.status_code == 502
        assert response.headers["x-fleetbreaker-attempts"] == "3"
        body = response.json()
        assert (body["error"], body["upstream"]) == ("upstream_unavailable", "api")

    run(config, scenario)


def test_an_upstream_slower_than_the_per_try_timeout_is_504(
    tmp_path: Path, upstream: Upstream, backend: str | None
) -> None:
    upstream.plan("/base/slow", Reply(delay_headers=5.0))
    extra = "retry = { attempts = 2, per_try_timeout = 0.5 }"

    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.get("/proxy/api/slow")
        assert response.status_code == 504
        assert response.headers["x-fleetbreaker-attempts"] == "2"
        assert response.json()["error"] == "upstream_timeout"

    run(config_for(tmp_path, upstream, backend, extra), scenario)
    assert len(upstream.hits_on("/base/slow")) == 2


def test_unknown_upstream_is_404_json(
    tmp_path: Path, upstream: Upstream, backend: str | None
) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.get("/proxy/nope/x")
        assert response.status_code == 404
        assert response.json() == {
            "error": "unknown_upstream",
            "detail": "no upstream named 'nope'",
            "upstream": "nope",
        }

    run(config_for(tmp_path, upstream, backend), scenario)


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        ("/proxy/api/%2e%2e/admin", 400, "invalid_path"),
        ("/proxy/api/..%2Fadmin", 400, "invalid_path"),
        ("/proxy/api/%2F%2Fevil.example/", 400, "invalid_path"),
        ("/proxy/api/http:%2F%2Fevil.example", 400, "invalid_path"),
        ("/proxy/api/%252e%252e/admin", 400, "invalid_path"),
        ("/proxy/api/a%5C..%5Cb", 400, "invalid_path"),
        ("/proxy/api/a%00b", 400, "invalid_path"),
        # A decoded line break would match no route: refused before routing.
        ("/proxy/api/a%0d%0aX-Injected:%201", 400, "invalid_path"),
    ],
)
def test_a_path_escape_is_refused_and_reaches_nothing(
    tmp_path: Path, upstream: Upstream, path: str, status: int, error: str
) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.get(path)
        assert response.status_code == status
        assert response.json()["error"] == error

    run(config_for(tmp_path, upstream, None), scenario)
    assert upstream.hits == []


def test_declared_oversized_body_is_413_and_not_sent(
    tmp_path: Path, upstream: Upstream, backend: str | None
) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.post("/proxy/api/upload", content=b"x" * 5000)
        assert response.status_code == 413
        assert response.json() == {
            "error": "body_too_large",
            "detail": "the request body is 5000 bytes; the limit is 4096",
        }

    run(config_for(tmp_path, upstream, backend), scenario)
    assert upstream.hits == []


def test_streamed_oversized_body_is_413_and_not_an_upstream_failure(
    tmp_path: Path, upstream: Upstream, backend: str | None
) -> None:
    async def chunks() -> object:
        for _ in range(10):
            yield b"y" * 1000

    async def scenario(client: httpx.AsyncClient) -> None:
        for _ in range(4):  # more than failure_threshold: the breaker must stay closed
            response = await client.post("/proxy/api/upload", content=chunks())  # type: ignore[arg-type]
            assert response.status_code == 413
        upstream.plan("/base/ok", Reply(200))
        assert (await client.get("/proxy/api/ok")).status_code == 200

    run(config_for(tmp_path, upstream, backend), scenario)


def test_a_large_response_passes_through_unchanged(
    tmp_path: Path, upstream: Upstream, backend: str | None
) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    upstream.plan("/base/big", Reply(200, body=payload))

    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.get("/proxy/api/big")
        assert response.status_code == 200
        assert response.content == payload
        assert response.headers["content-length"] == str(len(payload))

    run(config_for(tmp_path, upstream, backend), scenario)


def test_the_proxy_base_route_reaches_the_base_url(
    tmp_path: Path, upstream: Upstream, backend: str | None
) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        assert (await client.get("/proxy/api?x=1")).status_code == 200

    run(config_for(tmp_path, upstream, backend), scenario)
    [hit] = upstream.hits
    assert (hit.path, hit.query) == ("/base/", b"x=1")


def test_head_passes_status_and_headers_without_a_body(
    tmp_path: Path, upstream: Upstream, backend: str | None
) -> None:
    upstream.plan("/base/doc", Reply(200, body=b"", headers=(("etag", '"v1"'),)))

    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.head("/proxy/api/doc")
        assert response.status_code == 200
        assert response.headers["etag"] == '"v1"'
        assert response.content == b""

    run(config_for(tmp_path, upstream, backend), scenario)
    assert [hit.method for hit in upstream.hits] == ["HEAD"]


def test_an_upstream_without_a_breaker_is_called_once_per_request_and_never_refused(
    tmp_path: Path, upstream: Upstream, backend: str | None
) -> None:
    upstream.plan("/plain/down", Reply(503))
    config = config_for(
        tmp_path,
        upstream,
        backend,
        extra=f'[upstreams.plain]\nurl = "{upstream.url}/plain"\nbreaker = false',
    )

    async def scenario(client: httpx.AsyncClient) -> None:
        for _ in range(5):  # more than the threshold of 3 the guarded upstream has
            response = await client.get("/proxy/plain/down")
            assert response.status_code == 503
            assert response.headers["x-fleetbreaker-attempts"] == "1"

    run(config, scenario)
    assert len(upstream.hits_on("/plain/down")) == 5
