"""``/docs`` and ``/redoc``, on the admin listener, render where nothing but the
gateway answers: the pages name no other host, and every file they load is served by
the gateway itself. They carry the dashboard's security headers: they cannot be
framed, and run no script but their own (in Chromium in ``test_dashboard_browser``)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from pathlib import Path

import pytest

from breaker.testing import ManualClock
from tests.support.gateway import ADMIN, gateway_client, gateway_config

# Every URL a page makes a browser load: attributes, and Swagger UI's ``url:`` option.
LOADED = re.compile(r"""(?:src|href|spec-url)="([^"]+)"|\burl: '([^']+)'""")
# What each file must hold to be the one the page expects.
CONTENT = {
    "swagger-ui-bundle.js": b"SwaggerUIBundle",
    "swagger-ui.css": b".swagger-ui",
    "redoc.standalone.js": b"Redoc",
    "openapi.json": b'"openapi"',
    "favicon.png": b"\x89PNG",
}


def loaded_by(page: str) -> list[str]:
    return [first or second for first, second in LOADED.findall(page)]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_page_loads_only_files_the_gateway_serves(tmp_path: Path, page: str) -> None:
    async def scenario() -> None:
        async with gateway_client(gateway_config(tmp_path), ManualClock()) as client:
            response = await client.get(f"{ADMIN}{page}")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/html")
            assert "http" not in response.text  # no absolute URL: no other host
            urls = loaded_by(response.text)
            assert len(urls) >= 3  # the script, the icon and the OpenAPI document
            for url in urls:
                assert url.startswith("/"), url  # this host's path...
                assert not url.startswith("//"), url  # ...not another host's
                loaded = await client.get(f"{ADMIN}{url}")
                assert loaded.status_code == 200, url
                assert CONTENT[url.rsplit("/", 1)[1]] in loaded.content, url

    asyncio.run(scenario())


def test_swagger_ui_asks_no_online_validator(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with gateway_client(gateway_config(tmp_path), ManualClock()) as client:
            page = (await client.get(f"{ADMIN}/docs")).text
            assert '"validatorUrl": null' in page

    asyncio.run(scenario())


def test_the_files_carry_their_media_types(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with gateway_client(gateway_config(tmp_path), ManualClock()) as client:
            script = await client.get(f"{ADMIN}/docs/swagger-ui-bundle.js")
            style = await client.get(f"{ADMIN}/docs/swagger-ui.css")
            assert script.headers["content-type"].startswith("text/javascript")
            assert style.headers["content-type"].startswith("text/css")
            assert (await client.get(f"{ADMIN}/docs/anything-else.js")).status_code == 404

    asyncio.run(scenario())


@pytest.mark.parametrize("page", ["/docs", "/redoc", "/docs/swagger-ui-bundle.js"])
def test_the_pages_and_files_cannot_be_framed_and_run_only_their_own_scripts(
    tmp_path: Path, page: str
) -> None:
    async def scenario() -> None:
        async with gateway_client(gateway_config(tmp_path), ManualClock()) as client:
            response = await client.get(f"{ADMIN}{page}")
            assert response.headers["x-frame-options"] == "DENY"
            assert response.headers["x-content-type-options"] == "nosniff"
            policy = dict(
                directive.strip().split(" ", 1)
                for directive in response.headers["content-security-policy"].split(";")
            )
            assert policy["frame-ancestors"] == "'none'"
            assert policy["default-src"] == "'none'"
            assert policy["connect-src"] == "'self'"
            allowed = policy["script-src"].split()
            assert allowed[0] == "'self'"
            page_text = response.text if page in ("/docs", "/redoc") else ""
            inline = re.findall(r"<script>(.*?)</script>", page_text, re.DOTALL)
            assert allowed[1:] == [f"'sha256-{digest(script)}'" for script in inline]

    asyncio.run(scenario())


def digest(script: str) -> str:
    return base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()


def test_the_proxys_listener_serves_no_documentation(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with gateway_client(gateway_config(tmp_path), ManualClock()) as client:
            for path in ("/docs", "/redoc", "/openapi.json", "/docs/swagger-ui-bundle.js"):
                assert (await client.get(path)).status_code == 404, path
                assert (await client.get(f"{ADMIN}{path}")).status_code == 200, path

    asyncio.run(scenario())
