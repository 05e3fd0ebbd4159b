"""Quorum-gated trips on a real fleet: 3 replicas x 2 workers behind nginx, one
breaker per upstream in one Redis, ``failure_threshold = 5``, ``quorum = 2``.

1. One replica's path to the upstream is broken (its configuration points the upstream's
   name at a closed port) under wrk's load: the fleet's breaker never opens, that
   replica's workers isolate themselves after their own 5 failures and stop calling
   (one trial each per ``reset_timeout``), and every request the other replicas
   serve succeeds.
2. Then the upstream fails for everyone: the fleet opens, within a second.

The figures go to RELIABILITY.md (``./scripts/reliability``, which runs the load for
60 s: ``FLEETBREAKER_QUORUM_SECONDS``; the suite runs it for 12 s).
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.config.redisclient import close, sync_client
from app.localfleet.fleet import FLEET_CONFIG, UPSTREAM_NAME, Fleet
from breaker import BreakerOperator, BreakerSnapshot
from tests.support import web
from tests.support.ports import free_port
from tests.support.reliability import Reliability
from tests.topology_fixtures import skip_without

pytestmark = [pytest.mark.slow, pytest.mark.faults]

REPLICAS, WORKERS = 3, 2
THRESHOLD, QUORUM, RESET_TIMEOUT = 5, 2, 15
SECONDS = float(os.environ.get("FLEETBREAKER_QUORUM_SECONDS", "12"))
CONNECTIONS = 12  # wrk's: at most this many requests in flight at once
SCRIPT = Path(__file__).parent / "support" / "by_instance.lua"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    skip_without("redis-server", "nginx", "wrk")
    config = tmp_path / "fleet.toml"
    # The compose fleet's configuration (failure_threshold 5, reset_timeout 15), with a
    # quorum: the upstream itself is named in the environment, as compose names it.
    text = FLEET_CONFIG.read_text()
    assert f"failure_threshold = {THRESHOLD} " in text
    assert f"reset_timeout = {RESET_TIMEOUT} " in text
    config.write_text(
        text.replace("[defaults.breaker]\n", f"[defaults.breaker]\nquorum = {QUORUM}\n")
    )
    output = (tmp_path / "fleet.log").open("w")
    closed = free_port()  # nothing listens there: replica 1's path is broken
    made = Fleet(
        replicas=REPLICAS,
        workers=WORKERS,
        config=config,
        output=output,
        replica_upstreams={1: f"{UPSTREAM_NAME}=http://127.0.0.1:{closed}"},
    )
    try:
        made.start()
        yield made
    finally:
        made.stop()
        output.close()


def _snapshot(fleet: Fleet) -> BreakerSnapshot:
    client = sync_client(fleet.redis_url, timeout=5.0)
    try:
        with BreakerOperator(client) as operator:
            return operator.snapshot(UPSTREAM_NAME)
    finally:
        close(client)


def _load(url: str, seconds: float) -> dict[str, float]:
    """wrk on ``url`` for ``seconds``: the answers by replica and status."""
    wrk = shutil.which("wrk")
    assert wrk is not None
    done = subprocess.run(
        [
            wrk,
            "-t2",
            f"-c{CONNECTIONS}",
            f"-d{seconds:g}s",
            "--timeout",
            "5s",
            "-s",
            str(SCRIPT),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
        env={**os.environ, "BROKEN": "gateway-1/"},
    )
    line = next(line for line in done.stdout.splitlines() if line.startswith("COUNTS "))
    return {key: float(value) for key, value in re.findall(r"(\w+)=([\d.]+)", line)}


def _metric(text: str, name: str) -> float:
    """The sum of a metric's samples in one exposition."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def test_one_broken_replica_isolates_itself_and_the_fleet_never_opens(
    fleet: Fleet, reliability: Reliability
) -> None:
    url = f"{fleet.lb_url}/proxy/{UPSTREAM_NAME}/item"
    assert web.get(url, timeout=10.0).status_code in (200, 502)  # the library loaded
    # While the load runs, the store lists the processes isolated now (each isolation
    # lasts reset_timeout; its trial, on the next request after it, renews it).
    seen: list[dict[str, int]] = []
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        loading = pool.submit(_load, url, SECONDS)
        while not loading.done():
            seen.append(_snapshot(fleet).isolated)
            time.sleep(0.5)
        counts = loading.result()
    rate = counts["requests"] / counts["seconds"]
    snapshot = _snapshot(fleet)
    # The fleet's breaker never moved: no transition at all.
    assert (snapshot.state, snapshot.generation, snapshot.opened_at) == ("closed", 0, 0)
    assert counts["healthy_bad"] == 0, counts  # the other replicas: every answer a 200
    assert counts["healthy_ok"] > 0
    assert counts["unknown"] == 0, counts
    assert counts["broken_ok"] == 0
    # The broken replica's workers stopped calling: their own 5 failures each (a
    # retry included), the calls already in flight when each isolated itself (at most
    # one per other wrk connection: a CI run counted 14 calls in all), then one trial
    # each per reset_timeout, and the warm-up request. Without isolation it would
    # have made one call per request it answered (thousands).
    broken_admin = fleet.admin_urls[0]
    auth = {"Authorization": f"Bearer {fleet.admin_token}"}
    with httpx.Client(timeout=5.0) as client:
        metrics = client.get(f"{broken_admin}/metrics", headers=auth).text
        tried = _metric(metrics, "fleetbreaker_local_origin_failures_total")
        trials = WORKERS * (int(SECONDS // RESET_TIMEOUT) + 1)
        in_flight = WORKERS * (CONNECTIONS - 1)
        assert 0 < tried <= WORKERS * THRESHOLD + in_flight + trials + 1, (tried, counts)
    most = max(seen, key=len)
    assert sorted(p.split("/")[0] for p in most) == ["gateway-1"] * WORKERS, seen
    assert all(p.startswith("gateway-1/") for isolated in seen for p in isolated), seen

    # 2. The upstream fails for everyone: two voters and more see it, the fleet opens.
    hits_before = httpx.get(f"{fleet.upstream_url}/hits", timeout=5.0).json()["hits"]
    web.put(f"{fleet.upstream_url}/mode", json={"mode": "failing"}, timeout=5.0)
    switched = time.monotonic()
    load = subprocess.Popen(
        ["wrk", "-t2", f"-c{CONNECTIONS}", "-d5s", "--timeout", "5s", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    opened_after = None
    try:
        while time.monotonic() - switched < 5.0:
            state = _snapshot(fleet)
            if state.state == "open":
                opened_after = time.monotonic() - switched
                break
            time.sleep(0.05)
    finally:
        load.wait(timeout=30)
    assert opened_after is not None
    assert opened_after < 1.0, opened_after
    opened = _snapshot(fleet)
    reached = httpx.get(f"{fleet.upstream_url}/hits", timeout=5.0).json()["hits"] - hits_before
    print(
        f"quorum fleet: {counts['requests']:.0f} requests in {counts['seconds']:.1f} s "
        f"({rate:.0f}/s); broken replica {counts['broken']:.0f} answers, {tried:.0f} "
        f"connection failures; others {counts['healthy_ok']:.0f} x 200; opened "
        f"{opened_after:.2f} s after the upstream failed, on {opened.failures} counted "
        f"failures by {sorted(opened.streak_voters)}; {reached} requests reached it"
    )
    reliability.record(
        "test_quorum_fleet::broken_replica",
        f"`quorum = {QUORUM}`, {REPLICAS} replicas x {WORKERS} workers behind nginx, "
        f"wrk for {SECONDS:g} s ({rate:.0f} req/s): replica 1's path to the upstream "
        "broken (a closed port)",
        answers=["200"] * int(counts["healthy_ok"])
        + ["503 isolated (replica 1)"] * int(counts["broken"]),
        lost=f"nothing through replicas 2 and 3; replica 1 made {tried:.0f} calls "
        f"(its workers' own {THRESHOLD} failures each, then a trial each per "
        f"{RESET_TIMEOUT} s) and answered the rest 503",
        recovery=f"the fleet's breaker never moved (generation 0); when the upstream "
        f"failed for everyone it opened {opened_after:.2f} s later, on "
        f"{opened.failures} counted failures ({reached} requests reached it)",
    )
