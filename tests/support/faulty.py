"""A broken HTTP upstream, written on raw sockets: it fails in the ways a real HTTP
server library will not, each chosen by the request's path.

- ``/ok``: 200 with a small body.
- ``/reset``: 200 with ``Content-Length: 100000``, 1,000 bytes of it, then a TCP reset.
- ``/silent``: reads the request and never answers.
- ``/trickle``: 200, chunked, one byte every 50 ms for as long as the reader stays
  (at most ``_TRICKLE_FOR`` seconds).
- ``/garbage``: a reply that is not HTTP.
- ``/huge/<mib>``: 200 with a body of ``<mib>`` MiB, written as fast as it is read.

It counts the connections it accepted and the paths it was asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time

from tests.support.ports import free_port

_TRICKLE_FOR = 20.0
_CHUNK = b"\0" * 65536


class FaultyUpstream:
    def __init__(self) -> None:
        self.port = free_port()
        self.connections = 0
        self.paths: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", self.port), self._loop
        )
        self._server = future.result(timeout=10)

    def close(self) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode("latin-1")
            self.paths.append(path)
            await self._answer(path, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:  # closed by the test while answering
            pass
        finally:
            with contextlib.suppress(ConnectionError, RuntimeError):
                writer.close()

    async def _answer(self, path: str, writer: asyncio.StreamWriter) -> None:
        if path == "/ok":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        elif path == "/reset":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
            await writer.drain()
            await asyncio.sleep(0.05)
            sock = writer.get_extra_info("socket")
            # SO_LINGER 0: close() sends a RST instead of a FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        elif path == "/silent":
            await asyncio.sleep(_TRICKLE_FOR)
        elif path == "/trickle":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            ends = time.monotonic() + _TRICKLE_FOR
            while time.monotonic() < ends:
                writer.write(b"1\r\nx\r\n")
                await writer.drain()
                await asyncio.sleep(0.05)
        elif path == "/stall":  # good headers, a first chunk, then nothing
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n")
            await writer.drain()
            await asyncio.sleep(_TRICKLE_FOR)
        elif path == "/garbage":
            writer.write(b"SSH-2.0-OpenSSH_9.2 this is not HTTP\r\n\r\n")
            await writer.drain()
        elif path.startswith("/huge/"):
            size = int(path.removeprefix("/huge/")) * 1024 * 1024
            writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
            for _ in range(size // len(_CHUNK)):
                writer.write(_CHUNK)
                await writer.drain()
        else:
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
