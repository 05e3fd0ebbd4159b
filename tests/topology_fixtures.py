"""Fixtures for real local topologies (tests/support/topology.py) and the fault proxy.

- ``local_cluster``: a 3+3 Redis Cluster shared by the test module, emptied before each
  test (FLUSHALL and FUNCTION FLUSH on the primaries, SCRIPT FLUSH on every node). A
  graceful ``failover()`` is fine on it; a test that kills a node takes
  ``fresh_cluster``, its own (node timeout 1000 ms: a dead primary is replaced in
  2-3 s instead of 3-4).
- ``sentinel_set`` / ``fresh_sentinel_set``: the same for a master, two replicas and
  three sentinels, named "fleet".
- ``fault_proxy``: a ``FaultProxy`` in front of the test's own ``redis_server``.

Outside CI they skip when redis-server or redis-cli is missing; with ``CI=true`` they
fail instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.proxy import FaultProxy
from tests.support.servers import RedisServer
from tests.support.topology import LocalCluster, SentinelSet, TopologyError, require_programs

IN_CI = os.environ.get("CI", "").lower() == "true"

# Measured here (2 cores, other test runs alongside): a killed primary is replaced in
# 2.1-2.7 s at 1000 ms, 3.3 s at the default 2000, and still 1.6-1.8 s at 250-500 ms:
# the replica's 0.5-1 s election delay does not shrink with the timeout, while the
# stall it takes to start a needless failover does. No spurious failover in 4 minutes
# at 250, 500 or 1000 ms.
FAILOVER_NODE_TIMEOUT_MS = 1000


def skip_without(*programs: str) -> None:
    """Skip the test if a program is missing (fail it with ``CI=true``)."""
    try:
        require_programs(*programs)
    except TopologyError as exc:
        if IN_CI:
            pytest.fail(f"CI=true but {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def _module_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    skip_without("redis-server", "redis-cli")
    with LocalCluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture
def local_cluster(_module_cluster: LocalCluster) -> LocalCluster:
    """The module's cluster, empty and settled (fails if an earlier test killed a node)."""
    if dead := [node for node in _module_cluster.nodes if not node.alive]:
        pytest.fail(f"a test killed {dead} of the shared cluster: kill in fresh_cluster")
    _module_cluster.flush()
    return _module_cluster


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A cluster of the test's own, free to kill (node timeout 1000 ms)."""
    skip_without("redis-server", "redis-cli")
    with LocalCluster(tmp_path / "cluster", node_timeout_ms=FAILOVER_NODE_TIMEOUT_MS) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def _module_sentinel_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    skip_without("redis-server")
    with SentinelSet(tmp_path_factory.mktemp("sentinel")) as sentinels:
        yield sentinels


@pytest.fixture
def sentinel_set(_module_sentinel_set: SentinelSet) -> SentinelSet:
    """The module's sentinel set, its master emptied (fails if a test killed a node)."""
    if dead := [node for node in _module_sentinel_set.nodes if not node.alive]:
        pytest.fail(f"a test killed {dead} of the shared set: kill in fresh_sentinel_set")
    _module_sentinel_set.flush()
    return _module_sentinel_set


@pytest.fixture
def fresh_sentinel_set(tmp_path: Path) -> Iterator[SentinelSet]:
    """A sentinel set of the test's own, free to kill."""
    skip_without("redis-server")
    with SentinelSet(tmp_path / "sentinel") as sentinels:
        yield sentinels


@pytest.fixture
def fault_proxy(redis_server: RedisServer) -> Iterator[FaultProxy]:
    """A ``FaultProxy`` in front of the test's own ``redis_server``."""
    with FaultProxy(redis_server.port) as proxy:
        yield proxy
