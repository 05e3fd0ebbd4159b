"""fleetbreaker in your own FastAPI app: a lifespan, dependencies, exception handlers.

::

    from typing import Annotated

    import httpx
    from fastapi import Depends, FastAPI

    from breaker.fastapi import Upstream, add_exception_handlers, lifespan, upstream_client

    inventory = Upstream("inventory", "http://inventory.internal:8080")
    app = FastAPI(lifespan=lifespan(inventory, redis_url="redis://redis:6379/1"))
    add_exception_handlers(app)  # an open breaker: 503, Retry-After, a JSON body

    @app.get("/stock/{sku}")
    async def stock(
        sku: str, client: Annotated[httpx.AsyncClient, Depends(upstream_client("inventory"))]
    ) -> dict[str, str]:
        return (await client.get(f"/stock/{sku}")).json()

- ``lifespan`` builds, in each worker at startup: the Redis client, and per
  ``Upstream`` an ``httpx.AsyncClient`` on its URL whose transport is a
  ``ResilientTransport`` (one breaker named after the upstream, shared by every
  worker and replica through Redis, a 5xx counting as a failure; the upstream's
  retry policy). It puts them on ``app.state.fleetbreaker`` (``Resilience``) and
  closes them all at shutdown: the clients, with them their breakers, then Redis.
  Already have a lifespan? Enter this one inside it: ``async with lifespan(...)(app):``.
- ``upstream_client(name)`` and ``upstream_breaker(name)`` are dependencies:
  ``Depends(upstream_client("inventory"))``. The client is already guarded: calls
  through it must not go through its breaker's ``call`` again (each would count twice).
- ``add_exception_handlers(app)`` answers ``CircuitOpenError`` and
  ``BackendUnavailableError``, from any breaker, with a 503 (and ``Retry-After``).

FastAPI is an optional dependency of the library (``pip install
'fleetbreaker[fastapi]'``): ``import breaker`` never imports this module.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from ._breaker import CircuitBreaker
from ._exceptions import (
    BackendUnavailableError,
    BulkheadFullError,
    CircuitOpenError,
    ConfigurationError,
)
from ._store.urls import aclose_redis, redis_from_url
from ._upstreams import Upstream, guarded_client

__all__ = [
    "STATE_ATTRIBUTE",
    "Resilience",
    "Upstream",
    "add_exception_handlers",
    "error_body",
    "lifespan",
    "resilience_of",
    "retry_after_header",
    "upstream_breaker",
    "upstream_client",
]

logger = logging.getLogger("breaker.fastapi")

#: The attribute of ``app.state`` that holds the app's ``Resilience``.
STATE_ATTRIBUTE = "fleetbreaker"
Refusal = CircuitOpenError | BulkheadFullError | BackendUnavailableError


class Resilience:
    """What ``lifespan`` built for one app, on ``app.state.fleetbreaker``: the Redis
    client (None: the embedded backend), and per upstream its breaker and its client."""

    def __init__(
        self,
        redis_client: Any,
        clients: Mapping[str, httpx.AsyncClient],
        breakers: Mapping[str, CircuitBreaker],
    ) -> None:
        self.redis = redis_client
        self.clients = clients
        self.breakers = breakers

    @classmethod
    async def start(cls, *upstreams: Upstream, redis_url: str | None = None) -> Resilience:
        """Build the clients and breakers of ``upstreams`` (call it in the loop that
        will use them: each breaker follows the fleet's transitions from there)."""
        _check(upstreams, redis_url)
        redis_client = redis_from_url(redis_url, asyncio=True) if redis_url else None
        clients: dict[str, httpx.AsyncClient] = {}
        breakers: dict[str, CircuitBreaker] = {}
        built = cls(redis_client, clients, breakers)
        try:
            for upstream in upstreams:
                guarded = guarded_client(upstream, redis=redis_client)
                clients[upstream.name], breakers[upstream.name] = guarded.client, guarded.breaker
        except BaseException:
            await built.aclose()
            raise
        if redis_client is None:
            logger.warning(
                "breaker.fastapi: no redis_url, so the breakers live in this process only; "
                "with several workers or replicas, each one trips on its own"
            )
        return built

    def client(self, name: str) -> httpx.AsyncClient:
        """The guarded client of upstream ``name``."""
        return self.clients[self._known(name)]

    def breaker(self, name: str) -> CircuitBreaker:
        """The breaker of upstream ``name``: the one its client counts on."""
        return self.breakers[self._known(name)]

    def _known(self, name: str) -> str:
        if name not in self.clients:
            known = ", ".join(sorted(self.clients)) or "none"
            raise ConfigurationError("upstreams", f"no upstream named {name!r} (known: {known})")
        return name

    async def aclose(self) -> None:
        """Close the clients (each closes its transport, and so its breakers, on
        every lane: their pools, events task and dropped leases), then Redis."""
        for client in self.clients.values():
            await client.aclose()
        if self.redis is not None:
            await aclose_redis(self.redis)
        logger.info(
            "breaker.fastapi: closed %d upstream client(s) and their breakers%s",
            len(self.clients),
            ", and the Redis client" if self.redis is not None else "",
        )


def lifespan(
    *upstreams: Upstream, redis_url: str | None = None
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """A lifespan for ``FastAPI(lifespan=...)``: at startup, ``Resilience.start`` on
    ``app.state.fleetbreaker``; at shutdown, all of it closed.

    ``redis_url``: the Redis every worker and replica shares, in any form
    ``redis_from_url`` takes (a server, ``redis+cluster://``, ``redis+sentinel://``);
    None is the embedded backend (one process: a warning says so at startup). A
    configuration error is raised here, at import, not at the first request.
    """
    _check(upstreams, redis_url)

    @contextlib.asynccontextmanager
    async def running(app: FastAPI) -> AsyncIterator[None]:
        resilience = await Resilience.start(*upstreams, redis_url=redis_url)
        setattr(app.state, STATE_ATTRIBUTE, resilience)
        try:
            yield
        finally:
            delattr(app.state, STATE_ATTRIBUTE)
            await resilience.aclose()

    return running


def resilience_of(app: Any) -> Resilience:
    """The ``Resilience`` the lifespan put on ``app`` (a FastAPI or Starlette app)."""
    resilience = getattr(app.state, STATE_ATTRIBUTE, None)
    if not isinstance(resilience, Resilience):
        raise RuntimeError(
            "no fleetbreaker on app.state: pass lifespan=breaker.fastapi.lifespan(...) to "
            "FastAPI, or enter it in your own lifespan"
        )
    return resilience


def upstream_client(name: str) -> Callable[[HTTPConnection], httpx.AsyncClient]:
    """A dependency giving a route the guarded ``httpx.AsyncClient`` of upstream
    ``name``: ``client: Annotated[httpx.AsyncClient, Depends(upstream_client("x"))]``."""

    def guarded_client(connection: HTTPConnection) -> httpx.AsyncClient:
        return resilience_of(connection.app).client(name)

    return guarded_client


def upstream_breaker(name: str) -> Callable[[HTTPConnection], CircuitBreaker]:
    """A dependency giving a route the breaker of upstream ``name``: its state,
    operator actions, or other work guarded by it (never the client's own calls)."""

    def breaker(connection: HTTPConnection) -> CircuitBreaker:
        return resilience_of(connection.app).breaker(name)

    return breaker


def error_body(error: Refusal) -> dict[str, Any]:
    """The default body of the answer to a refused call."""
    if isinstance(error, CircuitOpenError):
        return {
            "error": "circuit_open",
            "breaker": error.name,
            "state": error.state,
            "retry_after": retry_after_header(error.retry_after),
            "detail": f"the circuit of {error.name!r} is {error.state}; it was not called",
        }
    if isinstance(error, BulkheadFullError):
        return {
            "error": "bulkhead_full",
            "upstream": error.name,
            "retry_after": retry_after_header(error.retry_after),
            "detail": (
                f"{error.in_use} of {error.limit} calls to {error.name!r} are in flight "
                "across the fleet; it was not called"
            ),
        }
    why = (
        "and the breaker is fail_closed: the call was not made"
        if error.refused_call
        else "and this operation needs it"
    )
    return {
        "error": "backend_unavailable",
        "breaker": error.name,
        "detail": f"the breaker's Redis is unreachable {why}",
    }


def add_exception_handlers(
    app: FastAPI,
    *,
    status_code: int = 503,
    body: Callable[[Refusal], Any] = error_body,
) -> None:
    """Answer ``CircuitOpenError``, ``BulkheadFullError`` and ``BackendUnavailableError``
    raised by any route, from any breaker or bulkhead, with ``status_code`` and
    ``body(error)``: JSON content, or a whole ``Response`` to send as it is. An open
    breaker's and a full bulkhead's answers carry ``Retry-After`` (whole seconds,
    rounded up, at least 1)."""
    if isinstance(status_code, bool) or not isinstance(status_code, int):
        raise ConfigurationError("status_code", f"must be an HTTP status, got {status_code!r}")
    if not 100 <= status_code <= 599:
        raise ConfigurationError("status_code", f"must be 100..599, got {status_code}")

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Refusal)
        content = body(exc)
        if isinstance(content, Response):
            return content
        headers = {}
        if isinstance(exc, CircuitOpenError | BulkheadFullError):
            headers["Retry-After"] = str(retry_after_header(exc.retry_after))
        return JSONResponse(jsonable_encoder(content), status_code=status_code, headers=headers)

    app.add_exception_handler(CircuitOpenError, refused)
    app.add_exception_handler(BulkheadFullError, refused)
    app.add_exception_handler(BackendUnavailableError, refused)


def retry_after_header(seconds: float) -> int:
    """Whole seconds, rounded up, at least 1: a client told 0 would come straight back."""
    return max(1, math.ceil(seconds))


def _check(upstreams: tuple[Upstream, ...], redis_url: str | None) -> None:
    names: set[str] = set()
    for upstream in upstreams:
        if not isinstance(upstream, Upstream):
            raise ConfigurationError("upstreams", f"must be Upstream values, got {upstream!r}")
        if upstream.name in names:
            raise ConfigurationError("upstreams", f"{upstream.name!r} is given twice")
        names.add(upstream.name)
    if redis_url is not None:
        redis_from_url(redis_url, asyncio=True)  # nothing connects: a check of the URL
