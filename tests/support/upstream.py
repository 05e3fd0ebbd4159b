"""A real flaky HTTP upstream: uvicorn serving a small ASGI app in a thread.

A test tells it how to answer each path with ``Reply`` values, served in order (the
last one repeats): a status, a ``Retry-After`` (either form), a delay before the
headers or the body, or a dropped connection. It counts every request it receives,
and ``close_port``/``reopen`` make connections to it be refused and accepted again.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import uvicorn

from tests.support.ports import free_port

_START_TIMEOUT = 10.0


@dataclass(frozen=True)
class Reply:
    status: int = 200
    retry_after: str | None = None
    delay_headers: float = 0.0
    delay_body: float = 0.0
    drop: bool = False
    body: bytes = b"ok"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Hit:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    raw_path: bytes = b""
    query: bytes = b""
    #: Every header as received, in order, repeated ones included.
    raw_headers: tuple[tuple[bytes, bytes], ...] = ()


class Upstream:
    """``http://127.0.0.1:<port>``: answers as told, counts what it receives."""

    def __init__(self) -> None:
        self.port = free_port()
        self.hits: list[Hit] = []
        #: Requests it is answering now, and the most it ever answered at once.
        self.in_flight = 0
        self.most_in_flight = 0
        self._plans: dict[str, list[Reply]] = {}
        self._served: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._release: asyncio.Event | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def plan(self, path: str, *replies: Reply) -> None:
        """Answer ``path`` with these replies in turn; the last one repeats."""
        with self._lock:
            self._plans[path] = list(replies)
            self._served[path] = 0

    def reset(self) -> None:
        """Forget every plan and hit, and listen again if a test closed the port."""
        with self._lock:
            self.hits.clear()
            self._plans.clear()
            self._served.clear()
            self.in_flight = self.most_in_flight = 0
        if self._server is None:
            self.start()

    def hits_on(self, path: str) -> list[Hit]:
        with self._lock:
            return [hit for hit in self.hits if hit.path == path]

    def start(self) -> None:
        self._loop, self._release = None, None
        config = uvicorn.Config(
            self._app,
            host="127.0.0.1",
            port=self.port,
            http="h11",
            interface="asgi3",
            lifespan="off",
            log_level="critical",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"upstream did not start on port {self.port}")
            time.sleep(0.01)

    def close_port(self) -> None:
        """Stop listening: connections are refused until ``reopen``."""
        if self._loop is not None and self._release is not None:
            self._loop.call_soon_threadsafe(self._release.set)
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(_START_TIMEOUT)
        self._server = None

    def reopen(self) -> None:
        self.start()

    def _next_reply(self, path: str) -> Reply:
        with self._lock:
            replies = self._plans.get(path) or [Reply()]
            index = min(self._served[path], len(replies) - 1)
            self._served[path] += 1
            return replies[index]

    async def _pause(self, seconds: float) -> None:
        """Wait, unless the port is closed meanwhile: stopping releases every delay."""
        if seconds <= 0:
            return
        if self._release is None:
            self._loop, self._release = asyncio.get_running_loop(), asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._release.wait(), seconds)

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        with self._lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        answering = [True]

        def done() -> None:
            # Once, and before the last bytes go: a client may have them, and send
            # its next request, before a send() that wrote them returns here.
            if answering.pop() if answering else False:
                with self._lock:
                    self.in_flight -= 1

        try:
            await self._answer(scope, receive, send, done)
        finally:
            done()

    async def _answer(
        self, scope: dict[str, Any], receive: Any, send: Any, done: Callable[[], None]
    ) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        with self._lock:
            self.hits.append(
                Hit(
                    scope["method"],
                    scope["path"],
                    headers,
                    body,
                    scope.get("raw_path") or b"",
                    scope.get("query_string") or b"",
                    tuple((bytes(k), bytes(v)) for k, v in scope["headers"]),
                )
            )
        reply = self._next_reply(scope["path"])
        await self._pause(reply.delay_headers)
        if reply.drop:
            # Close the TCP connection without a byte of answer. ASGI has no verb for
            # this; uvicorn's h11 protocol hands the app its cycle's bound ``send``.
            send.__self__.transport.abort()
            send.__self__.response_started = True
            send.__self__.response_complete = True
            return
        response_headers = [(b"content-length", str(len(reply.body)).encode())]
        response_headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers]
        if reply.retry_after is not None:
            response_headers.append((b"retry-after", reply.retry_after.encode("latin-1")))
        await send(
            {"type": "http.response.start", "status": reply.status, "headers": response_headers}
        )
        await self._pause(reply.delay_body)
        done()
        await send({"type": "http.response.body", "body": reply.body})
