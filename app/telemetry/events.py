"""The live feed of transitions behind ``GET /admin/events`` (Server-Sent Events).

Every breaker of the gateway has a listener that hands its transitions to the feed:
those this process made and those the fleet's other processes published on the
Redis events channel. Each open stream has its own bounded queue; a stream that
cannot keep up loses its oldest events, never the gateway's memory. ``close`` ends
every stream, so that a stopping worker's connections can close at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncGenerator, AsyncIterator

from breaker import TransitionEvent

_QUEUE_SIZE = 1000


class EventFeed:
    """Fans transitions out to every subscribed stream. Lives in one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.get_ident()
        # None in a queue: the feed closed, the stream ends.
        self._queues: set[asyncio.Queue[TransitionEvent | None]] = set()
        self._closed = False

    def publish(self, event: TransitionEvent) -> None:
        """Hand ``event`` to every stream; safe from any thread."""
        if threading.get_ident() == self._thread:
            self._fan_out(event)
        else:
            self._loop.call_soon_threadsafe(self._fan_out, event)

    def _fan_out(self, event: TransitionEvent | None) -> None:
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()  # the oldest goes: a slow reader loses, not the gateway
            queue.put_nowait(event)

    def close(self) -> None:
        """End every stream, now and to come. Call it in the feed's event loop."""
        self._closed = True
        self._fan_out(None)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[TransitionEvent | None]]:
        queue: asyncio.Queue[TransitionEvent | None] = asyncio.Queue(maxsize=_QUEUE_SIZE)
        if self._closed:
            queue.put_nowait(None)
        self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)

    @property
    def subscribers(self) -> int:
        return len(self._queues)


def sse_message(event: TransitionEvent) -> str:
    """One Server-Sent Events message: ``event: transition`` with the event as JSON."""
    return f"event: transition\ndata: {json.dumps(event.as_dict(), sort_keys=True)}\n\n"


async def stream(feed: EventFeed, heartbeat: float) -> AsyncGenerator[str, None]:
    """The body of one SSE response: a comment at once (so headers and proxies flush),
    then every transition, with a comment every ``heartbeat`` seconds of silence,
    until the feed closes."""
    async with feed.subscribe() as queue:
        yield ": fleetbreaker transitions\n\n"
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), timeout=heartbeat)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if event is None:
                return
            yield sse_message(event)
