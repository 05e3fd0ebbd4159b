"""The breaker's own Cluster clients are closed with it: none is left for the garbage
collector to find with connections open (redis-py logs "Unclosed ClusterNode")."""

from __future__ import annotations

import asyncio
import gc
import logging
import warnings

import pytest

from breaker import CircuitBreaker, redis_from_url
from tests.support.topology import LocalCluster

pytestmark = pytest.mark.slow


def test_an_asyncio_cluster_breaker_closes_every_node_it_used(
    local_cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        client = redis_from_url(local_cluster.url, asyncio=True)
        cb = CircuitBreaker("payments", redis=client)
        assert not cb.follow_events()  # asyncio: following starts in the loop

        async def upstream() -> None:
            pass

        for _ in range(3):
            await cb.call(upstream)
        for _ in range(100):  # bounded: the follower subscribes in its own time
            if cb.following:
                break
            await asyncio.sleep(0.01)
        assert cb.following
        await cb.aclose()
        await client.aclose()

    with (
        caplog.at_level(logging.ERROR, logger="asyncio"),
        warnings.catch_warnings(record=True) as found,
    ):
        warnings.simplefilter("always", ResourceWarning)
        asyncio.run(scenario())
        gc.collect()
    unclosed = [str(w.message) for w in found if "Unclosed" in str(w.message)]
    unclosed += [r.message for r in caplog.records if "Unclosed" in r.message]
    assert unclosed == []
