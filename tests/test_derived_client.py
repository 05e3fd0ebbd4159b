"""The breaker's own Redis client: the caller's settings, bounded timeouts, no retries."""

from __future__ import annotations

from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.sentinel import Sentinel

from breaker._backend import derive_client


def test_copy_keeps_the_server_and_bounds_the_timeouts() -> None:
    client = redis.Redis(host="10.1.2.3", port=6390, db=4, password="s3cret")
    copy = derive_client(client, 0.2)
    settings = copy.connection_pool.connection_kwargs
    assert (settings["host"], settings["port"], settings["db"]) == ("10.1.2.3", 6390, 4)
    assert settings["password"] == "s3cret"
    assert (settings["socket_timeout"], settings["socket_connect_timeout"]) == (0.2, 0.2)
    assert copy.connection_pool is not client.connection_pool
    assert client.connection_pool.connection_kwargs["socket_timeout"] != 0.2


def test_copy_of_an_asyncio_client_is_an_asyncio_client() -> None:
    copy = derive_client(aioredis.Redis(port=6390), 0.2)
    assert isinstance(copy, aioredis.Redis)
    assert copy.connection_pool.connection_kwargs["socket_timeout"] == 0.2


def test_copy_of_a_sentinel_client_still_asks_the_sentinels() -> None:
    sentinel = Sentinel([("127.0.0.1", 26379)])  # type: ignore[no-untyped-call]
    client = sentinel.master_for("mymaster")  # type: ignore[no-untyped-call]
    copy = derive_client(client, 0.2)
    assert copy.connection_pool.service_name == "mymaster"
    assert copy.connection_pool.sentinel_manager is sentinel
    assert copy.connection_pool.connection_kwargs["socket_timeout"] == 0.2


def test_a_pool_that_cannot_be_copied_is_used_as_it_is(caplog: pytest.LogCaptureFixture) -> None:
    class OddPool(redis.ConnectionPool):
        def __init__(self, flavour: str, **settings: Any) -> None:
            super().__init__(**settings)

    client = redis.Redis(connection_pool=OddPool("odd", port=6390))
    assert derive_client(client, 0.2) is client
    assert "cannot copy OddPool" in caplog.text
