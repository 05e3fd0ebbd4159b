"""A TCP proxy in front of a Redis server that loses replies and stalls on cue.

``cut_after_request(b"INCR")`` is the fault that matters for retries: the next request
containing ``INCR`` reaches Redis and runs, and the client's connection is closed
instead of getting the reply. A client that retries then runs it a second time.

One thread (``test-proxy-<port>``) moves every byte, so a fault is applied between two
chunks, never in the middle of one: each method returns once the proxy applied it.
A "chunk" is what one ``recv`` returned: a client that writes a command in one call
(redis-py does) sends it as one chunk, pipelined commands included.
"""

from __future__ import annotations

import contextlib
import queue
import selectors
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

_ORDER_TIMEOUT = 10.0
_SEND_TIMEOUT = 5.0  # a peer that stops reading for this long is dropped


@dataclass(eq=False)
class _Link:
    """A client's connection and the proxy's connection to Redis on its behalf."""

    client: socket.socket
    server: socket.socket
    cutting: bool = False  # the request was forwarded; its reply will be dropped


class FaultProxy:
    """Forwards 127.0.0.1:``port`` to Redis at ``upstream_port`` until told otherwise.

    - ``cut_after_request(match)``: the next client chunk containing ``match`` goes to
      Redis; once Redis answers (the command ran), the reply is dropped and both
      connections are closed.
    - ``drop_all()``: closes every connection, as a restarted load balancer would.
    - ``pause()`` / ``resume()``: a black hole: connections are accepted and nothing is
      forwarded either way; bytes sent meanwhile wait in the sockets and flow on resume.

    ``connections`` counts accepted connections, ``cuts`` the requests cut, and
    ``requests_containing(b"INCR")`` the client chunks that carried ``INCR``. A count
    is up to date once the client has seen the effect (a reply, or a closed connection).

        with FaultProxy(server.port) as proxy:
            client = redis.Redis(port=proxy.port)
    """

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self.connections = 0
        self.cuts = 0
        self._requests: list[bytes] = []
        self._links: list[_Link] = []
        self._cut_match: bytes | None = None
        self._paused = False
        self._closing = False
        self._selector = selectors.DefaultSelector()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._orders: queue.SimpleQueue[tuple[Callable[[], None], threading.Event]] = (
            queue.SimpleQueue()
        )
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_reader, selectors.EVENT_READ)
        self._thread = threading.Thread(
            target=self._run, name=f"test-proxy-{self.port}", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def cut_after_request(self, match: bytes) -> None:
        """Lose the reply to the next request containing ``match`` (the command runs)."""
        self._order(lambda: setattr(self, "_cut_match", match))

    def drop_all(self) -> None:
        """Close every connection open through the proxy."""
        self._order(self._drop_all)

    def pause(self) -> None:
        """Forward nothing, in either direction, until ``resume()``."""
        self._order(self._pause)

    def resume(self) -> None:
        self._order(self._resume)

    def requests_containing(self, match: bytes) -> int:
        """How many chunks from clients contained ``match``."""
        return sum(match in chunk for chunk in self._requests)

    def close(self) -> None:
        """Close every connection and the port; the proxy's thread is gone on return."""
        if not self._thread.is_alive():
            return
        self._order(lambda: setattr(self, "_closing", True))
        self._thread.join(timeout=_ORDER_TIMEOUT)
        if self._thread.is_alive():
            raise RuntimeError(f"the thread of the proxy on port {self.port} did not stop")

    def _order(self, change: Callable[[], None]) -> None:
        """Run ``change`` in the proxy's thread, between two chunks, and wait for it."""
        done = threading.Event()
        self._orders.put((change, done))
        self._wake_writer.send(b"\0")
        if not done.wait(_ORDER_TIMEOUT):
            raise RuntimeError(f"the proxy on port {self.port} did not answer in time")

    def _run(self) -> None:
        try:
            while not self._closing:
                for key, _ in self._selector.select():
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj is self._wake_reader:
                        self._take_orders()
                    else:
                        link: _Link = key.data
                        self._forward(link, from_client=key.fileobj is link.client)
        finally:
            self._drop_all()
            for sock in (self._listener, self._wake_reader, self._wake_writer):
                sock.close()
            self._selector.close()

    def _take_orders(self) -> None:
        self._wake_reader.recv(4096)
        while True:
            try:
                change, done = self._orders.get_nowait()
            except queue.Empty:
                return
            change()
            done.set()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        self.connections += 1
        try:
            server = socket.create_connection(self.upstream, timeout=_SEND_TIMEOUT)
        except OSError:
            client.close()
            return
        client.settimeout(_SEND_TIMEOUT)
        link = _Link(client, server)
        self._links.append(link)
        if not self._paused:
            self._listen(link)

    def _forward(self, link: _Link, *, from_client: bool) -> None:
        if link not in self._links:  # closed by an earlier event of the same select
            return
        try:
            chunk = (link.client if from_client else link.server).recv(65536)
        except OSError:
            chunk = b""
        if not chunk:
            self._close(link)
            return
        if not from_client:
            if link.cutting:  # the command ran; its reply is lost with the connection
                self._close(link)
            else:
                self._send(link, link.client, chunk)
            return
        self._requests.append(chunk)
        if self._cut_match is not None and self._cut_match in chunk:
            self._cut_match = None
            self.cuts += 1
            link.cutting = True
            self._selector.unregister(link.client)  # nothing more from this client
        self._send(link, link.server, chunk)

    def _send(self, link: _Link, sock: socket.socket, chunk: bytes) -> None:
        try:
            sock.sendall(chunk)
        except OSError:
            self._close(link)

    def _listen(self, link: _Link) -> None:
        sockets = (link.server,) if link.cutting else (link.client, link.server)
        for sock in sockets:
            self._selector.register(sock, selectors.EVENT_READ, link)

    def _pause(self) -> None:
        self._paused = True
        for link in self._links:
            self._unlisten(link)

    def _resume(self) -> None:
        if not self._paused:
            return
        self._paused = False
        for link in self._links:
            self._listen(link)

    def _unlisten(self, link: _Link) -> None:
        for sock in (link.client, link.server):
            with contextlib.suppress(KeyError):
                self._selector.unregister(sock)

    def _close(self, link: _Link) -> None:
        self._unlisten(link)
        link.client.close()
        link.server.close()
        self._links.remove(link)

    def _drop_all(self) -> None:
        for link in list(self._links):
            self._close(link)
