"""An upstream's static fallback: what a GET or HEAD gets while its breaker is open,
instead of the 503. Its configuration is checked in one line naming the key; the
proxy is run in-process (ASGI with lifespan) on both backends."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from app import ConfigError
from tests.support.gateway import config_for, gateway_client, gateway_config
from tests.support.upstream import Reply, Upstream

CATALOG = """
[upstreams.catalog]
url = "http://catalog.internal"
[upstreams.catalog.fallback]
status = 200
headers = { "Content-Type" = "application/json", "Cache-Control" = "max-age=30" }
body = '{"items": []}'
"""
FALLBACK = """fallback = { headers = { "Cache-Control" = "max-age=30" }, body = "stale" }"""


def test_a_fallback_table_is_read(tmp_path: Path) -> None:
    fallback = gateway_config(tmp_path, CATALOG).upstreams["catalog"].fallback
    assert fallback is not None
    assert fallback.status == 200
    assert fallback.headers == (
        ("Content-Type", "application/json"),
        ("Cache-Control", "max-age=30"),
    )
    assert fallback.body == b'{"items": []}'


def test_a_fallback_without_a_content_type_is_plain_text(tmp_path: Path) -> None:
    toml = '[upstreams.api]\nurl = "http://h"\nfallback = { body = "later" }'
    fallback = gateway_config(tmp_path, toml).upstreams["api"].fallback
    assert fallback is not None
    assert (fallback.status, fallback.body) == (200, b"later")
    assert fallback.headers == (("Content-Type", "text/plain; charset=utf-8"),)


def test_an_upstream_without_a_fallback_table_has_none(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, '[upstreams.api]\nurl = "http://h"')
    assert config.upstreams["api"].fallback is None


@pytest.mark.parametrize(
    ("table", "message"),
    [
        pytest.param("status = 99", "upstreams.api.fallback.status: must be 200..599", id="status"),
        pytest.param(
            "status = 204", "upstreams.api.fallback.status: must be 200..599 and able", id="204"
        ),
        pytest.param(
            "status = 'ok'", "upstreams.api.fallback.status: Input should be", id="status-type"
        ),
        pytest.param("bodyy = 'x'", "upstreams.api.fallback.bodyy: unknown key", id="unknown"),
        pytest.param(
            "headers = { 'Content-Length' = '5' }",
            "upstreams.api.fallback.headers.Content-Length: is the server's to set",
            id="framing",
        ),
        pytest.param(
            "headers = { 'X-A' = \"a\\r\\nSet-Cookie: b\" }",  # TOML's escapes: CR LF
            "upstreams.api.fallback.headers.X-A: holds a control character",
            id="injection",
        ),
        pytest.param(
            "headers = { 'X A' = 'a' }",
            "upstreams.api.fallback.headers.X A: is not a header name",
            id="name",
        ),
        pytest.param(
            "headers = { 'X-A' = 'é' }",
            "upstreams.api.fallback.headers.X-A: must be ASCII",
            id="ascii",
        ),
    ],
)
def test_a_bad_fallback_is_one_line_naming_the_key(
    tmp_path: Path, table: str, message: str
) -> None:
    toml = f'[upstreams.api]\nurl = "http://h"\n[upstreams.api.fallback]\n{table}\n'
    with pytest.raises(ConfigError) as refused:
        gateway_config(tmp_path, toml)
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_fallback_needs_the_breaker(tmp_path: Path) -> None:
    toml = '[upstreams.api]\nurl = "http://h"\nbreaker = false\nfallback = { body = "x" }'
    with pytest.raises(ConfigError, match=r"upstreams\.api\.fallback: answers an open breaker"):
        gateway_config(tmp_path, toml)


def test_an_open_breaker_answers_a_get_and_a_head_with_the_fallback(
    tmp_path: Path, upstream: Upstream, backend: str | None
) -> None:
    upstream.plan("/base/items", Reply(500))

    async def scenario(client: httpx.AsyncClient) -> None:
        for _ in range(3):  # threshold 3: the breaker opens
            assert (await client.get("/proxy/api/items")).status_code == 500
        for method in ("GET", "HEAD"):
            answer = await client.request(method, "/proxy/api/items")
            assert answer.status_code == 200
            assert answer.headers["cache-control"] == "max-age=30"
            assert answer.headers["content-type"] == "text/plain; charset=utf-8"
            assert answer.headers["content-length"] == "5"
            assert answer.headers["x-fleetbreaker-attempts"] == "0"
            assert answer.headers["x-fleetbreaker-fallback"] == "circuit_open"
        assert (await client.get("/proxy/api/items")).content == b"stale"

    config = config_for(tmp_path, upstream, backend, FALLBACK)

    async def main() -> None:
        async with gateway_client(config) as client:
            await scenario(client)

    asyncio.run(main())
    assert len(upstream.hits_on("/base/items")) == 3


def test_a_write_to_an_open_breaker_still_gets_the_503(
    tmp_path: Path, upstream: Upstream, backend: str | None
) -> None:
    upstream.plan("/base/items", Reply(500))

    async def scenario(client: httpx.AsyncClient) -> None:
        for _ in range(3):
            await client.get("/proxy/api/items")
        refused = await client.post("/proxy/api/items", content=b"{}")
        assert refused.status_code == 503
        assert refused.json()["error"] == "circuit_open"
        assert "x-fleetbreaker-fallback" not in refused.headers

    config = config_for(tmp_path, upstream, backend, FALLBACK)

    async def main() -> None:
        async with gateway_client(config) as client:
            await scenario(client)

    asyncio.run(main())
