"""Which Redis a client reaches (a server, a Sentinel set, a Cluster), and the
breaker's own client on it: the caller's connection settings, the breaker's
timeouts, no retries.

No retries, on every topology: redis-py retries a command on ConnectionError and
TimeoutError by default, and a script or function whose reply was lost would then run
twice, counting an outcome twice. A lost reply is a ``BackendUnavailableError``
instead, and the backend's backoff decides when to ask again. A Cluster's MOVED and
ASK redirections are still followed: the command did not run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Literal

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.cluster
import redis.retry
from redis.backoff import NoBackoff
from redis.maint_notifications import MaintNotificationsConfig

logger = logging.getLogger("breaker")

Topology = Literal["standalone", "sentinel", "cluster"]

CLIENT_TYPES = (
    redis.Redis,
    redis.asyncio.Redis,
    redis.cluster.RedisCluster,
    redis.asyncio.cluster.RedisCluster,
)


#: Everything redis-py raises when Redis cannot answer, on every topology (a Cluster
#: with no node for a slot raises an exception that is no RedisError).
REDIS_ERRORS = (TimeoutError, OSError, redis.RedisError, redis.exceptions.RedisClusterException)


def is_cluster(client: Any) -> bool:
    return isinstance(client, redis.cluster.RedisCluster | redis.asyncio.cluster.RedisCluster)


def is_async_client(client: Any) -> bool:
    return isinstance(client, redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster)


def db_of(client: Any) -> int:
    """The database ``client`` works in: its pool's ``db`` (a Cluster has only db 0)."""
    if is_cluster(client):
        return 0
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    return int(kwargs.get("db", 0) or 0) if isinstance(kwargs, dict) else 0


def topology_of(client: Any) -> Topology:
    """What ``client`` reaches: a Cluster, a master found through Sentinel, or a server."""
    if is_cluster(client):
        return "cluster"
    pool = getattr(client, "connection_pool", None)
    return "sentinel" if hasattr(pool, "sentinel_manager") else "standalone"


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


class Deferred:
    """A client made on its first use, once, instead of when the breaker is built.

    A sync ``RedisCluster`` runs COMMAND on a random node as it is made, with no
    retry: made with the breaker, a breaker built while a node is dead (or a worker
    started during a failover) would raise. Made on first use, inside the backend's
    error mapping, the same failure is that call's ``BackendUnavailableError``: the
    breaker starts on its fallback and moves to Redis once a node answers.
    """

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._made: Any = None
        self._lock = threading.Lock()

    @property
    def made(self) -> Any:
        """The client if it was made, else None (nothing to close)."""
        return self._made

    def get(self) -> Any:
        """The client, made now if it was not (raises what making it raises)."""
        made = self._made
        if made is None:
            with self._lock:
                if self._made is None:
                    self._made = self._make()
                made = self._made
        return made


def resolve(client: Any) -> Any:
    """``client`` itself, or the client a ``Deferred`` makes."""
    return client.get() if isinstance(client, Deferred) else client


def made(client: Any) -> Any:
    """``client`` itself, or what a ``Deferred`` made so far (None: nothing)."""
    return client.made if isinstance(client, Deferred) else client


def derive_client(client: Any, timeout: float | None) -> Any:
    """A client on the same Redis as ``client`` (a server, a Sentinel set, a Cluster),
    with bounded timeouts and no retries: the breaker's own. A sync Cluster's is a
    ``Deferred``: making it asks a node, and building a breaker never waits on Redis
    nor fails because of it."""
    if isinstance(client, redis.cluster.RedisCluster):
        return Deferred(lambda: _derive_cluster(client, timeout))
    if is_cluster(client):
        return _derive_cluster(client, timeout)  # asyncio: nothing is asked until used
    return _derive_pooled(client, timeout)


def _derive_pooled(client: Any, timeout: float | None) -> Any:
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
    settings["decode_responses"] = False  # the breaker decodes its own replies
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


def no_retry(*, asyncio: bool) -> Any:
    """redis-py's way of saying "never retry": a command, or a question to a sentinel,
    is asked once; the breaker's backoff decides when to ask again."""
    return (redis.asyncio.retry.Retry if asyncio else redis.retry.Retry)(NoBackoff(), 0)


#: What a Cluster client's node settings may carry besides CONNECTION_SETTINGS: how
#: its connections are made (TLS).
_CLUSTER_SETTINGS = (CONNECTION_SETTINGS | {"connection_class", "ssl"}) - {
    "host",
    "port",
    "db",
    "path",
}


def _derive_cluster(client: Any, timeout: float | None) -> Any:
    """A Cluster client on the same nodes as ``client``: its connection settings, the
    breaker's timeouts, no retries."""
    is_async = isinstance(client, redis.asyncio.cluster.RedisCluster)
    kwargs = client.connection_kwargs if is_async else client.nodes_manager.connection_kwargs
    settings = {k: v for k, v in kwargs.items() if k in _CLUSTER_SETTINGS}
    if is_async:
        # asyncio's RedisCluster takes ``ssl``, and keeps the class it chose from it.
        connection_class = settings.pop("connection_class", None)
        if connection_class is not None and issubclass(
            connection_class, redis.asyncio.SSLConnection
        ):
            settings["ssl"] = True
    settings["decode_responses"] = False
    settings["socket_timeout"] = timeout
    settings["socket_connect_timeout"] = timeout if timeout is not None else 1.0
    module: Any = redis.asyncio.cluster if is_async else redis.cluster
    retry = no_retry(asyncio=is_async)
    nodes = [
        module.ClusterNode(node.host, node.port)
        for node in client.nodes_manager.startup_nodes.values()
    ]
    return module.RedisCluster(
        startup_nodes=nodes,
        retry=retry,
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
        **settings,
    )
