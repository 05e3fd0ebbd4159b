"""The admin listener: a second uvicorn server in each worker, for the admin app.

uvicorn serves one app per run, on the socket that ``serve`` binds for all its
workers. The admin API and the dashboard need a port of their own (no page an
upstream serves through ``/proxy`` may share their origin), so each worker's lifespan
starts this server next to uvicorn's own: in the same process and event loop, on the
same ``Gateway``. Each worker binds the admin port itself, with ``SO_REUSEPORT``, and
the kernel spreads the admin connections over the workers as it spreads the proxy's
(prometheus-client's multiprocess files still sum every worker, whichever answers
``/metrics``). It stops when the lifespan ends: after the proxy's server, before the
gateway's clients close.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

#: Seconds an admin request (an event stream's last event) gets to end at shutdown.
GRACEFUL_SHUTDOWN = 5


class ListenerError(Exception):
    """The listener cannot bind its address; the message says which, and why."""


def shared_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` that every worker of this process's user can
    bind too (``SO_REUSEPORT``): each worker holds one, the kernel balances between
    them. A port that anything else holds, without that option, is refused."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ListenerError(
            f"cannot listen on {host}:{port} for the admin API: {exc.strerror or exc}"
        ) from None
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, minus the signals: those are the worker's own server's, whose
    lifespan stops this one. Says when it is listening."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.listening.set()


class Listener:
    """``app`` served on ``host:port`` in this event loop, from ``start`` to ``aclose``.

    >>> listener = await Listener.start(admin_app, "127.0.0.1", 8001)  # doctest: +SKIP
    >>> await listener.aclose()  # doctest: +SKIP
    """

    def __init__(self, server: _Server, task: asyncio.Task[None], address: str) -> None:
        self._server = server
        self._task = task
        self.address = address

    @classmethod
    async def start(cls, app: ASGIApp, host: str, port: int) -> Listener:
        """Bind ``host:port`` and serve ``app`` there; ``ListenerError`` if the address
        cannot be bound."""
        sock = shared_socket(host, port)
        config = uvicorn.Config(
            app,
            lifespan="off",  # the app's state is the worker's, set by the gateway's lifespan
            log_config=None,  # the worker's logging, as uvicorn configured it
            proxy_headers=False,  # the peer is the client: see cli._serve
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
        )
        server = _Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name="admin-listener")
        listening = asyncio.create_task(server.listening.wait())
        await asyncio.wait({task, listening}, return_when=asyncio.FIRST_COMPLETED)
        if not server.listening.is_set():
            listening.cancel()
            sock.close()
            task.result()  # its error, if it raised one
            raise ListenerError(f"the admin listener on {host}:{port} stopped at start")
        shown = f"[{host}]" if ":" in host else host
        return cls(server, task, f"http://{shown}:{port}")

    async def aclose(self) -> None:
        """Stop accepting, let requests under way end (at most ``GRACEFUL_SHUTDOWN``
        seconds), close the socket."""
        self._server.should_exit = True
        await self._task
