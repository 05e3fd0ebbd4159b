"""The gateway's ``max_concurrent``: a fleet-wide limit of calls in flight per upstream.

Over the limit, a 503 ``bulkhead_full`` with ``Retry-After``, and the upstream is not
called; an open breaker refuses first and holds no lease; the gauges and the admin
view show leases in use and the limit; invalid settings refuse to start naming the
key. The limit holds across processes: two replicas of two workers each, on one
Redis, never let more calls than the limit reach the upstream at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from app import ConfigError
from breaker import AdaptiveLimit
from tests.support.gateway import (
    ADMIN,
    AUTH,
    config_for,
    gateway_config,
    metric,
)
from tests.support.gateway import (
    run_with_gateway as run,
)
from tests.support.gateway_process import replicas_of
from tests.support.servers import RedisServer
from tests.support.upstream import Reply, Upstream

HELD = Reply(delay_headers=1.0, body=b"slow")


async def _all_at_once(client: httpx.AsyncClient, count: int) -> list[httpx.Response]:
    return list(await asyncio.gather(*(client.get("/proxy/api/slow") for _ in range(count))))


async def _requests(client: httpx.AsyncClient) -> dict[str, float]:
    """``fleetbreaker_requests_total`` of upstream ``api``, by result (0: none yet)."""
    text = (await client.get(f"{ADMIN}/metrics", headers=AUTH)).text
    counts = {}
    for result in ("bulkhead_full", "2xx"):
        try:
            counts[result] = metric(
                text, "fleetbreaker_requests_total", upstream="api", result=result
            )
        except AssertionError:
            counts[result] = 0.0
    return counts


def test_over_the_limit_a_503_without_calling_the_upstream(
    tmp_path: Path, upstream: Upstream, backend: str | None
) -> None:
    upstream.plan("/base/slow", HELD)
    config = config_for(tmp_path, upstream, backend, "max_concurrent = 2")

    async def scenario(client: httpx.AsyncClient) -> None:
        before = await _requests(client)  # the counters are the process's, test after test
        answers = await _all_at_once(client, 5)
        served = [a for a in answers if a.status_code == 200]
        refused = [a for a in answers if a.status_code == 503]
        assert (len(served), len(refused)) == (2, 3)
        assert upstream.most_in_flight == 2
        assert len(upstream.hits_on("/base/slow")) == 2
        for answer in refused:
            body = answer.json()
            assert body["error"] == "bulkhead_full"
            assert body["upstream"] == "api"
            assert body["retry_after"] >= 1
            assert answer.headers["Retry-After"] == str(body["retry_after"])
            assert "2 of 2 calls" in body["detail"]
            assert answer.headers["X-Fleetbreaker-Attempts"] == "1"
        # The refusals are this side's: the breaker counted no failure.
        view = (await client.get(f"{ADMIN}/admin/breakers/api", headers=AUTH)).json()
        assert (view["state"], view["failures"]) == ("closed", 0)
        assert view["bulkhead"] == {"in_use": 0, "limit": 2, "processes": 1}
        text = (await client.get(f"{ADMIN}/metrics", headers=AUTH)).text
        assert metric(text, "fleetbreaker_bulkhead_leases", upstream="api") == 0
        assert metric(text, "fleetbreaker_bulkhead_limit", upstream="api") == 2
        after = await _requests(client)
        assert (after["bulkhead_full"] - before["bulkhead_full"], after["2xx"] - before["2xx"]) == (
            3,
            2,
        )
        # Leases came back with the bodies: the next calls get through.
        upstream.plan("/base/slow", Reply())
        assert [a.status_code for a in await _all_at_once(client, 2)] == [200, 200]

    run(config, scenario)


def test_an_open_breaker_refuses_first_and_holds_no_lease(
    tmp_path: Path, upstream: Upstream, backend: str | None
) -> None:
    config = config_for(tmp_path, upstream, backend, "max_concurrent = 1")

    async def scenario(client: httpx.AsyncClient) -> None:
        opened = await client.post(f"{ADMIN}/admin/breakers/api/open", headers=AUTH)
        assert opened.status_code == 200
        for _ in range(3):
            answer = await client.get("/proxy/api/slow")
            assert answer.json()["error"] == "circuit_open"
        view = (await client.get(f"{ADMIN}/admin/breakers/api", headers=AUTH)).json()
        assert view["bulkhead"]["in_use"] == 0
        assert upstream.hits_on("/base/slow") == []
        await client.post(f"{ADMIN}/admin/breakers/api/reset", headers=AUTH)
        assert (await client.get("/proxy/api/slow")).status_code == 200

    run(config, scenario)


@pytest.mark.parametrize(
    ("setting", "error"),
    [
        (
            "max_concurrent = 0",
            "upstreams.api.max_concurrent: must be an integer >= 1, or a table, got 0",
        ),
        (
            "max_concurrent = 2.5",
            "upstreams.api.max_concurrent: must be an integer >= 1, or a table, got 2.5",
        ),
        (
            'max_concurrent = "20"',
            "upstreams.api.max_concurrent: must be an integer >= 1, or a table, got '20'",
        ),
        (
            "max_concurrent = { limit = 5, lease_ttl = 0 }",
            "upstreams.api.max_concurrent.lease_ttl: must be finite and >= 0.05, got 0",
        ),
        (
            "max_concurrent = { limit = 5, ttl = 2 }",
            "upstreams.api.max_concurrent.ttl: unknown key",
        ),
        (
            "max_concurrent = { lease_ttl = 2 }",
            "upstreams.api.max_concurrent.limit: missing (the most calls in flight, fleet-wide)",
        ),
        (
            "max_concurrent = { adaptive = false, limit = 3 }",
            "upstreams.api.max_concurrent.adaptive: must be true (or left out, with a limit)",
        ),
        (
            "max_concurrent = { adaptive = true, limit = 3 }",
            "upstreams.api.max_concurrent.limit: an adaptive limit learns it",
        ),
        (
            "max_concurrent = { adaptive = true, min = 10, max = 5 }",
            "upstreams.api.max_concurrent.initial: must be within min..max (10..5), got 20",
        ),
        (
            "max_concurrent = { adaptive = true, smoothing = 2 }",
            "upstreams.api.max_concurrent.smoothing: must be within 0..1, got 2",
        ),
    ],
)
def test_invalid_limits_refuse_to_start_naming_the_key(
    tmp_path: Path, upstream: Upstream, setting: str, error: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        config_for(tmp_path, upstream, None, setting)
    assert str(refused.value) == error


def test_an_adaptive_limit_starts_at_its_initial_and_is_the_fleets(
    tmp_path: Path, upstream: Upstream, backend: str | None
) -> None:
    upstream.plan("/base/slow", Reply())
    config = config_for(
        tmp_path,
        upstream,
        backend,
        "max_concurrent = { adaptive = true, min = 2, max = 50, initial = 7, lease_ttl = 3 }",
    )
    bulkhead = config.upstreams["api"].bulkhead
    assert bulkhead is not None
    assert bulkhead.lease_ttl == 3.0
    assert bulkhead.limit == AdaptiveLimit(min=2, max=50, initial=7)

    async def scenario(client: httpx.AsyncClient) -> None:
        assert (await client.get("/proxy/api/slow")).status_code == 200
        view = (await client.get(f"{ADMIN}/admin/breakers/api", headers=AUTH)).json()
        assert view["bulkhead"]["limit"] == 7

    run(config, scenario)


def test_a_limit_needs_the_breaker(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        gateway_config(
            tmp_path,
            """
            [upstreams.api]
            url = "http://127.0.0.1:9/"
            breaker = false
            max_concurrent = 3
            """,
        )
    assert str(refused.value) == (
        "upstreams.api.max_concurrent: its leases ride on the breaker's calls, and breaker = false"
    )


@pytest.mark.slow
def test_two_replicas_of_two_workers_share_one_limit(
    tmp_path: Path, redis_server: RedisServer, upstream: Upstream
) -> None:
    upstream.plan("/base/slow", HELD)
    config = f"""
        [upstreams.api]
        url = "{upstream.url}/base"
        max_concurrent = 3
        """
    with replicas_of(tmp_path, redis_server, config, workers=2, prefixes=[(), ()]) as replicas:

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=30) as client:
                return list(
                    await asyncio.gather(
                        *(client.get(f"{replicas[i % 2].url}/proxy/api/slow") for i in range(16))
                    )
                )

        answers = asyncio.run(burst())
    statuses = [answer.status_code for answer in answers]
    assert upstream.most_in_flight == 3
    assert statuses.count(200) >= 3
    assert statuses.count(200) + statuses.count(503) == 16
    assert {a.json()["error"] for a in answers if a.status_code == 503} == {"bulkhead_full"}
