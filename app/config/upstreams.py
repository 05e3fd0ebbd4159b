"""One upstream's configuration checked and made: its URL, its breaker (``BreakerConfig``,
with the failure statuses it counts), its retry policy (``RetryPolicy``, with its
budget) and its static fallback. The library decides what values are valid; this
names the key of any problem.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import httpx

from breaker import (
    AdaptiveLimit,
    BreakerConfig,
    BulkheadConfig,
    ConfigurationError,
    RetryBudget,
    RetryPolicy,
    is_server_error,
)

from .sections import ConfigError, FallbackSection, PolicySection, UpstreamSection

# Settings that a TOML file cannot express (code), or that are gateway-wide (prefix).
_BREAKER_KEYS = (
    frozenset(field.name for field in fields(BreakerConfig))
    - {"record_exceptions", "ignore_exceptions", "failure_predicate", "prefix", "voter"}
) | {"failure_statuses"}
_RETRY_KEYS = frozenset(
    {
        "attempts",
        "backoff",
        "max_backoff",
        "deadline",
        "per_try_timeout",
        "max_retry_after",
        "retry_statuses",
        "retry_methods",
        "budget",
    }
)
# Only the network can fail an upstream: a client's oversized body or a cancelled
# request says nothing about it. 5xx answers count through ``is_server_error``.
_UPSTREAM_FAILURES: tuple[type[BaseException], ...] = (httpx.TransportError,)


@dataclass(frozen=True, slots=True)
class StaticFallback:
    """What a GET or HEAD gets while the breaker is open, instead of the 503."""

    status: int
    headers: tuple[tuple[str, str], ...]  # a Content-Type always among them
    body: bytes


@dataclass(frozen=True, slots=True)
class Upstream:
    """One configured upstream: where it is, and how its breaker and retries behave."""

    name: str
    url: httpx.URL
    breaker: BreakerConfig | None  # None: ``breaker = false``, sent once, unguarded
    retry: RetryPolicy
    fallback: StaticFallback | None = None
    #: The fleet's limit of calls in flight to it (``max_concurrent``); None: none.
    bulkhead: BulkheadConfig | None = None


def _check_url(key: str, value: str) -> httpx.URL:
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ConfigError(f"{key}: {value!r} is not a URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(f"{key}: {value!r} must be an http:// or https:// URL with a host")
    if url.query or url.fragment or url.userinfo:
        raise ConfigError(f"{key}: {value!r} must not carry a query, a fragment or credentials")
    return url


#: The gateway's batch_interval where the configuration sets none: closed-state
#: successes are counted in the process and flushed every 50 ms, so a healthy
#: upstream costs no Redis round trip per request (failures, trips and half-open
#: trials stay exact). ``false`` in the TOML records every success at once, the
#: library's default. Chosen by figures: bench/gateway.py measured the gateway at
#: 1.00x the breaker-off throughput batched against 0.79x exact (BENCHMARKS.md).
DEFAULT_BATCH_INTERVAL: float | None = 0.05


def instance_voter(instance: str) -> str:
    """The gateway's voter under a quorum: its instance name (``BREAKER_INSTANCE_NAME``),
    shared by the replica's workers, with what a voter cannot hold as '-'."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", instance)[:64] or "gateway"


def upstream(
    name: str, section: UpstreamSection, defaults: PolicySection, prefix: str, voter: str
) -> Upstream:
    key = f"upstreams.{name}"
    url = _check_url(f"{key}.url", section.url)
    if section.breaker is False:
        if section.retry:
            raise ConfigError(f"{key}.retry: retries need the breaker, and breaker = false")
        if section.fallback is not None:
            raise ConfigError(f"{key}.fallback: answers an open breaker, and breaker = false")
        if section.max_concurrent is not None:
            raise ConfigError(
                f"{key}.max_concurrent: its leases ride on the breaker's calls, and breaker = false"
            )
        return Upstream(name=name, url=url, breaker=None, retry=RetryPolicy(attempts=1))
    breaker_values = _merged("breaker", _BREAKER_KEYS, key, defaults.breaker, section.breaker)
    statuses = breaker_values.pop("failure_statuses", ["5xx"])
    where = key if "failure_statuses" in section.breaker else "defaults"
    predicate = failure_statuses(f"{where}.breaker.failure_statuses", statuses)
    batching = breaker_values.get("batch_interval", DEFAULT_BATCH_INTERVAL)
    breaker_values["batch_interval"] = None if batching is False else batching
    retry_values = _merged("retry", _RETRY_KEYS, key, defaults.retry, section.retry)
    try:
        breaker = BreakerConfig(
            **breaker_values,
            prefix=prefix,
            voter=voter,
            record_exceptions=_UPSTREAM_FAILURES,
            failure_predicate=predicate,
        )
    except ConfigurationError as exc:
        where = key if exc.field in section.breaker else "defaults"
        if exc.field == "prefix":
            raise ConfigError(f"gateway.prefix: {exc.problem}") from None
        raise ConfigError(f"{where}.breaker.{exc.field}: {exc.problem}") from None
    except TypeError as exc:  # a value of the wrong type where the library compares it
        raise ConfigError(f"{key}.breaker: {exc}") from None
    try:
        retry = RetryPolicy(**_retry_arguments(retry_values, key))
    except ConfigurationError as exc:
        where = key if exc.field in section.retry else "defaults"
        raise ConfigError(f"{where}.retry.{exc.field}: {exc.problem}") from None
    except TypeError as exc:
        raise ConfigError(f"{key}.retry: {exc}") from None
    fallback = None if section.fallback is None else static_fallback(key, section.fallback)
    bulkhead = bulkhead_config(key, section.max_concurrent)
    return Upstream(
        name=name, url=url, breaker=breaker, retry=retry, fallback=fallback, bulkhead=bulkhead
    )


_BULKHEAD_KEYS = frozenset({"limit", "lease_ttl", "max_wait"})
_ADAPTIVE_KEYS = frozenset(
    {"adaptive", "min", "max", "initial", "tolerance", "smoothing", "queue", "interval"}
)


def bulkhead_config(key: str, value: object) -> BulkheadConfig | None:
    """``max_concurrent``: a limit (``20``), a table of the bulkhead's settings
    (``{ limit = 20, lease_ttl = 2.0, max_wait = 0.0 }``), or an adaptive limit
    (``{ adaptive = true, min = 4, max = 200, initial = 20 }``, with lease_ttl and
    max_wait too)."""
    key = f"{key}.max_concurrent"
    if value is None:
        return None
    if not isinstance(value, dict):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key}: must be an integer >= 1, or a table, got {value!r}")
        return BulkheadConfig(limit=value)
    adaptive = "adaptive" in value
    if adaptive and value["adaptive"] is not True:
        raise ConfigError(f"{key}.adaptive: must be true (or left out, with a limit)")
    known = (_ADAPTIVE_KEYS | _BULKHEAD_KEYS) - {"limit"} if adaptive else _BULKHEAD_KEYS
    unknown = sorted(set(value) - known)
    if unknown:
        why = "an adaptive limit learns it" if unknown[0] == "limit" else "unknown key"
        raise ConfigError(f"{key}.{unknown[0]}: {why}")
    if not adaptive and "limit" not in value:
        raise ConfigError(f"{key}.limit: missing (the most calls in flight, fleet-wide)")
    settings = {name: value[name] for name in value if name in ("lease_ttl", "max_wait")}
    try:
        if adaptive:
            learnt = {
                name: item for name, item in value.items() if name in _ADAPTIVE_KEYS - {"adaptive"}
            }
            return BulkheadConfig(limit=AdaptiveLimit(**learnt), **settings)
        return BulkheadConfig(limit=value["limit"], **settings)
    except ConfigurationError as exc:
        raise ConfigError(f"{key}.{exc.field}: {exc.problem}") from None


# Framing and connection headers are the server's to write, never a configuration's.
_GATEWAY_HEADERS = frozenset(
    {
        "connection",
        "content-length",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 section 5.6.2


def static_fallback(key: str, section: FallbackSection) -> StaticFallback:
    """The ``fallback`` table checked: a status a body can go with, and headers that
    are well formed and leave the message's framing to the server."""
    key = f"{key}.fallback"
    if not 200 <= section.status <= 599 or section.status in (204, 304):
        raise ConfigError(
            f"{key}.status: must be 200..599 and able to carry a body (not 204 or 304), "
            f"got {section.status}"
        )
    headers: list[tuple[str, str]] = []
    for header, value in section.headers.items():
        if not _TOKEN.match(header):
            raise ConfigError(f"{key}.headers.{header}: is not a header name")
        if header.lower() in _GATEWAY_HEADERS:
            raise ConfigError(f"{key}.headers.{header}: is the server's to set, not the file's")
        if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
            raise ConfigError(f"{key}.headers.{header}: holds a control character")
        if not value.isascii():
            raise ConfigError(f"{key}.headers.{header}: must be ASCII")
        headers.append((header, value))
    if not any(header.lower() == "content-type" for header, _ in headers):
        headers.append(("Content-Type", "text/plain; charset=utf-8"))
    return StaticFallback(section.status, tuple(headers), section.body.encode())


class _StatusIn:
    """A response counts as a failure when its status is one of these."""

    def __init__(self, statuses: frozenset[int]) -> None:
        self.statuses = statuses

    def __call__(self, result: object) -> bool:
        return isinstance(result, httpx.Response) and result.status_code in self.statuses


def failure_statuses(key: str, value: object) -> Callable[[object], bool]:
    """The failure predicate of ``failure_statuses``: status codes, and classes written
    ``"5xx"``. The default, ``["5xx"]``, is the library's ``is_server_error``."""
    if not isinstance(value, list) or not value:
        raise ConfigError(f'{key}: must be a non-empty list of statuses, like ["5xx", 429]')
    statuses: set[int] = set()
    for item in value:
        if isinstance(item, str) and re.fullmatch(r"[1-5]xx", item):
            first = int(item[0]) * 100
            statuses.update(range(first, first + 100))
        elif isinstance(item, int) and not isinstance(item, bool) and 100 <= item <= 599:
            statuses.add(item)
        else:
            raise ConfigError(f'{key}: {item!r} is not a status (100..599) or a class like "5xx"')
    if statuses == set(range(500, 600)):
        return is_server_error
    return _StatusIn(frozenset(statuses))


def _merged(
    table: str, known: frozenset[str], key: str, defaults: dict[str, Any], own: dict[str, Any]
) -> dict[str, Any]:
    for where, values in (("defaults", defaults), (key, own)):
        for setting in values:
            if setting not in known:
                raise ConfigError(f"{where}.{table}.{setting}: unknown key")
    return {**defaults, **own}


def _retry_arguments(values: dict[str, Any], key: str) -> dict[str, Any]:
    arguments = dict(values)
    if "budget" in arguments:
        budget = arguments["budget"]
        if budget is False:
            arguments["budget"] = None
        elif isinstance(budget, dict):
            unknown = set(budget) - {"ratio", "min_retries_per_second"}
            if unknown:
                raise ConfigError(f"{key}.retry.budget.{sorted(unknown)[0]}: unknown key")
            try:
                arguments["budget"] = RetryBudget(**budget)
            except ConfigurationError as exc:
                raise ConfigError(f"{key}.retry.budget.{exc.field}: {exc.problem}") from None
        else:
            raise ConfigError(f"{key}.retry.budget: must be a table or false")
    return arguments
