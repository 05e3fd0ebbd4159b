"""``breaker.fastapi`` in a FastAPI app of a test's own, in-process (ASGI, with its
lifespan), against a real HTTP upstream, on both backends."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import httpx
import pytest
import redis
from fastapi import Depends, FastAPI
from fastapi.responses import Response

from breaker import (
    BackendUnavailableError,
    BreakerConfig,
    BulkheadConfig,
    CircuitBreaker,
    CircuitOpenError,
    ConfigurationError,
    RetryPolicy,
)
from breaker.fastapi import (
    Resilience,
    Upstream,
    add_exception_handlers,
    lifespan,
    resilience_of,
    upstream_breaker,
    upstream_client,
)
from tests.support.ports import free_port
from tests.support.upstream import Reply
from tests.support.upstream import Upstream as UpstreamServer

Scenario = Callable[[httpx.AsyncClient], Awaitable[None]]
NO_WAIT = RetryPolicy(attempts=2, backoff=0)


def shop(
    upstream_url: str,
    redis_url: str | None,
    *,
    breaker: BreakerConfig | None = None,
    handlers: dict[str, Any] | None = None,
    bulkhead: BulkheadConfig | None = None,
) -> FastAPI:
    """A user's app: a route that calls the inventory upstream through its guarded
    client, and one that reads the upstream's breaker."""
    inventory = Upstream(
        "inventory",
        f"{upstream_url}/base",
        breaker=breaker or BreakerConfig(failure_threshold=2, reset_timeout=30.0),
        retry=NO_WAIT,
        bulkhead=bulkhead,
    )
    app = FastAPI(lifespan=lifespan(inventory, redis_url=redis_url))
    add_exception_handlers(app, **(handlers or {}))

    @app.get("/stock/{sku}")
    async def stock(
        sku: str, client: Annotated[httpx.AsyncClient, Depends(upstream_client("inventory"))]
    ) -> Response:
        answer = await client.get(f"/stock/{sku}")
        return Response(answer.content, status_code=answer.status_code)

    @app.get("/state")
    async def state(
        cb: Annotated[CircuitBreaker, Depends(upstream_breaker("inventory"))],
    ) -> dict[str, Any]:
        snapshot = await cb.asnapshot()
        return {"name": cb.name, "state": snapshot.state, "failures": snapshot.failures}

    return app


@contextlib.asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``app``, in-process, between its startup and its shutdown."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
            yield client


def run(app: FastAPI, scenario: Scenario) -> None:
    async def main() -> None:
        async with served(app) as client:
            await scenario(client)

    asyncio.run(main())


def test_a_route_gets_the_upstreams_client_which_retries_through_the_breaker(
    upstream: UpstreamServer, backend: str | None
) -> None:
    upstream.plan("/base/stock/42", Reply(503), Reply(200, body=b"7"))

    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.get("/stock/42")
        assert (response.status_code, response.text) == (200, "7")
        state = (await client.get("/state")).json()
        assert state == {"name": "inventory", "state": "closed", "failures": 0}

    run(shop(upstream.url, backend), scenario)
    assert len(upstream.hits_on("/base/stock/42")) == 2


def test_the_breaker_dependency_is_the_one_the_client_counts_on(
    upstream: UpstreamServer, backend: str | None
) -> None:
    upstream.plan("/base/stock/1", Reply(500))

    async def scenario(client: httpx.AsyncClient) -> None:
        assert (await client.get("/stock/1")).status_code == 500
        assert (await client.get("/state")).json()["failures"] == 1

    run(shop(upstream.url, backend), scenario)


def test_an_open_breaker_answers_503_with_retry_after_and_a_json_body(
    upstream: UpstreamServer, backend: str | None
) -> None:
    upstream.plan("/base/stock/9", Reply(503))

    async def scenario(client: httpx.AsyncClient) -> None:
        await client.get("/stock/9")  # two attempts, two failures: the breaker opens
        refused = await client.get("/stock/9")
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "30"
        assert refused.json() == {
            "error": "circuit_open",
            "breaker": "inventory",
            "state": "open",
            "retry_after": 30,
            "detail": "the circuit of 'inventory' is open; it was not called",
        }

    run(shop(upstream.url, backend), scenario)
    assert len(upstream.hits_on("/base/stock/9")) == 2


def test_a_full_bulkhead_answers_503_with_retry_after_without_calling_the_upstream(
    upstream: UpstreamServer, backend: str | None
) -> None:
    upstream.plan("/base/stock/5", Reply(200, delay_headers=1.0, body=b"5"))

    async def scenario(client: httpx.AsyncClient) -> None:
        answers = await asyncio.gather(*(client.get("/stock/5") for _ in range(3)))
        assert sorted(answer.status_code for answer in answers) == [200, 200, 503]
        (refused,) = [answer for answer in answers if answer.status_code == 503]
        assert refused.headers["retry-after"] == str(refused.json()["retry_after"])
        assert refused.json()["error"] == "bulkhead_full"
        assert refused.json()["upstream"] == "inventory"
        assert (await client.get("/state")).json()["failures"] == 0

    run(shop(upstream.url, backend, bulkhead=BulkheadConfig(limit=2)), scenario)
    assert len(upstream.hits_on("/base/stock/5")) == 2


def test_the_answer_to_a_refusal_can_be_changed(
    upstream: UpstreamServer, backend: str | None
) -> None:
    upstream.plan("/base/stock/9", Reply(503))

    def body(error: CircuitOpenError | BackendUnavailableError) -> dict[str, str]:
        return {"message": "service temporarily unavailable"}

    async def scenario(client: httpx.AsyncClient) -> None:
        await client.get("/stock/9")
        refused = await client.get("/stock/9")
        assert refused.status_code == 429
        assert refused.json() == {"message": "service temporarily unavailable"}
        assert refused.headers["retry-after"] == "30"

    run(shop(upstream.url, backend, handlers={"status_code": 429, "body": body}), scenario)


def test_a_body_function_may_answer_with_a_whole_response(
    upstream: UpstreamServer, backend: str | None
) -> None:
    upstream.plan("/base/stock/9", Reply(503))

    def body(error: CircuitOpenError | BackendUnavailableError) -> Response:
        return Response("later", status_code=200, media_type="text/plain")

    async def scenario(client: httpx.AsyncClient) -> None:
        await client.get("/stock/9")
        refused = await client.get("/stock/9")
        assert (refused.status_code, refused.text) == (200, "later")

    run(shop(upstream.url, backend, handlers={"body": body}), scenario)


def test_an_unreachable_redis_with_fail_closed_answers_503(upstream: UpstreamServer) -> None:
    nobody = f"redis://127.0.0.1:{free_port()}/0?socket_connect_timeout=1"
    app = shop(upstream.url, nobody, breaker=BreakerConfig(on_backend_error="fail_closed"))

    async def scenario(client: httpx.AsyncClient) -> None:
        refused = await client.get("/stock/5")
        assert refused.status_code == 503
        assert refused.json()["error"] == "backend_unavailable"
        assert refused.json()["breaker"] == "inventory"

    run(app, scenario)
    assert upstream.hits_on("/base/stock/5") == []


def test_shutdown_closes_the_clients_the_breakers_and_redis(
    upstream: UpstreamServer, backend: str | None, sync_redis: redis.Redis
) -> None:
    name = f"fastapi-test-{free_port()}"
    redis_url = None if backend is None else f"{backend}?client_name={name}"
    app = shop(upstream.url, redis_url)
    kept: list[Resilience] = []

    def named() -> list[Any]:
        return [c for c in sync_redis.client_list() if c["name"] == name]

    async def main() -> set[asyncio.Task[Any]]:
        async with served(app) as client:
            assert (await client.get("/stock/3")).status_code == 200
            kept.append(resilience_of(app))
            assert (backend is None) == (named() == [])
        return {task for task in asyncio.all_tasks() if task is not asyncio.current_task()}

    assert asyncio.run(main()) == set()  # no events task, no pending recording
    [resilience] = kept
    assert all(client.is_closed for client in resilience.clients.values())
    with pytest.raises(RuntimeError, match="is closed"):
        resilience.breaker("inventory").acquire()
    assert not hasattr(app.state, "fleetbreaker")
    assert named() == []  # the Redis client's and the breakers' own connections


def test_without_the_lifespan_a_dependency_says_what_is_missing(
    upstream: UpstreamServer,
) -> None:
    app = shop(upstream.url, None)

    async def main() -> None:
        transport = httpx.ASGITransport(app=app)  # no lifespan entered
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
            with pytest.raises(RuntimeError, match=r"pass lifespan=breaker\.fastapi\.lifespan"):
                await client.get("/stock/1")

    asyncio.run(main())


def test_an_unknown_upstream_is_named_with_those_that_exist(upstream: UpstreamServer) -> None:
    app = shop(upstream.url, None)

    @app.get("/typo")
    async def typo(
        client: Annotated[httpx.AsyncClient, Depends(upstream_client("inventroy"))],
    ) -> None:
        raise AssertionError("never reached")

    async def scenario(client: httpx.AsyncClient) -> None:
        with pytest.raises(ConfigurationError, match=r"'inventroy' \(known: inventory\)"):
            await client.get("/typo")

    run(app, scenario)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Upstream("", "http://x.test"), "name: must be a non-blank string"),
        (lambda: Upstream("a", "ftp://x.test"), "upstreams.a.url: 'ftp://x.test' must be"),
        (
            lambda: Upstream("a", "http://x.test", retry=3),  # type: ignore[arg-type]
            "upstreams.a.retry: must be a",
        ),
        (
            lambda: lifespan(Upstream("a", "http://x.test"), Upstream("a", "http://y.test")),
            "upstreams: 'a' is given twice",
        ),
        (lambda: lifespan(redis_url="http://not-redis"), "redis_url: "),
        (lambda: add_exception_handlers(FastAPI(), status_code=99), "status_code: must be"),
    ],
)
def test_a_bad_configuration_is_refused_at_once_naming_the_key(
    make: Callable[[], object], message: str
) -> None:
    with pytest.raises(ConfigurationError) as refused:
        make()
    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value)


def test_importing_breaker_never_imports_fastapi() -> None:
    probe = "import sys, breaker; print(sorted({'fastapi', 'starlette'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_a_snapshot_without_redis_says_so_not_that_the_breaker_is_fail_closed(
    upstream: UpstreamServer,
) -> None:
    """A route reading its breaker while Redis is down, on the default fail_open: a
    snapshot has no fallback, so it is a 503; the body said "fail_closed"."""
    nobody = f"redis://127.0.0.1:{free_port()}/0?socket_connect_timeout=1"

    async def scenario(client: httpx.AsyncClient) -> None:
        refused = await client.get("/state")
        assert refused.status_code == 503
        body = refused.json()
        assert body["error"] == "backend_unavailable"
        assert "fail_closed" not in body["detail"]
        assert body["detail"] == "the breaker's Redis is unreachable and this operation needs it"

    run(shop(upstream.url, nobody), scenario)
