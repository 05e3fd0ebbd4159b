"""The gateway's Redis, on every topology: the client a URL names, closed with all it
opened, and what the gateway sees of it.

Every client the gateway and its commands make comes from the library's
``redis_from_url`` (``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://``,
``redis+sentinel://``, and their ``rediss+`` forms); a URL it refuses is a
``ConfigurationError`` naming the setting, in one line. Three things differ by
topology, and are said here once:

- **Closing.** A Sentinel client holds connections to the sentinels too.
- **Bounded waits.** redis-py waits for a reply forever by default: the commands'
  sync clients get ``socket_timeout`` (the breakers' own clients are the library's,
  bounded by ``backend_timeout``).
- **What it sees** (``see``, for ``/readyz``): the server; the master the sentinels
  name; or the Cluster's primaries, the slots of each, and whether each answers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
import redis.sentinel
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from breaker import BreakerKeys, redis_from_url

# The library's own list of what redis-py raises when Redis cannot answer (a Cluster
# without a node to ask raises an exception that is no RedisError), and its name for
# what a client reaches: not in its public API yet.
from breaker._store.topology import REDIS_ERRORS as REDIS_ERRORS
from breaker._store.topology import db_of as db_of
from breaker._store.topology import topology_of as topology_of
from breaker._store.urls import aclose_redis, close_redis

#: The setting the gateway reads its Redis from, named in every error about it.
URL_SETTING = "BREAKER_REDIS_URL"

Topology = Literal["standalone", "sentinel", "cluster"]


def check_url(url: str, setting: str = URL_SETTING) -> None:
    """Raise ``ConfigurationError`` (one line naming ``setting``) if ``url`` names no
    Redis. Nothing connects: asyncio clients connect on their first command."""
    redis_from_url(url, asyncio=True, field=setting)


def async_client(url: str) -> Any:
    """The asyncio client of ``url``: a worker's, made in the loop that uses it."""
    return redis_from_url(url, asyncio=True, field=URL_SETTING)


async def aclose(client: Any) -> None:
    """Close ``async_client``'s client and, for a Sentinel set, its sentinels'."""
    await aclose_redis(client)


def sync_client(url: str, *, timeout: float, setting: str = URL_SETTING) -> Any:
    """A blocking client of ``url`` whose every wait is bounded by ``timeout``.

    Raises ``ConfigurationError`` for a bad URL, and for a Cluster none of whose
    nodes answers, one of ``REDIS_ERRORS``: a Cluster client connects as it is made.
    """
    client = redis_from_url(url, field=setting)
    bounded = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if topology_of(client) == "cluster":
        # Made already, with redis-py's endless waits: every node's pool makes its
        # connections anew, bounded, and so does every node found later.
        client.nodes_manager.connection_kwargs.update(bounded)
        pools = [
            node.redis_connection.connection_pool
            for node in client.get_nodes()
            if node.redis_connection is not None
        ]
    else:
        pools = [client.connection_pool]  # no connection yet
    for pool in pools:
        pool.disconnect()
        pool.connection_kwargs.update(bounded)
        pool.reset()
    return client


def close(client: Any) -> None:
    """Close ``sync_client``'s client and, for a Sentinel set, its sentinels'."""
    close_redis(client)


def ping(client: Any) -> None:
    """Raise one of ``REDIS_ERRORS`` unless Redis answers: on a Cluster, every primary
    (a replica that is down serves no breaker)."""
    if topology_of(client) == "cluster":
        client.ping(target_nodes=redis.cluster.RedisCluster.PRIMARIES)
    else:
        client.ping()


def reason(exc: BaseException) -> str:
    """Why Redis did not answer, in one line (redis-py's Sentinel errors carry the repr
    of a whole client)."""
    if isinstance(exc, redis.sentinel.MasterNotFoundError):
        return str(exc).split(" : ", 1)[0]
    return " ".join(str(exc).split()) or type(exc).__name__


# -- what the gateway sees --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RedisView:
    """What the gateway sees of its Redis (``see``): where it is, as JSON (``seen``),
    and ``problem``, why some or all of it does not answer (None: all of it does).

    On a Cluster, ``unserved`` holds the slots whose primary did not answer (every
    slot when the slot map could not be read); elsewhere it is empty, and a problem
    leaves every breaker without Redis."""

    topology: Topology
    seen: dict[str, Any]
    problem: str | None = None
    unserved: frozenset[int] = field(default=frozenset())

    def serves(self, prefix: str, name: str) -> bool:
        """Whether breaker ``name``'s keys are on a part of Redis that answers."""
        if self.problem is None:
            return True
        if self.topology != "cluster":
            return False
        return key_slot(BreakerKeys.of(prefix, name).as_list()[0].encode()) not in self.unserved


_ALL_SLOTS = frozenset(range(REDIS_CLUSTER_HASH_SLOTS))


async def see(client: Any, per_step: float) -> RedisView:
    """What ``async_client``'s client reaches, each step bounded by ``per_step`` seconds."""
    topology: Topology = topology_of(client)
    if topology == "cluster":
        return await _see_cluster(client, per_step)
    if topology == "sentinel":
        return await _see_sentinel(client, per_step)
    kwargs = client.connection_pool.connection_kwargs
    where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
    seen: dict[str, Any] = {"server": where}
    try:
        async with asyncio.timeout(per_step):
            await client.ping()
    except REDIS_ERRORS as exc:
        return RedisView(topology, seen, f"Redis unreachable: {reason(exc)}")
    return RedisView(topology, seen)


async def _see_sentinel(client: Any, per_step: float) -> RedisView:
    pool = client.connection_pool
    manager = pool.sentinel_manager
    seen: dict[str, Any] = {
        "master_name": pool.service_name,
        "master": None,
        "sentinels": [
            f"{s.connection_pool.connection_kwargs['host']}:"
            f"{s.connection_pool.connection_kwargs['port']}"
            for s in manager.sentinels
        ],
    }
    try:
        async with asyncio.timeout(per_step):
            host, port = await manager.discover_master(pool.service_name)
    except REDIS_ERRORS as exc:
        return RedisView("sentinel", seen, f"no sentinel names the master: {reason(exc)}")
    seen["master"] = f"{host}:{port}"
    try:
        async with asyncio.timeout(per_step):
            await client.ping()
    except REDIS_ERRORS as exc:
        return RedisView("sentinel", seen, f"the master does not answer: {reason(exc)}")
    return RedisView("sentinel", seen)


async def _see_cluster(client: Any, per_step: float) -> RedisView:
    """The slot map as a node tells it now, and a PING to each primary in it."""
    seen: dict[str, Any] = {"primaries": [], "slots_served": 0, "all_slots_served": False}
    try:
        async with asyncio.timeout(per_step):
            await client.initialize()  # once: then aclose() closes what it opened
            await client.nodes_manager.initialize()  # the slot map as it is now
    except REDIS_ERRORS as exc:
        return RedisView("cluster", seen, f"no slot map: {reason(exc)}", _ALL_SLOTS)
    slots = client.nodes_manager.slots_cache
    primaries = client.get_primaries()
    counts = Counter(nodes[0].name for nodes in slots.values())

    async def answers(node: Any) -> bool:
        with contextlib.suppress(*REDIS_ERRORS):
            async with asyncio.timeout(per_step):
                await node.execute_command("PING")
            return True
        return False

    answered = dict(
        zip(
            (node.name for node in primaries),
            await asyncio.gather(*(answers(node) for node in primaries)),
            strict=True,
        )
    )
    unserved = _ALL_SLOTS - {
        slot for slot, nodes in slots.items() if answered.get(nodes[0].name, False)
    }
    seen["primaries"] = [
        {"address": name, "slots": counts[name], "answers": answered[name]}
        for name in sorted(answered)
    ]
    seen["slots_served"] = REDIS_CLUSTER_HASH_SLOTS - len(unserved)
    seen["all_slots_served"] = not unserved
    if not unserved:
        return RedisView("cluster", seen)
    silent = sorted(name for name, ok in answered.items() if not ok)
    problem = f"{len(unserved)} of {REDIS_CLUSTER_HASH_SLOTS} slots unserved" + (
        f": no answer from {', '.join(silent)}" if silent else ""
    )
    return RedisView("cluster", seen, problem, frozenset(unserved))


def redacted_url(url: str) -> str:
    """``url`` without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return scheme + sep + rest
