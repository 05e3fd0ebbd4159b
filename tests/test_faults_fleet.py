"""Faults of the fleet itself: a worker SIGKILLed while it holds the half-open lease,
and replicas whose clocks are wrong by an hour and by ten minutes (``faketime``).

Replicas are ``fleetbreaker serve`` processes on a redis-server of the test's own; the
upstream is a real HTTP server that counts what reaches it.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import web
from tests.support.gateway import AUTH
from tests.support.gateway_process import GatewayProcess, replicas_of
from tests.support.reliability import Reliability, answer_label
from tests.support.servers import RedisServer
from tests.support.upstream import Reply, Upstream

pytestmark = [pytest.mark.slow, pytest.mark.faults]

LEASE = 0.5  # seconds a half-open lease lives without being returned
_POLL_FOR = 10.0


@pytest.fixture
def redis_of_the_test(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def label(response: httpx.Response) -> str:
    return answer_label(response.status_code, response.content)


# -- a crashed probe holder ------------------------------------------------------------


@pytest.fixture
def lease_fleet(
    tmp_path: Path, redis_of_the_test: RedisServer, upstream: Upstream
) -> Iterator[list[GatewayProcess]]:
    config = f"""
        [defaults.retry]
        attempts = 1
        per_try_timeout = 30
        [upstreams.api]
        url = "{upstream.url}"
        [upstreams.api.breaker]
        failure_threshold = 1
        reset_timeout = 0.2
        half_open_max_calls = 1
        success_threshold = 1
        half_open_lease = {LEASE}
        """
    with replicas_of(tmp_path, redis_of_the_test, config, prefixes=[(), ()]) as replicas:
        yield replicas


def test_a_probe_holder_killed_mid_call_does_not_wedge_the_breaker(
    lease_fleet: list[GatewayProcess], upstream: Upstream, reliability: Reliability
) -> None:
    holder, survivor = lease_fleet
    # Trip; then the trial call hangs in the upstream; then every call is quick.
    upstream.plan("/p", Reply(500), Reply(200, delay_headers=30.0), Reply(200))
    answers = [label(web.get(f"{holder.url}/proxy/api/p", timeout=5))]
    time.sleep(0.25)  # the configured 0.2 s open time
    probe = threading.Thread(
        target=lambda: answers.append(_sent(f"{holder.url}/proxy/api/p")), daemon=True
    )
    probe.start()
    deadline = time.monotonic() + _POLL_FOR
    while len(upstream.hits_on("/p")) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(upstream.hits_on("/p")) == 2, "the trial call reached the upstream"
    assert holder.process is not None
    os.killpg(holder.process.pid, signal.SIGKILL)  # the worker holding the lease
    killed_at = time.monotonic()
    probe.join(10)

    held = label(web.get(f"{survivor.url}/proxy/api/p", timeout=5))
    recovered_after = None
    while time.monotonic() - killed_at < _POLL_FOR:
        answer = label(web.get(f"{survivor.url}/proxy/api/p", timeout=5))
        answers.append(answer)
        if answer == "200":
            recovered_after = time.monotonic() - killed_at
            break
        time.sleep(0.02)
    view = web.get(f"{survivor.admin_url}/admin/breakers/api", headers=AUTH, timeout=5).json()

    assert held == "503 circuit_open"  # the dead worker's lease still holds the trial
    assert recovered_after is not None, "the next trial never went through"
    assert recovered_after < LEASE + 2.0
    assert view["state"] == "closed"
    assert len(upstream.hits_on("/p")) == 3  # the trip, the lost trial, the new trial
    reliability.record(
        "test_faults_fleet::probe_holder_killed",
        f"Worker SIGKILLed while holding the half-open lease (`half_open_lease` {LEASE:g} s)",
        answers=[*answers, held],
        lost="the trial request on the killed worker (its connection reset)",
        recovery=f"next trial through {recovered_after:.2f} s after the kill; closed",
    )


def _sent(url: str) -> str:
    try:
        return label(web.get(url, timeout=10))
    except httpx.TransportError as exc:
        return f"connection error: {type(exc).__name__}"


# -- skewed clocks -------------------------------------------------------------------

SKEWS = {"no skew": (), "+1 hour": ("+1h",), "-10 minutes": ("-10m",)}
SKEW_THRESHOLD = 5
OPEN_FOR = 1.0  # seconds: short, so that the test sees the breaker reopen


@pytest.fixture
def skewed_fleet(
    tmp_path: Path, redis_of_the_test: RedisServer, upstream: Upstream
) -> Iterator[list[GatewayProcess]]:
    faketime = shutil.which("faketime")
    if faketime is None:
        pytest.fail("faketime is not installed (apt-get install -y faketime)")
    config = f"""
        [defaults.retry]
        attempts = 1
        [upstreams.api]
        url = "{upstream.url}"
        breaker = {{ failure_threshold = {SKEW_THRESHOLD}, reset_timeout = {OPEN_FOR} }}
        """
    prefixes = [(faketime, "-m", "-f", *skew) if skew else () for skew in SKEWS.values()]
    with replicas_of(tmp_path, redis_of_the_test, config, prefixes=prefixes) as replicas:
        yield replicas


def _trip_and_reopen(
    fleet: list[GatewayProcess], upstream: Upstream, tripper: int
) -> tuple[list[str], list[dict[str, Any]], dict[int, float]]:
    """Fail SKEW_THRESHOLD calls spread over the replicas, the last one on ``tripper``;
    then ask the *other* replicas in turn until each has served again. Returns the
    answers, every replica's admin view after the trip, and when each other replica
    served again (seconds after the trip)."""
    hits_before = len(upstream.hits_on("/fail"))
    order = [(tripper - SKEW_THRESHOLD + 1 + n) % 3 for n in range(SKEW_THRESHOLD)]
    answers = [label(web.get(f"{fleet[i].url}/proxy/api/fail", timeout=5)) for i in order]
    tripped_at = time.monotonic()
    assert len(upstream.hits_on("/fail")) - hits_before == SKEW_THRESHOLD  # counted together
    views = [
        web.get(f"{r.admin_url}/admin/breakers/api", headers=AUTH, timeout=5).json() for r in fleet
    ]
    # A replica that read the open time off its own clock would let a trial call in
    # early (+1 h) or keep refusing for ten minutes (-10 min).
    others = [index for index in range(3) if index != tripper]
    served_after: dict[int, float] = {}
    while len(served_after) < 2 and time.monotonic() - tripped_at < OPEN_FOR + _POLL_FOR:
        for index in others:
            if index not in served_after:
                answer = label(web.get(f"{fleet[index].url}/proxy/api/ok", timeout=5))
                answers.append(answer)
                if answer == "200":
                    served_after[index] = time.monotonic() - tripped_at
        time.sleep(0.02)
    return answers, views, served_after


def test_replicas_with_skewed_clocks_trip_together_and_open_for_the_same_time(
    skewed_fleet: list[GatewayProcess], upstream: Upstream, reliability: Reliability
) -> None:
    now = time.time()
    clocks = [
        parsedate_to_datetime(web.get(f"{r.url}/healthz", timeout=5).headers["date"])
        for r in skewed_fleet
    ]
    offsets = [round((clock.timestamp() - now) / 60) for clock in clocks]
    assert offsets == [0, 60, -10], "faketime skews the replicas' own clocks"
    upstream.plan("/fail", Reply(500))
    upstream.plan("/ok", Reply(200))

    answers: list[str] = []
    reopened: list[float] = []
    for tripper in (1, 2):  # the +1 h replica trips it, then the -10 min one
        sent, views, served_after = _trip_and_reopen(skewed_fleet, upstream, tripper)
        answers += sent
        assert sent[:SKEW_THRESHOLD] == ["500 from the upstream"] * SKEW_THRESHOLD
        assert {view["state"] for view in views} == {"open"}
        assert {view["open_until"] for view in views} == {views[0]["open_until"]}
        assert views[0]["open_until"] - views[0]["opened_at"] == OPEN_FOR * 1000
        assert len(served_after) == 2, f"tripped by replica {tripper}: {served_after}"
        assert min(served_after.values()) >= OPEN_FOR - 0.05, "a trial call came too early"
        assert max(served_after.values()) < OPEN_FOR + 1.5, "a replica kept refusing"
        reopened += served_after.values()
    reliability.record(
        "test_faults_fleet::clock_skew",
        "Replicas under `faketime`: one at +1 h, one at -10 min, one true",
        answers=answers,
        lost=f"nothing: tripped after exactly {SKEW_THRESHOLD} failures counted across "
        "the three, twice; the same open_until everywhere",
        recovery=f"open for {OPEN_FOR:g} s: the other replicas served again "
        f"{min(reopened):.2f}-{max(reopened):.2f} s after the trip",
    )
