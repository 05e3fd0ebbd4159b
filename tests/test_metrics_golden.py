"""The metrics the gateway exports are pinned: every family's name, type and labels
(``tests/golden/metrics.txt``), as scraped from a gateway that went through every
case that makes a series (retries, a trip, a rejection, a broken body, a bulkhead, Redis lost)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from app.proxy.errors import BodyBrokenOff
from breaker.testing import ManualClock
from tests.support.exposition import Family, exported, pinned
from tests.support.gateway import ADMIN, gateway_client, gateway_config
from tests.support.ports import free_port
from tests.support.servers import RedisServer
from tests.support.upstream import Reply, Upstream


def _scrapes(tmp_path: Path, redis_server: RedisServer, upstream: Upstream) -> list[str]:
    """``/metrics`` while Redis answers, then after it died."""
    upstream.plan("/flaky", Reply(503), Reply(200))
    upstream.plan("/trickle", Reply(200, delay_body=1.0))
    upstream.plan("/down", Reply(503))
    closed_port = free_port()  # nothing listens there
    config = gateway_config(
        tmp_path,
        f"""
        [client]
        body_timeout = 0.1
        [defaults.breaker]
        # A loaded machine must not turn a slow Redis reply into an outage: the manual
        # clock would keep its backoff, and every scrape would miss the snapshots.
        backend_timeout = 2.0
        [defaults.retry]
        backoff = 0
        budget = false
        [upstreams.api]
        url = "{upstream.url}"
        breaker = {{ failure_threshold = 5, reset_timeout = 30 }}
        max_concurrent = 5
        [upstreams.other]
        url = "{upstream.url}"
        [upstreams.unreachable]
        url = "http://127.0.0.1:{closed_port}"
        retry = {{ attempts = 1 }}
        """,
        redis_url=redis_server.url,
    )
    texts = []

    async def scenario() -> None:
        async with gateway_client(config, ManualClock()) as client:
            await client.get("/proxy/api/flaky")  # a retry, and its success
            with pytest.raises(BodyBrokenOff):  # in-process, the cut reaches the client
                await client.get("/proxy/api/trickle")  # a body cut by body_timeout
            await client.get("/proxy/api/down")  # fails 3 times: no attempts left
            await client.get("/proxy/api/down")  # the 5th failure in a row opens it
            await client.get("/proxy/api/down")  # rejected
            await client.get("/proxy/unreachable/x")  # refused: a local-origin failure
            texts.append((await client.get(f"{ADMIN}/metrics")).text)
            redis_server.kill()
            await client.get("/proxy/other/x")  # decided by the fallback breaker
            texts.append((await client.get(f"{ADMIN}/metrics")).text)

    asyncio.run(scenario())
    return texts


def test_every_exported_metric_has_the_pinned_name_type_and_labels(
    tmp_path: Path, redis_server: RedisServer, upstream: Upstream
) -> None:
    seen: dict[str, Family] = {}
    for text in _scrapes(tmp_path, redis_server, upstream):
        for name, family in exported(text).items():
            known = seen.get(name)
            labels = family.labels | (known.labels if known else frozenset())
            seen[name] = Family(name, family.type, labels)
    assert seen == pinned()
