"""One URL for every topology (``redis_from_url``): what each form builds, and one line
naming the problem otherwise. asyncio clients connect lazily, so nothing here needs a
server; the topology tests use the same URLs on real clusters and Sentinel sets."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel

from breaker import ConfigurationError, redis_from_url


def test_a_server_url_is_redis_from_url() -> None:
    client = redis_from_url("redis://:pw@127.0.0.1:6380/3")
    assert isinstance(client, redis.Redis)
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["port"], kwargs["db"], kwargs["password"]) == (6380, 3, "pw")


def test_a_cluster_url_names_its_nodes() -> None:
    client = redis_from_url("redis+cluster://user:p%40ss@10.0.0.1:7000,10.0.0.2", asyncio=True)
    assert isinstance(client, redis.asyncio.cluster.RedisCluster)
    nodes = sorted(client.nodes_manager.startup_nodes)
    assert nodes == ["10.0.0.1:7000", "10.0.0.2:6379"]
    assert (client.connection_kwargs["username"], client.connection_kwargs["password"]) == (
        "user",
        "p@ss",
    )


def test_a_sentinel_url_names_its_sentinels_master_and_db() -> None:
    client = redis_from_url("redis+sentinel://:pw@h1:26380,h2/fleet/2", asyncio=True)
    assert isinstance(client, redis.asyncio.Redis)
    pool = client.connection_pool
    assert isinstance(pool, redis.asyncio.sentinel.SentinelConnectionPool)
    assert pool.service_name == "fleet"
    sentinels = [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]
    assert [(s["host"], s["port"]) for s in sentinels] == [("h1", 26380), ("h2", 26379)]
    assert sentinels[0]["password"] is None  # sentinels are asked without it
    assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == (2, "pw")


def test_tls_variants_use_tls() -> None:
    cluster = redis_from_url("rediss+cluster://h:7000", asyncio=True)
    assert issubclass(cluster.connection_kwargs["connection_class"], redis.asyncio.SSLConnection)
    sentinel = redis_from_url("rediss+sentinel://h/fleet", asyncio=True)
    assert issubclass(sentinel.connection_pool.connection_class, redis.asyncio.SSLConnection)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("localhost:6379", "must be a URL with a scheme"),
        ("http://h:1", "unknown scheme 'http'"),
        ("redis+cluster://h:7000/0", "names its nodes only"),
        ("redis+cluster://h:notaport", "port must be a number from 1 to 65535, got 'notaport'"),
        ("redis+cluster://:secret@h:0", "got '0'"),
        ("redis+cluster://h1,,h2", "a host is missing"),
        ("redis+sentinel://h1", "ends /<master name>[/<db>]"),
        ("redis+sentinel://h1/fleet/x", "db must be a number, got 'x'"),
        ("redis+sentinel://h1/a/b/c", "ends /<master name>[/<db>]"),
    ],
)
def test_a_bad_url_is_one_line_naming_the_problem(url: str, problem: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        redis_from_url(url, asyncio=True, field="BREAKER_REDIS_URL")
    message = str(raised.value)
    assert message.startswith("BREAKER_REDIS_URL: ")
    assert problem in message
    assert "\n" not in message
    assert "secret" not in message


@pytest.mark.parametrize("asyncio_client", [False, True], ids=["sync", "async"])
def test_a_sentinel_that_fails_is_asked_once_not_retried(asyncio_client: bool) -> None:
    """redis-py retries a sentinel 3 times with backoff by default (about 4 s for each
    dead one); the breaker's backoff asks again instead. A sentinel that hangs up on
    every connection is connected to exactly once per discovery."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.settimeout(0.05)  # a blocked accept() would not see the listener closed
    accepted: list[int] = []
    done = threading.Event()

    def hang_up() -> None:
        while not done.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.append(1)
            connection.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    try:
        client = redis_from_url(f"redis+sentinel://127.0.0.1:{port}/fleet", asyncio=asyncio_client)
        if asyncio_client:

            async def ping() -> None:
                try:
                    await client.ping()
                finally:
                    await client.aclose()

            with pytest.raises(redis.ConnectionError):  # MasterNotFoundError
                asyncio.run(ping())
        else:
            with pytest.raises(redis.ConnectionError):  # MasterNotFoundError
                client.ping()
            client.close()
        assert len(accepted) == 1
    finally:
        done.set()
        thread.join(timeout=5)
        listener.close()
