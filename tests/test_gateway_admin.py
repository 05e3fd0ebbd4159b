"""The admin API, on the admin listener: its token (refusals logged, at most once a
minute), and each action's effect on the proxy, on both backends."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest

from app import GatewayConfig
from app.telemetry.refusals import RefusalLog, RefusalLogger
from breaker.testing import ManualClock
from tests.support.gateway import (
    ADMIN,
    AUTH,
    Scenario,
    config_for,
    gateway_config,
    run_with_gateway,
)
from tests.support.upstream import Reply, Upstream


def run(config: GatewayConfig, scenario: Scenario) -> None:
    run_with_gateway(config, scenario, ManualClock())


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


# -- refused tokens in the log ------------------------------------------------------------


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if getattr(record, "fields", {}).get("event") == "admin_refused"
    ]


def test_refused_tokens_are_logged_once_then_counted_never_shown(
    tmp_path: Path, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    """3,000 guesses used to leave no line at all; one line per guess would let the
    guesser fill the log. The first is told at once, the rest counted (told within a
    minute, or when the worker stops)."""
    caplog.set_level(logging.WARNING, logger="fleetbreaker.gateway")
    config = gateway_config(tmp_path, upstreams=f"api={upstream.url}")
    guesses = [f"guess-{n:04d}-abcdefghijkl" for n in range(300)]

    async def scenario(client: httpx.AsyncClient) -> None:
        for guess in guesses:
            answer = await client.get(
                f"{ADMIN}/admin/breakers", headers={"Authorization": f"Bearer {guess}"}
            )
            assert answer.status_code == 401
        assert refusal_lines(caplog) == [
            "admin API: refused a missing or wrong token from 203.0.113.7"
        ]

    run(config, scenario)
    _, counted = refusal_lines(caplog)
    assert counted.startswith("admin API: refused 299 more missing or wrong tokens in ")
    assert counted.endswith(" s, from 203.0.113.7 (299)")
    logged = caplog.text
    assert not any(guess in logged for guess in guesses)


def test_the_refusal_log_tells_the_first_at_once_then_one_count_per_interval() -> None:
    log = RefusalLog(every=60.0)
    assert log.refused("10.0.0.1", now=0.0) == (
        "admin API: refused a missing or wrong token from 10.0.0.1"
    )
    assert log.due == 60.0
    for second in range(1, 40):
        assert log.refused("10.0.0.2" if second % 3 else None, now=float(second)) is None
    assert log.tick(now=60.0) == (
        "admin API: refused 39 more missing or wrong tokens in 60 s, "
        "from 10.0.0.2 (26), an unknown client (13)"
    )
    assert log.due == 120.0
    assert log.tick(now=120.0) is None  # none came meanwhile: quiet again
    assert log.due is None
    assert log.refused("10.0.0.3", now=500.0) == (
        "admin API: refused a missing or wrong token from 10.0.0.3"
    )


def test_the_refusal_log_names_the_five_most_frequent_clients() -> None:
    log = RefusalLog(every=60.0)
    log.refused("first", now=0.0)
    for client in range(8):
        for _ in range(client + 1):
            log.refused(f"10.0.0.{client}", now=1.0)
    line = log.tick(now=60.0)
    assert line is not None
    assert line.endswith(
        "from 10.0.0.7 (8), 10.0.0.6 (7), 10.0.0.5 (6), 10.0.0.4 (5), 10.0.0.3 (4) and 3 more"
    )


def test_the_refusal_logger_tells_each_interval_on_its_own_timer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="fleetbreaker.gateway")

    async def scenario() -> None:
        refusals = RefusalLogger(asyncio.get_running_loop(), every=0.05)
        for _ in range(3):
            refusals.refused("10.0.0.1")
        assert len(refusal_lines(caplog)) == 1
        while len(refusal_lines(caplog)) < 2:  # noqa: ASYNC110 - the timer's line, in a log
            await asyncio.sleep(0.01)
        refusals.close()

    asyncio.run(asyncio.wait_for(scenario(), timeout=10.0))
    _, counted = refusal_lines(caplog)
    assert counted.startswith("admin API: refused 2 more missing or wrong tokens in ")
