"""The example app (``examples/fastapi_app``), the article's two routes done right,
in-process (ASGI, with its lifespan) against a real HTTP upstream, on both backends.
Retry waits are skipped (``set_testing``); ``test_fastapi_example_processes`` runs it
as ``uvicorn --workers 4``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator

import httpx
import pytest

from breaker.testing import set_testing
from examples.fastapi_app import create_app
from tests.support.ports import free_port
from tests.support.upstream import Reply, Upstream
from tests.test_fastapi_integration import served

DOWN = b'{"upstream": "down"}'


@pytest.fixture(autouse=True)
def _no_waits() -> Iterator[None]:
    set_testing(True)
    yield
    set_testing(False)


def run(
    upstream_url: str, backend: str | None, scenario: Callable[[httpx.AsyncClient], Awaitable[None]]
) -> None:
    async def main() -> None:
        async with served(create_app(redis_url=backend, upstream_url=upstream_url)) as client:
            await scenario(client)

    asyncio.run(main())


def test_circuit_breaker_opens_on_the_third_failure_then_answers_the_fallback(
    upstream: Upstream, backend: str | None
) -> None:
    upstream.plan("/", Reply(503, body=DOWN))

    async def scenario(client: httpx.AsyncClient) -> None:
        for _ in range(3):  # one attempt each: the upstream's answer, passed on
            failed = await client.get("/circuit-breaker")
            assert (failed.status_code, failed.content) == (503, DOWN)
        for _ in range(3):
            refused = await client.get("/circuit-breaker")
            assert refused.status_code == 503
            assert refused.json() == {
                "message": "service temporarily unavailable",
                "retry_after": 10,
            }
            assert refused.headers["retry-after"] == "10"

    run(upstream.url, backend, scenario)
    assert len(upstream.hits_on("/")) == 3


def test_retry_makes_three_attempts_in_all_not_four(
    upstream: Upstream, backend: str | None
) -> None:
    upstream.plan("/", Reply(503, body=DOWN), Reply(502), Reply(200, body=b'{"stock": 7}'))

    async def scenario(client: httpx.AsyncClient) -> None:
        served = await client.get("/retry")
        assert (served.status_code, served.json()) == (200, {"stock": 7})

    run(upstream.url, backend, scenario)
    assert len(upstream.hits_on("/")) == 3


def test_retry_passes_on_the_last_answer_then_the_open_breaker_stops_it(
    upstream: Upstream, backend: str | None
) -> None:
    upstream.plan("/", Reply(503, body=DOWN))

    async def scenario(client: httpx.AsyncClient) -> None:
        last = await client.get("/retry")  # 3 attempts, 3 failures: the breaker opens
        assert (last.status_code, last.content) == (503, DOWN)
        refused = await client.get("/retry")
        assert refused.json()["error"] == "circuit_open"
        assert refused.headers["retry-after"] == "10"

    run(upstream.url, backend, scenario)
    assert len(upstream.hits_on("/")) == 3


def test_an_unreachable_upstream_is_a_502_after_three_attempts(backend: str | None) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        answer = await client.get("/retry")
        assert answer.status_code == 502
        assert answer.json() == {"message": "the upstream could not be reached: ConnectError"}

    run(f"http://127.0.0.1:{free_port()}", backend, scenario)
