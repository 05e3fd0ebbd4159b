"""One breaker shared by several OS processes through a real Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.support.fleet_worker import Fleet
from tests.support.servers import text_hash

pytestmark = pytest.mark.slow

PROCESSES = 4


def state(client: redis.Redis) -> dict[str, str]:
    return text_hash(client, "breaker:{fleet}")


@pytest.fixture
def fleet_factory(redis_url: str, sync_redis: redis.Redis) -> Iterator[type[Fleet]]:
    made: list[Fleet] = []

    class Made(Fleet):
        def __init__(self, n: int, **settings: object) -> None:
            super().__init__(n, redis_url, **settings)
            made.append(self)

    yield Made
    for fleet in made:
        fleet.close()


def test_the_fleet_trips_at_exactly_failure_threshold_failures_in_total(
    fleet_factory: type[Fleet], sync_redis: redis.Redis
) -> None:
    fleet = fleet_factory(PROCESSES, failure_threshold=8)  # type: ignore[call-arg]
    assert all(fleet.ask_all("subscribed"))
    # 7 failures, spread over four processes: none of them alone is near the threshold.
    for index in (0, 1, 2, 3, 0, 1, 2):
        assert fleet.ask(index, "call", "failure") == "failed"
    assert state(sync_redis)["state"] == "closed"
    assert state(sync_redis)["failures"] == "7"
    assert fleet.ask(3, "call", "failure") == "failed"
    assert state(sync_redis)["state"] == "open"
    # Every process hears of it, and then rejects without calling the upstream.
    assert all(fleet.ask_all("wait_for", "open"))
    assert fleet.ask_all("call", "success") == ["rejected"] * PROCESSES


def test_half_open_admits_exactly_half_open_max_calls_across_processes(
    fleet_factory: type[Fleet], sync_redis: redis.Redis
) -> None:
    fleet = fleet_factory(PROCESSES, failure_threshold=1, reset_timeout=5.0, half_open_max_calls=2)  # type: ignore[call-arg]
    assert fleet.ask(0, "call", "failure") == "failed"
    fleet.ask_all("advance", 5.0)
    granted = fleet.ask_all("take_trials", 8)
    assert sum(granted) == 2
    assert state(sync_redis)["state"] == "half_open"
    assert sync_redis.zcard("breaker:{fleet}:leases") == 2


def test_a_thousand_concurrent_outcomes_lose_no_update(
    fleet_factory: type[Fleet], sync_redis: redis.Redis
) -> None:
    fleet = fleet_factory(PROCESSES, failure_threshold=1_000_000)  # type: ignore[call-arg]
    # 4 processes x 5 threads x 50 outcomes, 20 of each 50 failures: 1000 outcomes.
    counts = fleet.ask_all("burst", 5, 50, 20)
    assert sum(c["failed"] for c in counts) == 400
    assert sum(c["ok"] for c in counts) == 600
    window = {k: int(v) for k, v in text_hash(sync_redis, "breaker:{fleet}:window").items()}
    assert sum(v for k, v in window.items() if k.endswith(":c")) == 1000
    assert sum(v for k, v in window.items() if k.endswith(":f")) == 400
