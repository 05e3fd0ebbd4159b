"""Quorum through the gateway: the replica whose path to an upstream is broken isolates
itself (its own workers refuse its calls, the admin view and /metrics list it) while
the fleet's breaker stays closed and the other replicas go on; both vote as their
instance (``BREAKER_INSTANCE_NAME``)."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

from app.config.settings import GatewayConfig
from breaker.testing import ManualClock
from tests.support.gateway import ADMIN, AUTH, gateway_client, gateway_config
from tests.support.ports import free_port
from tests.support.servers import RedisServer
from tests.support.upstream import Reply, Upstream


def _config(tmp_path: Path, url: str, redis_url: str, instance: str) -> GatewayConfig:
    folder = tmp_path / instance
    folder.mkdir()
    return gateway_config(
        folder,
        f"""
        [defaults.breaker]
        backend_timeout = 2.0
        [defaults.retry]
        attempts = 1
        [upstreams.api]
        url = "{url}"
        breaker = {{ failure_threshold = 3, quorum = 2, reset_timeout = 30 }}
        """,
        redis_url=redis_url,
        instance_name=instance,
    )


def test_a_replica_with_a_broken_path_isolates_itself_and_the_fleet_stays_closed(
    tmp_path: Path, redis_server: RedisServer, upstream: Upstream
) -> None:
    upstream.plan("/item", Reply(200))
    broken = _config(tmp_path, f"http://127.0.0.1:{free_port()}", redis_server.url, "gw-1")
    healthy = _config(tmp_path, upstream.url, redis_server.url, "gw-2")
    clock = ManualClock()

    async def scenario() -> None:
        async with (
            gateway_client(broken, clock) as sick,
            gateway_client(healthy, clock) as well,
        ):
            answers = [(await sick.get("/proxy/api/item")).status_code for _ in range(5)]
            assert answers == [502, 502, 502, 503, 503]
            refused = await sick.get("/proxy/api/item")
            assert refused.json()["error"] == "circuit_open"
            assert "isolated itself" in refused.json()["detail"]
            assert [(await well.get("/proxy/api/item")).status_code for _ in range(5)] == [200] * 5
            view = (await well.get(f"{ADMIN}/admin/breakers/api", headers=AUTH)).json()
            assert view["state"] == "closed"
            assert list(view["isolated"]) == [f"gw-1/{os.getpid()}"]
            metrics = (await well.get(f"{ADMIN}/metrics", headers=AUTH)).text
            assert 'fleetbreaker_breaker_isolated_processes{upstream="api"} 1.0' in metrics
            # The refused connections, told apart from the upstream's own failures.
            mine = (await sick.get(f"{ADMIN}/metrics", headers=AUTH)).text
            counted = re.search(
                r'^fleetbreaker_local_origin_failures_total\{upstream="api"\} (\S+)$', mine, re.M
            )
            assert counted is not None, mine
            assert float(counted.group(1)) >= 3

    asyncio.run(scenario())
