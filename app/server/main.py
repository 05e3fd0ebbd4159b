"""``create_app``: the gateway as two ASGI apps, for uvicorn (``--factory``) and tests.

The proxy's app answers ``/proxy/...``, ``/healthz`` and a status-only ``/readyz``:
whatever an upstream serves runs in a browser with this origin. The admin app (the
admin API, the dashboard and its streams, ``/metrics``, ``/readyz`` in detail with
the admin token, ``/docs``) has a listener of its own, ``[gateway] admin_host`` and
``admin_port``, started by the proxy's lifespan, so that no upstream page shares its
origin: none can read what the dashboard keeps, call the admin API as the dashboard,
or register a service worker over it. The load balancer never exposes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from breaker import Clock, __version__

from ..admin import api as admin
from ..admin import dashboard, docs, ops
from ..config.settings import GatewayConfig, load_config
from ..proxy import errors
from ..proxy import routes as proxy
from ..proxy.forwarding import has_control_character
from ..proxy.runtime import Gateway
from . import demo
from .listener import Listener
from .supervisor import stop_when_orphaned, supervisor_of

#: With ``[gateway] expose_instance = true``: which process answered,
#: ``<instance name>/<pid>``.
INSTANCE_HEADER = "X-Fleetbreaker-Instance"


TITLE = "fleetbreaker gateway"
SUMMARY = "A resilient proxy: one circuit breaker per upstream, shared through Redis."
DESCRIPTION = (
    "Two listeners. The proxy's (`serve --port`, behind the load balancer): `/proxy/...`, "
    "`/healthz` and `/readyz` (its status only). The admin listener (`serve "
    "--admin-port`, `[gateway] admin_port`; never behind the load balancer): every other "
    "route, this document included."
)


def create_app(
    config: GatewayConfig | None = None,
    *,
    clock: Clock | None = None,
    admin_listener: bool = True,
) -> FastAPI:
    """The proxy's ASGI app; ``config`` defaults to ``load_config()``; ``clock`` is for
    tests (``breaker.testing.ManualClock``).

    While it runs (its lifespan), the admin app serves on the admin listener,
    ``config.admin_host``:``config.admin_port``. With ``admin_listener=False`` it
    listens nowhere and the caller serves it: it is ``app.state.admin_app``, on the
    same worker state once the lifespan has started (tests call it in-process).

    Raises ``ConfigError`` (one line, naming the key) for an invalid configuration.
    """
    config = config if config is not None else load_config()
    admin_app = create_admin_app(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gateway = await Gateway.start(config, clock)
        app.state.gateway = admin_app.state.gateway = gateway
        try:
            listener = (
                await Listener.start(admin_app, config.admin_host, config.admin_port)
                if admin_listener
                else None
            )
        except BaseException:
            await gateway.aclose()
            raise
        supervisor = supervisor_of(os.environ)
        watch = (
            asyncio.create_task(stop_when_orphaned(supervisor), name="supervisor")
            if supervisor is not None
            else None
        )
        try:
            yield
        finally:
            if watch is not None:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
            gateway.feed.close()  # its event streams end: their connections can close
            try:
                if listener is not None:
                    await listener.aclose()
            finally:
                await gateway.aclose()

    app = FastAPI(
        title=TITLE,
        summary=SUMMARY,
        version=__version__,
        lifespan=lifespan,
        openapi_url=None,  # the admin listener serves the document, this app's routes in it
        docs_url=None,
        redoc_url=None,
    )
    _guard(app, config)
    app.include_router(proxy.router)
    app.include_router(ops.proxy_router)
    if config.demo:
        app.mount("/demo", demo.create_demo_upstream(config.demo_failure_rate))
    app.state.admin_app = admin_app

    def openapi() -> dict[str, Any]:
        if admin_app.openapi_schema is None:
            admin_app.openapi_schema = get_openapi(
                title=TITLE,
                version=__version__,
                summary=SUMMARY,
                description=DESCRIPTION,
                routes=[*app.routes, *admin_app.routes],
            )
        return admin_app.openapi_schema

    admin_app.openapi = openapi  # type: ignore[method-assign]
    return app


def create_admin_app(config: GatewayConfig) -> FastAPI:
    """The admin listener's app: the admin API, the dashboard, ``/metrics``,
    ``/healthz``, ``/readyz`` (in detail with the admin token) and the OpenAPI pages.
    It reads the worker's state that the proxy's lifespan puts on its ``state``."""
    app = FastAPI(
        title=TITLE,
        summary=SUMMARY,
        version=__version__,
        docs_url=None,  # served by .docs, without a CDN
        redoc_url=None,
    )
    _guard(app, config)
    app.include_router(admin.router)
    app.include_router(ops.router)
    app.include_router(dashboard.router)
    app.include_router(docs.router)
    return app


def _guard(app: FastAPI, config: GatewayConfig) -> None:
    """What both listeners share: JSON errors, the request guard, the instance header."""
    errors.install(app)
    app.add_middleware(RequestGuard, max_bytes=config.max_header_bytes)
    if config.expose_instance:
        app.add_middleware(InstanceHeader, name=config.instance_name)


class RequestGuard:
    """Refuses, before any route sees it, with a JSON body: a request whose head
    (request target and headers) is over ``max_bytes`` (431), and one whose decoded
    path holds a control character (400; the routes' patterns would not match it and
    answer 404). The HTTP parser refuses worse heads itself, with a plain 400."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self._refusal(scope)
            if refusal is not None:
                await errors.gateway_error_answer(refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> errors.GatewayError | None:
        size = len(scope.get("raw_path") or b"") + len(scope.get("query_string", b""))
        size += sum(len(name) + len(value) + 4 for name, value in scope["headers"])
        if size > self.max_bytes:
            return errors.HeadersTooLarge(
                f"the request's path and headers are {size} bytes; the limit is {self.max_bytes}"
            )
        if has_control_character(scope["path"]):
            return errors.UnsafePath("the path holds a control character")
        return None


class InstanceHeader:
    """Names the process that answered (``<name>/<pid>``, ``name`` the replica's:
    ``BREAKER_INSTANCE_NAME`` or the host's) on every response: lets an operator, or a
    test behind a load balancer, see which worker of which replica served a request."""

    def __init__(self, app: ASGIApp, name: str) -> None:
        self.app = app
        self.value = f"{name}/{os.getpid()}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (INSTANCE_HEADER.lower().encode(), self.value),
                ]
            await send(message)

        await self.app(scope, receive, named)
