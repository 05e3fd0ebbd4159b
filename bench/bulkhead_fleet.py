"""``python -m bench.bulkhead_fleet``: the gateway's ``max_concurrent`` at full scale.

Three replicas of ``fleetbreaker serve --workers 2`` on one Redis proxy an upstream
that answers every request in 100 ms and counts the requests it is answering at once
(``bench.slow_upstream``, a process of its own). ``max_concurrent = 20``: the ideal is
20 calls in flight, 200 answers a second. Three hundred clients (raw asyncio
connections, a hundred per replica) ask for ``/proxy/api/slow`` in a closed loop: a
client whose call was let through asks again at once; one refused waits and asks
again. How long it waits is the client model (``--refused``): ``retry-after`` waits
what the 503's ``Retry-After`` says, spread by ±25 % (a well-behaved client), and
``eager`` a random 0.25-0.75 s, under the second the header asks (a client that
ignores it: twice the refusals).

Then a replica whose workers hold 6 or more leases is SIGKILLed, as a crash: its
clients move to the other replicas, its leases expire within ``lease_ttl``. The
upstream's own timeline says how many calls were in flight at every moment.

The figures: answers a second and the upstream's most and usual calls in flight
(steady phase), the refusals' latency at the client, and after the kill the most in
flight and how long until 19 or more were again.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import io
import os
import random
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from app.localfleet.ports import free_port
from app.localfleet.services import FleetError, Service, http_ok, serve_command, wait_ready

from .rawhttp import read_answer
from .server import BenchRedis

LIMIT = 20
LEASE_TTL = 2.0
REPLICAS = 3
WORKERS = 2
CLIENTS = 300
CALL = 0.100  # seconds the upstream takes per request
#: Seconds a refused client waits before asking again, by client model: a share of
#: the 503's Retry-After ("retry-after"), or a fixed spread ("eager").
REFUSED = {"retry-after": None, "eager": (0.25, 0.75)}
_ROOT = Path(__file__).resolve().parent.parent
_REQUEST = b"GET /proxy/api/slow HTTP/1.1\r\nhost: bench\r\n\r\n"

CONFIG = """
[defaults.retry]
attempts = 1
[upstreams.api]
url = "{upstream}"
max_concurrent = {{ limit = {limit}, lease_ttl = {lease_ttl} }}
"""


@dataclass
class Answer:
    started: float
    ended: float
    status: int  # 0: the connection failed


@dataclass
class Phase:
    """What the clients and the upstream saw between ``start`` and ``end``."""

    seconds: float
    answered: int  # 200s
    refused: int  # 503 bulkhead_full
    other: dict[int, int]
    most_in_flight: int
    median_in_flight: float
    refusal_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class Kill:
    leases_held: int  # by the killed replica's workers, at the kill
    most_in_flight_after: int
    back_to_19_after: float | None  # seconds from the kill; None: never
    failed_answers: int  # connections reset on the killed replica


@dataclass
class Fleet:
    refused: str  # the client model
    steady: Phase
    kill: Kill | None


async def _client(
    ports: list[int], alive: list[bool], until: float, answers: list[Answer], refused: str
) -> None:
    """One client: a connection to a live replica, requests in a closed loop."""
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    index = random.randrange(len(ports))
    for _ in range(100_000):  # bounded, whatever the timing
        if time.monotonic() >= until:
            break
        started = time.monotonic()
        try:
            if writer is None:
                live = [i for i, up in enumerate(alive) if up]
                index = index if alive[index] else random.choice(live)
                reader, writer = await asyncio.open_connection("127.0.0.1", ports[index])
            assert reader is not None
            writer.write(_REQUEST)
            answer = await read_answer(reader)
        except (OSError, asyncio.IncompleteReadError, KeyError, ValueError):
            answers.append(Answer(started, time.monotonic(), 0))
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.05)
            continue
        answers.append(Answer(started, time.monotonic(), answer.status))
        if answer.status != 200:
            spread = REFUSED[refused]
            if spread is None:
                retry_after = float(answer.headers.get(b"retry-after", b"1"))
                pause = retry_after * random.uniform(0.75, 1.25)
            else:
                pause = random.uniform(*spread)
            await asyncio.sleep(pause)
    if writer is not None:
        writer.close()


def _load(
    ports: list[int], alive: list[bool], seconds: float, answers: list[Answer], refused: str
) -> None:
    async def main() -> None:
        until = time.monotonic() + seconds
        await asyncio.gather(
            *(_client(ports, alive, until, answers, refused) for _ in range(CLIENTS))
        )

    asyncio.run(main())


def _timeline(upstream_url: str) -> list[tuple[float, int]]:
    stats = httpx.get(f"{upstream_url}/stats", timeout=10).json()
    return [(t, n) for t, n in stats["timeline"]]


def _in_flight(timeline: list[tuple[float, int]], start: float, end: float) -> list[int]:
    """The count at ``start`` and after every change up to ``end``."""
    before = [n for t, n in timeline if t < start]
    return ([before[-1]] if before else [0]) + [n for t, n in timeline if start <= t < end]


def _weighted_median(timeline: list[tuple[float, int]], start: float, end: float) -> float:
    """The median count of calls in flight over time (each value weighted by how long
    it lasted) between ``start`` and ``end``."""
    points = [(start, _in_flight(timeline, start, start)[0])]
    points += [(t, n) for t, n in timeline if start <= t < end]
    spans: dict[int, float] = {}
    for (t, n), (t_next, _) in zip(points, [*points[1:], (end, 0)], strict=True):
        spans[n] = spans.get(n, 0.0) + (t_next - t)
    total, seen = sum(spans.values()), 0.0
    for n in sorted(spans):
        seen += spans[n]
        if seen >= total / 2:
            return float(n)
    return 0.0


def _phase(
    answers: list[Answer], timeline: list[tuple[float, int]], start: float, end: float
) -> Phase:
    window = [a for a in answers if start <= a.ended < end]
    refusals = sorted((a.ended - a.started) * 1e3 for a in window if a.status == 503)
    other: dict[int, int] = {}
    for a in window:
        if a.status not in (200, 503):
            other[a.status] = other.get(a.status, 0) + 1

    def pct(share: float) -> float:
        return refusals[min(len(refusals) - 1, int(share * len(refusals)))] if refusals else 0.0

    return Phase(
        seconds=end - start,
        answered=sum(a.status == 200 for a in window),
        refused=len(refusals),
        other=other,
        most_in_flight=max(_in_flight(timeline, start, end)),
        median_in_flight=_weighted_median(timeline, start, end),
        refusal_ms={"p50": pct(0.50), "p99": pct(0.99), "max": refusals[-1] if refusals else 0.0}
        if refusals
        else {},
    )


def _leases_by_session(client: Any, sessions: dict[int, int]) -> dict[int, int]:
    """Leases held now, by replica (lease ids begin host:pid:)."""
    held = dict.fromkeys(sessions.values(), 0)
    for member in client.zrange("breaker:{api}:slots", 0, -1):
        pid = int(member.decode().split(":")[1])
        try:
            session = os.getsid(pid)
        except ProcessLookupError:
            continue
        if session in sessions:
            held[sessions[session]] += 1
    return held


def run(redis_url: str, seconds: float, kill: bool, refused: str = "retry-after") -> Fleet:
    output = io.StringIO()  # the processes' logs, shown only if one fails to start
    lock = threading.Lock()
    with tempfile.TemporaryDirectory(prefix="fleetbreaker-bench-") as folder:
        upstream_port = free_port()
        upstream_url = f"http://127.0.0.1:{upstream_port}"
        config = Path(folder) / "gateway.toml"
        config.write_text(CONFIG.format(upstream=upstream_url, limit=LIMIT, lease_ttl=LEASE_TTL))
        ports = [free_port() for _ in range(REPLICAS)]
        services = [
            Service(
                name="upstream",
                argv=[sys.executable, "-m", "bench.slow_upstream", str(upstream_port), str(CALL)],
                environ={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(_ROOT)},
                ready=lambda: http_ok(f"{upstream_url}/stats"),
            )
        ]
        for index, port in enumerate(ports):
            services.append(
                Service(
                    name=f"gateway-{index + 1}",
                    argv=serve_command(port, free_port(), workers=WORKERS, log_level="warning"),
                    environ={
                        "PATH": "/usr/bin:/bin",
                        "BREAKER_REDIS_URL": redis_url,
                        "BREAKER_CONFIG": str(config),
                        "BREAKER_INSTANCE_NAME": f"gateway-{index + 1}",
                    },
                    ready=functools.partial(http_ok, f"http://127.0.0.1:{port}/healthz"),
                )
            )
        client = redis.Redis.from_url(redis_url)
        try:
            for service in services:
                service.start(output, lock)
            try:
                wait_ready(services)
            except FleetError as exc:
                raise RuntimeError(f"bench: {exc}:\n{output.getvalue()}") from None
            gateways = services[1:]
            sessions = {os.getsid(s.process.pid): i for i, s in enumerate(gateways) if s.process}
            alive = [True] * REPLICAS
            answers: list[Answer] = []
            warm, after_kill = 2.0, LEASE_TTL + 2.0
            total = warm + seconds + (after_kill + 5.0 if kill else 0.0)
            load = threading.Thread(
                target=_load, args=(ports, alive, total, answers, refused), daemon=True
            )
            began = time.monotonic()
            load.start()
            time.sleep(warm + seconds)
            steady_end = time.monotonic()
            outcome: Kill | None = None
            if kill:
                held: dict[int, int] = {}
                deadline = time.monotonic() + 5.0
                while time.monotonic() < deadline:  # until a replica holds 6 or more
                    held = _leases_by_session(client, sessions)
                    if max(held.values()) >= 6:
                        break
                    time.sleep(0.002)
                victim = max(held, key=lambda i: held[i])
                alive[victim] = False
                gateways[victim].kill()
                killed_at = time.monotonic()
                time.sleep(after_kill)
                outcome = Kill(
                    leases_held=held[victim],
                    most_in_flight_after=0,
                    back_to_19_after=None,
                    failed_answers=0,
                )
            load.join(total + 30.0)
            if not answers:
                raise RuntimeError("bench: the clients got no answer (see the traceback above)")
            timeline = _timeline(upstream_url)
        finally:
            client.close()
            for service in reversed(services):
                service.stop()
    steady = _phase(answers, timeline, began + warm, steady_end)
    if outcome is not None:
        after = [(t, n) for t, n in timeline if t >= killed_at]
        outcome.most_in_flight_after = max(_in_flight(timeline, killed_at, killed_at + after_kill))
        outcome.back_to_19_after = next((t - killed_at for t, n in after if n >= 19), None)
        outcome.failed_answers = sum(a.status == 0 and a.ended >= killed_at for a in answers)
    return Fleet(refused=refused, steady=steady, kill=outcome)


def render(fleet: Fleet) -> list[str]:
    steady = fleet.steady
    lines = [
        f"| {REPLICAS} replicas x {WORKERS} workers, `max_concurrent = {LIMIT}`, "
        f"{CLIENTS} clients ({fleet.refused}), upstream {CALL * 1e3:.0f} ms | measured | target |",
        "|---|---:|---:|",
        f"| answers a second (ideal {LIMIT / CALL:.0f}) | {steady.answered / steady.seconds:.0f} "
        f"| ≥ {0.9 * LIMIT / CALL:.0f} |",
        f"| upstream's most calls in flight | {steady.most_in_flight} | ≤ {LIMIT} |",
        f"| upstream's calls in flight, median over time | {steady.median_in_flight:.0f} "
        f"| ≥ {LIMIT - 2} reached |",
        f"| refusals (503 bulkhead_full), a second | {steady.refused / steady.seconds:.0f} | |",
    ]
    if steady.refusal_ms:
        ms = steady.refusal_ms
        lines.append(
            f"| a refusal's latency at the client, p50 / p99 / max (ms) | "
            f"{ms['p50']:.1f} / {ms['p99']:.1f} / {ms['max']:.1f} | ≤ 5 |"
        )
    if steady.other:
        lines.append(f"| other answers | {steady.other} | none |")
    if fleet.kill is not None:
        kill = fleet.kill
        back = "never" if kill.back_to_19_after is None else f"{kill.back_to_19_after:.2f} s"
        lines += [
            f"| SIGKILL of a replica holding {kill.leases_held} leases: most in flight after "
            f"| {kill.most_in_flight_after} | ≤ {LIMIT} |",
            f"| ... back to ≥ 19 in flight after | {back} | ≤ {LEASE_TTL + 0.5:g} s |",
            f"| ... requests cut on the killed replica | {kill.failed_answers} | |",
        ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bulkhead_fleet", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="of steady load")
    parser.add_argument("--no-kill", action="store_true", help="skip the replica kill")
    parser.add_argument("--refused", choices=sorted(REFUSED), default="retry-after")
    options = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with BenchRedis() as bench:
        fleet = run(bench.url, options.seconds, kill=not options.no_kill, refused=options.refused)
    print("\n".join(render(fleet)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
