"""A redis-py client from one URL, for every topology:

==========================================================  ==========================
``redis://[[user]:password@]host[:port][/db]``               one server (``rediss``: TLS;
                                                             ``unix://`` a socket): as
                                                             ``Redis.from_url``
``redis+cluster://[[user]:password@]host:port[,host:port]``  a Redis Cluster: its nodes
                                                             (some are enough)
``redis+sentinel://[[user]:password@]host:port[,host:port]``  the master a Sentinel set
``/<master>[/<db>]``                                         names, found through its
                                                             sentinels
==========================================================  ==========================

The forms the ``limits`` library takes; ``rediss+cluster`` and ``rediss+sentinel`` use
TLS. A password is for the Redis servers (a Sentinel set's sentinels are asked
without one). Ports default to 6379, and to 26379 for sentinels. A URL that is none
of these raises ``ConfigurationError`` naming what is wrong, in one line, and never
echoes the password.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel

from .._exceptions import ConfigurationError
from .topology import no_retry

_SCHEMES = "redis://, rediss://, unix://, redis+cluster://, redis+sentinel:// (or rediss+...)"
#: How long a sentinel may take to name its master.
SENTINEL_TIMEOUT = 1.0


def redis_from_url(url: str, *, asyncio: bool = False, field: str = "redis_url") -> Any:
    """The redis-py client ``url`` describes: sync, or asyncio with ``asyncio=True``.
    ``field`` names the setting in errors (``BREAKER_REDIS_URL``)."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(field, f"must be a URL with a scheme ({_SCHEMES})")
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("redis", "rediss", "unix"):
        try:
            return (redis.asyncio.Redis if asyncio else redis.Redis).from_url(url)
        except ValueError as exc:
            raise ConfigurationError(field, str(exc)) from None
    if scheme in ("redis+cluster", "rediss+cluster"):
        return _cluster(url, asyncio=asyncio, field=field, tls=scheme.startswith("rediss"))
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        return _sentinel(url, asyncio=asyncio, field=field, tls=scheme.startswith("rediss"))
    raise ConfigurationError(field, f"unknown scheme {scheme!r}: use {_SCHEMES}")


def _cluster(url: str, *, asyncio: bool, field: str, tls: bool) -> Any:
    parts = urlsplit(url)
    if parts.path not in ("", "/") or parts.query:
        raise ConfigurationError(field, "a cluster URL names its nodes only (no db, no query)")
    nodes, credentials = _hosts(parts.netloc, 6379, field)
    module: Any = redis.asyncio.cluster if asyncio else redis.cluster
    startup = [module.ClusterNode(host, port) for host, port in nodes]
    return module.RedisCluster(startup_nodes=startup, ssl=tls, **credentials)


def _sentinel(url: str, *, asyncio: bool, field: str, tls: bool) -> Any:
    parts = urlsplit(url)
    if parts.query:
        raise ConfigurationError(field, "a sentinel URL takes no query")
    path = [unquote(piece) for piece in parts.path.split("/") if piece]
    if not path or len(path) > 2:
        raise ConfigurationError(field, "a sentinel URL ends /<master name>[/<db>]")
    if len(path) == 2 and not path[1].isdigit():
        raise ConfigurationError(field, f"db must be a number, got {path[1]!r}")
    db = int(path[1]) if len(path) == 2 else 0
    sentinels, credentials = _hosts(parts.netloc, 26379, field)
    module: Any = redis.asyncio.sentinel if asyncio else redis.sentinel
    # No retries when asking a sentinel: redis-py's default (3, with backoff) spends
    # about 4 s on each dead sentinel before asking the next.
    timeouts = {
        "socket_timeout": SENTINEL_TIMEOUT,
        "socket_connect_timeout": SENTINEL_TIMEOUT,
        "retry": no_retry(asyncio=asyncio),
    }
    manager = module.Sentinel(sentinels, sentinel_kwargs=timeouts, db=db, ssl=tls, **credentials)
    return manager.master_for(path[0])


def _hosts(
    netloc: str, default_port: int, field: str
) -> tuple[list[tuple[str, int]], dict[str, str]]:
    """``[user[:password]@]host[:port][,host[:port]]...``: the hosts and the credentials."""
    credentials: dict[str, str] = {}
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, _, password = userinfo.partition(":")
        if user:
            credentials["username"] = unquote(user)
        if password:
            credentials["password"] = unquote(password)
    hosts = []
    for entry in netloc.split(","):
        host, port = _host(entry.strip(), default_port, field)
        hosts.append((host, port))
    return hosts, credentials


def _host(entry: str, default_port: int, field: str) -> tuple[str, int]:
    if entry.startswith("["):  # [::1]:7000
        host, _, rest = entry[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = entry.partition(":")
    if not host:
        raise ConfigurationError(field, f"a host is missing in {entry!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigurationError(field, f"port must be a number from 1 to 65535, got {port_text!r}")
    return host, int(port_text)


async def aclose_redis(client: Any) -> None:
    """Close an asyncio client that ``redis_from_url`` made, with everything it opened:
    a Sentinel set's client holds connections to the sentinels too."""
    await client.aclose()
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    if manager is not None:
        await manager.aclose()


def close_redis(client: Any) -> None:
    """Close a sync client that ``redis_from_url`` made, and a Sentinel set's sentinels."""
    client.close()
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    if manager is not None:
        for sentinel in manager.sentinels:
            sentinel.close()
