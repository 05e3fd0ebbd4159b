"""Failover under load, on real local topologies: 3 worker processes make about 200
guarded calls a second on one breaker while its Redis fails over.

- (a) a graceful ``CLUSTER FAILOVER`` of the breaker's slot: no call is decided
  without Redis;
- (b) ``kill -9`` of the primary that holds the breaker's slot, and (c) of a Sentinel
  set's master: calls are decided by each process alone (``fail_open``, the
  fallback) only until the new primary answers, plus at most the backend's backoff;
  then counts are exact again, every process's view agrees with Redis, and no view's
  version ever went backwards.

Nothing escapes the breaker as an error in any of them. The figures go to
RELIABILITY.md (``./scripts/reliability``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from breaker import (
    BackendUnavailableError,
    BreakerListener,
    BreakerOperator,
    CircuitBreaker,
    OutcomeEvent,
)
from breaker._store.topology import REDIS_ERRORS
from tests.support.failover_worker import NAME, Log, Workers
from tests.support.reliability import Reliability
from tests.support.topology import LocalCluster, SentinelSet, close_sentinel_client

pytestmark = pytest.mark.slow

WORKERS = 3
RATE = 70.0  # calls per second per worker: about 200 for the three
LOAD_SECONDS = 9.0  # the load's least length (a slow failover makes it longer)
LOAD_CEILING = LOAD_SECONDS + 30.0  # and its most
FAULT_AFTER = 2.0  # seconds of load before the fault
# The backend's backoff is capped at 1 s: after the new primary answers, each
# process asks again within a second (and a call interval).
BACKOFF_BOUND = 1.0 + 1.0 / RATE
#: Seconds of load after that bound: every call decided with Redis again.
AFTER_RECOVERY = 1.0
# A window longer than the whole test: counts compared before and after the load must
# not lose the load's first buckets as they slide out (the default window is 10 s).
SETTINGS: dict[str, Any] = {
    "failure_threshold": 1_000_000,
    "backend_timeout": 0.25,
    "window": 120.0,
}
KEY = f"breaker:{{{NAME}}}"


@dataclass
class Run:
    logs: list[Log]
    fault_at: float
    answered_after: float  # seconds from the fault until the new primary answered
    loaded_for: float  # seconds the load ran

    @property
    def labels(self) -> list[str]:
        return [label for log in self.logs for label, n in log.by.items() for _ in range(n)]

    @property
    def alone_until(self) -> float:
        """Seconds after the fault of the last call decided without Redis (0: none)."""
        ends = [log.last_alone for log in self.logs if log.last_alone is not None]
        return max(ends) - self.fault_at if ends else 0.0

    def alone(self) -> int:
        return sum(n for log in self.logs for label, n in log.by.items() if label != "redis")


@pytest.fixture
def workers_on() -> Iterator[Callable[[str], Workers]]:
    made: list[Workers] = []

    def make(url: str) -> Workers:
        workers = Workers(WORKERS, url, **SETTINGS)
        made.append(workers)
        return workers

    yield make
    for workers in made:
        workers.close()


def under_load(workers: Workers, fault: Callable[[], float]) -> Run:
    """Load on every worker; ``fault`` after FAULT_AFTER s returns the seconds until
    the new primary answered. The load runs LOAD_SECONDS at least, and until
    AFTER_RECOVERY s past the bound on coming back (BACKOFF_BOUND after the new
    primary answered): a slow failover is loaded to its end, so the bound is checked
    and the calls that follow find every process on Redis."""
    workers.ask_all("calls", 5)  # connected, subscribed, the library loaded
    started = time.monotonic()
    workers.send_all("load", LOAD_CEILING, RATE)
    time.sleep(FAULT_AFTER)  # the load runs meanwhile; nothing to wait for
    fault_at = time.monotonic()
    answered_after = fault()
    recovered = fault_at + answered_after + BACKOFF_BOUND + AFTER_RECOVERY
    time.sleep(max(0.0, max(started + LOAD_SECONDS, recovered) - time.monotonic()))
    logs = workers.ask_all("stop_load")
    return Run(logs, fault_at, answered_after, time.monotonic() - started)


def exact_afterwards(workers: Workers, store: Any) -> None:
    """Counts exact again, and every process's view the store's."""
    operator = BreakerOperator(store)
    try:
        before = operator.snapshot(NAME)
        assert workers.ask_all("calls", 20) == [{"redis": 20}] * WORKERS
        after = operator.snapshot(NAME)
        counted = after.window_calls - before.window_calls
        if counted != 20 * WORKERS:  # which server each process reaches, and the store's
            reached = workers.ask_all("server")
            port = store.config_get("port")["port"]
            raise AssertionError(f"{counted} counted; processes reach {reached}, store {port}")
        views = workers.ask_all("view")
        assert views == [("closed", (after.created_at, after.generation))] * WORKERS
    finally:
        operator.close()


def check(run: Run) -> None:
    errors = [error for log in run.logs for error in log.errors]
    assert not errors, errors
    assert all(log.versions_monotone for log in run.logs)
    assert sum(log.calls for log in run.logs) >= 0.9 * WORKERS * RATE * LOAD_SECONDS
    # The load outlasted the failover: each process's last calls were decided with Redis.
    assert [log.last for log in run.logs] == ["redis"] * WORKERS, run.logs


def test_a_graceful_cluster_failover_decides_every_call_with_redis(
    local_cluster: LocalCluster, workers_on: Callable[[str], Workers], reliability: Reliability
) -> None:
    workers = workers_on(local_cluster.url)
    primary = local_cluster.primary_for(KEY)
    replica = local_cluster.replica_of(primary)
    run = under_load(workers, lambda: local_cluster.failover(replica))
    check(run)
    assert run.alone() == 0, run.logs
    assert local_cluster.primary_for(KEY).port == replica.port
    client = local_cluster.client()
    try:
        exact_afterwards(workers, client)
    finally:
        client.close()
    print(f"(a) graceful failover: {run.answered_after:.2f} s; calls {len(run.labels)}")
    reliability.record(
        "test_topology_failover::cluster_graceful",
        "Redis Cluster: `CLUSTER FAILOVER` of the breaker's slot under load "
        f"({WORKERS} processes, {WORKERS * RATE:.0f} calls/s)",
        answers=run.labels,
        lost="nothing",
        recovery=f"roles swapped in {run.answered_after:.2f} s; no call decided without Redis",
    )


def test_a_killed_cluster_primary_costs_decisions_alone_only_until_its_replica_answers(
    fresh_cluster: LocalCluster, workers_on: Callable[[str], Workers], reliability: Reliability
) -> None:
    workers = workers_on(fresh_cluster.url)
    primary = fresh_cluster.primary_for(KEY)

    def kill() -> float:
        fresh_cluster.kill(primary)
        return fresh_cluster.wait_new_primary(KEY, primary)

    run = under_load(workers, kill)
    check(run)
    assert run.alone() > 0, "the load ran through the outage"
    assert run.alone_until <= run.answered_after + BACKOFF_BOUND, (
        run.alone_until,
        run.answered_after,
    )
    client = fresh_cluster.client()
    try:
        exact_afterwards(workers, client)
    finally:
        client.close()
    print(
        f"(b) cluster kill: new primary after {run.answered_after:.2f} s; calls decided "
        f"alone until {run.alone_until:.2f} s; {run.alone()} of {len(run.labels)}"
    )
    reliability.record(
        "test_topology_failover::cluster_kill",
        "Redis Cluster: the primary of the breaker's slot SIGKILLed under load "
        f"({WORKERS} processes, {WORKERS * RATE:.0f} calls/s; node timeout 1 s)",
        answers=run.labels,
        lost="the window's counts of calls decided alone (each process counted them "
        "in its fallback); events published during the outage",
        recovery=f"new primary answered {run.answered_after:.2f} s after the kill; the "
        f"last call decided alone {run.alone_until:.2f} s after it; then counts exact "
        "and every view the store's",
    )


def test_a_killed_sentinel_master_costs_decisions_alone_only_until_the_new_one_answers(
    fresh_sentinel_set: SentinelSet,
    workers_on: Callable[[str], Workers],
    reliability: Reliability,
) -> None:
    workers = workers_on(fresh_sentinel_set.url)

    def kill() -> float:
        old = fresh_sentinel_set.kill_master()
        return fresh_sentinel_set.wait_new_master(old)

    run = under_load(workers, kill)
    check(run)
    assert run.alone() > 0, "the load ran through the outage"
    assert run.alone_until <= run.answered_after + BACKOFF_BOUND, (
        run.alone_until,
        run.answered_after,
    )
    client = fresh_sentinel_set.client()
    try:
        exact_afterwards(workers, client)
    finally:
        close_sentinel_client(client)
    print(
        f"(c) sentinel kill: new master after {run.answered_after:.2f} s; calls decided "
        f"alone until {run.alone_until:.2f} s; {run.alone()} of {len(run.labels)}"
    )
    reliability.record(
        "test_topology_failover::sentinel_kill",
        "Sentinel: the master SIGKILLed under load "
        f"({WORKERS} processes, {WORKERS * RATE:.0f} calls/s; down-after 1 s)",
        answers=run.labels,
        lost="the window's counts of calls decided alone; events published during the outage",
        recovery=f"new master answered {run.answered_after:.2f} s after the kill; the "
        f"last call decided alone {run.alone_until:.2f} s after it; then counts exact "
        "and every view the store's",
    )


def test_a_dead_primary_holds_back_only_the_breakers_of_its_own_shard(
    fresh_cluster: LocalCluster,
) -> None:
    """Two breakers on one client, on two shards: while one's primary is dead (and
    until its replica takes over), the other is still decided with Redis."""
    names = [f"shard-{index}" for index in range(64)]
    doomed = names[0]
    victim = fresh_cluster.primary_for(f"breaker:{{{doomed}}}")
    healthy = next(n for n in names if fresh_cluster.primary_for(f"breaker:{{{n}}}") != victim)
    client = fresh_cluster.client()
    decided: dict[str, list[str]] = {doomed: [], healthy: []}

    class Decided(BreakerListener):
        def __init__(self, into: list[str]) -> None:
            self.into = into

        def outcome(self, event: OutcomeEvent) -> None:
            self.into.append(event.backend)

    breakers = {name: CircuitBreaker(name, redis=client, backend_timeout=0.25) for name in decided}
    try:
        for name, cb in breakers.items():
            cb.add_listener(Decided(decided[name]))
            cb.call(lambda: None)
        fresh_cluster.kill(victim)
        for _ in range(20):  # bounded: a few calls each while the primary is dead
            for cb in breakers.values():
                cb.call(lambda: None)
        assert "fallback" in decided[doomed]
        assert set(decided[healthy]) == {"redis"}
    finally:
        for cb in breakers.values():
            cb.close()
        client.close()


def _user_client(cluster: LocalCluster) -> Any:
    """The application's own ``RedisCluster`` on every node (the dead one included,
    as a deployed configuration lists it). redis-py's own retries make it; should they
    not, that is the application's failure, not the breaker's: asked again."""
    for _ in range(20):
        try:
            return cluster.client()
        except REDIS_ERRORS:
            time.sleep(0.05)
    raise AssertionError("the application's RedisCluster could not be made")


def test_a_breaker_built_while_a_cluster_primary_is_dead_never_raises(
    fresh_cluster: LocalCluster,
) -> None:
    """Breakers built after ``kill -9`` of a primary, before, during and after its
    replica takes over: none raises (a sync ``RedisCluster`` asks a random node for
    COMMAND as it is made, and the breaker's own used to, with no retry); each decides
    on its fallback until Redis answers, then with Redis."""
    primary = fresh_cluster.primary_for(KEY)
    fresh_cluster.kill(primary)
    took_over = threading.Event()

    def wait() -> None:
        fresh_cluster.wait_new_primary(KEY, primary)
        took_over.set()

    waiter = threading.Thread(target=wait)
    waiter.start()
    built: list[tuple[float, str]] = []
    try:
        settled_at = None
        for index in range(400):  # one every 50 ms: at most 20 s, 2 s past the takeover
            if took_over.is_set() and settled_at is None:
                settled_at = time.monotonic()
            if settled_at is not None and time.monotonic() - settled_at > 2.0:
                break
            client = _user_client(fresh_cluster)
            cb = CircuitBreaker(NAME, redis=client, backend_timeout=0.25)  # never raises
            with cb:  # fail_open: its fallback decides while Redis can't
                pass
            built.append((time.monotonic(), "after" if settled_at else f"before {index}"))
            cb.close()
            client.close()
            time.sleep(0.05)
    finally:
        waiter.join()
    assert [when for _, when in built if when == "after"], "no breaker built after the takeover"
    client = _user_client(fresh_cluster)
    cb = CircuitBreaker(NAME, redis=client, backend_timeout=0.25)
    try:
        for _ in range(100):  # bounded: the backoff after a first failure is at most 1 s
            with cb:
                pass
            with contextlib.suppress(BackendUnavailableError):
                if cb.snapshot().window_calls:
                    break
            time.sleep(0.05)
        assert cb.snapshot().window_calls >= 1  # decided with Redis again
    finally:
        cb.close()
        client.close()
