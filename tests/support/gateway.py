"""The gateway in-process (ASGI, with its lifespan) and its configuration for tests.

``gateway_client`` reaches both listeners of one gateway, each at a host of its own:
relative URLs (``/proxy/...``) go to the proxy's app, ``ADMIN`` URLs to the admin
app (``f"{ADMIN}/admin/breakers"``), as a browser and a load balancer see them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx

from app import GatewayConfig, create_app, load_config
from breaker import BreakerConfig
from breaker.testing import Clock, ManualClock
from tests.support.lanes import HARNESS_BACKEND_TIMEOUT
from tests.support.upstream import Upstream

TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: The admin listener's origin for ``gateway_client``'s client.
ADMIN = "http://admin"

Scenario = Callable[[httpx.AsyncClient], Awaitable[None]]


def gateway_config(
    tmp_path: Path,
    toml: str = "",
    *,
    redis_url: str | None = None,
    token: str | None = TOKEN,
    **environ: str,
) -> GatewayConfig:
    """Load a configuration the way the service does, from a TOML text and BREAKER_*."""
    values = {f"BREAKER_{key.upper()}": value for key, value in environ.items()}
    if toml:
        path = tmp_path / "fleetbreaker.toml"
        path.write_text(toml)
        values["BREAKER_CONFIG"] = str(path)
    if redis_url is not None:
        values["BREAKER_REDIS_URL"] = redis_url
    if token is not None:
        values["BREAKER_ADMIN_TOKEN"] = token
    return load_config(values)


@contextlib.asynccontextmanager
async def gateway_client(
    config: GatewayConfig, clock: Clock | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the gateway, in-process, between its startup and shutdown: of the
    proxy's app at ``http://gateway`` (the base URL), of the admin app at ``ADMIN``."""
    if isinstance(clock, ManualClock):
        config = patient(config)
    app = create_app(config, clock=clock, admin_listener=False)
    async with app.router.lifespan_context(app):
        peer = ("203.0.113.7", 4321)
        admin = httpx.ASGITransport(app=app.state.admin_app, client=peer)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=peer),
            mounts={ADMIN: admin},
            base_url="http://gateway",
        ) as client:
            yield client


def patient(config: GatewayConfig) -> GatewayConfig:
    """``config`` with every breaker left at the default ``backend_timeout`` given
    ``HARNESS_BACKEND_TIMEOUT``: under a ManualClock a Redis command slowed past
    0.25 s by a loaded machine would otherwise leave that breaker deciding alone
    for the rest of the test (seen in CI: a 500 where the fleet's open breaker
    answers 503). A test of timeouts sets its own."""
    default = BreakerConfig.__dataclass_fields__["backend_timeout"].default
    upstreams = {
        name: dataclasses.replace(
            upstream,
            breaker=dataclasses.replace(upstream.breaker, backend_timeout=HARNESS_BACKEND_TIMEOUT),
        )
        if upstream.breaker is not None and upstream.breaker.backend_timeout == default
        else upstream
        for name, upstream in config.upstreams.items()
    }
    return dataclasses.replace(config, upstreams=upstreams)


def run_with_gateway(config: GatewayConfig, scenario: Scenario, clock: Clock | None = None) -> None:
    """Run ``scenario`` with a client of a gateway of ``config`` (``gateway_client``),
    on an event loop of its own."""

    async def main() -> None:
        async with gateway_client(config, clock) as client:
            await scenario(client)

    asyncio.run(main())


def config_for(
    tmp_path: Path, upstream: Upstream, backend: str | None, extra: str = ""
) -> GatewayConfig:
    """Upstream ``api`` at ``<upstream>/base``: threshold 3, open for 30 s, no backoff;
    bodies up to 1 KiB are retried, over 4 KiB refused. ``extra`` adds to its table."""
    return gateway_config(
        tmp_path,
        f"""
        [gateway]
        max_body_bytes = 4096
        retry_buffer_bytes = 1024
        [defaults.retry]
        backoff = 0
        [upstreams.api]
        url = "{upstream.url}/base"
        breaker = {{ failure_threshold = 3, reset_timeout = 30 }}
        {extra}
        """,
        redis_url=backend,
    )


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus exposition ``text``."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        sample_name, _, label_text = sample.partition("{")
        found = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
        if sample_name == name and found == wanted:
            return float(value)
    raise AssertionError(f"no sample {name}{{{wanted}}}")
