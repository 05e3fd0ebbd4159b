"""The fleet, end to end: 3 replicas x 2 workers of ``fleetbreaker serve`` behind nginx
(``deploy/nginx.conf``), a real Redis and the demo upstream, started by ``app.localfleet.fleet``
exactly as ``fleetbreaker fleet`` starts them. Every client request goes through nginx.

Which process answered is read from ``X-Fleetbreaker-Instance`` (``gateway-<n>/<pid>``), and
each replica's workers from ``/proc``. The upstream counts what reaches it
(``GET /hits``). Every loop is bounded in count and time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from app.localfleet.fleet import Fleet
from tests.support import web
from tests.support.load import Load
from tests.support.reliability import Reliability, answer_label

# One fleet for the module (a module fixture): its tests run on one worker, in turn.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("fleet_e2e")]

REPLICAS, WORKERS = 3, 2
THRESHOLD = 5
PROBES = 2
_SURVEY_ROUNDS = 20  # rounds of concurrent requests to find every worker: a bound
_SURVEY_WIDTH = 12
_PROBE_HOLD = 30.0  # a bound: the recovery test lets its trial calls go itself
_LOAD_SECONDS = 3.0
_LOAD_CLIENTS = 6

CONFIG = """
[gateway]
expose_instance = true

# Trips and stays open: the trip, inspect and reset properties.
[upstreams.trip]
url = "{upstream}"
breaker = {{ failure_threshold = {threshold}, reset_timeout = 300 }}
retry = {{ attempts = 1 }}

# Open for 50 ms only, so that no test waits for it: recovery under load.
[upstreams.recover]
url = "{upstream}"
retry = {{ attempts = 1 }}
[upstreams.recover.breaker]
failure_threshold = {threshold}
reset_timeout = 0.05
half_open_max_calls = {probes}
success_threshold = {probes}

# Steady traffic while a replica dies.
[upstreams.steady]
url = "{upstream}"
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("fleet")
    config = workdir / "fleet.toml"
    with (workdir / "output.log").open("w") as output:
        fleet = Fleet(
            replicas=REPLICAS, workers=WORKERS, config=config, upstreams="", output=output
        )
        config.write_text(
            CONFIG.format(upstream=fleet.upstream_url, threshold=THRESHOLD, probes=PROBES)
        )
        with fleet:
            yield fleet


@pytest.fixture(autouse=True)
def healthy(fleet: Fleet) -> None:
    set_mode(fleet, "healthy")
    for name in ("trip", "recover", "steady"):
        admin(fleet, 1, "POST", f"/admin/breakers/{name}/reset")


# -- helpers ----------------------------------------------------------------------------


def set_mode(fleet: Fleet, mode: str, delay: float = 0.0) -> None:
    response = web.put(
        f"{fleet.upstream_url}/mode", json={"mode": mode, "delay": delay}, timeout=5.0
    )
    response.raise_for_status()


def hits(fleet: Fleet) -> int:
    count: int = web.get(f"{fleet.upstream_url}/hits", timeout=5.0).json()["hits"]
    return count


def admin(fleet: Fleet, replica: int, method: str, path: str) -> httpx.Response:
    """An admin call sent to one replica's admin listener, as an operator would: it is
    never behind the load balancer."""
    response = web.request(
        method,
        f"{fleet.admin_urls[replica - 1]}{path}",
        headers={"Authorization": f"Bearer {fleet.admin_token}"},
        timeout=10.0,
    )
    response.raise_for_status()
    return response


def through_lb(fleet: Fleet, path: str) -> httpx.Response:
    """One request through nginx, on a connection of its own."""
    with httpx.Client(base_url=fleet.lb_url, timeout=30.0) as client:
        return client.get(path)


def workers_by_replica(fleet: Fleet) -> dict[str, int]:
    """``X-Fleetbreaker-Instance`` value -> replica number, for every worker alive."""
    pids = _spawned_children()
    instances = {}
    for index in range(1, fleet.replicas + 1):
        process = fleet.replica(index).process
        assert process is not None
        for pid in pids.get(process.pid, []):
            instances[f"gateway-{index}/{pid}"] = index
    return instances


def _spawned_children() -> dict[int, list[int]]:
    """parent pid -> pids of its uvicorn workers (multiprocessing spawn children)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" not in cmdline:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(proc.name))
    return children


def survey(fleet: Fleet, path: str) -> dict[str, list[httpx.Response]]:
    """Concurrent rounds through nginx until every worker of every replica has answered
    ``path``; the answers by worker."""
    expected = workers_by_replica(fleet)
    assert len(expected) == fleet.replicas * fleet.workers
    answers: dict[str, list[httpx.Response]] = {}
    with ThreadPoolExecutor(_SURVEY_WIDTH) as pool:
        for _ in range(_SURVEY_ROUNDS):
            for response in pool.map(lambda _: through_lb(fleet, path), range(_SURVEY_WIDTH)):
                # An answer without it came from nginx itself (a 502, say).
                instance = response.headers.get("x-fleetbreaker-instance", "nginx")
                answers.setdefault(instance, []).append(response)
            if set(expected) <= set(answers):
                return answers
    missing = sorted(set(expected) - set(answers))
    raise AssertionError(f"{missing} never answered in {_SURVEY_ROUNDS} rounds")


def trip(fleet: Fleet, name: str) -> list[httpx.Response]:
    """Fail the upstream and send ``THRESHOLD`` requests through nginx, one at a time."""
    set_mode(fleet, "failing")
    return [through_lb(fleet, f"/proxy/{name}/order/{i}") for i in range(THRESHOLD)]


def is_circuit_open(response: httpx.Response) -> bool:
    return (
        response.status_code == 503
        and response.headers.get("x-fleetbreaker-attempts") == "0"
        and response.json()["error"] == "circuit_open"
        and int(response.headers["retry-after"]) >= 1
    )


# -- 1. trip ----------------------------------------------------------------------------


def test_the_fleet_trips_after_exactly_threshold_failures_and_every_worker_rejects(
    fleet: Fleet,
) -> None:
    before = hits(fleet)
    failures = trip(fleet, "trip")

    assert [r.status_code for r in failures] == [503] * THRESHOLD  # the upstream's own
    assert all(r.headers["x-fleetbreaker-attempts"] == "1" for r in failures)
    by_replica = workers_by_replica(fleet)
    replicas = [by_replica[r.headers["x-fleetbreaker-instance"]] for r in failures]
    assert max(replicas.count(i) for i in set(replicas)) < THRESHOLD  # counted together
    assert hits(fleet) - before == THRESHOLD

    answers = survey(fleet, "/proxy/trip/order/next")
    rejected = [r for responses in answers.values() for r in responses]
    assert all(is_circuit_open(r) for r in rejected)
    assert hits(fleet) - before == THRESHOLD  # not one of them reached the upstream


def test_every_worker_of_every_replica_names_itself_apart(fleet: Fleet) -> None:
    answers = survey(fleet, "/healthz")
    instances = set(answers) - {"nginx"}
    assert len(instances) == REPLICAS * WORKERS
    names = [instance.split("/")[0] for instance in instances]
    assert sorted(set(names)) == [f"gateway-{index}" for index in range(1, REPLICAS + 1)]
    assert all(names.count(name) == WORKERS for name in set(names))


# -- 2. inspect -------------------------------------------------------------------------


def test_redis_cli_shows_the_open_state_the_failures_and_the_last_failure(
    fleet: Fleet,
) -> None:
    trip(fleet, "trip")
    port = redis.Redis.from_url(fleet.redis_url).connection_pool.connection_kwargs["port"]
    listing = subprocess.run(
        ["redis-cli", "-p", str(port), "HGETALL", "breaker:{trip}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout.split()
    state = dict(zip(listing[::2], listing[1::2], strict=True))
    redis_now_ms = int(float(_redis_time(fleet)) * 1000)

    assert state["state"] == "open"
    assert int(state["failures"]) == THRESHOLD
    assert 0 <= redis_now_ms - int(state["last_failure_at"]) < 60_000
    assert int(state["open_until"]) > redis_now_ms


def _redis_time(fleet: Fleet) -> str:
    with redis.Redis.from_url(fleet.redis_url) as client:
        seconds, micros = client.time()
    return f"{seconds}.{micros:06d}"


# -- 3. reset ---------------------------------------------------------------------------


def test_a_reset_on_one_replica_lets_the_next_request_through_on_every_replica(
    fleet: Fleet,
) -> None:
    trip(fleet, "trip")
    assert is_circuit_open(through_lb(fleet, "/proxy/trip/order/blocked"))
    set_mode(fleet, "healthy")

    admin(fleet, 1, "POST", "/admin/breakers/trip/reset")
    # Round-robin: the next requests reach each replica in turn; the first one each
    # replica sees must pass.
    by_replica = workers_by_replica(fleet)
    next_ones = [through_lb(fleet, f"/proxy/trip/order/{i}") for i in range(REPLICAS)]
    assert [r.status_code for r in next_ones] == [200] * REPLICAS
    assert {by_replica[r.headers["x-fleetbreaker-instance"]] for r in next_ones} == {1, 2, 3}

    answers = survey(fleet, "/proxy/trip/order/after")  # and every worker
    assert {r.status_code for responses in answers.values() for r in responses} == {200}


# -- 4. recover -------------------------------------------------------------------------


def test_recovery_lets_exactly_half_open_max_calls_probes_through_then_closes(
    fleet: Fleet,
) -> None:
    trip(fleet, "recover")
    assert admin(fleet, 2, "GET", "/admin/breakers/recover").json()["state"] == "open"
    # Healthy again, but the upstream holds every call it gets until the mode changes
    # again: the trial calls stay out while the whole burst asks, however long a
    # loaded machine takes to send it.
    set_mode(fleet, "slow", delay=_PROBE_HOLD)
    before = hits(fleet)

    with ThreadPoolExecutor(_SURVEY_WIDTH * 2) as pool:
        sent = [
            pool.submit(through_lb, fleet, f"/proxy/recover/order/{i}")
            for i in range(_SURVEY_WIDTH * 2)
        ]
        # Every call but the trial calls is refused at once; a third call let through
        # would be held too, and this wait would end at its bound instead.
        deadline = time.monotonic() + _PROBE_HOLD / 2
        while sum(f.done() for f in sent) < len(sent) - PROBES and time.monotonic() < deadline:
            time.sleep(0.05)
        held = len(sent) - sum(f.done() for f in sent)
        set_mode(fleet, "healthy")  # lets the held calls go
        burst = [f.result() for f in sent]

    assert held == PROBES
    probes = [r for r in burst if r.status_code == 200]
    assert len(probes) == PROBES
    assert all(is_circuit_open(r) for r in burst if r.status_code != 200)
    assert hits(fleet) - before == PROBES
    assert admin(fleet, 3, "GET", "/admin/breakers/recover").json()["state"] == "closed"

    answers = survey(fleet, "/proxy/recover/order/after")  # closed for everyone
    assert {r.status_code for responses in answers.values() for r in responses} == {200}


# -- 5. a client's oversized upload ----------------------------------------------------

OVER_LIMIT = 10 * 1024 * 1024 + 1  # one byte over deploy/fleet.toml's max_body_bytes


@pytest.mark.faults
def test_oversized_uploads_get_413_and_no_replica_leaves_the_rotation(
    fleet: Fleet, reliability: Reliability
) -> None:
    big = b"\0" * OVER_LIMIT
    mebibyte = big[: 1 << 20]
    answers = []
    with httpx.Client(base_url=fleet.lb_url, timeout=30.0) as client:
        for _ in range(4):  # a Content-Length, sent whole (no Expect: 100-continue)
            answers.append(client.post("/proxy/steady/body", content=big))
        for _ in range(4):  # chunked: its size is only known once it is over
            answers.append(client.post("/proxy/steady/body", content=iter([mebibyte] * 11)))
    health = survey(fleet, "/healthz")  # every worker of every replica answers

    assert [a.status_code for a in answers] == [413] * 8
    assert {a.json()["error"] for a in answers} == {"body_too_large"}
    assert {r.status_code for responses in health.values() for r in responses} == {200}
    reliability.record(
        "test_fleet_e2e::oversized_uploads",
        "8 uploads of 10 MiB + 1 byte through nginx (4 with a Content-Length, 4 chunked)",
        answers=[answer_label(a.status_code, a.content) for a in answers],
        lost="nothing: nginx refuses them at the gateway's own limit, with its JSON "
        "body; no replica was marked failed",
        recovery=f"at once: every one of the {len(health)} workers answered /healthz "
        "through nginx right after",
    )


# -- 5. lose a replica, or a worker of one -----------------------------------------------


def steady_load(fleet: Fleet) -> Load:
    """_LOAD_CLIENTS clients, each on a kept connection to nginx, GETting steadily."""
    return Load(
        [f"{fleet.lb_url}/proxy/steady/item"],
        clients=_LOAD_CLIENTS,
        max_requests=_LOAD_CLIENTS * 1000,
        max_seconds=_LOAD_SECONDS + 30.0,
        keep_alive=True,
    ).start()


@pytest.mark.faults
def test_killing_a_worker_of_a_replica_under_load_fails_only_requests_in_flight_on_it(
    fleet: Fleet, reliability: Reliability
) -> None:
    set_mode(fleet, "slow", delay=0.02)  # every worker has requests in flight
    replica = fleet.replica(1).process
    assert replica is not None
    before = _spawned_children()[replica.pid]
    victim = before[0]
    load = steady_load(fleet)
    time.sleep(_LOAD_SECONDS / 3)
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    respawned_after = None
    while time.monotonic() - killed_at < _LOAD_SECONDS * 2 / 3 + 10.0:
        alive = _spawned_children().get(replica.pid, [])
        if len(alive) == WORKERS and victim not in alive:
            respawned_after = time.monotonic() - killed_at
            break
        time.sleep(0.05)
    time.sleep(max(0.0, killed_at + _LOAD_SECONDS * 2 / 3 - time.monotonic()))
    sent = load.stop()

    errors = [s for s in sent if s.status != 200]
    after = [s for s in sent if s.started > killed_at]
    in_flight = [s for s in sent if s.started < killed_at < s.ended]
    assert len(after) > 50  # the load went on
    assert all(s.status == 200 for s in after)
    assert all(s.started < killed_at < s.ended for s in errors)
    assert respawned_after is not None, "uvicorn did not replace the killed worker"
    reliability.record(
        "test_fleet_e2e::worker_killed",
        f"SIGKILL of one worker of a replica, under load through nginx "
        f"({REPLICAS} replicas x {WORKERS} workers)",
        answers=[s.label for s in sent],
        lost=f"{len(errors)} of {len(in_flight)} requests in flight (on any worker) "
        "at the kill (nginx sends a failed GET on to another replica)",
        recovery=f"every request after the kill got 200; uvicorn replaced the worker "
        f"in {respawned_after:.2f} s",
    )


@pytest.mark.faults
def test_killing_a_replica_under_load_fails_only_requests_in_flight_on_it(
    fleet: Fleet, reliability: Reliability
) -> None:
    set_mode(fleet, "slow", delay=0.02)  # every replica has requests in flight
    victim = 2
    victim_workers = {i for i, r in workers_by_replica(fleet).items() if r == victim}
    load = steady_load(fleet)
    time.sleep(_LOAD_SECONDS / 3)  # steady load before the kill
    killed_at = time.monotonic()
    fleet.replica(victim).kill()
    time.sleep(_LOAD_SECONDS * 2 / 3)
    sent = load.stop()

    errors = [s for s in sent if s.status != 200]
    after = [s for s in sent if s.started > killed_at]
    in_flight = [s for s in sent if s.started < killed_at < s.ended]
    print(
        f"\nreplica {victim} killed under load: {len(sent)} requests, "
        f"{len(in_flight)} in flight at the kill (on any replica), {len(errors)} errors"
    )
    assert len(after) > 50  # the load went on
    assert all(s.status == 200 for s in after)  # nginx routed around the dead replica
    assert not any(s.instance in victim_workers for s in after)
    # An error can only be a request that was on its way when the replica died.
    assert all(s.started < killed_at < s.ended for s in errors)
    assert len(errors) <= len(in_flight)
    reliability.record(
        "test_fleet_e2e::replica_killed",
        f"SIGKILL of a whole replica ({WORKERS} workers), under load through nginx",
        answers=[s.label for s in sent],
        lost=f"{len(errors)} of {len(in_flight)} requests in flight at the kill",
        recovery="every request after the kill got 200 from the other replicas",
    )


@pytest.mark.parametrize("path", ["/admin/breakers", "/dashboard", "/metrics", "/docs"])
def test_nginx_serves_none_of_the_admin_listeners_routes(fleet: Fleet, path: str) -> None:
    """deploy/nginx.conf reaches the replicas' proxy ports only: the dashboard and the
    admin API must not share an origin with what upstreams serve through /proxy."""
    auth = {"Authorization": f"Bearer {fleet.admin_token}"}
    answer = web.get(f"{fleet.lb_url}{path}", headers=auth, timeout=10.0)
    assert (answer.status_code, answer.json()["error"]) == (404, "not_found")
    alive = [url for index, url in enumerate(fleet.admin_urls, 1) if fleet.replica(index).alive]
    assert alive  # a test above may have killed one replica, never all
    for replica in alive:
        assert web.get(f"{replica}{path}", headers=auth, timeout=10.0).status_code == 200
