"""The Redis key schema: the one place that builds a key or a channel name.

==================================  ======  =============================================
key                                 type    content
==================================  ======  =============================================
``<prefix>:{<name>}``               hash    ``state`` (closed, open, half_open, forced_open,
                                            disabled), ``failures`` (consecutive),
                                            ``last_failure_at``, ``opened_at``,
                                            ``open_until`` (epoch ms), ``generation``
                                            (bumped by every transition), ``created_at``
                                            (epoch ms the hash was made; with
                                            ``generation`` it orders versions across a
                                            lost hash), ``reopens``, ``trial_successes``;
                                            the settings operators act with:
                                            ``key_ttl``, ``window_bucket`` (ms),
                                            ``buckets``
``<prefix>:{<name>}:window``        hash    ``<bucket>:c`` calls, ``<bucket>:f`` failures,
                                            ``<bucket>:s`` slow calls, ``<bucket>:r``
                                            retries granted (``:t`` of them on a floor
                                            token), ``<bucket>:d`` refused; one bucket
                                            per ``window_bucket`` seconds of epoch time;
                                            ``floor:tokens``, ``floor:at``: the retry
                                            budget's floor bucket
``<prefix>:{<name>}:leases``        zset    half-open trial lease ids, scored by expiry (ms)
``<prefix>:{<name>}:slots``         zset    a bulkhead's leases, scored by expiry (ms)
``<prefix>:{<name>}:bulkhead``      hash    a bulkhead's ``limit`` and ``hold_ms``
``<prefix>:{<name>}:slots:procs``   zset    the processes that used the bulkhead lately
``<prefix>:{<name>}:slots:waiters`` zset    the callers waiting for a lease, by deadline
``<prefix>:slots:db<N>``            pubsub  a bulkhead's name, when a lease comes back
                                            and someone waits (``<prefix>:{<name>}:slots``
                                            on a Cluster: SPUBLISH, in its shard)
``<prefix>:events``                 pubsub  JSON transition events of every breaker
                                            on db 0 (PUBLISH; standalone Redis and
                                            Sentinel); ``<prefix>:events:db<N>`` on db N:
                                            pub/sub spans databases, channels must not
``<prefix>:{<name>}:events``        pubsub  on a Redis Cluster, the events of one
                                            breaker (SPUBLISH, in its own shard)
==================================  ======  =============================================

Every key carries a TTL (``key_ttl``), refreshed on each write. The braces are a
Redis Cluster hash tag: all keys of one breaker live in one slot. Inside them the name
is escaped so that it can never close the tag early or reach another breaker's keys:
``%``, ``{``, ``}``, whitespace other than the plain space, and control characters
become ``%XX`` (UTF-8 bytes); everything else, URLs included, stays readable.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from ._exceptions import ConfigurationError

MAX_NAME_LENGTH = 512
_ESCAPED = frozenset("%{}")


def escape_name(name: str) -> str:
    """Return the readable, injective form of ``name`` used inside the hash tag.

    >>> escape_name("https://api.example.com:443")
    'https://api.example.com:443'
    >>> escape_name("a}b{c%")
    'a%7Db%7Bc%25'
    """
    if not isinstance(name, str) or not name.strip():
        # A blank name is a mistake (an empty setting), and shows as an empty row.
        raise ConfigurationError("name", f"must be a non-blank string, got {name!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise ConfigurationError("name", f"is longer than {MAX_NAME_LENGTH} characters")
    parts = []
    for char in name:
        if char in _ESCAPED or (not char.isprintable() and char != " "):
            parts.append("".join(f"%{byte:02X}" for byte in char.encode("utf-8")))
        else:
            parts.append(char)
    return "".join(parts)


def unescape_name(escaped: str) -> str:
    """The name that ``escape_name`` turned into ``escaped`` (its inverse).

    >>> unescape_name(escape_name("a}b{c%"))
    'a}b{c%'
    """
    return unquote(escaped, errors="strict")


def name_of_state_key(prefix: str, key: str | bytes) -> str | None:
    """The breaker name of a state hash key ``<prefix>:{<name>}`` (as SCAN finds it),
    or None for any other key (a window, leases, another prefix).

    >>> name_of_state_key("breaker", b"breaker:{api%7D}")
    'api}'
    >>> name_of_state_key("breaker", "breaker:{api}:window") is None
    True
    """
    text = key.decode() if isinstance(key, bytes) else key
    start = f"{prefix}:{{"
    if not (text.startswith(start) and text.endswith("}")):
        return None
    inner = text[len(start) : -1]
    return None if "{" in inner or "}" in inner else unescape_name(inner)


def state_key_pattern(prefix: str) -> str:
    """The SCAN pattern that finds every state hash (and a few more keys, which
    ``name_of_state_key`` tells apart)."""
    return f"{prefix}:{{*}}"


def check_prefix(prefix: str) -> None:
    """Refuse a prefix that would break the hash tag or the scan pattern."""
    if not prefix or any(char in prefix for char in "{}*?[] ") or not prefix.isprintable():
        raise ConfigurationError(
            "prefix", "must be non-empty, printable, without braces, spaces or glob characters"
        )


@dataclass(frozen=True, slots=True)
class BreakerKeys:
    """The Redis keys of one breaker, in the order the scripts take them as KEYS."""

    state: str
    window: str
    leases: str

    @classmethod
    def of(cls, prefix: str, name: str) -> BreakerKeys:
        """The keys of breaker ``name`` under ``prefix``.

        >>> BreakerKeys.of("breaker", "payments").state
        'breaker:{payments}'
        """
        base = f"{prefix}:{{{escape_name(name)}}}"
        return cls(state=base, window=f"{base}:window", leases=f"{base}:leases")

    def as_list(self) -> list[str]:
        return [self.state, self.window, self.leases]


@dataclass(frozen=True, slots=True)
class BulkheadKeys:
    """The Redis keys of one bulkhead, in the order the scripts take them as KEYS: in
    the hash tag of the breaker of the same name, so one upstream's keys share a slot.

    >>> BulkheadKeys.of("breaker", "payments").slots
    'breaker:{payments}:slots'
    """

    slots: str
    bulkhead: str
    processes: str
    waiters: str

    @classmethod
    def of(cls, prefix: str, name: str) -> BulkheadKeys:
        base = f"{prefix}:{{{escape_name(name)}}}"
        return cls(
            slots=f"{base}:slots",
            bulkhead=f"{base}:bulkhead",
            processes=f"{base}:slots:procs",
            waiters=f"{base}:slots:waiters",
        )

    def as_list(self) -> list[str]:
        return [self.slots, self.bulkhead, self.processes, self.waiters]


def slots_channel(prefix: str, name: str, *, db: int = 0, cluster: bool = False) -> str:
    """Where a given-back lease is announced to the fleet's waiting callers: one channel
    per database (its message: the bulkhead's name), or on a Cluster the bulkhead's own.

    >>> slots_channel("breaker", "payments", db=3)
    'breaker:slots:db3'
    >>> slots_channel("breaker", "payments", cluster=True)
    'breaker:{payments}:slots'
    """
    return BulkheadKeys.of(prefix, name).slots if cluster else f"{prefix}:slots:db{db}"


def events_channel(prefix: str, db: int = 0) -> str:
    """The pub/sub channel that carries every transition of every breaker under ``prefix``
    in database ``db`` (a standalone Redis, or Sentinel).

    Pub/sub is per server, not per database: the database is in the name, so that a
    fleet on db 10 never hears (nor acts on) a breaker of the same name on db 9.

    >>> events_channel("breaker")
    'breaker:events'
    >>> events_channel("breaker", 9)
    'breaker:events:db9'
    """
    return f"{prefix}:events" if db == 0 else f"{prefix}:events:db{db}"


def breaker_channel(prefix: str, name: str) -> str:
    """The sharded channel of one breaker on a Redis Cluster: in its hash tag, so its
    events stay in the shard that holds its keys.

    >>> breaker_channel("breaker", "payments")
    'breaker:{payments}:events'
    """
    return f"{BreakerKeys.of(prefix, name).state}:events"
