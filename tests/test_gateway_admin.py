"""The admin API, on the admin listener: its token, and each action's effect on the
proxy, on both backends."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from app import GatewayConfig
from breaker.testing import ManualClock
from tests.support.gateway import (
    ADMIN,
    AUTH,
    Scenario,
    config_for,
    gateway_client,
    gateway_config,
)
from tests.support.upstream import Reply, Upstream


def run(config: GatewayConfig, scenario: Scenario) -> None:
    async def main() -> None:
        async with gateway_client(config, ManualClock()) as client:
            await scenario(client)

    asyncio.run(main())


ADMIN_ROUTES = [
    ("GET", "/admin/breakers"),
    ("GET", "/admin/breakers/api"),
    ("POST", "/admin/breakers/api/reset"),
    ("POST", "/admin/breakers/api/open"),
    ("POST", "/admin/breakers/api/disable"),
    ("GET", "/admin/events"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_no_token_configured_is_403_with_how_to_enable(
    tmp_path: Path, upstream: Upstream, method: str, path: str
) -> None:
    config = gateway_config(tmp_path, token=None, upstreams=f"api={upstream.url}")

    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.request(method, f"{ADMIN}{path}", headers=AUTH)
        assert response.status_code == 403
        assert response.json() == {
            "error": "admin_disabled",
            "detail": "the admin API is off: set BREAKER_ADMIN_TOKEN and send "
            "'Authorization: Bearer <token>'",
        }

    run(config, scenario)


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param({"Authorization": "Bearer wrong-token"}, id="wrong"),
        pytest.param({"Authorization": "Basic dGVzdA=="}, id="not-bearer"),
        pytest.param({"Authorization": "Bearer "}, id="empty"),
    ],
)
def test_a_missing_or_wrong_token_is_401(
    tmp_path: Path, upstream: Upstream, method: str, path: str, headers: dict[str, str]
) -> None:
    config = gateway_config(tmp_path, upstreams=f"api={upstream.url}")

    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.request(method, f"{ADMIN}{path}", headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"] == "unauthorized"

    run(config, scenario)


def test_a_token_in_the_query_string_is_refused(tmp_path: Path, upstream: Upstream) -> None:
    config = gateway_config(tmp_path, upstreams=f"api={upstream.url}")

    async def scenario(client: httpx.AsyncClient) -> None:
        token = AUTH["Authorization"].split()[1]
        response = await client.get(f"{ADMIN}/admin/breakers?access_token={token}", headers=AUTH)
        assert response.status_code == 400
        assert "Authorization header" in response.json()["detail"]

    run(config, scenario)


def test_list_shows_every_upstream_with_its_snapshot(
    tmp_path: Path, upstream: Upstream, backend: str | None
) -> None:
    config = gateway_config(
        tmp_path, redis_url=backend, upstreams=f"api={upstream.url}/base,search={upstream.url}"
    )

    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.get(f"{ADMIN}/admin/breakers", headers=AUTH)
        assert response.status_code == 200
        breakers = response.json()["breakers"]
        assert [(b["name"], b["url"], b["state"]) for b in breakers] == [
            ("api", f"{upstream.url}/base", "closed"),
            ("search", upstream.url, "closed"),
        ]
        assert breakers[0]["backend"] == ("redis" if backend else "embedded")

    run(config, scenario)


def test_one_breaker_shows_failures_and_times(
    tmp_path: Path, upstream: Upstream, backend: str | None
) -> None:
    upstream.plan("/base/down", Reply(500))

    async def scenario(client: httpx.AsyncClient) -> None:
        for _ in range(3):
            await client.get("/proxy/api/down")
        view = (await client.get(f"{ADMIN}/admin/breakers/api", headers=AUTH)).json()
        assert view["state"] == "open"
        assert view["failures"] == 3
        assert view["last_failure_at"] == view["opened_at"] > 0
        assert view["open_until"] == view["opened_at"] + 30_000
        assert view["retry_after"] == 30.0
        assert (view["window_calls"], view["window_failures"]) == (3, 3)

    run(config_for(tmp_path, upstream, backend), scenario)


@pytest.mark.parametrize("action", ["", "/reset", "/open", "/disable"])
def test_an_unknown_name_is_404(tmp_path: Path, upstream: Upstream, action: str) -> None:
    config = gateway_config(tmp_path, upstreams=f"api={upstream.url}")

    async def scenario(client: httpx.AsyncClient) -> None:
        method = "GET" if not action else "POST"
        response = await client.request(
            method, f"{ADMIN}/admin/breakers/nope{action}", headers=AUTH
        )
        assert response.status_code == 404
        assert response.json()["error"] == "unknown_upstream"

    run(config, scenario)


def test_reset_closes_an_open_breaker_and_lets_traffic_through(
    tmp_path: Path, upstream: Upstream, backend: str | None
) -> None:
    upstream.plan("/base/x", Reply(500), Reply(500), Reply(500), Reply(200))

    async def scenario(client: httpx.AsyncClient) -> None:
        for _ in range(3):
            await client.get("/proxy/api/x")
        assert (await client.get("/proxy/api/x")).status_code == 503
        reset = await client.post(f"{ADMIN}/admin/breakers/api/reset", headers=AUTH)
        assert reset.status_code == 200
        assert (reset.json()["state"], reset.json()["failures"]) == ("closed", 0)
        assert (await client.get("/proxy/api/x")).status_code == 200

    run(config_for(tmp_path, upstream, backend), scenario)
    assert len(upstream.hits_on("/base/x")) == 4


def test_force_open_rejects_without_calling_until_reset(
    tmp_path: Path, upstream: Upstream, backend: str | None
) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        opened = await client.post(f"{ADMIN}/admin/breakers/api/open", headers=AUTH)
        assert opened.json()["state"] == "forced_open"
        rejected = await client.get("/proxy/api/x")
        assert rejected.status_code == 503
        assert rejected.json()["error"] == "circuit_open"
        assert "forced_open" in rejected.json()["detail"]
        await client.post(f"{ADMIN}/admin/breakers/api/reset", headers=AUTH)
        assert (await client.get("/proxy/api/x")).status_code == 200

    run(config_for(tmp_path, upstream, backend), scenario)
    assert len(upstream.hits_on("/base/x")) == 1


def test_disable_lets_everything_through_and_still_counts(
    tmp_path: Path, upstream: Upstream, backend: str | None
) -> None:
    upstream.plan("/base/x", Reply(500))

    async def scenario(client: httpx.AsyncClient) -> None:
        disabled = await client.post(f"{ADMIN}/admin/breakers/api/disable", headers=AUTH)
        assert disabled.json()["state"] == "disabled"
        for _ in range(6):  # twice the threshold
            assert (await client.get("/proxy/api/x")).status_code == 500
        view = (await client.get(f"{ADMIN}/admin/breakers/api", headers=AUTH)).json()
        assert view["state"] == "disabled"
        assert (view["window_calls"], view["window_failures"]) == (6, 6)

    run(config_for(tmp_path, upstream, backend), scenario)
    assert len(upstream.hits_on("/base/x")) == 6


def test_an_upstream_without_a_breaker_is_not_listed_and_has_no_breaker_to_act_on(
    tmp_path: Path, upstream: Upstream
) -> None:
    config = config_for(
        tmp_path,
        upstream,
        None,
        extra=f'[upstreams.plain]\nurl = "{upstream.url}"\nbreaker = false',
    )

    async def scenario(client: httpx.AsyncClient) -> None:
        listed = await client.get(f"{ADMIN}/admin/breakers", headers=AUTH)
        assert [view["name"] for view in listed.json()["breakers"]] == ["api"]
        for method, path in (
            ("GET", "/admin/breakers/plain"),
            ("POST", "/admin/breakers/plain/reset"),
        ):
            answer = await client.request(method, f"{ADMIN}{path}", headers=AUTH)
            assert answer.status_code == 404
            assert answer.json()["error"] == "no_breaker"
        assert (await client.get(f"{ADMIN}/metrics")).status_code == 200
        assert (await client.get(f"{ADMIN}/readyz")).json()["status"] == "ready"

    run(config, scenario)


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_the_proxys_listener_has_no_admin_api_even_with_the_token(
    tmp_path: Path, upstream: Upstream, method: str, path: str
) -> None:
    """Pages an upstream serves run with the proxy's origin: none may reach the admin
    API there, with a token it found or not."""
    config = gateway_config(tmp_path, upstreams=f"api={upstream.url}")

    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.request(method, path, headers=AUTH)
        assert (response.status_code, response.json()["error"]) == (404, "not_found")
        state = (await client.get(f"{ADMIN}/admin/breakers/api", headers=AUTH)).json()["state"]
        assert state == "closed"

    run(config, scenario)
    assert upstream.hits == []
