"""The gateway's configuration: environment (pydantic-settings) and a TOML file.

Environment:

- ``BREAKER_REDIS_URL``: the shared Redis; unset, the embedded backend (one process).
  A server (``redis://``, ``rediss://``, ``unix://``), a Cluster
  (``redis+cluster://host:port[,host:port...]``) or a Sentinel set
  (``redis+sentinel://host:port[,host:port...]/<master>[/<db>]``); ``rediss+`` for TLS.
- ``BREAKER_CONFIG``: a TOML file (below).
- ``BREAKER_ADMIN_TOKEN``: enables the admin API (``Authorization: Bearer <token>``);
  at least 16 characters.
- ``BREAKER_ADMIN_HOST``, ``BREAKER_ADMIN_PORT``: where the admin listener (the admin
  API, the dashboard, ``/metrics``, ``/docs``) listens; over ``[gateway]``'s.
- ``BREAKER_UPSTREAMS``: ``name=url,name2=url2``, for the quick case.
- ``BREAKER_PUBLIC_URL``: where this gateway is reached; the demo upstream lives under it.
- ``BREAKER_DEMO_FAILURE_RATE``: the fraction of requests the demo upstream fails.
- ``BREAKER_INSTANCE_NAME``: this replica's name in ``X-Fleetbreaker-Instance``
  (default: the host name, which tells containers apart but not local processes).

The file::

    [gateway]
    prefix = "breaker"                 # of every Redis key and of the events channel
    max_body_bytes = 10485760          # larger request bodies get 413
    max_header_bytes = 32768           # larger request heads (headers, path) get 431
    max_head_bytes = 65536             # a head still arriving past this: connection closed
    head_timeout = 10.0                # a head not whole within this many seconds: closed
    max_connections = 1000             # per worker; past it, the longest idle one is closed
    retry_buffer_bytes = 65536         # bodies up to this are buffered and retried
    body_idle_timeout = 10.0           # a request body silent this long is cut: 408
    expose_instance = false            # X-Fleetbreaker-Instance: <name>/<pid> on answers
    require_redis = false              # true: serve refuses to start while Redis is unreachable
    admin_host = "127.0.0.1"           # the admin listener: never the proxy's port, so that
    admin_port = 8001                  # no upstream page shares the dashboard's origin

    [client]                           # each upstream's pooled client, in each worker
    connect_timeout = 2.0
    read_timeout = 30.0
    body_timeout = 300.0               # a response body streaming longer is cut: a failure
    max_connections = 100

    [defaults.breaker]                 # every upstream's breaker, unless it says otherwise
    failure_threshold = 5
    [defaults.retry]
    attempts = 3
    budget = { ratio = 0.2, min_retries_per_second = 10 }   # or: budget = false

    [upstreams.payments]
    url = "http://payments.internal:8080/api"
    breaker = { failure_threshold = 3, reset_timeout = 30 }
    retry = { per_try_timeout = 2.0, deadline = 5.0 }

    [upstreams.static]
    url = "http://static.internal"
    breaker = false                    # proxied as it is: no breaker, so no retries either

    [upstreams.catalog.fallback]       # a GET or HEAD while the breaker is open gets this
    status = 200                       # instead of the 503 (the upstream is not called)
    headers = { "Content-Type" = "application/json", "Cache-Control" = "max-age=30" }
    body = '{"items": []}'

Breaker and retry keys are ``BreakerConfig``'s and ``RetryPolicy``'s own fields, checked
by them: the library decides what is valid, this module only names the key. Any
problem becomes one ``ConfigError`` whose message names the key.
"""

from __future__ import annotations

import re
import socket
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from breaker import BreakerConfig, ConfigurationError, RetryBudget, RetryPolicy, is_server_error

from .redisclient import check_url

#: Upstream names are URL path segments and Redis hash tags: keep them plain.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEMO_UPSTREAM = "demo"
# Settings that a TOML file cannot express (code), or that are gateway-wide (prefix).
_BREAKER_KEYS = (
    frozenset(field.name for field in fields(BreakerConfig))
    - {"record_exceptions", "ignore_exceptions", "failure_predicate", "prefix"}
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
#: The shortest admin token accepted: a short one is guessed (the API answers 401
#: hundreds of times a second).
MIN_ADMIN_TOKEN_LENGTH = 16
# Only the network can fail an upstream: a client's oversized body or a cancelled
# request says nothing about it. 5xx answers count through ``is_server_error``.
_UPSTREAM_FAILURES: tuple[type[BaseException], ...] = (httpx.TransportError,)


class ConfigError(Exception):
    """The configuration cannot be used; the message is one line naming the key."""


class Environment(BaseSettings):
    """What the process environment says (``BREAKER_*``)."""

    model_config = SettingsConfigDict(env_prefix="BREAKER_", extra="ignore")

    redis_url: str | None = None
    config: Path | None = None
    admin_token: SecretStr | None = None
    admin_host: str | None = Field(default=None, min_length=1)
    admin_port: int | None = Field(default=None, ge=1, le=65535)
    upstreams: str = ""
    public_url: str = "http://127.0.0.1:8000"
    demo_failure_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    # Printable ASCII, but no space and no "/": the header reads <name>/<pid>.
    instance_name: str = Field(default="", pattern=r"^[!-.0-~]{0,64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewaySection(_Strict):
    prefix: str = "breaker"
    max_body_bytes: PositiveInt = 10 * 1024 * 1024
    max_header_bytes: PositiveInt = 32 * 1024
    # The HTTP layer's bounds (app.connections), before any parsing.
    max_head_bytes: PositiveInt = 64 * 1024
    head_timeout: PositiveFloat = 10.0
    max_connections: PositiveInt = 1000
    retry_buffer_bytes: NonNegativeInt = 64 * 1024
    # Seconds a request body may go without a byte before it is cut (408): a client
    # that trickles its upload holds an upstream connection for nothing.
    body_idle_timeout: PositiveFloat = 10.0
    expose_instance: bool = False
    # Only at start: an outage later follows each breaker's on_backend_error.
    require_redis: bool = False
    # The admin API, the dashboard, /metrics and /docs listen here, never on the
    # proxy's port: a page an upstream serves through /proxy must not share their
    # origin (it could read the dashboard's storage, or register a service worker
    # over it).
    admin_host: str = Field(default="127.0.0.1", min_length=1)
    admin_port: int = Field(default=8001, ge=1, le=65535)


class ClientSection(_Strict):
    """Each upstream's pooled ``httpx.AsyncClient``, in each worker: a pool per
    upstream, so one upstream's slow callers never wait for another's connections."""

    connect_timeout: PositiveFloat = 2.0
    read_timeout: PositiveFloat = 30.0
    # A response body may stream this long after its headers; past it, or if it
    # breaks off, the client's response is cut and the breaker counts a failure.
    body_timeout: PositiveFloat = 300.0
    write_timeout: PositiveFloat = 30.0
    pool_timeout: PositiveFloat = 5.0
    max_connections: PositiveInt = 100
    max_keepalive_connections: NonNegativeInt = 20
    keepalive_expiry: NonNegativeFloat = 5.0

    def timeout(self) -> httpx.Timeout:
        return httpx.Timeout(
            connect=self.connect_timeout,
            read=self.read_timeout,
            write=self.write_timeout,
            pool=self.pool_timeout,
        )

    def limits(self) -> httpx.Limits:
        return httpx.Limits(
            max_connections=self.max_connections,
            max_keepalive_connections=self.max_keepalive_connections,
            keepalive_expiry=self.keepalive_expiry,
        )


class PolicySection(_Strict):
    breaker: dict[str, Any] = {}
    retry: dict[str, Any] = {}


class FallbackSection(_Strict):
    """A static answer for GET and HEAD requests while the upstream's breaker is open."""

    status: int = 200
    headers: dict[str, str] = {}
    body: str = ""


class UpstreamSection(_Strict):
    url: str
    retry: dict[str, Any] = {}
    # false: no breaker and, since retries without one are what this gateway exists
    # to prevent, no retries: each request is sent once.
    breaker: dict[str, Any] | Literal[False] = {}
    fallback: FallbackSection | None = None


class ConfigFile(_Strict):
    gateway: GatewaySection = GatewaySection()
    client: ClientSection = ClientSection()
    defaults: PolicySection = PolicySection()
    upstreams: dict[str, UpstreamSection] = {}


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


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Everything the gateway runs with, validated."""

    upstreams: dict[str, Upstream]
    redis_url: str | None
    admin_token: str | None
    admin_host: str
    admin_port: int
    prefix: str
    max_body_bytes: int
    max_header_bytes: int
    max_head_bytes: int
    head_timeout: float
    max_connections: int
    retry_buffer_bytes: int
    body_idle_timeout: float
    expose_instance: bool
    instance_name: str
    require_redis: bool
    client: ClientSection
    demo: bool
    demo_failure_rate: float
    source: str

    @property
    def backend(self) -> str:
        return "redis" if self.redis_url else "embedded"


def load_config(environ: dict[str, str] | None = None) -> GatewayConfig:
    """Read the environment (``os.environ`` by default) and the file it names."""
    try:
        env = (
            Environment.model_validate(_environment_values(environ))
            if environ is not None
            else Environment()
        )
    except ValidationError as exc:
        raise ConfigError(_first_error(exc, env_prefix="BREAKER_")) from None
    file, source = _read_file(env.config)
    upstreams = dict(_file_upstreams(file))
    for name, url in _parse_upstreams(env.upstreams):
        if name in upstreams:
            raise ConfigError(f"BREAKER_UPSTREAMS: {name!r} is also in {source}")
        upstreams[name] = UpstreamSection(url=url)
    demo = not upstreams
    if demo:
        upstreams[DEMO_UPSTREAM] = UpstreamSection(
            url=env.public_url.rstrip("/") + "/demo",
            breaker={"failure_threshold": 3, "reset_timeout": 30.0},
        )
    redis_url = env.redis_url or None
    if redis_url is not None:
        _check_redis_url(redis_url)
    elif file.gateway.require_redis:
        raise ConfigError("gateway.require_redis: true, but BREAKER_REDIS_URL is not set")
    if file.gateway.max_head_bytes < file.gateway.max_header_bytes:
        raise ConfigError(
            "gateway.max_head_bytes: must be at least max_header_bytes "
            f"({file.gateway.max_header_bytes}), so that a head over that limit gets its 431"
        )
    token = env.admin_token.get_secret_value().strip() if env.admin_token else ""
    if token and len(token) < MIN_ADMIN_TOKEN_LENGTH:
        raise ConfigError(
            f"BREAKER_ADMIN_TOKEN: must be at least {MIN_ADMIN_TOKEN_LENGTH} characters, "
            f"got {len(token)} (make one: python3 -c 'import secrets; "
            "print(secrets.token_urlsafe(24))')"
        )
    return GatewayConfig(
        upstreams={
            name: _upstream(name, section, file.defaults, file.gateway.prefix)
            for name, section in upstreams.items()
        },
        redis_url=redis_url,
        admin_token=token or None,
        admin_host=env.admin_host or file.gateway.admin_host,
        admin_port=env.admin_port or file.gateway.admin_port,
        prefix=file.gateway.prefix,
        max_body_bytes=file.gateway.max_body_bytes,
        max_header_bytes=file.gateway.max_header_bytes,
        max_head_bytes=file.gateway.max_head_bytes,
        head_timeout=file.gateway.head_timeout,
        max_connections=file.gateway.max_connections,
        retry_buffer_bytes=min(file.gateway.retry_buffer_bytes, file.gateway.max_body_bytes),
        body_idle_timeout=file.gateway.body_idle_timeout,
        expose_instance=file.gateway.expose_instance,
        instance_name=env.instance_name or socket.gethostname(),
        require_redis=file.gateway.require_redis,
        client=file.client,
        demo=demo,
        demo_failure_rate=env.demo_failure_rate,
        source=source,
    )


def _environment_values(environ: dict[str, str]) -> dict[str, str]:
    prefix = "BREAKER_"
    return {
        key[len(prefix) :].lower(): value
        for key, value in environ.items()
        if key.startswith(prefix) and key[len(prefix) :].lower() in Environment.model_fields
    }


def _read_file(path: Path | None) -> tuple[ConfigFile, str]:
    if path is None:
        return ConfigFile(), "the environment"
    source = f"BREAKER_CONFIG ({path})"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read it: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: is not UTF-8 text") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    try:
        return ConfigFile.model_validate(raw), str(path)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_first_error(exc)}") from None


def _file_upstreams(file: ConfigFile) -> list[tuple[str, UpstreamSection]]:
    for name in file.upstreams:
        _check_name(f"upstreams.{name}", name)
    return list(file.upstreams.items())


def _parse_upstreams(value: str) -> list[tuple[str, str]]:
    pairs = []
    seen: set[str] = set()
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, url = item.partition("=")
        name, url = name.strip(), url.strip()
        if not sep or not url:
            raise ConfigError(f"BREAKER_UPSTREAMS: {item!r} is not name=url")
        _check_name("BREAKER_UPSTREAMS", name)
        if name in seen:
            raise ConfigError(f"BREAKER_UPSTREAMS: {name!r} is given twice")
        seen.add(name)
        pairs.append((name, url))
    return pairs


def _check_name(key: str, name: str) -> None:
    if not NAME_PATTERN.match(name):
        raise ConfigError(
            f"{key}: upstream name {name!r} must be 1-64 letters, digits, '.', '_' or '-'"
        )


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


def _check_redis_url(value: str) -> None:
    """A server, a Cluster or a Sentinel set (``redisclient``), or one line naming the
    problem; it connects to nothing."""
    try:
        check_url(value)
    except ConfigurationError as exc:
        raise ConfigError(str(exc)) from None


#: The gateway's batch_interval where the configuration sets none: closed-state
#: successes are counted in the process and flushed every 50 ms, so a healthy
#: upstream costs no Redis round trip per request (failures, trips and half-open
#: trials stay exact). ``false`` in the TOML records every success at once, the
#: library's default. Chosen by figures: bench/gateway.py measured the gateway at
#: 1.00x the breaker-off throughput batched against 0.79x exact (BENCHMARKS.md).
DEFAULT_BATCH_INTERVAL: float | None = 0.05


def _upstream(
    name: str, section: UpstreamSection, defaults: PolicySection, prefix: str
) -> Upstream:
    key = f"upstreams.{name}"
    url = _check_url(f"{key}.url", section.url)
    if section.breaker is False:
        if section.retry:
            raise ConfigError(f"{key}.retry: retries need the breaker, and breaker = false")
        if section.fallback is not None:
            raise ConfigError(f"{key}.fallback: answers an open breaker, and breaker = false")
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
    return Upstream(name=name, url=url, breaker=breaker, retry=retry, fallback=fallback)


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


def _first_error(exc: ValidationError, *, env_prefix: str = "") -> str:
    error = exc.errors()[0]
    location = ".".join(str(part) for part in error["loc"])
    if env_prefix:
        location = env_prefix + location.upper()
    message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
    return f"{location}: {message}"
