"""The ground the Cluster and Sentinel tests stand on: real local topologies
(tests/support/topology.py) and the fault proxy (tests/support/proxy.py).

The failover tests print what they measured: ``pytest -rP`` shows it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.localfleet import ports as product_ports
from tests.support import ports
from tests.support.proxy import FaultProxy
from tests.support.servers import RedisServer
from tests.support.topology import (
    LocalCluster,
    SentinelSet,
    TopologyError,
    aclose_sentinel_client,
    close_sentinel_client,
)
from tests.topology_fixtures import skip_without

# A dead primary is marked failed after about one node timeout (1000 ms in
# fresh_cluster), then its replica waits 0.5-1 s and wins an election: 2-3 s measured.
# A lost election is retried 4 s later; the bound allows one.
CLUSTER_FAILOVER_BOUND = 10.0
# Down after 1000 ms, an election, a promotion seen by the next INFO (once a second):
# 2-3 s measured. After a split vote the sentinels wait twice the failover timeout
# (2 x 5 s) before the next election; the bound allows one.
SENTINEL_FAILOVER_BOUND = 20.0

SHARD_KEYS = [f"shard-key-{number}" for number in range(30)]


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- the cluster


@pytest.mark.slow
def test_cluster_serves_keys_from_every_shard(local_cluster: LocalCluster) -> None:
    client = local_cluster.client()
    try:
        for key in SHARD_KEYS:
            client.set(key, key)
    finally:
        client.close()
    primaries = {local_cluster.primary_for(key) for key in SHARD_KEYS}
    assert len(primaries) == 3
    for key in SHARD_KEYS:  # each key lives where primary_for says
        direct = local_cluster.primary_for(key).client()
        assert direct.get(key) == key.encode()
        direct.close()


@pytest.mark.slow
def test_async_cluster_client_reaches_every_shard(local_cluster: LocalCluster) -> None:
    async def scenario() -> list[bytes | str | None]:
        client = local_cluster.async_client()
        try:
            for key in SHARD_KEYS:
                await client.set(key, key)
            return [await client.get(key) for key in SHARD_KEYS]
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == [key.encode() for key in SHARD_KEYS]


@pytest.mark.slow
def test_flush_empties_every_node(local_cluster: LocalCluster) -> None:
    client = local_cluster.client()
    for key in SHARD_KEYS:
        client.set(key, key)
    client.close()
    library = "#!lua name=probe\nredis.register_function('probe', function() return 1 end)"
    primaries = {local_cluster.primary_for(key) for key in SHARD_KEYS}
    for primary in primaries:
        direct = primary.client()
        direct.function_load(library)
        direct.close()
    for node in local_cluster.nodes:
        direct = node.client()
        sha = direct.script_load("return 1")
        direct.close()

    local_cluster.flush()

    left = {}
    for node in local_cluster.nodes:
        direct = node.client()
        left[node.name] = (direct.dbsize(), direct.function_list(), direct.script_exists(sha))
        direct.close()
    assert left == {node.name: (0, [], [False]) for node in local_cluster.nodes}


@pytest.mark.slow
def test_graceful_failover_swaps_primary_and_replica(local_cluster: LocalCluster) -> None:
    old = local_cluster.primary_for("{swap}")
    replica = local_cluster.replica_of(old)

    seconds = local_cluster.failover(replica)

    print(f"graceful failover: {seconds:.2f} s")

    assert local_cluster.primary_for("{swap}") is replica
    assert local_cluster.replica_of(replica) is old


@pytest.mark.slow
def test_killed_primary_is_replaced_by_its_replica_then_rejoins_as_one(
    fresh_cluster: LocalCluster,
) -> None:
    old = fresh_cluster.primary_for("{kill}")
    replica = fresh_cluster.replica_of(old)
    fresh_cluster.kill(old)

    seconds = fresh_cluster.wait_new_primary("{kill}", old)
    print(f"a killed primary replaced in {seconds:.2f} s")
    assert seconds < CLUSTER_FAILOVER_BOUND
    assert fresh_cluster.primary_for("{kill}") is replica

    fresh_cluster.restart(old)  # one cluster for both: each costs 2 s to make
    assert fresh_cluster.replica_of(replica) is old


def test_stop_reaps_every_node_dead_or_alive(tmp_path: Path) -> None:
    skip_without("redis-server")
    cluster = LocalCluster(tmp_path)  # its nodes only: stop() does not care about roles
    for node in cluster.nodes:
        node.start()
    for node in cluster.nodes:
        node.wait_up()
    cluster.kill(cluster.nodes[0])
    pids = cluster.pids

    cluster.stop()

    assert [pid for pid in pids if _running(pid)] == []


def test_failed_start_shows_the_log_and_leaves_no_process(tmp_path: Path) -> None:
    skip_without("redis-server", "redis-cli")
    cluster = LocalCluster(tmp_path)
    taken = socket.create_server(("127.0.0.1", cluster.nodes[3].port))
    try:
        with pytest.raises(TopologyError, match=r"(?s)node-3.*Address already in use"), cluster:
            pass
    finally:
        taken.close()
    assert [pid for pid in cluster.pids if _running(pid)] == []


# --- Sentinel


@pytest.mark.slow
def test_sentinel_client_writes_to_the_master(sentinel_set: SentinelSet) -> None:
    client = sentinel_set.client()
    try:
        client.set("k", "v")
    finally:
        close_sentinel_client(client)
    direct = sentinel_set.master().client()
    assert direct.get("k") == b"v"
    direct.close()


@pytest.mark.slow
def test_async_sentinel_client_writes_to_the_master(sentinel_set: SentinelSet) -> None:
    async def scenario() -> None:
        client = sentinel_set.async_client()
        try:
            await client.set("k", "v")
        finally:
            await aclose_sentinel_client(client)

    asyncio.run(scenario())
    direct = sentinel_set.master().client()
    assert direct.get("k") == b"v"
    direct.close()


@pytest.mark.slow
def test_killed_master_is_replaced_by_a_replica(fresh_sentinel_set: SentinelSet) -> None:
    old = fresh_sentinel_set.kill_master()

    seconds = fresh_sentinel_set.wait_new_master(old)

    print(f"a killed master replaced in {seconds:.2f} s")
    assert seconds < SENTINEL_FAILOVER_BOUND
    assert fresh_sentinel_set.master() in fresh_sentinel_set.servers[1:]


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


def test_free_ports_come_from_below_the_kernels_ephemeral_range() -> None:
    """A port the kernel hands to outgoing connections can be taken by one between the
    check and the server's bind (a Cluster node once failed so: its bus port in use)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [product_ports.free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    if low - 10_000 >= 4096:
        assert all(10_000 <= port < low for port in ports)


def test_two_processes_are_never_handed_the_same_port() -> None:
    """xdist's workers and two fleets draw ports at once: the ledger keeps a port one
    process checked, and has not bound yet, from the other."""
    draw = "from app.localfleet import ports; print(*(ports.free_port() for _ in range(300)))"
    runs = [
        subprocess.Popen([sys.executable, "-c", draw], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    drawn = [set(map(int, run.communicate(timeout=60)[0].split())) for run in runs]
    assert [len(ports) for ports in drawn] == [300] * 3
    assert len(drawn[0] | drawn[1] | drawn[2]) == 900, "a port handed to two processes"


def test_the_tests_and_the_product_draw_ports_from_one_ledger() -> None:
    """A test's servers take ports from ``tests.support.ports``, a fleet's from the
    product: drawn at once, the two never hand out the same port."""
    draws = [
        "from app.localfleet import ports; print(*(ports.free_port() for _ in range(300)))",
        "from tests.support import ports; print(*ports.free_ports(300))",
    ]
    runs = [
        subprocess.Popen([sys.executable, "-c", draw], stdout=subprocess.PIPE, text=True)
        for draw in draws
    ]
    drawn = [set(map(int, run.communicate(timeout=60)[0].split())) for run in runs]
    assert [len(ports) for ports in drawn] == [300, 300]
    assert not drawn[0] & drawn[1], "a port handed to a test's server and to a fleet's"
    held = ports.held_ports()
    assert {str(port) for port in drawn[0] | drawn[1]} <= held.keys()
