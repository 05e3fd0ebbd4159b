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
import logging
import threading
from typing import Any

import redis
import redis.asyncio
from redis.crc import key_slot

from .._exceptions import BackendUnavailableError
from .._keys import breaker_channel, events_channel
from .._types import READ_ONLY_SCRIPTS, BackendKind, ScriptMode, ScriptName
from .connections import AsyncConnections, BackendHealth, Connections
from .events import EventHub
from .scripts import function_name, library_source, script_source
from .sharded import ShardedHub
from .topology import (
    CLIENT_TYPES,
    REDIS_ERRORS,
    db_of,
    derive_client,
    is_async_client,
    made,
    resolve,
    topology_of,
)

logger = logging.getLogger("breaker")


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
        source: Any = None,
    ) -> None:
        # ``client`` may be a ``Deferred`` (a sync Cluster's): made on first use.
        self._client = client
        self.kind = kind
        self.timeout = timeout
        self.mode: ScriptMode = mode
        # What the caller's client is (``source``, else ``client``) says how to talk.
        source = client if source is None else source
        self.is_async = is_async_client(source)
        self.topology = topology_of(source) if kind == "redis" else "standalone"
        self.cluster = self.topology == "cluster"
        #: The database the breakers' keys live in: its events have a channel of their own.
        self.db = db_of(source) if kind == "redis" else 0
        self.serves_sync = kind != "redis" or not self.is_async
        self.serves_async = kind != "redis" or self.is_async
        self._scripts: dict[ScriptName, Any] = {}
        self.health = BackendHealth()
        # On a Cluster, one health per slot in use: a dead primary holds back the
        # breakers of its own shard only.
        self._slot_health: dict[int, BackendHealth] = {}
        # The client the event hubs follow the channel with; None when no other
        # process can publish (the embedded backend).
        self._subscribe_client = subscribe
        self._hubs: dict[str, EventHub] = {}
        # On a Cluster, one follower for every breaker's own channel.
        self._sharded = ShardedHub(subscribe) if self.cluster else None
        self._lock = threading.Lock()
        self._users = 0
        # The breaker's own connections, for its FCALLs: where the pool is one of
        # redis-py's own (the breaker made it). Anything else (fakeredis, a Sentinel
        # pool, a cluster) goes through the client.
        pool = getattr(client, "connection_pool", None)
        self._connections = Connections(pool) if type(pool) is redis.ConnectionPool else None
        self._aconnections = (
            AsyncConnections(pool) if type(pool) is redis.asyncio.ConnectionPool else None
        )

    @property
    def client(self) -> Any:
        """The breaker's own client (made now if it is a ``Deferred`` not made yet:
        raises what redis-py raises when no node answers)."""
        return resolve(self._client)

    @property
    def subscriber(self) -> Any:
        """The client a follower subscribes with (no timeout); None when no other
        process can publish (the embedded backend)."""
        return self._subscribe_client

    def health_of(self, key: str) -> BackendHealth:
        """The health that decides for ``key``: the backend's, or on a Cluster, that
        of the key's slot (so of the primary that serves it)."""
        if not self.cluster:
            return self.health
        slot = key_slot(key.encode())
        with self._lock:
            return self._slot_health.setdefault(slot, BackendHealth())

    def channel_of(self, prefix: str, name: str) -> str:
        """Where breaker ``name`` publishes its transitions: one channel for every
        breaker, or on a Cluster, the breaker's own, in its shard."""
        return breaker_channel(prefix, name) if self.cluster else events_channel(prefix, self.db)

    def hub(self, channel: str) -> EventHub:
        """The one event hub of ``channel`` on this backend (on a Cluster, the one that
        follows every breaker's channel, which now includes ``channel``)."""
        with self._lock:
            if self._sharded is not None:
                if not self._hubs:
                    self._sharded.add_subscribed_listener(self._resubscribed)
                    self._sharded.add_lost_listener(self._unsubscribed)
                self._hubs[channel] = self._sharded
                self._sharded.want(channel)
                return self._sharded
            if channel not in self._hubs:
                hub = EventHub(self._subscribe_client, channel)
                hub.add_subscribed_listener(self._resubscribed)
                hub.add_lost_listener(self._unsubscribed)
                self._hubs[channel] = hub
            return self._hubs[channel]

    def _resubscribed(self, channel: str) -> None:
        """Events published while a follower was away are lost: once it is back, the
        views taken before are distrusted (not on its first subscription: the views
        before it came from replies, as every view does)."""
        hub = self._sharded if self._sharded is not None else self._hubs.get(channel)
        if hub is not None and hub.subscriptions > 1:  # None: closing meanwhile
            self._invalidate_all()

    def _unsubscribed(self, channel: str) -> None:
        """A follower lost its channel: transitions made elsewhere go unheard from now
        on, so the views are distrusted at once, not only once it is back. The next
        call of each breaker asks Redis: a dead Redis is found by that call, so a
        ``fail_closed`` breaker lets nothing through unasked, however long its
        process had been idle."""
        self._invalidate_all()

    def _invalidate_all(self) -> None:
        with self._lock:
            healths = [self.health, *self._slot_health.values()]
        for health in healths:
            health.invalidate()

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
            if self._connections is not None:
                self._connections.close()
            for client in (made(self._client), made(self._subscribe_client)):
                if client is None:
                    continue  # a Deferred never made: nothing to close
                if self.cluster:
                    client.close()  # every node's pool
                else:
                    client.connection_pool.disconnect()

    async def aclose(self) -> None:
        """``close`` for asyncio clients: their tasks and pools are awaited."""
        for hub in self._take_hubs():
            await hub.astop()
        if self.kind == "redis" and self.is_async:
            if self._aconnections is not None:
                await self._aconnections.aclose()
            for client in (made(self._client), made(self._subscribe_client)):
                if client is None:
                    continue
                if self.cluster:
                    await client.aclose()
                else:
                    await client.connection_pool.disconnect()
        elif self.kind == "redis":
            self.close()

    def _take_hubs(self) -> list[EventHub]:
        with self._lock:
            hubs, self._hubs = list(self._hubs.values()), {}
        return list({id(hub): hub for hub in hubs}.values())

    # -- running scripts -------------------------------------------------------------

    def run(
        self, name: str, script: ScriptName, keys: list[str], args: list[Any], now: float
    ) -> list[Any]:
        """Run ``script``; ``now`` is the caller's clock (for the backoff). Every error
        of redis-py becomes ``BackendUnavailableError``, here, once."""
        health = self.health_of(keys[0])
        if health.is_down(now):
            raise BackendUnavailableError(name, f"backing off: {health.last_error}")
        try:
            if self.cluster and health.is_suspect():
                # The probe after a failure: the slot map as the cluster has it now,
                # not as it was when the last call failed (before the failover).
                self.client.nodes_manager.initialize()
            if self.mode != "eval":
                try:
                    reply = self._fcall(_command(script), function_name(script), keys, args)
                except redis.ResponseError as exc:
                    if not _not_loaded(exc):
                        if not self._refused(exc):
                            raise
                        return self.run(name, script, keys, args, now)
                    self._load_library()
                    reply = self._fcall(_command(script), function_name(script), keys, args)
            else:
                reply = self._script(script)(keys=keys, args=args)
        except REDIS_ERRORS as exc:
            raise self._failed(name, exc, now, health) from exc
        health.succeeded()
        return _list(reply)

    def _fcall(self, command: str, function: str, keys: list[str], args: list[Any]) -> Any:
        if self._connections is not None:
            return self._connections.call((command, function, len(keys), *keys, *args))
        if self.cluster:
            # To the node of the keys' slot, named: redis-py would otherwise ask the
            # server for the keys of every FCALL (COMMAND GETKEYS, a round trip).
            node = self.client.get_node_from_key(keys[0])
            return self.client.execute_command(
                command, function, len(keys), *keys, *args, target_nodes=node
            )
        return self.client.execute_command(command, function, len(keys), *keys, *args)

    def _load_library(self) -> None:
        """FUNCTION LOAD, on every primary of a Cluster (replicas get it from them)."""
        # Named nodes, not the "primaries" flag: with a flag, redis-py looks for a key
        # in FUNCTION LOAD's arguments first, and finds none.
        targets = {"target_nodes": self.client.get_primaries()} if self.cluster else {}
        self.client.execute_command("FUNCTION", "LOAD", "REPLACE", library_source(), **targets)

    async def arun(
        self, name: str, script: ScriptName, keys: list[str], args: list[Any], now: float
    ) -> list[Any]:
        if not self.is_async:
            # The embedded backend: fakeredis runs the script in Python and Lua, about
            # a tenth of a millisecond each time; on the loop's executor, off the loop.
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, self.run, name, script, keys, args, now)
        health = self.health_of(keys[0])
        if health.is_down(now):
            raise BackendUnavailableError(name, f"backing off: {health.last_error}")
        try:
            async with asyncio.timeout(self.timeout):
                if self.cluster:
                    # The slot map, once (redis-py's aclose closes the nodes only of
                    # a client initialized this way); again for the probe after a
                    # failure.
                    await self.client.initialize()
                    if health.is_suspect():
                        await self.client.nodes_manager.initialize()
                if self.mode != "eval":
                    try:
                        reply = await self._afcall(
                            _command(script), function_name(script), keys, args
                        )
                    except redis.ResponseError as exc:
                        if not _not_loaded(exc):
                            if not self._refused(exc):
                                raise
                            return await self.arun(name, script, keys, args, now)
                        await self._aload_library()
                        reply = await self._afcall(
                            _command(script), function_name(script), keys, args
                        )
                else:
                    reply = await self._script(script)(keys=keys, args=args)
        except REDIS_ERRORS as exc:
            raise self._failed(name, exc, now, health) from exc
        health.succeeded()
        return _list(reply)

    async def _afcall(self, command: str, function: str, keys: list[str], args: list[Any]) -> Any:
        if self._aconnections is not None:
            return await self._aconnections.call((command, function, len(keys), *keys, *args))
        if self.cluster:
            node = self.client.get_node_from_key(keys[0])
            return await self.client.execute_command(
                command, function, len(keys), *keys, *args, target_nodes=node
            )
        return await self.client.execute_command(command, function, len(keys), *keys, *args)

    async def _aload_library(self) -> None:
        targets = {"target_nodes": self.client.get_primaries()} if self.cluster else {}
        await self.client.execute_command(
            "FUNCTION", "LOAD", "REPLACE", library_source(), **targets
        )

    def _failed(
        self, name: str, exc: BaseException, now: float, health: BackendHealth
    ) -> BackendUnavailableError:
        reason = f"{type(exc).__name__}: {exc}"
        health.failed(reason, now)
        return BackendUnavailableError(name, reason, sent=True)

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


def _command(script: ScriptName) -> str:
    """A snapshot only reads: FCALL_RO (a replica may answer it, in a cluster)."""
    return "FCALL_RO" if script in READ_ONLY_SCRIPTS else "FCALL"


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
            import fakeredis  # the embedded backend only: no other process pays for it

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
    if not isinstance(client, CLIENT_TYPES):
        raise TypeError(
            "redis must be a redis-py client (Redis, RedisCluster, or a Sentinel's "
            f"master_for(...); sync or asyncio), not {type(client).__name__}"
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
                source=client,
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
