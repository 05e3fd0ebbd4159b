"""The gateway's client connections in uvicorn: heads arrive whole and in time, and a
worker holds a bounded number of connections.

uvicorn's httptools protocol waits for a request head as long as the client likes
(its keep-alive timer starts only after a first response), buffers a head of any size
until it is whole (httptools has no limit of its own; the gateway's 431 comes after
parsing), and accepts connections until the process runs out of descriptors. A
client that sends half a head and stops held its connection for good: 21,000 of them
reached the descriptor limit, and ``/healthz`` stopped answering. So, per connection
(``GuardedConnection``, the ``http=`` protocol ``serve`` hands uvicorn):

- ``head_timeout``: a connection sends a whole head within this long of opening, and
  every later head within this long of its first byte, or it is closed. Between
  requests, uvicorn's keep-alive timeout (5 s) closes an idle connection.
- ``max_head_bytes``: a head still incomplete once this many of its bytes came is
  closed. Counting starts with the read after the one the head began in, so up to one
  more read (256 KiB) may be buffered.
- ``max_connections`` (per worker): a connection past it closes the one that has
  waited longest without a request under way (one that has sent no whole head yet,
  or an idle keep-alive one), or, when every other has a request under way, itself.
  A flood of half-sent heads then takes slots only from itself: a real client's
  connection gets in, and sends its head in time.

At the HTTP layer each of these closes the connection: there is no request yet to
answer (nginx closes on ``client_header_timeout`` too).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from dataclasses import dataclass
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..config.settings import GatewayConfig


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What a connection may cost a worker (``[gateway]`` settings of the same names)."""

    head_timeout: float
    max_head_bytes: int
    max_connections: int

    @classmethod
    def of(cls, config: GatewayConfig) -> ConnectionLimits:
        return cls(config.head_timeout, config.max_head_bytes, config.max_connections)


# Orders the connections of a worker by when they began to wait (uvloop's clock has
# millisecond steps: connections accepted together would tie).
_WAITING = itertools.count()


class GuardedConnection(HttpToolsProtocol):
    """uvicorn's httptools protocol, with ``ConnectionLimits`` applied."""

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_head = False  # a head has begun and is not whole yet
        self._head_bytes = 0
        #: Since when (``_WAITING``'s order) it has had no request under way; None: busy.
        self.waiting_since: int | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.waiting_since = next(_WAITING)
        self._start_head_timer()
        if len(self.connections) > self.limits.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # A head that began in an earlier read and is still not whole after this one:
        # all of this read is head.
        counted = self._in_head
        super().data_received(data)
        if counted and self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_head_bytes:
                self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        if self._head_timer is None:
            self._start_head_timer()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self.waiting_since = None
        self._stop_head_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.cycle.response_complete:
            self.waiting_since = next(_WAITING)  # no pipelined request left under way

    def _start_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.limits.head_timeout, self._head_late)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _make_room(self) -> None:
        """Past the cap: close the connection that has waited longest with no request
        under way, or this one if every other has a request under way."""
        open_now = [c for c in self.connections if not c.transport.is_closing()]
        if len(open_now) <= self.limits.max_connections:
            return  # those past it are closing already
        waiting = [
            c
            for c in open_now
            if isinstance(c, GuardedConnection) and c is not self and c.waiting_since is not None
        ]
        oldest = min(waiting, key=lambda c: c.waiting_since or 0, default=self)
        oldest.transport.close()


def connection_protocol(config: GatewayConfig) -> type[asyncio.Protocol]:
    """What ``serve`` passes uvicorn as ``http=``: ``GuardedConnection`` with the
    configured limits. uvicorn only calls it, as it calls a protocol class; a partial
    of a module-level class pickles, so the workers it spawns get it too."""
    protocol = functools.partial(GuardedConnection, limits=ConnectionLimits.of(config))
    return cast("type[asyncio.Protocol]", protocol)
