"""What the environment (``BREAKER_*``) and the TOML file may say, as pydantic reads
them, and ``ConfigError``: the one line, naming the key, for what they may not."""

from __future__ import annotations

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
    # The HTTP layer's bounds (app.server.connections), before any parsing.
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
    # The fleet's limit of calls in flight: a number, or a table (limit, lease_ttl,
    # max_wait); checked by config.upstreams, which names the key of any problem.
    max_concurrent: Any = None


class ConfigFile(_Strict):
    gateway: GatewaySection = GatewaySection()
    client: ClientSection = ClientSection()
    defaults: PolicySection = PolicySection()
    upstreams: dict[str, UpstreamSection] = {}


def first_error(exc: ValidationError, *, env_prefix: str = "") -> str:
    error = exc.errors()[0]
    location = ".".join(str(part) for part in error["loc"])
    if env_prefix:
        location = env_prefix + location.upper()
    message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
    return f"{location}: {message}"
