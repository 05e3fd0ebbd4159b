"""One breaker shared by several OS processes, on each topology: a Redis server, a
Redis Cluster (3 primaries, 3 replicas) and a Sentinel set (a master, 2 replicas, 3
sentinels), all real local processes."""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.fleet_worker import Fleet
from tests.support.servers import text_hash
from tests.support.topology import close_sentinel_client

pytestmark = pytest.mark.slow

PROCESSES = 4


def state(client: Any) -> dict[str, str]:
    return text_hash(client, "breaker:{fleet}")


@pytest.fixture(params=["standalone", "cluster", "sentinel"])
def topology(request: pytest.FixtureRequest) -> Iterator[tuple[str, Any]]:
    """The URL the fleet's processes use, and a client of the test's on the same data."""
    if request.param == "standalone":
        yield request.getfixturevalue("redis_url"), request.getfixturevalue("sync_redis")
    elif request.param == "cluster":
        cluster = request.getfixturevalue("local_cluster")
        client = cluster.client()
        yield cluster.url, client
        client.close()
    else:
        sentinels = request.getfixturevalue("sentinel_set")
        client = sentinels.client()
        yield sentinels.url, client
        close_sentinel_client(client)


@pytest.fixture
def store(topology: tuple[str, Any]) -> Any:
    return topology[1]


@pytest.fixture
def fleet_factory(topology: tuple[str, Any]) -> Iterator[type[Fleet]]:
    made: list[Fleet] = []
    url = topology[0]

    class Made(Fleet):
        def __init__(self, n: int, **settings: object) -> None:
            super().__init__(n, url, **settings)
            made.append(self)

    yield Made
    for fleet in made:
        fleet.close()


def test_the_fleet_trips_at_exactly_failure_threshold_failures_in_total(
    fleet_factory: type[Fleet], store: Any
) -> None:
    fleet = fleet_factory(PROCESSES, failure_threshold=8)  # type: ignore[call-arg]
    assert all(fleet.ask_all("subscribed"))
    # 7 failures, spread over four processes: none of them alone is near the threshold.
    for index in (0, 1, 2, 3, 0, 1, 2):
        assert fleet.ask(index, "call", "failure") == "failed"
    assert state(store)["state"] == "closed"
    assert state(store)["failures"] == "7"
    assert fleet.ask(3, "call", "failure") == "failed"
    assert state(store)["state"] == "open"
    # Every process hears of it, and then rejects without calling the upstream.
    assert all(fleet.ask_all("wait_for", "open"))
    assert fleet.ask_all("call", "success") == ["rejected"] * PROCESSES


def test_half_open_admits_exactly_half_open_max_calls_across_processes(
    fleet_factory: type[Fleet], store: Any
) -> None:
    fleet = fleet_factory(PROCESSES, failure_threshold=1, reset_timeout=5.0, half_open_max_calls=2)  # type: ignore[call-arg]
    assert fleet.ask(0, "call", "failure") == "failed"
    fleet.ask_all("advance", 5.0)
    granted = fleet.ask_all("take_trials", 8)
    assert sum(granted) == 2
    assert state(store)["state"] == "half_open"
    assert store.zcard("breaker:{fleet}:leases") == 2


def test_a_thousand_concurrent_outcomes_lose_no_update(
    fleet_factory: type[Fleet], store: Any
) -> None:
    fleet = fleet_factory(PROCESSES, failure_threshold=1_000_000)  # type: ignore[call-arg]
    # 4 processes x 5 threads x 50 outcomes, 20 of each 50 failures: 1000 outcomes.
    counts = fleet.ask_all("burst", 5, 50, 20)
    assert sum(c["failed"] for c in counts) == 400
    assert sum(c["ok"] for c in counts) == 600
    window = {k: int(v) for k, v in text_hash(store, "breaker:{fleet}:window").items()}
    assert sum(v for k, v in window.items() if k.endswith(":c")) == 1000
    assert sum(v for k, v in window.items() if k.endswith(":f")) == 400


def test_every_process_learns_of_a_trip_within_50_ms(
    fleet_factory: type[Fleet], store: Any
) -> None:
    """The process that trips learns it from its reply; the others from the events
    channel (on a Cluster, the breaker's own, in its shard). Three trips; the times are
    each process's CLOCK_MONOTONIC, one clock for the whole machine."""
    fleet = fleet_factory(3, failure_threshold=1)  # type: ignore[call-arg]
    assert all(fleet.ask_all("subscribed"))
    worst = []
    for _ in range(3):
        assert fleet.ask(0, "call", "failure") == "failed"
        heard = fleet.ask_all("heard_at", "open")
        assert None not in heard
        worst.append(max(heard[1:]) - heard[0])
        fleet.ask_all("forget", "open")
        fleet.ask(0, "reset")
    print(f"learned in {[round(w * 1000, 1) for w in worst]} ms")
    assert statistics.median(worst) < 0.05
