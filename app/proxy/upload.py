"""A proxied request's body, read from the ASGI ``receive`` and held to the limit.

Bodies up to the retry buffer are read whole, so that an attempt can be sent again;
larger ones stream to the upstream as they arrive and are sent once. Either way a
body over ``max_body_bytes`` is refused (413) as soon as it is known to be too large,
and a body that goes ``body_idle_timeout`` seconds without a byte is cut (408): a
client that trickles its upload would hold an upstream connection for nothing.

A refused upload is then drained, up to a bound: the rest of the body is read and
dropped before the answer goes out. A server that answers and closes while its peer
is still sending makes the peer's kernel reset the connection, and a load balancer
(nginx) takes that reset for a dead replica: one client's mistake would take the
replica out of rotation. Past the bound (as much again as the limit, or
``DRAIN_SECONDS``), the connection closes anyway. A client that asked
``Expect: 100-continue`` has sent nothing yet, and is not asked for its body.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.types import Message, Receive

from .errors import BodyStalled, BodyTooLarge, ClientGone

#: The longest a refused upload is read for, so that it ends cleanly.
DRAIN_SECONDS = 2.0


class Upload:
    """The body of one request: ``content`` to send it, ``drain`` after refusing it."""

    def __init__(
        self,
        receive: Receive,
        *,
        limit: int,
        declared: int | None,
        expects_continue: bool,
        idle_timeout: float,
    ) -> None:
        self._receive = receive
        self.limit = limit
        self.idle_timeout = idle_timeout
        self.declared = declared
        self.expects_continue = expects_continue
        self.size = 0
        self.ended = False

    async def content(self, buffer_limit: int) -> bytes | AsyncIterator[bytes]:
        """The whole body when it fits ``buffer_limit``, else a stream (sent once)."""
        if self.declared is not None and self.declared > self.limit:
            raise BodyTooLarge(
                f"the request body is {self.declared} bytes; the limit is {self.limit}"
            )
        buffered: list[bytes] = []
        if self.declared is None or self.declared <= buffer_limit:
            while (chunk := await self._next()) is not None:
                buffered.append(chunk)
                if self.size > buffer_limit:
                    return self._stream(buffered)
            return b"".join(buffered)
        return self._stream(buffered)

    async def _stream(self, first: list[bytes]) -> AsyncIterator[bytes]:
        for buffered in first:
            yield buffered
        while (chunk := await self._next()) is not None:
            yield chunk

    async def _next(self) -> bytes | None:
        """The next non-empty chunk, or None at the end of the body."""
        while not self.ended:
            message = await self._message()
            chunk: bytes = message.get("body", b"")
            self.ended = not message.get("more_body", False)
            self.size += len(chunk)
            if self.size > self.limit:
                raise BodyTooLarge(f"the request body is over the limit of {self.limit} bytes")
            if chunk:
                return chunk
        return None

    async def _message(self) -> Message:
        try:
            async with asyncio.timeout(self.idle_timeout):
                message = await self._receive()
        except TimeoutError:
            self.ended = True  # nothing more is read: the connection closes after the 408
            raise BodyStalled(
                f"no byte of the request body came for {self.idle_timeout:g} s"
            ) from None
        if message["type"] == "http.disconnect":
            self.ended = True
            raise ClientGone("the client closed the connection before its body ended")
        return message

    async def drain(self) -> None:
        """Read and drop what is left of a refused body, within the bound."""
        if self.ended or (self.expects_continue and self.size == 0):
            return
        if self.declared is not None and self.declared > 2 * self.limit:
            return  # never worth reading: the connection closes after the answer
        dropped = 0
        with contextlib.suppress(TimeoutError, ClientGone, BodyStalled):
            async with asyncio.timeout(DRAIN_SECONDS):
                # As much again as the limit, counted over the whole body: a declared
                # body up to twice the limit is read to its end, refused at byte 0 or not.
                while not self.ended and self.size + dropped <= 2 * self.limit:
                    message = await self._message()
                    dropped += len(message.get("body", b""))
                    self.ended = not message.get("more_body", False)
