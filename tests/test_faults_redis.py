"""Redis fails under load, for real: SIGKILLed and restarted empty, its scripts and data
flushed, paused. Two gateway replicas (``fleetbreaker serve --workers 2``) share a
redis-server of the test's own, and threads keep GETs flowing through both.

What is asserted is what the clients saw: no 500 ever, no connection error, each
answer within the bound the policy promises, and the fleet agreeing again afterwards.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from breaker import CircuitBreaker
from tests.support import web
from tests.support.gateway import AUTH, TOKEN, metric
from tests.support.gateway_process import GatewayProcess, replicas_of
from tests.support.load import Answer, Load, burst
from tests.support.reliability import Reliability, answer_label
from tests.support.servers import RedisServer
from tests.support.upstream import Reply, Upstream

pytestmark = [pytest.mark.slow, pytest.mark.faults]

THRESHOLD = 3
BACKEND_TIMEOUT = 0.2  # seconds a Redis command may take before the policy applies
# After Redis returns, a process tries it again when its backoff ends, and its events
# follower resubscribes when its own backoff ends (each at most 5 s: _BACKOFF_MAX in
# breaker._store.backend and breaker._store.events); the fleet must agree again within this.
AGREE_WITHIN = 8.0
_ROUND_REQUESTS = 12


@dataclass
class Fleet:
    redis: RedisServer
    upstream: Upstream
    replicas: list[GatewayProcess]

    def urls(self, path: str) -> list[str]:
        return [f"{replica.url}{path}" for replica in self.replicas]

    def load(self, path: str = "/proxy/api/ok") -> Load:
        # 4 x 25 requests a second, each on a new connection: steady, with the cores
        # left to the gateways under test.
        return Load(
            self.urls(path), clients=4, max_requests=4000, max_seconds=30.0, rate=25.0
        ).start()

    def readiness(self) -> list[tuple[int, str]]:
        answers = [web.get(url, timeout=5) for url in self.urls("/readyz")]
        return [(answer.status_code, answer.json()["status"]) for answer in answers]

    def trips_together(self) -> bool:
        """Whether the fleet, from a reset, trips ``flaky`` after exactly THRESHOLD
        upstream failures counted across both replicas, and then refuses everywhere."""
        try:
            reset = web.post(
                f"{self.replicas[0].admin_url}/admin/breakers/flaky/reset", headers=AUTH, timeout=5
            )
        except httpx.TransportError:
            return False
        if reset.status_code != 200:
            return False
        before = len(self.upstream.hits_on("/fail"))
        labels = [
            answer_label(answer.status_code, answer.content)
            for answer in (
                web.get(self.urls("/proxy/flaky/fail")[n % 2], timeout=5)
                for n in range(_ROUND_REQUESTS)
            )
        ]
        hits = len(self.upstream.hits_on("/fail")) - before
        return hits == THRESHOLD and labels[THRESHOLD:] == ["503 circuit_open"] * (
            _ROUND_REQUESTS - THRESHOLD
        )


def _fleet(workdir: Path, upstream: Upstream, policy: str) -> Iterator[Fleet]:
    server = RedisServer(workdir, extra_args=("--enable-debug-command", "yes"))
    server.start()
    upstream.plan("/ok", Reply(200))
    upstream.plan("/fail", Reply(500))
    config = f"""
        [defaults.breaker]
        failure_threshold = {THRESHOLD}
        reset_timeout = 300
        backend_timeout = {BACKEND_TIMEOUT}
        on_backend_error = "{policy}"
        [defaults.retry]
        attempts = 1
        [upstreams.api]
        url = "{upstream.url}"
        [upstreams.flaky]
        url = "{upstream.url}"
        """
    try:
        with replicas_of(workdir, server, config, workers=2, prefixes=[(), ()]) as replicas:
            yield Fleet(server, upstream, replicas)
    finally:
        server.stop()


@pytest.fixture
def fail_open_fleet(tmp_path: Path, upstream: Upstream) -> Iterator[Fleet]:
    yield from _fleet(tmp_path, upstream, "fail_open")


@pytest.fixture
def fail_closed_fleet(tmp_path: Path, upstream: Upstream) -> Iterator[Fleet]:
    yield from _fleet(tmp_path, upstream, "fail_closed")


def until(condition: Callable[[], bool], within: float) -> float | None:
    """Seconds until ``condition()`` held, polling; None if it never did."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def labels(answers: list[Answer]) -> list[str]:
    return [answer.label for answer in answers]


def test_fail_open_serves_through_a_redis_kill_and_agrees_again_after_it(
    fail_open_fleet: Fleet, reliability: Reliability
) -> None:
    fleet = fail_open_fleet
    assert fleet.trips_together()  # the shared breaker works before the fault
    load = fleet.load()
    load.wait_for(10)
    fleet.redis.kill()
    killed_at = time.monotonic()
    load.wait_for(10, after=killed_at)  # served while Redis is dead
    readiness_down = fleet.readiness()
    # Each worker's fallback breaker still trips on a failing upstream, by itself.
    fallback = [
        answer_label(answer.status_code, answer.content)
        for answer in (web.get(fleet.urls("/proxy/flaky/fail")[n % 2]) for n in range(40))
    ]
    load.wait_for(10)
    fleet.redis.start()  # empty: nothing persisted
    restarted_at = time.monotonic()
    ready_after = until(lambda: fleet.readiness() == [(200, "ready")] * 2, AGREE_WITHIN)
    agree_after = until(fleet.trips_together, AGREE_WITHIN)
    answers = load.stop()

    assert readiness_down == [(200, "degraded")] * 2
    assert "503 circuit_open" in fallback
    # each of the 4 workers trips by itself
    assert fallback.count("500 from the upstream") <= THRESHOLD * 4
    assert set(labels(answers)) == {"200"}, "no 500, no error: the upstream is healthy"
    during = [answer for answer in answers if killed_at <= answer.started < restarted_at]
    assert during, "the load ran while Redis was down"
    assert max(answer.took for answer in during) < BACKEND_TIMEOUT + 1.0
    assert ready_after is not None
    assert agree_after is not None, f"the replicas did not agree within {AGREE_WITHIN} s"
    reliability.record(
        "test_faults_redis::fail_open_kill",
        "Redis SIGKILLed under load, restarted empty (`fail_open`)",
        answers=labels(answers) + fallback,
        lost="nothing; while Redis was down, breakers were per process (fallback), "
        "`/readyz` said degraded",
        recovery=f"ready {ready_after:.2f} s after restart; the fleet trips together "
        f"again after {agree_after:.2f} s (bound {AGREE_WITHIN:g} s); slowest answer "
        f"while down {max(a.took for a in during):.3f} s (before the kill: "
        f"{max(a.took for a in answers if a.started < killed_at):.3f} s)",
    )


def test_fail_closed_answers_503_while_redis_is_dead(
    fail_closed_fleet: Fleet, reliability: Reliability
) -> None:
    fleet = fail_closed_fleet
    load = fleet.load()
    load.wait_for(10)
    fleet.redis.kill()
    killed_at = time.monotonic()
    # Refused while Redis is surely dead (see settled, below).
    load.wait_for(10, after=killed_at + BACKEND_TIMEOUT + 0.3)
    readiness_down = fleet.readiness()
    refused = web.get(fleet.urls("/proxy/api/ok")[0], timeout=5)
    restarting_at = time.monotonic()  # Redis may answer before start() returns
    fleet.redis.start()
    serving_after = until(
        lambda: all(
            web.get(url, timeout=5).status_code == 200 for url in fleet.urls("/proxy/api/ok")
        ),
        AGREE_WITHIN,
    )
    load.wait_for(10)
    answers = load.stop()

    assert readiness_down == [(503, "unavailable")] * 2
    assert refused.status_code == 503
    assert refused.json() == {
        "error": "backend_unavailable",
        "detail": "the breaker's Redis is unreachable and this upstream is fail_closed",
        "upstream": "api",
    }
    assert set(labels(answers)) <= {"200", "503 backend_unavailable"}
    # Answered while Redis was surely down: after the first failures were seen, and
    # before the new redis-server was even spawned.
    settled = [
        a
        for a in answers
        if killed_at + BACKEND_TIMEOUT + 0.3 < a.started and a.started + a.took < restarting_at
    ]
    assert settled
    assert set(labels(settled)) == {"503 backend_unavailable"}
    assert max(answer.took for answer in answers) < BACKEND_TIMEOUT + 1.0
    assert serving_after is not None
    reliability.record(
        "test_faults_redis::fail_closed_kill",
        "Redis SIGKILLed under load, restarted empty (`fail_closed`)",
        answers=labels(answers),
        lost="every request while Redis was down, refused with 503 `backend_unavailable` "
        "(the policy); `/readyz` said unavailable (503)",
        recovery=f"every replica serves {serving_after:.2f} s after restart",
    )


def test_script_flush_and_flushall_under_load_reach_no_client(
    fail_open_fleet: Fleet, reliability: Reliability
) -> None:
    fleet = fail_open_fleet
    client = fleet.redis.client()
    loads_before = fleet.redis.command_calls().get("function|load", 0)
    load = fleet.load()
    for _ in range(2):
        load.wait_for(5)
        client.function_flush()
        client.script_flush()
        load.wait_for(5)
        client.flushall()
    load.wait_for(5)
    answers = load.stop()
    loads_after = fleet.redis.command_calls().get("function|load", 0)
    client.close()
    assert set(labels(answers)) == {"200"}
    assert loads_after > loads_before  # "function not found" was met: the library reloaded
    assert fleet.trips_together()
    reliability.record(
        "test_faults_redis::flush",
        "`FUNCTION FLUSH`, `SCRIPT FLUSH` and `FLUSHALL`, twice each, under load",
        answers=labels(answers),
        lost="nothing; the breaker's counts restart from zero after FLUSHALL",
        recovery=f"at once: {loads_after - loads_before} FUNCTION LOADs on 'function not "
        "found'; the settings sent again where FLUSHALL took them",
    )


@pytest.mark.parametrize(
    ("fault", "pause"),
    [
        ("`CLIENT PAUSE 1500 ALL`", lambda client: client.client_pause(1500, all=True)),
        ("`DEBUG SLEEP 1.5`", lambda client: client.execute_command("DEBUG", "SLEEP", "1.5")),
    ],
    ids=["client-pause", "debug-sleep"],
)
def test_a_slow_redis_delays_requests_by_at_most_the_backend_timeout(
    fail_open_fleet: Fleet,
    reliability: Reliability,
    fault: str,
    pause: Callable[[redis.Redis], object],
) -> None:
    fleet = fail_open_fleet
    load = fleet.load()
    load.wait_for(10)
    client = fleet.redis.client()
    paused_at = time.monotonic()
    pause(client)  # DEBUG SLEEP returns when the server wakes; CLIENT PAUSE at once
    time.sleep(max(0.0, paused_at + 2.0 - time.monotonic()))
    answers = load.stop()
    client.close()
    during = [a for a in answers if paused_at <= a.started < paused_at + 1.5]
    slowest = max(answer.took for answer in answers)
    slowest_before = max(a.took for a in answers if a.started < paused_at)
    assert set(labels(answers)) == {"200"}
    assert during
    assert slowest < BACKEND_TIMEOUT + 1.0, f"a request took {slowest:.3f} s"
    # A process that met the pause tries Redis again when its backoff ends.
    agree_after = until(fleet.trips_together, AGREE_WITHIN)
    assert agree_after is not None, f"the replicas did not agree within {AGREE_WITHIN} s"
    agreed = time.monotonic() - (paused_at + 1.5)
    reliability.record(
        f"test_faults_redis::slow[{fault}]",
        f"Redis slow: {fault} under load (`backend_timeout` {BACKEND_TIMEOUT:g} s)",
        answers=labels(answers),
        lost="nothing; decisions were per process (fallback) until Redis answered",
        recovery=f"slowest answer {slowest:.3f} s (before the pause: {slowest_before:.3f} s); "
        f"{len(during)} answers during the pause; the fleet trips together again "
        f"{agreed:.2f} s after it ended",
    )


def test_a_redis_restarted_between_bursts_costs_no_stale_connection(
    tmp_path: Path, upstream: Upstream, reliability: Reliability
) -> None:
    """Each worker's pool holds the connections a burst opened. Redis is SIGKILLed and
    restarted empty with nothing sent meanwhile, so they are all stale when the next
    burst reaches them: not one may fail a command (and turn its process to the
    fallback breaker and a per-process budget) once Redis answers again."""
    server = RedisServer(tmp_path)
    server.start()
    upstream.plan("/ok", Reply(200))
    upstream.plan("/down", Reply(503))
    config = f"""
        [defaults.breaker]
        failure_threshold = 1000000   # the budget alone holds the retries back
        # A stale connection fails at once, whatever the timeout; a starved CI machine
        # must not pass a slow event loop off as one.
        backend_timeout = 2.0
        [defaults.retry]
        attempts = 3
        backoff = 0
        [upstreams.dead]
        url = "{upstream.url}"
        [upstreams.guarded]
        url = "{upstream.url}"
        breaker = {{ on_backend_error = "fail_closed" }}
        """
    try:
        with replicas_of(tmp_path, server, config, workers=2, prefixes=[(), (), ()]) as fleet:
            urls = [replica.url for replica in fleet]
            opened = burst([f"{url}/proxy/guarded/ok" for url in urls], 60)
            time.sleep(0.5)  # each call is recorded once its body has ended
            server.kill()
            server.start()  # empty; returns once it answers PING
            time.sleep(1.0)
            admin_urls = [replica.admin_url for replica in fleet]
            before = [_backend_errors(url) for url in admin_urls]
            hits_before = len(upstream.hits_on("/down"))
            started = time.monotonic()
            dead = burst([f"{url}/proxy/dead/down" for url in urls], 100)
            took = time.monotonic() - started
            hits = len(upstream.hits_on("/down")) - hits_before
            guarded = burst([f"{url}/proxy/guarded/ok" for url in urls], 60)
            errors = sum(_backend_errors(url) for url in admin_urls) - sum(before)
    finally:
        server.stop()
    assert set(opened) == {200}
    assert dead == [503] * 100
    assert guarded == [200] * 60, "fail_closed refused while Redis answered"
    assert errors == 0
    bound = 100 * 1.2 + 2.5 + 10 * took + 1  # RetryBudget's promise, as in test_budget_fleet
    assert hits <= bound, f"the burst took {took:.2f} s"
    reliability.record(
        "test_faults_redis::stale_connections",
        "Redis SIGKILLed and restarted empty between bursts: every pooled connection "
        "of 3 replicas x 2 workers stale",
        answers=[str(status) for status in opened + dead + guarded],
        lost=f"nothing: {errors} failed Redis commands after the restart; 100 requests "
        f"at once on a dead upstream reached it {hits} times (bound {bound:.0f}: "
        f"ratio, bucket and {took:.2f} s of the floor's rate); a "
        "`fail_closed` upstream answered 60 of 60",
        recovery="at once: the pools replace connections the server closed before sending on them",
    )


def _backend_errors(url: str) -> float:
    return metric(web.get(f"{url}/metrics", timeout=5).text, "fleetbreaker_backend_errors_total")


# -- a Redis shared with another environment, or with a careless neighbour -------------


def _one_gateway_on(
    tmp_path: Path, redis_url: str, upstream: Upstream, name: str
) -> GatewayProcess:
    config = tmp_path / "fleetbreaker.toml"
    config.write_text(
        f"""
        [gateway]
        expose_instance = true
        [upstreams.{name}]
        url = "{upstream.url}"
        breaker = {{ failure_threshold = 2, reset_timeout = 300 }}
        retry = {{ attempts = 1 }}
        """
    )
    process = GatewayProcess(
        tmp_path,
        {
            "BREAKER_REDIS_URL": redis_url,
            "BREAKER_CONFIG": str(config),
            "BREAKER_ADMIN_TOKEN": TOKEN,
        },
        workers=2,
    )
    process.start()
    return process


def _fresh(process: GatewayProcess, path: str) -> httpx.Response:
    """One GET on a new connection, so that either worker may take it."""
    with httpx.Client(base_url=process.url, timeout=10.0) as client:
        return client.get(path)


def _both_workers(process: GatewayProcess, path: str) -> list[httpx.Response]:
    """GETs until both workers answered (bounded): each then holds a closed view."""
    answers: list[httpx.Response] = []
    for _ in range(200):
        answers.append(_fresh(process, path))
        if len({a.headers["x-fleetbreaker-instance"] for a in answers}) == 2:
            return answers
    raise AssertionError("one worker answered all 200 requests")


def test_a_trip_in_another_database_refuses_nothing_here(
    tmp_path: Path, redis_server: RedisServer, upstream: Upstream, reliability: Reliability
) -> None:
    """Production's gateway on db 10; staging trips a breaker of the same name on db 9
    of the same Redis. Pub/sub spans databases: before the channel named the
    database, both workers refused with ``circuit_open`` within milliseconds."""
    process = _one_gateway_on(tmp_path, redis_server.url_of(10), upstream, "pricing")
    try:
        _both_workers(process, "/proxy/pricing/ok")
        staging = CircuitBreaker("pricing", redis=redis_server.client(9), failure_threshold=2)
        for _ in range(2):
            with contextlib.suppress(ConnectionError), staging:
                raise ConnectionError("staging's upstream is down")
        assert staging.snapshot().state == "open"
        staging.close()
        answers = [_fresh(process, "/proxy/pricing/ok") for _ in range(40)]
        assert [a.status_code for a in answers] == [200] * 40
        assert len({a.headers["x-fleetbreaker-instance"] for a in answers}) == 2
        view = web.get(f"{process.admin_url}/admin/breakers/pricing", headers=AUTH).json()
        assert (view["state"], view["generation"]) == ("closed", 0)
    finally:
        process.stop()
    reliability.record(
        "test_faults_redis::trip_in_another_database",
        "one Redis, two environments: a breaker `pricing` trips on db 9 while "
        "production's gateway (2 workers) serves `pricing` from db 10",
        answers=[answer_label(a.status_code, a.content) for a in answers],
        lost="nothing: db 10 never heard db 9's event (the channel names its database), "
        "and its breaker stayed closed at generation 0",
    )


def test_a_forged_event_on_the_channel_refuses_nothing(
    tmp_path: Path, redis_server: RedisServer, upstream: Upstream, reliability: Reliability
) -> None:
    """Anyone who may PUBLISH on the gateway's Redis sends an event saying ``demo`` is
    open until the year 2255, five times a second for 2 s: every worker confirms it with
    Redis (one read per process), which says closed, and serves on. Before, every
    worker answered ``503 retry-after: 9000000000`` and the stored version moved."""
    process = _one_gateway_on(tmp_path, redis_server.url, upstream, "demo")
    publisher = redis_server.client()
    try:
        _both_workers(process, "/proxy/demo/ok")
        before = web.get(f"{process.admin_url}/admin/breakers/demo", headers=AUTH).json()
        created_at = int(publisher.hget("breaker:{demo}", "created_at") or 0)
        forged = {
            "name": "demo",
            "from": "closed",
            "to": "open",
            "at": created_at,
            "reason": "failure_threshold",
            "created_at": created_at,
            "generation": 99,
            "open_until": 9_000_000_000_000,
        }
        answers = []
        for _ in range(10):  # 2 s, bounded
            publisher.publish("breaker:events", json.dumps(forged))
            answers += [_fresh(process, "/proxy/demo/ok") for _ in range(4)]
            time.sleep(0.2)
        assert [a.status_code for a in answers] == [200] * len(answers)
        after = web.get(f"{process.admin_url}/admin/breakers/demo", headers=AUTH).json()
        assert (after["state"], after["generation"]) == ("closed", before["generation"])
        assert "does not hold" in process.log()
    finally:
        publisher.close()
        process.stop()
    reliability.record(
        "test_faults_redis::forged_events",
        "a neighbour PUBLISHes `demo` open until 2255 on `breaker:events`, 5 times a "
        "second for 2 s, while the gateway (2 workers) serves `demo`",
        answers=[answer_label(a.status_code, a.content) for a in answers],
        lost="nothing: each event was confirmed with Redis (one read per process), "
        "which said closed; the stored version did not move; each forgery was logged",
    )
