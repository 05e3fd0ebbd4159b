"""The breaker's own Redis client: the caller's settings, bounded timeouts, no retries."""

from __future__ import annotations

from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.sentinel import Sentinel

from breaker._store.topology import CONNECTION_SETTINGS, POOL_OWNED, SET_BY_BREAKER, derive_client


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
    sentinel = Sentinel([("127.0.0.1", 26379)])
    client = sentinel.master_for("mymaster")
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


CLIENTS = {
    "default": lambda: redis.Redis(),
    "url": lambda: redis.Redis.from_url("redis://user:pw@10.0.0.1:6390/3?protocol=2"),
    "unix": lambda: redis.Redis(unix_socket_path="/tmp/redis.sock"),
    "ssl": lambda: redis.Redis(ssl=True, ssl_ca_certs="/etc/ssl/ca.pem"),
    "asyncio": lambda: aioredis.Redis(),
    "asyncio-ssl": lambda: aioredis.Redis.from_url("rediss://10.0.0.1:6390"),
    "sentinel": lambda: Sentinel([("127.0.0.1", 26379)]).master_for("m"),
}


@pytest.mark.parametrize("make", CLIENTS.values(), ids=CLIENTS.keys())
def test_every_pool_setting_of_the_installed_redis_py_is_classified(make: Any) -> None:
    """The copy takes only the settings it knows to be about the connection. A
    redis-py release that adds a setting fails here, and someone decides where it
    goes, instead of the copy silently dropping (or wrongly keeping) it."""
    settings = set(make().connection_pool.connection_kwargs)
    unknown = settings - CONNECTION_SETTINGS - SET_BY_BREAKER - POOL_OWNED
    assert unknown == set()


@pytest.mark.parametrize("make", CLIENTS.values(), ids=CLIENTS.keys())
def test_the_copy_never_retries_and_keeps_no_pool_of_the_callers(make: Any) -> None:
    client = make()
    copy = derive_client(client, 0.2)
    settings = copy.connection_pool.connection_kwargs
    # The copy's pool makes its own of these; none is the caller's pool's.
    for name in set(settings) & POOL_OWNED:
        assert settings[name] is not client.connection_pool.connection_kwargs.get(name)
    assert not {"retry", "retry_on_error"} & set(settings)
    assert not copy.connection_pool.maint_notifications_enabled()
