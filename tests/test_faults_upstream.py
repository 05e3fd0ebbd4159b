"""A broken upstream, for real: refused connections, resets mid-body, headers that never
come, trickling bodies, replies that are not HTTP, and a body far larger than memory
should hold. Each gets a defined answer and the breaker counts the right outcome.

The gateway is ``fleetbreaker serve`` as a process on a redis-server of the test's
own; the upstream is ``FaultyUpstream`` (raw sockets). The breaker's count is read
through the admin API, as an operator would.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import web
from tests.support.faulty import FaultyUpstream
from tests.support.gateway import AUTH
from tests.support.gateway_process import GatewayProcess, gateway_with_redis
from tests.support.ports import free_port
from tests.support.reliability import Reliability, answer_label

# One gateway per module fixture: its tests run on one worker, in turn.
pytestmark = [pytest.mark.slow, pytest.mark.faults, pytest.mark.xdist_group("faults_upstream")]

PER_TRY = 0.5  # seconds: the per-try timeout, so that "headers never come" ends soon
BODY_TIMEOUT = 1.0  # seconds a body may stream after its headers
HUGE_MIB = 256


def _gateway(
    tmp_path_factory: pytest.TempPathFactory,
    faulty: FaultyUpstream,
    body_timeout: float,
    per_try: float = PER_TRY,
) -> Iterator[GatewayProcess]:
    config = f"""
        [client]
        body_timeout = {body_timeout}
        [defaults.breaker]
        failure_threshold = 100
        reset_timeout = 300
        [defaults.retry]
        attempts = 1
        per_try_timeout = {per_try}
        [upstreams.broken]
        url = "{faulty.url}"
        [upstreams.refused]
        url = "http://127.0.0.1:{free_port()}"
        """
    with gateway_with_redis(tmp_path_factory.mktemp("faults-upstream"), config) as process:
        yield process


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, faulty: FaultyUpstream
) -> Iterator[GatewayProcess]:
    yield from _gateway(tmp_path_factory, faulty, BODY_TIMEOUT)


@pytest.fixture(scope="module")
def roomy_gateway(
    tmp_path_factory: pytest.TempPathFactory, faulty: FaultyUpstream
) -> Iterator[GatewayProcess]:
    """A gateway whose timeouts leave a huge body the time it needs, and its first
    request too (a loaded machine took longer than PER_TRY to answer it: a 504)."""
    yield from _gateway(tmp_path_factory, faulty, 120.0, per_try=10.0)


def failures(gateway: GatewayProcess, name: str) -> int:
    answer = web.get(f"{gateway.admin_url}/admin/breakers/{name}", headers=AUTH, timeout=5)
    answer.raise_for_status()
    count: int = answer.json()["failures"]
    return count


def reset(gateway: GatewayProcess, name: str) -> None:
    web.post(
        f"{gateway.admin_url}/admin/breakers/{name}/reset", headers=AUTH, timeout=5
    ).raise_for_status()


@pytest.mark.parametrize(
    ("fault", "upstream", "path", "status", "error"),
    [
        ("connection refused", "refused", "/x", 502, "upstream_unavailable"),
        ("headers never come (per-try timeout)", "broken", "/silent", 504, "upstream_timeout"),
        ("reply is not HTTP", "broken", "/garbage", 502, "upstream_unavailable"),
    ],
)
def test_an_upstream_that_gives_no_response_is_a_json_error_and_a_failure(
    gateway: GatewayProcess,
    reliability: Reliability,
    fault: str,
    upstream: str,
    path: str,
    status: int,
    error: str,
) -> None:
    reset(gateway, upstream)
    started = time.monotonic()
    answer = web.get(f"{gateway.url}/proxy/{upstream}{path}", timeout=10)
    took = time.monotonic() - started
    assert (answer.status_code, answer.json()["error"]) == (status, error)
    assert answer.json()["upstream"] == upstream
    assert failures(gateway, upstream) == 1
    assert took < PER_TRY + 2.0  # bounded by the per-try timeout, whatever the fault
    reliability.record(
        "test_faults_upstream::no_response",
        f"Upstream: {fault}",
        answers=[answer_label(answer.status_code, answer.content)],
        lost="nothing (no response to lose); breaker: 1 failure",
        recovery=f"answered in {took:.2f} s",
    )


def broken_bodies(gateway: GatewayProcess) -> float:
    """``fleetbreaker_bodies_broken_total`` of upstream ``broken``, all errors."""
    metrics = web.get(f"{gateway.admin_url}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("fleetbreaker_bodies_broken_total{") and 'upstream="broken"' in line
    )


def _cut_short(gateway: GatewayProcess, path: str) -> tuple[int, int, str, float]:
    """GET ``path`` through the gateway: the status, the bytes received, how the body
    ended, and how long it took."""
    received = 0
    started = time.monotonic()
    with web.stream("GET", f"{gateway.url}/proxy/broken{path}", timeout=10) as answer:
        try:
            for chunk in answer.iter_raw():
                received += len(chunk)
            ending = "complete"
        except httpx.RemoteProtocolError:
            ending = "cut"
    return answer.status_code, received, ending, time.monotonic() - started


@pytest.mark.parametrize(
    ("fault", "path", "bound"),
    [
        ("reset mid-body", "/reset", PER_TRY + 2.0),
        (f"body trickles (body_timeout {BODY_TIMEOUT:g} s)", "/trickle", BODY_TIMEOUT + 2.0),
    ],
)
def test_a_body_that_breaks_off_cuts_the_client_response_and_counts_a_failure(
    gateway: GatewayProcess, reliability: Reliability, fault: str, path: str, bound: float
) -> None:
    reset(gateway, "broken")
    before = broken_bodies(gateway)
    status, received, ending, took = _cut_short(gateway, path)
    assert (status, ending) == (200, "cut")  # never a clean end of a short body
    assert took < bound
    assert failures(gateway, "broken") == 1
    log = gateway.log()
    assert '"event": "body_broken"' in log
    assert "Traceback" not in log
    assert broken_bodies(gateway) == before + 1
    reliability.record(
        "test_faults_upstream::body_breaks_off",
        f"Upstream: {fault}",
        answers=[f"{status}, cut after {received} B"],
        lost="the rest of that one body; the client sees the connection close early",
        recovery=f"cut after {took:.2f} s; breaker: 1 failure",
    )


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _worker_pid(gateway: GatewayProcess) -> int:
    """uvicorn with --workers 1 serves from the process itself."""
    assert gateway.process is not None
    assert gateway.workers == 1
    return gateway.process.pid


def test_a_huge_body_streams_through_with_flat_memory(
    roomy_gateway: GatewayProcess, reliability: Reliability
) -> None:
    gateway = roomy_gateway
    reset(gateway, "broken")
    pid = _worker_pid(gateway)
    assert web.get(f"{gateway.url}/proxy/broken/ok", timeout=5).status_code == 200  # warm
    before = _rss_kib(pid)
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_kib(pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    received = 0
    started = time.monotonic()
    try:
        with web.stream("GET", f"{gateway.url}/proxy/broken/huge/{HUGE_MIB}", timeout=30) as r:
            status = r.status_code
            for chunk in r.iter_raw(1024 * 1024):
                received += len(chunk)
    finally:
        done.set()
        sampler.join()
    took = time.monotonic() - started
    growth_mib = (peak - before) / 1024
    assert (status, received) == (200, HUGE_MIB * 1024 * 1024)
    assert growth_mib < 32, f"the worker grew by {growth_mib:.1f} MiB"
    assert failures(gateway, "broken") == 0
    reliability.record(
        "test_faults_upstream::huge_body",
        f"Upstream: a {HUGE_MIB} MiB body",
        answers=["200"],
        lost="nothing",
        recovery=f"streamed in {took:.2f} s; worker RSS grew {growth_mib:.1f} MiB",
    )


def test_a_healthy_answer_after_the_faults_is_a_success(gateway: GatewayProcess) -> None:
    reset(gateway, "broken")
    web.get(f"{gateway.url}/proxy/broken/garbage", timeout=5)
    assert failures(gateway, "broken") == 1
    answer = web.get(f"{gateway.url}/proxy/broken/ok", timeout=5)
    assert (answer.status_code, answer.text) == (200, "ok")
    # The success is batched (the gateway's default): it ends the streak in Redis
    # when its worker flushes it, within 50 ms and a poll of its events follower.
    deadline = time.monotonic() + 5.0
    while failures(gateway, "broken") != 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert failures(gateway, "broken") == 0
    assert json.loads(web.get(f"{gateway.url}/readyz", timeout=5).text)["status"] == "ready"
