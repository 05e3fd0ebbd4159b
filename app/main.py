"""``create_app``: the gateway as an ASGI app, for uvicorn (``--factory``) and tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from breaker import Clock, __version__

from . import admin, dashboard, demo, docs, errors, ops, proxy
from .forwarding import has_control_character
from .runtime import Gateway
from .settings import GatewayConfig, load_config
from .supervisor import stop_when_orphaned, supervisor_of

#: With ``[gateway] expose_instance = true``: which process answered,
#: ``<instance name>/<pid>``.
INSTANCE_HEADER = "X-Fleetbreaker-Instance"


def create_app(config: GatewayConfig | None = None, *, clock: Clock | None = None) -> FastAPI:
    """The gateway as an ASGI app; ``config`` defaults to ``load_config()``; ``clock``
    is for tests (``breaker.testing.ManualClock``).

    Raises ``ConfigError`` (one line, naming the key) for an invalid configuration.
    """
    config = config if config is not None else load_config()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gateway = await Gateway.start(config, clock)
        app.state.gateway = gateway
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
            await gateway.aclose()

    app = FastAPI(
        title="fleetbreaker gateway",
        summary="A resilient proxy: one circuit breaker per upstream, shared through Redis.",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,  # served by .docs, without a CDN
        redoc_url=None,
    )
    errors.install(app)
    app.add_middleware(RequestGuard, max_bytes=config.max_header_bytes)
    if config.expose_instance:
        app.add_middleware(InstanceHeader, name=config.instance_name)
    app.include_router(proxy.router)
    app.include_router(admin.router)
    app.include_router(ops.router)
    app.include_router(dashboard.router)
    app.include_router(docs.router)
    if config.demo:
        app.mount("/demo", demo.create_demo_upstream(config.demo_failure_rate))
    return app


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
