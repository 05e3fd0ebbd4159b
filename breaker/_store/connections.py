"""The shared lane's connections and its health: the backoff after consecutive
failures, and the two pools (blocking and asyncio) that send a script call packed by
hiredis and read its reply, one timeout per call.

``backend`` owns one of each per client; nothing here knows a breaker.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import hiredis
import redis
import redis.asyncio

logger = logging.getLogger("breaker")

_BACKOFF_FIRST = 0.1
#: A dead Redis is probed at least once a second: after a failover, every process
#: finds the new primary within a second of it answering.
_BACKOFF_MAX = 1.0


class BackendHealth:
    """Consecutive-failure backoff, shared by every breaker on one backend.

    After the n-th consecutive failure the backend is left alone for a random time in
    [b/2, b], b = min(1 s, 0.1 s * 2^(n-1)): a dead Redis is probed a few times a
    second, and never by every caller at once. Time is the callers' (``now``, the
    breaker's clock), so a test moves it.

    ``epoch`` counts the times the local views of the breakers on this backend may
    have missed something: Redis answered again after failing, or an events follower
    (re)subscribed. A view taken in an older epoch is not trusted: the next call of
    its breaker asks Redis.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures = 0
        self._down_until = 0.0
        self.last_error = ""
        self.epoch = 0
        self._listeners: list[Callable[[str], None]] = []

    def invalidate(self, channel: str = "") -> None:
        """Distrust every local view taken so far (events may have been missed)."""
        with self._lock:
            self.epoch += 1

    def add_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(reason)`` on every failure; the same listener is kept once."""
        with self._lock:
            # ``==``, not ``is``: the same bound method fetched twice is two objects.
            if listener not in self._listeners:
                self._listeners.append(listener)

    def is_down(self, now: float) -> bool:
        return now < self._down_until

    def is_suspect(self) -> bool:
        """The last command failed: the next call must find out from Redis itself."""
        return self._failures > 0

    def failed(self, error: str, now: float) -> None:
        with self._lock:
            self._failures += 1
            ceiling = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (self._failures - 1))
            self._down_until = now + random.uniform(ceiling / 2, ceiling)
            self.last_error = error
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(error)
            except Exception:
                logger.exception("backend error listener %r failed", listener)

    def succeeded(self) -> None:
        if self._failures:
            with self._lock:
                self._failures = 0
                self._down_until = 0.0
                self.last_error = ""
                self.epoch += 1  # back: what the views hold may have changed meanwhile


class Connections:
    """The breaker's own connections to one server, for its FCALLs: idle ones on a
    stack, the last one back the first one out.

    redis-py's pool runs its per-command layers on every call (retries, of which the
    breaker has none, and observability hooks); its packer walks every argument in
    Python. Here a command is packed in C by hiredis and sent whole, and a connection
    is checked as the pool checks it: one the server closed (a restarted Redis) is
    replaced before anything is sent. A connection that failed is disconnected by
    redis-py itself, and connects again when it is next taken. About 10 µs of a
    guarded call's 50 (``bench``).
    """

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._idle: deque[Any] = deque()

    def call(self, command: tuple[Any, ...]) -> Any:
        connection = self._take()
        try:
            connection.send_packed_command([hiredis.pack_command(command)], check_health=False)
            return connection.read_response()
        finally:
            self._idle.append(connection)

    def _take(self) -> Any:
        try:
            connection = self._idle.pop()
        except IndexError:
            connection = self._pool.make_connection()
        connection.connect()
        # One the server closed while it sat idle (a restarted Redis) reads as closed,
        # or has something to read: replaced before anything is sent, as redis-py's
        # pool does.
        try:
            stale = connection.can_read()
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            stale = True
        if stale:
            connection.disconnect()
            connection.connect()
        return connection

    def close(self) -> None:
        while self._idle:
            self._idle.pop().disconnect()


class AsyncConnections:
    """``Connections`` for an asyncio pool. A call cut off mid-reply (the timeout, a
    cancelled caller) leaves its connection unusable: it is disconnected first.

    Their sockets have no timeout of their own: the backend bounds the whole call
    with one ``asyncio.timeout``. redis-py's per-socket timeout would add a second
    timer on each read and an ``asyncio.wait_for`` on each write, which in Python
    3.11 runs the write as a task of its own: two more turns of the loop a call.
    """

    def __init__(self, pool: Any) -> None:
        self._make = pool.connection_class
        self._settings = {**pool.connection_kwargs, "socket_timeout": None}
        self._idle: deque[Any] = deque()

    async def call(self, command: tuple[Any, ...]) -> Any:
        try:
            connection = self._idle.pop()
        except IndexError:
            connection = self._make(**self._settings)
        try:
            await connection.connect()
            try:
                stale = await connection.can_read()
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                stale = True
            if stale:
                await connection.disconnect()
                await connection.connect()
            await connection.send_packed_command(
                [hiredis.pack_command(command)], check_health=False
            )
            return await connection.read_response()
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        finally:
            self._idle.append(connection)

    async def aclose(self) -> None:
        while self._idle:
            await self._idle.pop().disconnect()
