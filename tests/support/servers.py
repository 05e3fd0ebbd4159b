"""Real servers owned by a test: a redis-server on a free port that a test may kill."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import redis

from app.localfleet.nodes import redis_server_command
from tests.support.ports import free_port

_START_TIMEOUT = 10.0


class RedisServer:
    """``redis-server`` on 127.0.0.1, persisting nothing, started and stopped by a test."""

    def __init__(
        self, workdir: Path, port: int | None = None, *, extra_args: tuple[str, ...] = ()
    ) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
        self.workdir = workdir
        self.port = port or free_port()
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def url_of(self, db: int) -> str:
        """The URL of database ``db`` of this server."""
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [*redis_server_command(self.port, self.workdir), *self.extra_args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.02)
            finally:
                client.close()

    def kill(self) -> None:
        """SIGKILL: no goodbye to the clients, like a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=_START_TIMEOUT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=_START_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(port=self.port, db=db)

    def command_calls(self) -> dict[str, int]:
        """Calls per command since start, from ``INFO commandstats``."""
        client = self.client()
        try:
            stats = client.info("commandstats")
        finally:
            client.close()
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


class BlackHole:
    """A TCP server that accepts connections and never answers: a hung Redis.

    ``accepted`` counts the connections made to it, so a test sees how often a
    client tried.
    """

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self._held.append(conn)

    def wait_accepted(self, count: int, timeout: float = 10.0) -> int:
        """The accept count once it reaches ``count`` (the accept thread may lag the
        client's connect by a moment), or as it stands when ``timeout`` runs out."""
        deadline = time.monotonic() + timeout
        while self.accepted < count and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.accepted

    def close(self) -> None:
        self.sock.close()
        for conn in self._held:
            conn.close()


class Refuser:
    """A TCP server on a given port that closes every connection it accepts: a Redis
    that is down, and a count (``accepted``) of how often a client tried to reach it."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.accepted = 0
        self._thread = threading.Thread(target=self._refuse, daemon=True)
        self._thread.start()

    def _refuse(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def wait_accepted(self, count: int, timeout: float = 10.0) -> int:
        """The accept count once it reaches ``count``, or as it stands at ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.accepted < count and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.accepted

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept; close alone won't
        self.sock.close()
        self._thread.join(_START_TIMEOUT)


def text_hash(client: redis.Redis, key: str) -> dict[str, str]:
    """HGETALL as text, as an operator reads it in redis-cli."""
    return {_text(k): _text(v) for k, v in client.hgetall(key).items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
