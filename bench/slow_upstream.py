"""``python -m bench.slow_upstream PORT SECONDS``: an upstream that answers every
request ``SECONDS`` after it came, and keeps the timeline of how many it was answering
at once (``GET /stats``: ``{"most": n, "timeline": [[monotonic time, count], ...]}``,
one point per change). HTTP/1.1 with keep-alive; GETs only. Time is
``time.monotonic()``, the same clock as every process of the machine."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import cast

_ANSWER = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n"
    b"connection: keep-alive\r\n\r\nok"
)


class Counts:
    def __init__(self) -> None:
        self.in_flight = 0
        self.most = 0
        self.timeline: list[tuple[float, int]] = []

    def change(self, by: int) -> None:
        self.in_flight += by
        self.most = max(self.most, self.in_flight)
        self.timeline.append((time.monotonic(), self.in_flight))


class _Answer(asyncio.Protocol):
    def __init__(self, counts: Counts, delay: float) -> None:
        self.counts = counts
        self.delay = delay
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            if head.startswith(b"GET /stats"):
                body = json.dumps({"most": self.counts.most, "timeline": self.counts.timeline})
                self._send(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(body)}\r\n\r\n".encode()
                    + body.encode()
                )
                continue
            self.counts.change(+1)
            asyncio.get_running_loop().call_later(self.delay, self._answer)

    def _answer(self) -> None:
        self.counts.change(-1)
        self._send(_ANSWER)

    def _send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


async def serve(port: int, delay: float) -> None:
    counts = Counts()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Answer(counts, delay), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), float(sys.argv[2])))
