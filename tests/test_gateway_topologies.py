"""The gateway and its CLI on every topology ``BREAKER_REDIS_URL`` names: a server, a
Redis Cluster (``redis+cluster://``) and a Sentinel set (``redis+sentinel://``).

- A URL that names no Redis refuses to start, in one line naming the setting.
- ``/readyz`` (with the admin token) names the topology and what the gateway sees of
  it: the server, the master the sentinels name, or the Cluster's primaries and the
  slots they serve; a Redis that cannot answer is a JSON degraded (200) or
  unavailable (503), never a 500.
- The admin API and the CLI (``status``, ``reset``, ``open``, ``watch``) act on, and
  hear, the breakers of a Cluster and of a Sentinel set.

The topologies are real local processes (``tests/topology_fixtures.py``); a test that
kills a node takes a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import Response

from app import ConfigError
from app.cli import main
from app.cli.exits import EXIT_UNREACHABLE, EXIT_USAGE
from app.localfleet.fleet import Fleet
from app.localfleet.services import FleetError, fleetbreaker_command
from breaker import (
    BackendUnavailableError,
    BreakerConfig,
    BreakerOperator,
    CircuitBreaker,
    CircuitOpenError,
    RetryPolicy,
)
from breaker.fastapi import Upstream as FastAPIUpstream
from breaker.fastapi import lifespan, resilience_of
from tests.support.gateway import ADMIN, AUTH, gateway_client, gateway_config
from tests.support.lanes import HARNESS_BACKEND_TIMEOUT
from tests.support.ports import free_port
from tests.support.servers import RedisServer
from tests.support.topology import LocalCluster, SentinelSet, close_topology_client
from tests.support.upstream import Reply, Upstream
from tests.test_round_trips import fail

_TIMEOUT = 60
_POLL_FOR = 30.0  # a bound on every wait for a topology or a process to catch up


def run(scenario: Any) -> None:
    asyncio.run(scenario())


def environ(**values: str) -> dict[str, str]:
    """A command's whole environment: these, PATH, and PYTHONPATH if set (a checkout
    that is not the installed one puts itself there for its processes)."""
    kept = {key: os.environ[key] for key in ("PYTHONPATH",) if key in os.environ}
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **kept, **values}


# -- URLs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://:pw@redis.internal:6380/2",
        "unix:///run/redis.sock",
        "redis+cluster://10.0.0.1:7000,10.0.0.2:7001",
        "rediss+cluster://user:pw@10.0.0.1:7000",
        "redis+sentinel://10.0.0.1:26379,10.0.0.2/fleet",
        "rediss+sentinel://:pw@10.0.0.1/fleet/3",
    ],
)
def test_every_url_form_is_a_valid_breaker_redis_url(tmp_path: Path, url: str) -> None:
    assert gateway_config(tmp_path, redis_url=url).redis_url == url


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("127.0.0.1:6379", "must be a URL with a scheme"),
        ("mysql://127.0.0.1", "unknown scheme 'mysql'"),
        ("redis+cluster://h:7000/0", "a cluster URL names its nodes only"),
        ("redis+cluster://h:7000,h:70000", "port must be a number from 1 to 65535"),
        ("redis+sentinel://:secret@h:26379", "a sentinel URL ends /<master name>[/<db>]"),
        ("redis+sentinel://h/fleet/zero", "db must be a number, got 'zero'"),
    ],
)
def test_a_bad_redis_url_is_one_line_naming_the_setting(
    tmp_path: Path, url: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        gateway_config(tmp_path, redis_url=url)
    assert str(refused.value).startswith(f"BREAKER_REDIS_URL: {problem}")
    assert "\n" not in str(refused.value)
    assert "secret" not in str(refused.value)


@pytest.mark.slow  # a process
def test_serve_refuses_a_bad_cluster_url_with_one_line_and_exit_2() -> None:
    result = subprocess.run(
        [*fleetbreaker_command(), "serve", "--port", str(free_port()), "--admin-port", "1"],
        env=environ(BREAKER_REDIS_URL="redis+cluster://h:7000/3"),
        capture_output=True,
        text=True,
        timeout=_TIMEOUT,
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "fleetbreaker: invalid configuration: BREAKER_REDIS_URL: "
        "a cluster URL names its nodes only (no db, no query)\n"
    )


def test_the_cli_refuses_a_bad_url_naming_where_it_came_from(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["status", "--redis-url", "redis+cluster://h:x"]) == EXIT_USAGE
    assert capsys.readouterr().err == (
        "fleetbreaker: --redis-url: port must be a number from 1 to 65535, got 'x'\n"
    )
    monkeypatch.setenv("BREAKER_REDIS_URL", "redis+sentinel://h")
    assert main(["status"]) == EXIT_USAGE
    assert capsys.readouterr().err == (
        "fleetbreaker: BREAKER_REDIS_URL: a sentinel URL ends /<master name>[/<db>]\n"
    )


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("redis+cluster://127.0.0.1:{port}", "Redis Cluster cannot be connected"),
        ("redis+sentinel://:secret@127.0.0.1:{port}/fleet", "No master found for 'fleet'"),
    ],
    ids=["cluster", "sentinel"],
)
def test_the_cli_says_an_unreachable_cluster_or_sentinel_set_in_one_line_exit_1(
    capsys: pytest.CaptureFixture[str], url: str, said: str
) -> None:
    assert main(["status", "--redis-url", url.format(port=free_port())]) == EXIT_UNREACHABLE
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("fleetbreaker: cannot reach Redis at redis+")
    assert said in line
    assert "secret" not in line


def test_fleet_takes_its_own_cluster_or_the_url_never_both() -> None:
    with pytest.raises(FleetError, match=r"^--redis cluster starts a Redis of its own"):
        Fleet(redis="cluster", redis_url="redis://127.0.0.1:6379/0")
    with pytest.raises(FleetError, match=r"^--redis must be one of standalone, cluster"):
        Fleet(redis="memcached")


# -- /readyz ----------------------------------------------------------------------------


def _readyz(url: str, toml: str, tmp_path: Path) -> httpx.Response:
    config = gateway_config(tmp_path, toml, redis_url=url)
    answers: list[httpx.Response] = []

    async def scenario() -> None:
        async with gateway_client(config) as client:
            answers.append(await client.get(f"{ADMIN}/readyz", headers=AUTH))

    run(scenario)
    return answers[0]


# A roomy backend_timeout: /readyz asks Redis within it, and beside the full parallel
# suite the default 0.25 s once expired on a healthy server (a test of what readyz
# says, not of how fast).
FAIL_CLOSED = f"""
[defaults.breaker]
on_backend_error = "fail_closed"
backend_timeout = {HARNESS_BACKEND_TIMEOUT}
[upstreams.api]
url = "http://127.0.0.1:9"
"""
FAIL_OPEN = FAIL_CLOSED.replace("fail_closed", "fail_open")


@pytest.mark.parametrize(
    ("url", "seen"),
    [
        (
            "redis+cluster://127.0.0.1:{port}",
            {"primaries": [], "slots_served": 0, "all_slots_served": False},
        ),
        (
            "redis+sentinel://127.0.0.1:{port}/fleet",
            {"master_name": "fleet", "master": None, "sentinels": ["127.0.0.1:{port}"]},
        ),
    ],
    ids=["cluster", "sentinel"],
)
@pytest.mark.parametrize(
    ("toml", "status", "answer"),
    [(FAIL_CLOSED, 503, "unavailable"), (FAIL_OPEN, 200, "degraded")],
    ids=["fail_closed", "fail_open"],
)
def test_readyz_on_a_topology_that_cannot_answer_is_json_never_a_500(
    tmp_path: Path, url: str, seen: dict[str, Any], toml: str, status: int, answer: str
) -> None:
    port = free_port()
    response = _readyz(url.format(port=port), toml, tmp_path)
    body = response.json()
    assert (response.status_code, body["status"]) == (status, answer)
    assert body["topology"] == url.split(":")[0].removeprefix("redis+")
    expected = {
        k: [s.format(port=port) for s in v] if k == "sentinels" else v for k, v in seen.items()
    }
    assert body["redis"] == expected
    assert body["detail"]


def test_readyz_names_a_standalone_server(tmp_path: Path, redis_server: RedisServer) -> None:
    response = _readyz(redis_server.url, FAIL_OPEN, tmp_path)
    assert response.json() == {
        "status": "ready",
        "backend": "redis",
        "topology": "standalone",
        "redis": {"server": f"127.0.0.1:{redis_server.port}"},
    }


@pytest.mark.slow
def test_readyz_names_the_cluster_its_primaries_and_the_slots_they_serve(
    tmp_path: Path, local_cluster: LocalCluster
) -> None:
    response = _readyz(local_cluster.url, FAIL_OPEN, tmp_path)
    body = response.json()
    assert (response.status_code, body["status"], body["topology"]) == (200, "ready", "cluster")
    primaries = body["redis"]["primaries"]
    assert len(primaries) == 3
    assert sum(primary["slots"] for primary in primaries) == 16384
    assert all(primary["answers"] for primary in primaries)
    assert {primary["address"] for primary in primaries} == {
        f"127.0.0.1:{local_cluster.primary_for(slot).port}" for slot in (0, 8000, 16383)
    }
    assert (body["redis"]["slots_served"], body["redis"]["all_slots_served"]) == (16384, True)


@pytest.mark.slow
def test_readyz_names_the_master_the_sentinels_name(
    tmp_path: Path, sentinel_set: SentinelSet
) -> None:
    response = _readyz(sentinel_set.url, FAIL_OPEN, tmp_path)
    assert response.json() == {
        "status": "ready",
        "backend": "redis",
        "topology": "sentinel",
        "redis": {
            "master_name": "fleet",
            "master": f"127.0.0.1:{sentinel_set.master().port}",
            "sentinels": [f"127.0.0.1:{port}" for _, port in sentinel_set.sentinels],
        },
    }


def _names_on_every_primary(cluster: LocalCluster) -> dict[int, str]:
    """An upstream name whose breaker lives on each primary: primary port -> name."""
    names: dict[int, str] = {}
    for number in range(200):
        name = f"api{number}"
        names.setdefault(cluster.primary_for(f"breaker:{{{name}}}").port, name)
        if len(names) == 3:
            return names
    raise AssertionError("no name found for every primary")


async def _poll_readyz(client: httpx.AsyncClient, until: str) -> httpx.Response:
    deadline = time.monotonic() + _POLL_FOR
    while True:
        response = await client.get(f"{ADMIN}/readyz", headers=AUTH)
        if response.json()["status"] == until or time.monotonic() > deadline:
            return response
        await asyncio.sleep(0.1)


@pytest.mark.slow
def test_readyz_on_a_cluster_names_the_breakers_a_dead_primary_leaves_unserved(
    tmp_path: Path, fresh_cluster: LocalCluster
) -> None:
    names = _names_on_every_primary(fresh_cluster)
    upstreams = "".join(f'[upstreams.{n}]\nurl = "http://127.0.0.1:9"\n' for n in names.values())
    config = gateway_config(tmp_path, upstreams, redis_url=fresh_cluster.url)
    victim = fresh_cluster.node_at(next(iter(names)))
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        async with gateway_client(config) as client:
            seen["before"] = (await _poll_readyz(client, "ready")).json()  # all followed
            fresh_cluster.kill(victim)
            seen["dead"] = (await client.get(f"{ADMIN}/readyz", headers=AUTH)).json()
            seen["replaced_after"] = await asyncio.to_thread(
                fresh_cluster.wait_new_primary, f"breaker:{{{names[victim.port]}}}", victim
            )
            seen["after"] = (await _poll_readyz(client, "ready")).json()

    run(scenario)
    assert seen["before"]["status"] == "ready"
    dead = seen["dead"]
    assert (dead["status"], dead["backend"]) == ("degraded", "fallback")
    assert dead["breakers_unserved"] == [names[victim.port]]  # the other two are served
    silent = [p for p in dead["redis"]["primaries"] if not p["answers"]]
    assert [p["address"] for p in silent] == [f"127.0.0.1:{victim.port}"]
    assert dead["redis"]["slots_served"] == 16384 - silent[0]["slots"]
    assert dead["detail"].startswith(f"{silent[0]['slots']} of 16384 slots unserved")
    after = seen["after"]
    assert (after["status"], after["redis"]["all_slots_served"]) == ("ready", True)
    assert f"127.0.0.1:{victim.port}" not in [p["address"] for p in after["redis"]["primaries"]]


@pytest.mark.slow
def test_readyz_on_a_sentinel_set_is_degraded_until_a_new_master_answers(
    tmp_path: Path, fresh_sentinel_set: SentinelSet
) -> None:
    config = gateway_config(tmp_path, FAIL_OPEN, redis_url=fresh_sentinel_set.url)
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        async with gateway_client(config) as client:
            old = fresh_sentinel_set.kill_master()
            seen["old"] = f"127.0.0.1:{old.port}"
            seen["dead"] = (await client.get(f"{ADMIN}/readyz", headers=AUTH)).json()
            await asyncio.to_thread(fresh_sentinel_set.wait_new_master, old)
            seen["after"] = (await _poll_readyz(client, "ready")).json()

    run(scenario)
    assert seen["dead"]["status"] == "degraded"
    assert seen["dead"]["redis"]["master"] == seen["old"]  # the sentinels still name it
    assert seen["dead"]["detail"].startswith("the master does not answer")
    assert seen["after"]["status"] == "ready"
    assert seen["after"]["redis"]["master"] == f"127.0.0.1:{fresh_sentinel_set.master().port}"
    assert seen["after"]["redis"]["master"] != seen["old"]


# -- the admin API ----------------------------------------------------------------------


@pytest.fixture(params=["cluster", "sentinel"])
def topology(request: pytest.FixtureRequest) -> LocalCluster | SentinelSet:
    """The module's cluster or sentinel set, emptied."""
    fixture = "local_cluster" if request.param == "cluster" else "sentinel_set"
    found: LocalCluster | SentinelSet = request.getfixturevalue(fixture)
    return found


@pytest.fixture
def operator(topology: LocalCluster | SentinelSet) -> Iterator[BreakerOperator]:
    """Reads the breakers in the topology directly, as the CLI does."""
    client = topology.client()
    with BreakerOperator(client) as reader:
        yield reader
    close_topology_client(topology, client)


@pytest.mark.slow
def test_admin_actions_change_the_breaker_in_the_topology_and_reach_another_worker(
    tmp_path: Path,
    topology: LocalCluster | SentinelSet,
    operator: BreakerOperator,
    upstream: Upstream,
) -> None:
    upstream.plan("/p", Reply(200))
    config = gateway_config(tmp_path, redis_url=topology.url, upstreams=f"api={upstream.url}")
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        # Two workers: an action on one reaches the other's requests through the
        # breaker's events (on a Cluster, its own channel in its shard).
        async with gateway_client(config) as one, gateway_client(config) as other:
            assert (await other.get("/proxy/api/p")).status_code == 200
            for action in ("open", "disable", "reset"):
                answer = await one.post(f"{ADMIN}/admin/breakers/api/{action}", headers=AUTH)
                seen[action] = (answer.json()["state"], operator.snapshot("api").state)
                if action == "open":
                    seen["other"] = await _until_rejected(other)
            listing = await one.get(f"{ADMIN}/admin/breakers", headers=AUTH)
            seen["listing"] = [
                (b["name"], b["state"], b["backend"]) for b in listing.json()["breakers"]
            ]

    run(scenario)
    assert seen["open"] == ("forced_open", "forced_open")
    assert seen["other"] == "503 circuit_open"
    assert seen["disable"] == ("disabled", "disabled")
    assert seen["reset"] == ("closed", "closed")
    assert seen["listing"] == [("api", "closed", "redis")]


async def _until_rejected(client: httpx.AsyncClient) -> str:
    deadline = time.monotonic() + 5.0
    while True:
        answer = await client.get("/proxy/api/p")
        if answer.status_code == 503 or time.monotonic() > deadline:
            return f"{answer.status_code} {answer.json().get('error')}"
        await asyncio.sleep(0.05)


# -- the CLI ----------------------------------------------------------------------------


def cli(*args: str, **values: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*fleetbreaker_command(), *args],
        env=environ(**values),
        capture_output=True,
        text=True,
        timeout=_TIMEOUT,
    )


@pytest.fixture
def library_client(topology: LocalCluster | SentinelSet) -> Iterator[Any]:
    """A sync client of the topology, for breakers made by the test."""
    client = topology.client()
    yield client
    close_topology_client(topology, client)


@pytest.mark.slow
def test_status_and_reset_on_a_cluster_and_a_sentinel_set(
    topology: LocalCluster | SentinelSet, library_client: Any
) -> None:
    names = ["alpha", "beta", "gamma", "delta"]  # on more than one shard of a Cluster
    for name in names:
        cb = CircuitBreaker(name, redis=library_client, failure_threshold=1)
        fail(cb)
        cb.close()

    status = cli("status", "--redis-url", topology.url)
    reset = cli("reset", "gamma", BREAKER_REDIS_URL=topology.url)
    after = cli("status", BREAKER_REDIS_URL=topology.url)

    assert status.returncode == 0, status.stderr
    rows = [line.split()[:2] for line in status.stdout.splitlines()[1:]]
    assert rows == [[name, "open"] for name in sorted(names)]  # found on every primary
    assert (reset.returncode, reset.stdout) == (0, "gamma: closed\n")
    states = dict(line.split()[:2] for line in after.stdout.splitlines()[1:])
    assert states == {"alpha": "open", "beta": "open", "delta": "open", "gamma": "closed"}


class Watcher:
    """``fleetbreaker watch`` as a process: its lines, read as they come."""

    def __init__(self, url: str) -> None:
        self.process = subprocess.Popen(
            [*fleetbreaker_command(), "watch", "--redis-url", url],
            env=environ(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.out = ""
        self.err = ""

    def read(self) -> None:
        """What each stream holds now, without waiting for more."""
        for name, stream in (("out", self.process.stdout), ("err", self.process.stderr)):
            assert stream is not None
            while select.select([stream], [], [], 0)[0]:
                chunk = os.read(stream.fileno(), 65536)
                if not chunk:
                    break
                setattr(self, name, getattr(self, name) + chunk.decode(errors="replace"))

    def wait_for(self, text: str, *, in_err: bool = False, act: Any = None) -> None:
        """Until ``text`` is printed (``act()`` is called between reads), bounded."""
        deadline = time.monotonic() + _POLL_FOR
        while True:
            self.read()
            if text in (self.err if in_err else self.out):
                return
            assert self.process.poll() is None, (self.out, self.err)
            assert time.monotonic() < deadline, (text, self.out, self.err)
            if act is not None:
                act()
            time.sleep(0.1)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(_TIMEOUT)
        finally:
            self.process.kill()
            self.process.wait(_TIMEOUT)


@pytest.mark.slow
def test_watch_hears_trips_on_a_cluster_and_a_sentinel_set(
    topology: LocalCluster | SentinelSet, library_client: Any
) -> None:
    early = CircuitBreaker("early", redis=library_client, failure_threshold=1)
    early.reset()  # in Redis before watch starts
    watcher = Watcher(topology.url)
    try:
        watcher.wait_for("watching", in_err=True)
        if isinstance(topology, LocalCluster):
            watcher.wait_for("following early", in_err=True)
        fail(early)
        watcher.wait_for("early: closed -> open (failure_threshold)")
        # A breaker that appears later is heard too (on a Cluster, once a scan finds
        # it): trip it again and again until watch prints it.
        late = CircuitBreaker("late", redis=library_client, failure_threshold=1)

        def trip_late() -> None:
            late.reset()
            fail(late)

        watcher.wait_for("late: closed -> open (failure_threshold)", act=trip_late)
        late.close()
        assert watcher.stop() == 0
    finally:
        early.close()
        watcher.process.kill()
        watcher.process.wait(_TIMEOUT)


@pytest.fixture(params=["cluster", "sentinel"])
def fresh_topology(request: pytest.FixtureRequest) -> LocalCluster | SentinelSet:
    """A cluster or a sentinel set of the test's own, free to kill."""
    fixture = "fresh_cluster" if request.param == "cluster" else "fresh_sentinel_set"
    found: LocalCluster | SentinelSet = request.getfixturevalue(fixture)
    return found


@pytest.mark.slow
def test_watch_subscribes_again_after_a_failover_and_hears_the_next_trip(
    fresh_topology: LocalCluster | SentinelSet,
) -> None:
    client = fresh_topology.client()
    tripper = CircuitBreaker("after", redis=client, failure_threshold=1)
    tripper.reset()  # in Redis before watch starts
    watcher = Watcher(fresh_topology.url)
    try:
        watcher.wait_for("watching", in_err=True)
        if isinstance(fresh_topology, LocalCluster):
            watcher.wait_for("following after", in_err=True)
            old = fresh_topology.primary_for("breaker:{after}")
            fresh_topology.kill(old)
            fresh_topology.wait_new_primary("breaker:{after}", old)
        else:
            fresh_topology.wait_new_master(fresh_topology.kill_master())
        watcher.wait_for("subscribed again after", in_err=True)

        def trip() -> None:
            # The test's own breaker finds the new primary on its own time: until then
            # its reset raises, and the next round tries again.
            with contextlib.suppress(BackendUnavailableError):
                tripper.reset()
                fail(tripper)

        watcher.wait_for("after: closed -> open (failure_threshold)", act=trip)
        assert "lost Redis (" in watcher.err
        assert watcher.stop() == 0
    finally:
        tripper.close()
        close_topology_client(fresh_topology, client)
        watcher.process.kill()
        watcher.process.wait(_TIMEOUT)


# -- breaker.fastapi's lifespan ------------------------------------------------------------


@pytest.mark.slow
def test_the_fastapi_lifespan_takes_every_url_form_the_gateway_takes(
    topology: LocalCluster | SentinelSet, operator: BreakerOperator, upstream: Upstream
) -> None:
    """``lifespan(..., redis_url=<a Cluster's or a Sentinel set's URL>)``: it refused
    them (it made its client with ``Redis.from_url``, the gateway with
    ``redis_from_url``); now both build their clients with the library's one builder."""
    upstream.plan("/stock/1", Reply(500))
    inventory = FastAPIUpstream(
        "inventory",
        upstream.url,
        # 2 s: a loaded machine's slow Cluster reply must not hand the call to the
        # per-process fallback, which has not seen the trip.
        breaker=BreakerConfig(failure_threshold=2, backend_timeout=2.0),
        retry=RetryPolicy(attempts=1),
    )
    app = FastAPI(lifespan=lifespan(inventory, redis_url=topology.url))

    @app.get("/stock/{sku}")
    async def stock(sku: str) -> Response:
        answer = await resilience_of(app).client("inventory").get(f"/stock/{sku}")
        return Response(answer.content, status_code=answer.status_code)

    async def scenario() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
                assert [(await client.get("/stock/1")).status_code for _ in range(2)] == [500] * 2
                with pytest.raises(CircuitOpenError, match="inventory"):
                    await client.get("/stock/1")  # open: no handlers installed here

    run(scenario)
    assert operator.snapshot("inventory").state == "open"  # in the topology's Redis
    assert len(upstream.hits_on("/stock/1")) == 2
