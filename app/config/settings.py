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
by them: the library decides what is valid, ``upstreams`` only names the key. Any
problem becomes one ``ConfigError`` whose message names the key.
"""

from __future__ import annotations

import re
import socket
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from breaker import ConfigurationError

from .redisclient import check_url
from .sections import (
    ClientSection,
    ConfigError,
    ConfigFile,
    Environment,
    UpstreamSection,
    first_error,
)
from .upstreams import Upstream, instance_voter, upstream

#: Upstream names are URL path segments and Redis hash tags: keep them plain.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEMO_UPSTREAM = "demo"
#: The shortest admin token accepted: a short one is guessed (the API answers 401
#: hundreds of times a second).
MIN_ADMIN_TOKEN_LENGTH = 16


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
        raise ConfigError(first_error(exc, env_prefix="BREAKER_")) from None
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
    instance = env.instance_name or socket.gethostname()
    voter = instance_voter(instance)
    return GatewayConfig(
        upstreams={
            name: upstream(name, section, file.defaults, file.gateway.prefix, voter)
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
        instance_name=instance,
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
        raise ConfigError(f"{path}: {first_error(exc)}") from None


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


def _check_redis_url(value: str) -> None:
    """A server, a Cluster or a Sentinel set (``redisclient``), or one line naming the
    problem; it connects to nothing."""
    try:
        check_url(value)
    except ConfigurationError as exc:
        raise ConfigError(str(exc)) from None
