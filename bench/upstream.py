"""``python -m bench.upstream PORT``: the fastest upstream we can run, so that the gateway
is what the throughput scenario measures. HTTP/1.1 with keep-alive, every request
answered ``200 ok``; request bodies are not expected (the load is GETs)."""

from __future__ import annotations

import asyncio
import sys
from typing import cast

_ANSWER = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n"
    b"connection: keep-alive\r\n\r\nok"
)


class _Answer(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        requests = self.buffer.count(b"\r\n\r\n")
        if requests:
            self.buffer = self.buffer.rsplit(b"\r\n\r\n", 1)[1]
            self.transport.write(_ANSWER * requests)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Answer, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()
