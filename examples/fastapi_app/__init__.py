"""The article's two routes, done right, with fleetbreaker's FastAPI integration.

The article's ``/retry`` looped ``while retries <= max_retries`` around
``requests.get`` with ``time.sleep(1)``: it blocked the event loop, made 4 attempts
when it meant 3, and retried everything. Its ``/circuit-breaker`` built a new
in-process ``breaker(url, max_failures=3, reset_timeout=10)`` on every request, so
it could never trip. Here, both call the upstream through its one guarded client:

- ``GET /retry``: the client retries: 3 attempts in all, full-jitter waits that
  never block the loop, idempotent methods only, ``Retry-After`` honoured, within a
  deadline, the fleet's retry budget and the breaker. When they run out, the
  upstream's last answer is passed on, as it was.
- ``GET /circuit-breaker``: one attempt, through the upstream's one breaker, shared
  by every worker and replica through Redis: it opens on the fleet's 3rd failure in a
  row, not each worker's. While it is open, the upstream is not called and the route
  answers the article's fallback body: 503, with ``Retry-After``.

Run it with 4 workers, against a Redis and the demo upstream
(``fleetbreaker demo-upstream``)::

    uvicorn examples.fastapi_app:app --workers 4

``BREAKER_REDIS_URL`` (default ``redis://127.0.0.1:6379/1``: db 1, as every example, to
keep off the db 0 where a shared Redis holds everything else) and ``UPSTREAM_URL``
(``http://127.0.0.1:9000``) say where they are. ``REDIS_URL``, the old name of the first,
still works, with a ``DeprecationWarning``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Annotated

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from breaker import RETRY_EXTENSION, BreakerConfig, Fallback, FallbackReason, RetryPolicy
from breaker.fastapi import (
    Upstream,
    add_exception_handlers,
    lifespan,
    retry_after_header,
    upstream_client,
)

#: The article's settings: 3 failures open the breaker, for 10 seconds; 3 attempts.
BREAKER = BreakerConfig(failure_threshold=3, reset_timeout=10.0)
RETRY = RetryPolicy(attempts=3, backoff=0.5, max_backoff=4.0, deadline=10.0)
#: The Redis of every example: db 1 of the one on this machine.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/1"

UpstreamClient = Annotated[httpx.AsyncClient, Depends(upstream_client("upstream"))]


def temporarily_unavailable(reason: FallbackReason) -> Response:
    """The article's fallback body, with the status and the header that go with it."""
    seconds = retry_after_header(reason.retry_after or 0.0)
    return JSONResponse(
        {"message": "service temporarily unavailable", "retry_after": seconds},
        status_code=503,
        headers={"Retry-After": str(seconds)},
    )


TEMPORARILY_UNAVAILABLE = Fallback(temporarily_unavailable, on={"open"})


def create_app(*, redis_url: str | None, upstream_url: str) -> FastAPI:
    """The example app on ``redis_url`` (None: the embedded backend, one process)."""
    upstream = Upstream("upstream", upstream_url, breaker=BREAKER, retry=RETRY)
    app = FastAPI(
        title="the article's two routes, done right",
        lifespan=lifespan(upstream, redis_url=redis_url),
    )
    add_exception_handlers(app)  # /retry while the breaker is open: 503, circuit_open

    @app.exception_handler(httpx.TransportError)
    async def unreachable(request: Request, exc: Exception) -> Response:
        message = f"the upstream could not be reached: {type(exc).__name__}"
        return JSONResponse({"message": message}, status_code=502)

    @app.get("/retry")
    async def retry(client: UpstreamClient) -> Response:
        return relayed(await client.get("/"))

    @app.get("/circuit-breaker")
    async def circuit_breaker(client: UpstreamClient) -> Response:
        return await TEMPORARILY_UNAVAILABLE.call(called_once, client)

    return app


async def called_once(client: httpx.AsyncClient) -> Response:
    """One attempt, however the client's policy would retry it."""
    return relayed(await client.get("/", extensions={RETRY_EXTENSION: False}))


def relayed(answer: httpx.Response) -> Response:
    """The upstream's answer, passed on: its status, its body and its content type."""
    media_type = answer.headers.get("content-type")
    return Response(answer.content, status_code=answer.status_code, media_type=media_type)


def redis_url_of(environ: Mapping[str, str]) -> str:
    """``BREAKER_REDIS_URL``, the one name the gateway, the CLI and the examples read;
    ``REDIS_URL``, its old name here, with a ``DeprecationWarning``."""
    if url := environ.get("BREAKER_REDIS_URL"):
        return url
    if url := environ.get("REDIS_URL"):
        warnings.warn(
            "REDIS_URL is deprecated: set BREAKER_REDIS_URL, the name the gateway and the CLI read",
            DeprecationWarning,
            stacklevel=2,
        )
        return url
    return DEFAULT_REDIS_URL


app = create_app(
    redis_url=redis_url_of(os.environ),
    upstream_url=os.environ.get("UPSTREAM_URL", "http://127.0.0.1:9000"),
)
