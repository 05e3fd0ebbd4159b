"""The ground the Cluster and Sentinel tests stand on: the fault proxy
(tests/support/proxy.py).
"""

from __future__ import annotations

import socket
import threading

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.proxy import FaultProxy
from tests.support.servers import RedisServer

# --- the fault proxy


def _no_retry(proxy: FaultProxy) -> redis.Redis:
    return redis.Redis(port=proxy.port, retry=Retry(NoBackoff(), 0))


def test_proxy_passes_commands_through(fault_proxy: FaultProxy) -> None:
    client = _no_retry(fault_proxy)
    client.set("k", "v")
    assert client.get("k") == b"v"
    client.close()
    assert fault_proxy.connections == 1


def test_cut_reply_raises_and_the_command_ran_once(
    fault_proxy: FaultProxy, redis_server: RedisServer
) -> None:
    client = _no_retry(fault_proxy)
    fault_proxy.cut_after_request(b"INCR")

    with pytest.raises(redis.ConnectionError):
        client.incr("counter")

    client.close()
    direct = redis_server.client()
    assert direct.get("counter") == b"1"
    direct.close()
    assert fault_proxy.cuts == 1


def test_cut_reply_with_default_retries_runs_the_command_twice(
    fault_proxy: FaultProxy, redis_server: RedisServer
) -> None:
    """The hazard the library must not fall into: redis-py's default retries send a
    command whose reply was lost again, and an INCR counts twice."""
    client = redis.Redis(port=fault_proxy.port)
    fault_proxy.cut_after_request(b"INCR")

    assert client.incr("counter") == 2

    client.close()
    direct = redis_server.client()
    assert direct.get("counter") == b"2"
    direct.close()
    assert fault_proxy.requests_containing(b"INCR") == 2


def test_drop_all_closes_open_connections(fault_proxy: FaultProxy) -> None:
    with socket.create_connection(("127.0.0.1", fault_proxy.port)) as sock:
        sock.sendall(b"PING\r\n")
        assert sock.recv(64) == b"+PONG\r\n"

        fault_proxy.drop_all()

        assert sock.recv(64) == b""


def test_pause_holds_requests_until_resume(fault_proxy: FaultProxy) -> None:
    with socket.create_connection(("127.0.0.1", fault_proxy.port)) as sock:
        fault_proxy.pause()
        sock.sendall(b"PING\r\n")
        sock.settimeout(0.2)  # a negative needs a wait: nothing comes while paused
        with pytest.raises(TimeoutError):
            sock.recv(64)

        fault_proxy.resume()

        sock.settimeout(5)
        assert sock.recv(64) == b"+PONG\r\n"


def test_close_leaves_no_thread(redis_server: RedisServer) -> None:
    proxy = FaultProxy(redis_server.port)
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(b"PING\r\n")
        sock.recv(64)

        proxy.close()

        assert sock.recv(64) == b""
    assert [t.name for t in threading.enumerate() if t.name.startswith("test-proxy-")] == []
