"""Real local Redis topologies that a test starts, breaks and stops: a Redis Cluster
(``LocalCluster``) and a Sentinel set (``SentinelSet``).

Starting, waiting for, killing and stopping them is ``app.localfleet``'s, which
``fleetbreaker fleet --redis cluster|sentinel`` runs too; this module adds what only
tests do: clients with the tests' timeouts, emptying a topology between tests, a
graceful failover and a restart of a killed node. Its names are those the tests
have always imported from here.
"""

from __future__ import annotations

import time
from typing import Any

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as async_cluster
import redis.asyncio.sentinel as async_sentinel
import redis.cluster
import redis.sentinel

from app.localfleet import cluster, sentinel
from app.localfleet.cluster import ClusterEntry, ClusterView
from app.localfleet.nodes import (
    CLIENT_TIMEOUTS,
    SETTLE_TIMEOUT,
    Node,
    TopologyError,
    accepts_writes,
    ask,
    key_in_slot,
    require_programs,
    slot_of,
    wait_for,
)
from app.localfleet.ports import HOST
from tests.support.ports import free_ports

__all__ = [
    "CLIENT_TIMEOUTS",
    "HOST",
    "LocalCluster",
    "Node",
    "SentinelSet",
    "TopologyError",
    "accepts_writes",
    "aclose_sentinel_client",
    "ask",
    "close_sentinel_client",
    "free_ports",
    "key_in_slot",
    "require_programs",
    "slot_of",
    "wait_for",
    "wait_replicated",
]


class LocalCluster(cluster.LocalCluster):
    """``app.localfleet.cluster.LocalCluster``, with what tests add: clients, ``flush()``
    between tests, a graceful ``failover()`` and the ``restart()`` of a killed node."""

    def client(self, **options: Any) -> redis.cluster.RedisCluster:
        """A ``RedisCluster`` on every node; the caller closes it."""
        return redis.cluster.RedisCluster(
            startup_nodes=[
                redis.cluster.ClusterNode(host, port)  # type: ignore[no-untyped-call]
                for host, port in self.startup_nodes
            ],
            **{**CLIENT_TIMEOUTS, **options},
        )

    def async_client(self, **options: Any) -> async_cluster.RedisCluster:
        """The asyncio ``RedisCluster``; make it in the loop that uses it, and aclose it."""
        return async_cluster.RedisCluster(
            startup_nodes=[
                async_cluster.ClusterNode(host, port) for host, port in self.startup_nodes
            ],
            **{**CLIENT_TIMEOUTS, **options},
        )

    def replica_of(self, primary: Node) -> Node:
        """The live replica of ``primary`` (the lowest port, if it has several)."""

        def replicas(view: ClusterView) -> tuple[int, ...]:
            return tuple(
                sorted(e.port for e in view if e.replicates == primary.port and not e.failed)
            )

        ports = self._agreed(f"the replicas of {primary}", replicas)
        if not ports:
            raise TopologyError(f"{primary} has no replica")
        return self.node_at(ports[0])

    def restart(self, node: Node) -> None:
        """Start a killed node again (same port, same nodes.conf) and wait for the
        cluster to take it back: an old primary rejoins as a replica of its successor."""
        node.start()
        node.wait_up()
        self.wait_ok()

    def failover(self, replica: Node, timeout: float = SETTLE_TIMEOUT) -> float:
        """``CLUSTER FAILOVER`` on ``replica``: a graceful swap with its primary, once
        the replica has caught up. Returns the seconds until every node agrees."""
        primary_port = self._agreed_entry(replica).replicates
        if primary_port is None:
            raise TopologyError(f"{replica} is not a replica")
        old = self.node_at(primary_port)
        started = time.monotonic()
        ask(replica, "CLUSTER", "FAILOVER")

        def missing() -> str:
            if unsettled := self._unsettled():
                return unsettled
            if not self._agreed_entry(replica).primary:
                return f"{replica} is still a replica"
            if self._agreed_entry(old).replicates != replica.port:
                return f"{old} does not replicate {replica} yet"
            return ""

        wait_for(f"{replica} to take over from {old}", missing, self.nodes, timeout)
        return time.monotonic() - started

    def flush(self) -> None:
        """Empty the cluster between tests: FLUSHALL and FUNCTION FLUSH on every
        primary, waiting for its replica to follow; SCRIPT FLUSH on every node (each
        has its own script cache)."""
        self.wait_ok()
        view = self._view(self.live()[0])
        for entry in view:
            if entry.primary and entry.slots:
                primary = self.node_at(entry.port)
                ask(primary, "FLUSHALL")
                ask(primary, "FUNCTION", "FLUSH")
                replicas = sum(1 for e in view if e.replicates == entry.port and not e.failed)
                wait_replicated(primary, replicas)
        for node in self.live():
            ask(node, "SCRIPT", "FLUSH")

    def _agreed_entry(self, node: Node) -> ClusterEntry:
        def entry(view: ClusterView) -> ClusterEntry | None:
            return next((e for e in view if e.port == node.port), None)

        found = self._agreed(f"what {node} is", entry)
        if found is None:
            raise TopologyError(f"the cluster does not know {node}")
        return found


class SentinelSet(sentinel.SentinelSet):
    """``app.localfleet.sentinel.SentinelSet``, with clients and ``flush()`` between tests."""

    def client(self, **options: Any) -> redis.Redis:
        """``Sentinel(...).master_for(name)``: it follows failovers. Close it with
        ``close_sentinel_client``, which closes the connections to the sentinels too."""
        sentinel = redis.sentinel.Sentinel(self.sentinels, **CLIENT_TIMEOUTS)
        client: redis.Redis = sentinel.master_for(self.name, **{**CLIENT_TIMEOUTS, **options})
        return client

    def async_client(self, **options: Any) -> aioredis.Redis:
        """The asyncio ``master_for``; make it in the loop that uses it, and close it
        there with ``aclose_sentinel_client``."""
        sentinel = async_sentinel.Sentinel(self.sentinels, **CLIENT_TIMEOUTS)
        client: aioredis.Redis = sentinel.master_for(self.name, **{**CLIENT_TIMEOUTS, **options})
        return client

    def flush(self) -> None:
        """Empty the master between tests (FLUSHALL, FUNCTION FLUSH), wait for the
        replicas to follow, and SCRIPT FLUSH every server."""
        master = self.master()
        if not master.alive:
            raise TopologyError(
                f"the master {master} is dead: a test that kills one takes a fresh sentinel set"
            )
        ask(master, "FLUSHALL")
        ask(master, "FUNCTION", "FLUSH")
        wait_replicated(master, sum(1 for node in self.servers if node.alive) - 1)
        for node in self.servers:
            if node.alive:
                ask(node, "SCRIPT", "FLUSH")


def wait_replicated(primary: Node, replicas: int) -> None:
    """Wait until ``replicas`` replicas acknowledge ``primary``'s writes so far.

    Usually at once (WAIT asks them); up to a second after a replica's full sync,
    when its primary streams to it only from its first periodic acknowledgement.
    """

    def missing() -> str:
        acked: int = ask(primary, "WAIT", replicas, 200)
        return "" if acked >= replicas else f"{acked} of {replicas} replicas acknowledged"

    wait_for(f"the replicas of {primary} to acknowledge", missing, [primary], SETTLE_TIMEOUT)


def close_sentinel_client(client: redis.Redis) -> None:
    """Close a ``SentinelSet.client()`` and the ``Sentinel`` that found its master."""
    client.close()
    client.connection_pool.sentinel_manager.close()  # type: ignore[attr-defined]


def close_topology_client(topology: LocalCluster | SentinelSet, client: Any) -> None:
    """Close a ``topology.client()``: a Sentinel set's with the ``Sentinel`` behind it."""
    if isinstance(topology, SentinelSet):
        close_sentinel_client(client)
    else:
        client.close()


async def aclose_sentinel_client(client: aioredis.Redis) -> None:
    """Close a ``SentinelSet.async_client()`` and its ``Sentinel``, in the client's loop:
    the connections to the sentinels were made there too."""
    await client.aclose()
    await client.connection_pool.sentinel_manager.aclose()  # type: ignore[attr-defined]
