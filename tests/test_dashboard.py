"""``/dashboard`` in-process, on the admin listener: the page and its files, the
read-only fleet view it polls, and what they must never do (absolute URLs, a token
anywhere but a header and the page's memory, upstream URLs shown without a token,
answering on the proxy's listener). The page itself runs in Chromium in
``test_dashboard_browser`` and ``test_origins_browser``."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest

from app.admin import dashboard
from breaker.testing import ManualClock
from tests.support.gateway import ADMIN, Scenario, gateway_client, gateway_config
from tests.support.upstream import Reply, Upstream

STATIC = Path(dashboard.__file__).parent / "static"


def run(tmp_path: Path, scenario: Scenario, upstream: Upstream, backend: str | None) -> None:
    config = gateway_config(
        tmp_path,
        f"""
        [defaults.retry]
        attempts = 1
        [upstreams.api]
        url = "{upstream.url}/secret-base"
        breaker = {{ failure_threshold = 5, window = 30 }}
        max_concurrent = 5
        [upstreams.plain]
        url = "{upstream.url}/plain"
        breaker = false
        """,
        redis_url=backend,
    )

    async def main() -> None:
        async with gateway_client(config, ManualClock()) as client:
            await scenario(client)

    asyncio.run(main())


def test_the_page_and_its_files_are_served_under_a_strict_policy(
    tmp_path: Path, upstream: Upstream
) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        for path, kind in [
            ("/dashboard", "text/html"),
            ("/dashboard/static/dashboard.js", "text/javascript"),
            ("/dashboard/static/dashboard.css", "text/css"),
            ("/dashboard/static/favicon.svg", "image/svg+xml"),
        ]:
            response = await client.get(f"{ADMIN}{path}")
            assert response.status_code == 200, path
            assert response.headers["content-type"].startswith(kind)
            policy = response.headers["content-security-policy"]
            assert "script-src 'self';" in policy
            assert "frame-ancestors 'none'" in policy
            assert response.headers["x-frame-options"] == "DENY"
            assert response.headers["x-content-type-options"] == "nosniff"

    run(tmp_path, scenario, upstream, None)


def test_a_file_the_dashboard_does_not_have_is_a_404_json(
    tmp_path: Path, upstream: Upstream
) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        for path in ("/dashboard/static/app.py", "/dashboard/static/..%2F__init__.py"):
            response = await client.get(f"{ADMIN}{path}")
            assert (response.status_code, response.json()["error"]) == (404, "not_found")

    run(tmp_path, scenario, upstream, None)


def test_every_url_the_page_uses_is_relative() -> None:
    """Behind a load balancer, under any prefix, the page finds its files and the API."""
    page = (STATIC / "index.html").read_text()
    script = (STATIC / "dashboard.js").read_text()
    references = re.findall(r'(?:src|href)="([^"]+)"', page)
    requests = re.findall(r'(?:fetch|EventSource)\(\s*[`"]([^`"]+)[`"]', script)
    assert references
    assert requests
    for url in references + requests:
        assert not url.startswith(("/", "http:", "https:")), url


def test_the_token_travels_only_in_the_authorization_header() -> None:
    script = (STATIC / "dashboard.js").read_text()
    assert "Authorization: `Bearer ${token}`" in script
    assert not re.search(r"[?&](token|access_token|admin_token)=", script)


def test_the_token_is_kept_in_the_pages_memory_only() -> None:
    """No storage another page of the origin could read, nor one that outlives the page."""
    script = (STATIC / "dashboard.js").read_text()
    for storage in ("sessionStorage", "localStorage", "indexedDB", "document.cookie", "caches"):
        assert storage not in script


def test_the_proxys_listener_serves_no_dashboard(tmp_path: Path, upstream: Upstream) -> None:
    """Whatever an upstream serves runs with the proxy's origin: the page, its files
    and its streams are on the admin listener only."""

    async def scenario(client: httpx.AsyncClient) -> None:
        for path in ("/dashboard", "/dashboard/static/dashboard.js", "/dashboard/fleet"):
            response = await client.get(path)
            assert (response.status_code, response.json()["error"]) == (404, "not_found")
            assert (await client.get(f"{ADMIN}{path}")).status_code == 200

    run(tmp_path, scenario, upstream, None)


def test_the_fleet_view_lists_every_upstream_without_a_token_or_a_url(
    tmp_path: Path, upstream: Upstream, backend: str | None
) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.get(f"{ADMIN}/dashboard/fleet")
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        assert "secret-base" not in response.text
        assert upstream.url not in response.text
        by_name = {entry["name"]: entry for entry in response.json()["upstreams"]}
        assert list(by_name) == ["api", "plain"]
        assert (by_name["api"]["guarded"], by_name["api"]["state"]) == (True, "closed")
        assert by_name["api"]["window"] == 30
        assert (by_name["plain"]["guarded"], by_name["plain"]["state"]) == (False, None)
        # The bulkhead: in flight fleet-wide, and its limit.
        assert (by_name["api"]["in_flight"], by_name["api"]["max_concurrent"]) == (0, 5)
        assert by_name["plain"]["max_concurrent"] is None

    run(tmp_path, scenario, upstream, backend)


def test_the_fleet_view_counts_the_shared_window(
    tmp_path: Path, upstream: Upstream, backend: str | None
) -> None:
    upstream.plan("/secret-base/down", Reply(500))

    async def scenario(client: httpx.AsyncClient) -> None:
        await client.get("/proxy/api/fine")
        for _ in range(2):
            await client.get("/proxy/api/down")
        api = (await client.get(f"{ADMIN}/dashboard/fleet")).json()["upstreams"][0]
        figures = (api["window_calls"], api["window_failures"], api["failures"])
        assert figures == (3, 2, 2)

    run(tmp_path, scenario, upstream, backend)


def test_an_event_stream_past_the_cap_is_refused_with_a_503_json(
    tmp_path: Path, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dashboard, "MAX_STREAMS", 0)

    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.get(f"{ADMIN}/dashboard/events")
        assert (response.status_code, response.json()["error"]) == (503, "too_many_streams")

    run(tmp_path, scenario, upstream, None)
