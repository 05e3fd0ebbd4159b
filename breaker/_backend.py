"""The I/O layer: run a breaker script on Redis, or on the embedded backend.

Everything redis-py can raise is mapped here, once, to ``BackendUnavailableError``.
A backend that failed is left alone for a backoff that grows with each consecutive
failure (with jitter), so a dead Redis costs the callers nothing while it is down
and is probed by one call at a time when the backoff ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Literal

import fakeredis
import redis
import redis.asyncio
from redis.maint_notifications import MaintNotificationsConfig

from ._events import EventHub
from ._exceptions import BackendUnavailableError
from ._scripts import Scripts

logger = logging.getLogger("breaker")

BackendKind = Literal["redis", "embedded", "fallback"]

_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 5.0
# Keys redis-py's pool adds to the connection settings for itself; a copied pool
# must not inherit them (they are rebuilt from the remaining settings).
_POOL_OWNED = (
    "retry",
    "retry_on_error",
    "maint_notifications_pool_handler",
    "himport_registry",
    "orig_host_address",
    "orig_socket_timeout",
    "orig_socket_connect_timeout",
)


def derive_client(client: Any, timeout: float | None) -> Any:
    """A client on the same server as ``client``, with bounded timeouts and no retries.

    The caller's client is left untouched: the breaker gets its own small pool, so a
    hung Redis costs each call at most ``timeout``, instead of redis-py's default of
    10 retries of a 5 s socket timeout. A pool this cannot copy (a custom pool class)
    is used as it is, with a warning: its own timeouts and retries then apply, and
    asyncio calls are still cut off at ``timeout``.
    """
    pool = client.connection_pool
    settings = {k: v for k, v in pool.connection_kwargs.items() if k not in _POOL_OWNED}
    settings["socket_timeout"] = timeout
    settings["socket_connect_timeout"] = timeout if timeout is not None else 1.0
    # redis-py skips its check for connections the server closed (a restarted
    # Redis) while maintenance notifications are on, which they are by default
    # under RESP3 (redis/redis-py#4128): each stale pooled connection then fails
    # one command. Off, the pool replaces such a connection before anything is sent.
    settings["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
    # A Sentinel pool finds its master through the sentinels: keep them.
    sentinel = (
        (pool.service_name, pool.sentinel_manager) if hasattr(pool, "sentinel_manager") else ()
    )
    try:
        copy = type(pool)(*sentinel, connection_class=pool.connection_class, **settings)
    except TypeError as exc:
        logger.warning(
            "cannot copy %s to bound Redis calls (%s); using the client's own timeouts",
            type(pool).__name__,
            exc,
        )
        return client
    return type(client)(connection_pool=copy)


class BackendHealth:
    """Consecutive-failure backoff, shared by every breaker on one backend.

    After the n-th consecutive failure the backend is left alone for a random time in
    [b/2, b], b = min(5 s, 0.1 s * 2^(n-1)): a dead Redis is probed a few times a
    second at first, then every few seconds, and never by every caller at once.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._down_until = 0.0
        self.last_error = ""
        self._listeners: list[Callable[[str], None]] = []

    def add_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(reason)`` on every failure; the same listener is kept once."""
        with self._lock:
            # ``==``, not ``is``: the same bound method fetched twice is two objects.
            if listener not in self._listeners:
                self._listeners.append(listener)

    def is_down(self) -> bool:
        return self.clock() < self._down_until

    def is_suspect(self) -> bool:
        """The last command failed: the next call must find out from Redis itself."""
        return self._failures > 0

    def failed(self, error: str) -> None:
        with self._lock:
            self._failures += 1
            ceiling = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (self._failures - 1))
            self._down_until = self.clock() + random.uniform(ceiling / 2, ceiling)
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


class Backend:
    """Scripts bound to one client, with the health of that client.

    ``serves_sync`` and ``serves_async`` say which calling styles it serves: a redis-py
    client serves one, the embedded backend (in memory) serves both.
    """

    def __init__(
        self, client: Any, kind: BackendKind, *, timeout: float | None, subscribe: Any = None
    ) -> None:
        self.client = client
        self.kind = kind
        self.timeout = timeout
        self.is_async = isinstance(client, redis.asyncio.Redis)
        self.serves_sync = kind != "redis" or not self.is_async
        self.serves_async = kind != "redis" or self.is_async
        self.scripts = Scripts.register(client)
        self.health = BackendHealth()
        # The client the event hubs follow the channel with; None when no other
        # process can publish (the in-process backends).
        self._subscribe_client = subscribe
        self._hubs: dict[str, EventHub] = {}
        self._hubs_lock = threading.Lock()

    def hub(self, channel: str) -> EventHub:
        """The one event hub of ``channel`` on this backend."""
        with self._hubs_lock:
            if channel not in self._hubs:
                hub = EventHub(self._subscribe_client, channel)
                # The hub's thread outlives nothing: it stops with this backend.
                weakref.finalize(self, hub.stop)
                self._hubs[channel] = hub
            return self._hubs[channel]

    @contextlib.contextmanager
    def _mapped(self, name: str) -> Iterator[None]:
        if self.health.is_down():
            raise BackendUnavailableError(name, f"backing off: {self.health.last_error}")
        try:
            yield
        except (TimeoutError, redis.RedisError, OSError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            self.health.failed(reason)
            raise BackendUnavailableError(name, reason) from exc
        self.health.succeeded()

    def run(self, name: str, script: str, keys: list[str], args: list[Any]) -> list[Any]:
        with self._mapped(name):
            reply: list[Any] = getattr(self.scripts, script)(keys=keys, args=args)
            return reply

    async def arun(self, name: str, script: str, keys: list[str], args: list[Any]) -> list[Any]:
        if not self.is_async:
            return self.run(name, script, keys, args)
        with self._mapped(name):
            async with asyncio.timeout(self.timeout):
                reply: list[Any] = await getattr(self.scripts, script)(keys=keys, args=args)
                return reply


def _embedded() -> Backend:
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    return Backend(client, "embedded", timeout=None)


_EMBEDDED: Backend | None = None
_FALLBACK: Backend | None = None
_REDIS: weakref.WeakKeyDictionary[Any, dict[float, Backend]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def embedded_backend() -> Backend:
    """The process-wide embedded backend: fakeredis running the same Lua scripts."""
    global _EMBEDDED
    with _LOCK:
        if _EMBEDDED is None:
            _EMBEDDED = _embedded()
        return _EMBEDDED


def fallback_backend() -> Backend:
    """The process-wide fallback for Redis-backed breakers while Redis is unreachable."""
    global _FALLBACK
    with _LOCK:
        if _FALLBACK is None:
            _FALLBACK = _embedded()
            _FALLBACK.kind = "fallback"
        return _FALLBACK


def redis_backend(client: Any, timeout: float) -> Backend:
    """The backend for a caller's redis-py client: one per client and timeout, shared."""
    if not isinstance(client, redis.Redis | redis.asyncio.Redis):
        raise TypeError(
            "redis must be a redis.Redis or redis.asyncio.Redis client, "
            f"not {type(client).__name__}"
        )
    with _LOCK:
        per_timeout = _REDIS.setdefault(client, {})
        if timeout not in per_timeout:
            per_timeout[timeout] = Backend(
                derive_client(client, timeout),
                "redis",
                timeout=timeout,
                subscribe=derive_client(client, None),
            )
        return per_timeout[timeout]
