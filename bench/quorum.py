"""What a quorum costs Redis: its own µs per closed success and per failure
(``INFO commandstats``, after CONFIG RESETSTAT, on the benchmark's Redis), for breakers
alike but for ``quorum``: 1 (none), 2 (votes on failures), 0.5 (votes, and a heartbeat
every quarter window on successes). Failures are counted on a breaker that never trips
(a threshold no run reaches), so each is the failure path's whole cost. Medians of the
rounds, every case in each round, in one run."""

from __future__ import annotations

import contextlib
import functools
import statistics
from collections.abc import Callable

import redis

from breaker import CircuitBreaker

from .server import BenchRedis

QUORUMS = {"none (1)": 1.0, "2": 2.0, "0.5": 0.5}
#: The issue's targets: a success unchanged within noise, a failure <= 1.3 x.
SUCCESS_NOISE = 1.10
FAILURE_GOAL = 1.3


def _ok() -> None:
    return None


def _down() -> None:
    raise ConnectionError("upstream down")


def _per_call(client: redis.Redis, calls: int, run: Callable[[], object]) -> float:
    client.config_resetstat()
    for _ in range(calls):
        run()
    return float(client.info("commandstats")["cmdstat_fcall"]["usec_per_call"])


def _fail(cb: CircuitBreaker) -> None:
    with contextlib.suppress(ConnectionError):
        cb.call(_down)


def measure(server: BenchRedis, calls: int, rounds: int) -> dict[str, tuple[float, float]]:
    """quorum label -> (µs per closed success, µs per failure), medians of ``rounds``."""
    client = redis.Redis.from_url(server.url)
    breakers = {
        label: CircuitBreaker(
            f"bench-quorum-{index}",
            redis=client,
            quorum=quorum,
            voter=f"bench-{index}",
            failure_threshold=1_000_000_000,
            window=10.0,
        )
        for index, (label, quorum) in enumerate(QUORUMS.items())
    }
    for cb in breakers.values():
        for _ in range(20):
            cb.call(_ok)
            _fail(cb)
    samples: dict[str, tuple[list[float], list[float]]] = {label: ([], []) for label in QUORUMS}
    for _ in range(rounds):
        for label, cb in breakers.items():
            samples[label][0].append(_per_call(client, calls, functools.partial(cb.call, _ok)))
            samples[label][1].append(_per_call(client, calls, functools.partial(_fail, cb)))
    for cb in breakers.values():
        cb.close()
    client.close()
    return {
        label: (statistics.median(success), statistics.median(failure))
        for label, (success, failure) in samples.items()
    }


def section(server: BenchRedis, calls: int, rounds: int) -> list[str]:
    """The report's section, as lines of Markdown."""
    figures = measure(server, calls, rounds)
    base_success, base_failure = figures["none (1)"]
    lines = [
        "## Quorum: Redis's time per call",
        "",
        __doc__.replace("\n", " ").strip() if __doc__ else "",
        "",
        "| quorum | µs per closed success | × none | µs per failure | × none |",
        "|---|---|---|---|---|",
    ]
    for label, (success, failure) in figures.items():
        lines.append(
            f"| {label} | {success:.2f} | {success / base_success:.2f} | "
            f"{failure:.2f} | {failure / base_failure:.2f} |"
        )
    worst_success = max(success / base_success for success, _ in figures.values())
    worst_failure = max(failure / base_failure for _, failure in figures.values())
    lines += [
        "",
        "| target | measured | |",
        "|---|---|---|",
        f"| a closed success unchanged within noise (≤ {SUCCESS_NOISE} ×) | "
        f"{worst_success:.2f} × | **{'met' if worst_success <= SUCCESS_NOISE else 'not met'}** |",
        f"| a failure ≤ {FAILURE_GOAL} × today's | {worst_failure:.2f} × | "
        f"**{'met' if worst_failure <= FAILURE_GOAL else 'not met'}** |",
        "",
    ]
    return lines
