"""The shared lane's I/O: run a breaker script on Redis, or on the embedded backend.

Everything redis-py can raise is mapped here, once, to ``BackendUnavailableError``.
A backend that failed is left alone for a backoff that grows with each consecutive
failure (with jitter), so a dead Redis costs the callers nothing while it is down
and is probed by one call at a time when the backoff ends.

A ``Backend`` is shared by every breaker on the same client and timeout, and closed
when the last of them closes: its pools, and its event hubs' threads and tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import redis
import redis.asyncio
from redis.maint_notifications import MaintNotificationsConfig

from ._events import EventHub
from ._exceptions import BackendUnavailableError
from ._scripts import function_name, library_source, script_source
from ._types import BackendKind, ScriptMode, ScriptName

logger = logging.getLogger("breaker")

_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 5.0

#: What a pool's settings say of where and how to connect: copied to the breaker's own
#: pool, so that it reaches the same server as the caller's client, the same way.
CONNECTION_SETTINGS = frozenset(
    {
        "host",
        "port",
        "path",
        "db",
        "username",
        "password",
        "credential_provider",
        "client_name",
        "driver_info",
        "protocol",
        "legacy_responses",
        "encoding",
        "encoding_errors",
        "decode_responses",
        "socket_keepalive",
        "socket_keepalive_options",
        "socket_read_size",
        "health_check_interval",
        "redis_connect_func",
    }
    | {
        f"ssl_{name}"
        for name in (
            "keyfile",
            "certfile",
            "cert_reqs",
            "include_verify_flags",
            "exclude_verify_flags",
            "ca_certs",
            "ca_data",
            "ca_path",
            "check_hostname",
            "min_version",
            "ciphers",
            "password",
            "validate_ocsp",
            "validate_ocsp_stapled",
            "ocsp_context",
            "ocsp_expected_cert",
        )
    }
)
#: What the breaker sets for itself: bounded timeouts, no retries (a retried script
#: whose reply was lost would run twice), no maintenance notifications (see below).
SET_BY_BREAKER = frozenset(
    {
        "socket_timeout",
        "socket_connect_timeout",
        "retry",
        "retry_on_error",
        "maint_notifications_config",
    }
)
#: What redis-py's pools add to the settings for themselves; never copied.
POOL_OWNED = frozenset(
    {
        "connection_pool",
        "himport_registry",
        "maint_notifications_pool_handler",
        "orig_host_address",
        "orig_socket_timeout",
        "orig_socket_connect_timeout",
    }
)


def derive_client(client: Any, timeout: float | None) -> Any:
    """A client on the same server as ``client``, with bounded timeouts and no retries.

    A pool this cannot copy (a custom pool class) is used as it is, with a warning:
    its own timeouts and retries then apply, and asyncio calls are still cut off at
    ``timeout``. The caller's client is left untouched: the breaker gets its own small pool, so a
    hung Redis costs each call at most ``timeout``, instead of redis-py's default of
    retries of a 5 s socket timeout. Only the settings in ``CONNECTION_SETTINGS`` are
    copied (tests hold every setting the installed redis-py puts in a pool to one of
    the three lists, so that an upgrade that adds one fails there, loudly).

    Maintenance notifications stay off: with them on (redis-py 8's default under
    RESP3), the pool skips its check for connections the server closed, and after a
    Redis restart each stale pooled connection would fail one command
    (redis/redis-py#4128). Off, the pool replaces such a connection before sending.
    """
    pool = client.connection_pool
    settings = {k: v for k, v in pool.connection_kwargs.items() if k in CONNECTION_SETTINGS}
    settings["socket_timeout"] = timeout
    if "path" not in settings:
        settings["socket_connect_timeout"] = timeout if timeout is not None else 1.0
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
    second at first, then every few seconds, and never by every caller at once. Time
    is the callers' (``now``, the breaker's clock), so a test moves it.
    """

    def __init__(self) -> None:
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


class Backend:
    """The library bound to one client, with the health of that client.

    It runs an operation as a FUNCTION call (``mode`` "functions"), or as an EVALSHA
    script ("eval"); "auto" takes functions and falls back, once and for good, when the
    server refuses them (Redis < 7, an ACL). A FUNCTION FLUSH or a restarted server
    costs one FUNCTION LOAD (or SCRIPT LOAD) and a second try, never an error.

    ``serves_sync`` and ``serves_async`` say which calling styles it serves: a redis-py
    client serves one, the embedded backend (in memory) serves both; asyncio callers
    run it on the loop's executor, off the event loop.
    """

    def __init__(
        self,
        client: Any,
        kind: BackendKind,
        *,
        timeout: float | None,
        subscribe: Any = None,
        mode: ScriptMode = "auto",
    ) -> None:
        self.client = client
        self.kind = kind
        self.timeout = timeout
        self.mode: ScriptMode = mode
        self.is_async = isinstance(client, redis.asyncio.Redis)
        self.serves_sync = kind != "redis" or not self.is_async
        self.serves_async = kind != "redis" or self.is_async
        self._scripts: dict[ScriptName, Any] = {}
        self.health = BackendHealth()
        # The client the event hubs follow the channel with; None when no other
        # process can publish (the embedded backend).
        self._subscribe_client = subscribe
        self._hubs: dict[str, EventHub] = {}
        self._lock = threading.Lock()
        self._users = 0

    def hub(self, channel: str) -> EventHub:
        """The one event hub of ``channel`` on this backend."""
        with self._lock:
            if channel not in self._hubs:
                self._hubs[channel] = EventHub(self._subscribe_client, channel)
            return self._hubs[channel]

    # -- the breakers that use it ----------------------------------------------------

    def join(self) -> None:
        with self._lock:
            self._users += 1

    def leave(self) -> bool:
        """One user fewer; True when it was the last, and the backend must close."""
        with self._lock:
            self._users -= 1
            return self._users == 0

    def close(self) -> None:
        """Stop the hubs' threads, the off-loop thread, and close the pools (sync)."""
        for hub in self._take_hubs():
            hub.stop()
        if self.kind == "redis" and not self.is_async:
            for client in (self.client, self._subscribe_client):
                client.connection_pool.disconnect()

    async def aclose(self) -> None:
        """``close`` for asyncio clients: their tasks and pools are awaited."""
        for hub in self._take_hubs():
            await hub.astop()
        if self.kind == "redis" and self.is_async:
            for client in (self.client, self._subscribe_client):
                await client.connection_pool.disconnect()
        elif self.kind == "redis":
            self.close()

    def _take_hubs(self) -> list[EventHub]:
        with self._lock:
            hubs, self._hubs = list(self._hubs.values()), {}
        return hubs

    # -- running scripts -------------------------------------------------------------

    @contextlib.contextmanager
    def _mapped(self, name: str, now: float) -> Iterator[None]:
        if self.health.is_down(now):
            raise BackendUnavailableError(name, f"backing off: {self.health.last_error}")
        try:
            yield
        except (TimeoutError, redis.RedisError, OSError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            self.health.failed(reason, now)
            raise BackendUnavailableError(name, reason) from exc
        self.health.succeeded()

    def run(
        self, name: str, script: ScriptName, keys: list[str], args: list[Any], now: float
    ) -> list[Any]:
        """Run ``script``; ``now`` is the caller's clock (for the backoff)."""
        with self._mapped(name, now):
            if self.mode != "eval":
                command = _FCALL_RO if script == "snapshot" else "FCALL"
                call = (command, function_name(script), len(keys), *keys, *args)
                try:
                    return _list(self.client.execute_command(*call))
                except redis.ResponseError as exc:
                    if _not_loaded(exc):
                        self.client.execute_command("FUNCTION", "LOAD", "REPLACE", library_source())
                        return _list(self.client.execute_command(*call))
                    if not self._refused(exc):
                        raise
            return _list(self._script(script)(keys=keys, args=args))

    async def arun(
        self, name: str, script: ScriptName, keys: list[str], args: list[Any], now: float
    ) -> list[Any]:
        if not self.is_async:
            # The embedded backend: fakeredis runs the script in Python and Lua, about
            # a tenth of a millisecond each time; on the loop's executor, off the loop.
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, self.run, name, script, keys, args, now)
        with self._mapped(name, now):
            async with asyncio.timeout(self.timeout):
                if self.mode != "eval":
                    command = _FCALL_RO if script == "snapshot" else "FCALL"
                    call = (command, function_name(script), len(keys), *keys, *args)
                    try:
                        return _list(await self.client.execute_command(*call))
                    except redis.ResponseError as exc:
                        if _not_loaded(exc):
                            source = library_source()
                            await self.client.execute_command("FUNCTION", "LOAD", "REPLACE", source)
                            return _list(await self.client.execute_command(*call))
                        if not self._refused(exc):
                            raise
                return _list(await self._script(script)(keys=keys, args=args))

    def _refused(self, exc: redis.ResponseError) -> bool:
        """A server that refuses FUNCTION: "auto" turns to EVALSHA for good."""
        message = str(exc).lower()
        refused = "unknown command" in message or "noperm" in message or "no permission" in message
        if refused and self.mode == "auto":
            logger.warning("Redis refuses FUNCTION (%s): running the scripts with EVALSHA", exc)
            self.mode = "eval"
            return True
        return False

    def _script(self, script: ScriptName) -> Any:
        registered = self._scripts.get(script)
        if registered is None:
            registered = self._scripts[script] = self.client.register_script(script_source(script))
        return registered


_FCALL_RO = "FCALL_RO"


def _not_loaded(exc: redis.ResponseError) -> bool:
    return "function not found" in str(exc).lower()


def _list(reply: Any) -> list[Any]:
    listed: list[Any] = reply
    return listed


_EMBEDDED: Backend | None = None
_REDIS: dict[tuple[int, float, ScriptMode], tuple[Any, Backend]] = {}
_LOCK = threading.Lock()


def embedded_backend() -> Backend:
    """The process-wide embedded backend: fakeredis running the same Lua scripts.
    Its data lives as long as the process, whichever breakers come and go."""
    global _EMBEDDED
    with _LOCK:
        if _EMBEDDED is None:
            client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
            _EMBEDDED = Backend(client, "embedded", timeout=None)
        return _EMBEDDED


def open_backend(client: Any, timeout: float, mode: ScriptMode = "auto") -> Backend:
    """The backend for a breaker on ``client`` (None: the embedded one), counted as
    one more user: redis-py clients get one per client and timeout, shared by the
    breakers on it until the last of them closes (``release``)."""
    if client is None:
        backend = embedded_backend()
        backend.join()
        return backend
    if not isinstance(client, redis.Redis | redis.asyncio.Redis):
        raise TypeError(
            "redis must be a redis.Redis or redis.asyncio.Redis client, "
            f"not {type(client).__name__}"
        )
    with _LOCK:
        key = (id(client), timeout, mode)
        found = _REDIS.get(key)
        if found is None or found[0] is not client:
            backend = Backend(
                derive_client(client, timeout),
                "redis",
                timeout=timeout,
                subscribe=derive_client(client, None),
                mode=mode,
            )
            found = _REDIS[key] = (client, backend)
        found[1].join()
        return found[1]


def release(backend: Backend) -> bool:
    """A breaker is done with ``backend``; True when it was the last, and the caller
    must close it (``close`` or ``aclose``)."""
    with _LOCK:
        if not backend.leave():
            return False
        for key, (_, held) in list(_REDIS.items()):
            if held is backend:
                del _REDIS[key]
        return True
