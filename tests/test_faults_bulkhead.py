"""Faults of the fleet's bulkhead (``max_concurrent``), with real processes: a replica
SIGKILLed while its workers hold leases, and Redis SIGKILLed under load.

Two replicas of two workers (``fleetbreaker serve``) on a redis-server of the test's
own, in front of a real HTTP upstream that counts the requests it is answering at
once; twelve client threads keep more calls coming than the limit lets through, for
a bounded time. A thread samples the upstream's own count of requests in flight.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from bench.rawhttp import read_answer
from tests.support.gateway_process import GatewayProcess, replicas_of
from tests.support.reliability import Reliability, answer_label
from tests.support.servers import RedisServer
from tests.support.upstream import Reply, Upstream

pytestmark = [pytest.mark.slow, pytest.mark.faults]

LIMIT = 4
LEASE_TTL = 1.0
CALL = 0.15  # seconds the upstream takes to answer
CLIENTS_PER_REPLICA = 6


@pytest.fixture
def fleet(
    tmp_path: Path, redis_server: RedisServer, upstream: Upstream
) -> Iterator[list[GatewayProcess]]:
    upstream.plan("/slow", Reply(delay_headers=CALL))
    # backend_timeout: a Redis reply slower than the default 0.25 s (seen in CI under the
    # suite's load) sends a process to its local share, which by design may go over the
    # limit (the Redis-killed test's bound); the kill of a replica is the subject here.
    # A killed Redis refuses at once, whatever the timeout.
    config = f"""
        [defaults.retry]
        attempts = 1
        [defaults.breaker]
        backend_timeout = 2.0
        [upstreams.api]
        url = "{upstream.url}"
        max_concurrent = {{ limit = {LIMIT}, lease_ttl = {LEASE_TTL} }}
        """
    with replicas_of(tmp_path, redis_server, config, workers=2, prefixes=[(), ()]) as replicas:
        yield replicas


@dataclass
class Load:
    """Client threads on each replica, and a sampler of the upstream's requests in
    flight, until ``stop``; every answer is kept with the time it came."""

    replicas: list[GatewayProcess]
    upstream: Upstream
    answers: list[tuple[float, int, str]] = field(default_factory=list)  # (t, replica, label)
    samples: list[tuple[float, int]] = field(default_factory=list)  # (t, in flight)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for index in range(len(self.replicas)):
            for _ in range(CLIENTS_PER_REPLICA):
                thread = threading.Thread(target=self._client, args=(index,), daemon=True)
                self._threads.append(thread)
        self._threads.append(threading.Thread(target=self._sample, daemon=True))
        for thread in self._threads:
            thread.start()

    def _client(self, index: int) -> None:
        url = f"{self.replicas[index].url}/proxy/api/slow"
        # A connection per request: a kept-alive one stays with the worker that accepted
        # it, and on a loaded machine one worker can accept all six (seen in CI: three
        # of the four processes ever took a lease).
        with httpx.Client(timeout=10, headers={"connection": "close"}) as client:
            for _ in range(2_000):  # bounded, whatever the timing
                if self._stop.is_set():
                    return
                try:
                    response = client.get(url)
                except httpx.TransportError:
                    self.answers.append((time.monotonic(), index, "connection error"))
                    return  # its replica is gone
                answer = answer_label(response.status_code, response.content)
                self.answers.append((time.monotonic(), index, answer))
                if answer != "200":
                    time.sleep(0.01)  # a refusal comes back in a millisecond: pace it

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.samples.append((time.monotonic(), self.upstream.in_flight))

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def most_in_flight(self, start: float, end: float = float("inf")) -> int:
        return max((n for t, n in self.samples if start <= t < end), default=0)


def _leases_of(redis_server: RedisServer, replica: GatewayProcess) -> int:
    """Leases held now by the workers of ``replica`` (lease ids start host:pid:)."""
    client = redis_server.client()
    try:
        leases: list[bytes] = client.zrange("breaker:{api}:slots", 0, -1)  # type: ignore[assignment]
        pids = _worker_pids(replica)
        return sum(int(lease.decode().split(":")[1]) in pids for lease in leases)
    finally:
        client.close()


def _worker_pids(replica: GatewayProcess) -> set[int]:
    assert replica.process is not None
    group = os.getpgid(replica.process.pid)
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == group:
                    pids.add(int(entry))
            except ProcessLookupError:
                continue
    return pids


def test_a_killed_replicas_leases_come_back_within_their_ttl_and_never_overshoot(
    fleet: list[GatewayProcess],
    redis_server: RedisServer,
    upstream: Upstream,
    reliability: Reliability,
) -> None:
    doomed = fleet[0]
    load = Load(fleet, upstream)
    load.start()
    try:
        deadline = time.monotonic() + 10
        held = 0
        while time.monotonic() < deadline:  # until the doomed replica holds leases
            held = _leases_of(redis_server, doomed)
            if held >= 2 and time.monotonic() - load.samples[0][0] > 1.0:
                break
            time.sleep(0.005)
        assert doomed.process is not None
        os.killpg(doomed.process.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        time.sleep(LEASE_TTL + 2.0)
    finally:
        load.stop()
    recovered_from = killed_at + LEASE_TTL + 0.5
    after = [label for t, index, label in load.answers if index == 1 and t >= recovered_from]
    assert held >= 2, "the doomed replica held leases when it was killed"
    assert load.most_in_flight(0) <= LIMIT  # never above the limit, at any time
    assert load.most_in_flight(recovered_from) >= LIMIT - 1  # the survivor fills it again
    assert "200" in after
    assert {label for _, index, label in load.answers if index == 1} <= {
        "200",
        "503 bulkhead_full",
    }
    reliability.record(
        "test_faults_bulkhead::replica_killed",
        f"SIGKILL of a replica (2 workers) holding {held} of the {LIMIT} leases of "
        f"`max_concurrent` (lease_ttl {LEASE_TTL:g} s), under load from 12 clients on 2 "
        f"replicas x 2 workers (upstream answers in {CALL:g} s)",
        answers=[label for _, _, label in load.answers],
        lost="the requests in flight on the killed replica (their connections reset)",
        recovery=(
            f"upstream in flight at most {load.most_in_flight(0)} of {LIMIT} the whole run; "
            f"{load.most_in_flight(recovered_from)} again from {LEASE_TTL + 0.5:g} s after "
            "the kill"
        ),
    )


def test_redis_killed_each_process_takes_its_share_and_no_500(
    fleet: list[GatewayProcess],
    redis_server: RedisServer,
    upstream: Upstream,
    reliability: Reliability,
) -> None:
    load = Load(fleet, upstream)
    load.start()
    try:
        client = redis_server.client()
        deadline = time.monotonic() + 10
        processes = 0
        while time.monotonic() < deadline:  # until every worker has taken a lease
            processes = int(client.zcard("breaker:{api}:slots:procs"))
            if processes == 4:
                break
            time.sleep(0.02)
        client.close()
        # A process learns how many there are from its own calls to Redis: one that
        # last asked before the fourth came would count fewer, and take more.
        time.sleep(1.0)
        redis_server.kill()
        killed_at = time.monotonic()
        time.sleep(2.5)
    finally:
        load.stop()
    shares = processes * max(1, LIMIT // processes)
    # The calls under way at the kill have ended (each takes CALL at the upstream).
    settled = killed_at + 0.5
    labels = [label for _, _, label in load.answers]
    assert processes == 4
    assert load.most_in_flight(settled) <= shares
    # Until the calls Redis let through have ended, a process holding none of them
    # takes its share at once: the limit and the shares, at most, for that long.
    assert load.most_in_flight(killed_at, settled) <= LIMIT + shares
    assert not [label for label in labels if label.startswith("500")]
    assert "200" in [label for t, _, label in load.answers if t >= settled]
    reliability.record(
        "test_faults_bulkhead::redis_killed",
        f"Redis SIGKILLed under load, `max_concurrent = {LIMIT}`, 2 replicas x 2 workers, "
        "12 clients",
        answers=labels,
        lost="nothing: not one 500; each process took at most its share of the limit",
        recovery=(
            f"upstream in flight at most {load.most_in_flight(settled)} (the sum of the "
            f"shares: {shares}) from 0.5 s after the kill; "
            f"{load.most_in_flight(killed_at, settled)} while the calls under way at the kill "
            f"ended (bound: the limit plus the shares, {LIMIT + shares})"
        ),
    )


CANCEL_REQUESTS = 10_000
CANCEL_CLIENTS = 40
CANCEL_SHARE = 0.10


async def _cancelling_clients(port: int, rng: random.Random) -> list[str]:
    """``CANCEL_REQUESTS`` requests from ``CANCEL_CLIENTS`` clients, each on a kept-alive
    connection; ``CANCEL_SHARE`` of them dropped by the client (the connection aborted,
    then a new one) while the upstream is still answering (2-15 ms into its 20). One
    label per request."""
    labels: list[str] = []
    request = b"GET /proxy/api/slow HTTP/1.1\r\nhost: gateway\r\n\r\n"
    plan = [rng.random() < CANCEL_SHARE for _ in range(CANCEL_REQUESTS)]
    deadline = time.monotonic() + 120  # bounded in time as well as in count

    async def client(index: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for cancel in plan[index::CANCEL_CLIENTS]:
            if time.monotonic() > deadline:
                break
            writer.write(request)
            if cancel:
                await asyncio.sleep(rng.uniform(0.002, 0.015))
                writer.transport.abort()  # gone mid-flight, as a killed client is
                labels.append("cancelled by the client mid-flight")
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            answer = await read_answer(reader)
            labels.append(answer_label(answer.status, answer.body))
        writer.close()

    await asyncio.gather(*(client(index) for index in range(CANCEL_CLIENTS)))
    return labels


def test_requests_cancelled_mid_flight_leave_no_lease(
    tmp_path: Path, redis_server: RedisServer, upstream: Upstream, reliability: Reliability
) -> None:
    upstream.plan("/slow", Reply(delay_headers=0.02))
    # A TTL far past the run: only a lease given back is gone, none by expiring.
    config = f"""
        [defaults.retry]
        attempts = 1
        [upstreams.api]
        url = "{upstream.url}"
        max_concurrent = {{ limit = 50, lease_ttl = 60 }}
        """
    with replicas_of(tmp_path, redis_server, config, workers=2) as [gateway]:
        labels = asyncio.run(_cancelling_clients(gateway.port, random.Random(28)))
        ended = time.monotonic()
        left = _leases_left_after(redis_server, ended)
        settled_in = time.monotonic() - ended
    cancelled = labels.count("cancelled by the client mid-flight")
    # With one attempt, each 200 reached the upstream once, and a refusal never did:
    # the rest of the upstream's hits are dropped requests, holding a lease when dropped.
    dropped_at_upstream = len(upstream.hits_on("/slow")) - labels.count("200")
    assert len(labels) == CANCEL_REQUESTS
    assert dropped_at_upstream >= cancelled // 4
    assert 800 <= cancelled <= 1200
    # A dropped request's upstream call goes on to its end, holding its lease, while
    # its client already asks again: a refusal now and then is the limit at work.
    assert set(labels) <= {"200", "503 bulkhead_full", "cancelled by the client mid-flight"}
    assert labels.count("200") >= 0.95 * (CANCEL_REQUESTS - cancelled)
    # Every lease was given back, none expired: a give that failed (a Redis reply
    # slower than backend_timeout) goes again with the next give or renewal.
    assert left == 0, f"{left} lease(s) left {settled_in:.1f} s after the last request"
    reliability.record(
        "test_faults_bulkhead::cancelled_mid_flight",
        f"{CANCEL_REQUESTS} requests from {CANCEL_CLIENTS} clients through a replica of 2 "
        f"workers with `max_concurrent = 50` (lease_ttl 60 s), {cancelled} of them dropped "
        f"by the client (connection aborted), {dropped_at_upstream} of those while the "
        "upstream was answering them",
        answers=labels,
        lost="only the dropped requests, by their clients' choice",
        recovery=f"0 leases left {settled_in:.1f} s after the last request (none could expire yet)",
    )


def _leases_left_after(redis_server: RedisServer, ended: float) -> int:
    """The leases still in Redis once every give has come, bounded by the 60 s TTL:
    0 at once, unless a give failed at the very end; that one goes again with the next
    renewal (every 15 s)."""
    client = redis_server.client()
    try:
        while True:
            left = int(client.zcard("breaker:{api}:slots"))
            if left == 0 or time.monotonic() - ended > 25:
                return left
            time.sleep(0.2)
    finally:
        client.close()
