"""Events on a Redis Cluster: every breaker publishes on a channel of its own, inside its
hash tag (``<prefix>:{<name>}:events``), with SPUBLISH from the script that made the
transition, so an event stays in the shard that holds the breaker. Here one follower
per process subscribes (SSUBSCRIBE) to the channels of the breakers this process has,
on the primary that serves each channel's slot.

The follower owns its connections: one per node it needs, subscribed channel by
channel (a node may hold several slots, and one SSUBSCRIBE takes one slot). When a
connection fails (a primary died), or a node says a channel's slot has moved
(``sunsubscribe``), the follower drops them all, reads the slot map again and
subscribes anew. Every time it subscribes again the views of this process's
breakers are distrusted (``BackendHealth.epoch``), so what was published while it
was away is read from Redis on the next call.
"""

from __future__ import annotations

import asyncio
import select
from typing import Any

import redis
import redis.asyncio

from .events import _POLL, EventHub
from .topology import CONNECTION_SETTINGS, no_retry

#: How long the follower waits to connect to a node: a dead one must not hold back
#: the subscriptions on the live ones for long.
_CONNECT_TIMEOUT = 1.0


class ShardedHub(EventHub):
    """The event hub of every breaker of one Cluster backend: delivers each event of
    the channels it was asked for (``want``) to the receivers of its breaker."""

    def __init__(self, client: Any) -> None:
        super().__init__(client, "{<name>}:events")
        self._wanted: set[str] = set()

    def want(self, channel: str) -> None:
        """Follow ``channel`` too; ``subscribed`` is clear until the follower has."""
        with self._lock:
            if channel in self._wanted:
                return
            self._wanted.add(channel)
            self.subscribed.clear()

    def _missing(self, subscribed: set[str]) -> list[str]:
        with self._lock:
            return sorted(self._wanted - subscribed)

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "smessage":
            self.deliver(message["data"])
        elif kind == "sunsubscribe":
            # The node no longer serves the channel's slot (it moved, or the node
            # was demoted): read the slot map again and subscribe where it is now.
            raise redis.ConnectionError("a breaker's slot moved: subscribing again")

    # -- sync: one thread, waiting on every node's socket --------------------------------

    def _session_sync(self) -> None:
        pubsubs: dict[str, Any] = {}
        subscribed: set[str] = set()
        try:
            self.client.nodes_manager.initialize()  # the slot map as it is now
            self._subscribe_sync(pubsubs, subscribed)
            self._on_subscribed()
            while not self._stopped.is_set():
                if not self.subscribed.is_set():
                    self._subscribe_sync(pubsubs, subscribed)
                    self.subscribed.set()
                self._read_sync(list(pubsubs.values()))
                self._tick()
        finally:
            for pubsub in pubsubs.values():
                pubsub.close()

    def _subscribe_sync(self, pubsubs: dict[str, Any], subscribed: set[str]) -> None:
        for channel in self._missing(subscribed):
            node = self.client.get_node_from_key(channel)
            pubsub = pubsubs.get(node.name)
            if pubsub is None:
                pubsub = pubsubs[node.name] = self.client.get_redis_connection(node).pubsub()
            pubsub.ssubscribe(channel)
            subscribed.add(channel)

    def _read_sync(self, pubsubs: list[Any]) -> None:
        """Deliver what arrived on any node's connection, waiting up to a poll."""
        for pubsub in pubsubs:
            self._drain(pubsub)  # what a parser already holds is not on the socket
        sockets = {}
        for pubsub in pubsubs:
            sock = getattr(pubsub.connection, "_sock", None)
            if sock is not None:
                sockets[sock] = pubsub
        if not sockets:
            self._stopped.wait(_POLL)
            return
        readable, _, _ = select.select(list(sockets), [], [], _POLL)
        for sock in readable:
            self._drain(sockets[sock])

    def _drain(self, pubsub: Any) -> None:
        while (message := pubsub.get_message(timeout=0.0)) is not None:
            self._handle(message)

    # -- async: one task, a read per node at a time -------------------------------------

    async def _session_async(self) -> None:
        pubsubs: dict[str, Any] = {}
        clients: list[Any] = []
        subscribed: set[str] = set()
        try:
            await self.client.initialize()  # once: its aclose needs it
            if self.subscriptions:
                await self.client.nodes_manager.initialize()  # the slot map as it is now
            await self._subscribe_async(pubsubs, clients, subscribed)
            self._on_subscribed()
            while not self._stopped.is_set():
                if not self.subscribed.is_set():
                    await self._subscribe_async(pubsubs, clients, subscribed)
                    self.subscribed.set()
                if not pubsubs:
                    await asyncio.sleep(_POLL)
                else:
                    await asyncio.gather(*(self._pump(pubsub) for pubsub in pubsubs.values()))
                self._tick()
        finally:
            for pubsub in pubsubs.values():
                await pubsub.aclose()
            for client in clients:
                await client.aclose()

    async def _subscribe_async(
        self, pubsubs: dict[str, Any], clients: list[Any], subscribed: set[str]
    ) -> None:
        settings = {
            k: v for k, v in self.client.connection_kwargs.items() if k in CONNECTION_SETTINGS
        }
        for channel in self._missing(subscribed):
            node = self.client.get_node_from_key(channel)
            pubsub = pubsubs.get(node.name)
            if pubsub is None:
                # No retries: redis-py's default (3, with backoff of seconds) would
                # reconnect a dead node's subscription behind the follower's back, so
                # that it heard nothing for seconds without knowing it was away, and
                # trusted views nothing refreshed (a Cluster kill -9).
                client = redis.asyncio.Redis(
                    **{
                        **settings,
                        "host": node.host,
                        "port": node.port,
                        "socket_timeout": None,
                        "socket_connect_timeout": _CONNECT_TIMEOUT,
                        "retry": no_retry(asyncio=True),
                    }
                )
                clients.append(client)
                pubsub = pubsubs[node.name] = client.pubsub()
            await pubsub.ssubscribe(channel)
            subscribed.add(channel)

    async def _pump(self, pubsub: Any) -> None:
        """One node's messages for up to a poll, each delivered as it comes."""
        message = await pubsub.get_message(timeout=_POLL)
        while message is not None:
            self._handle(message)
            message = await pubsub.get_message(timeout=0.0)
