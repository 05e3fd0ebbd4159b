"""``python -m bench [--quick] [--output BENCHMARKS.md]``: every scenario, for
fleetbreaker and the peers, in one run; prints the report and rewrites the file.

It installs nothing: the peers come from the ``bench`` extra (``pip install -e
'.[bench]'``; ``./scripts/setup`` installs it). It starts its own ``redis-server``.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import bulkhead, calls, fleet, gateway, model, quorum, report, scale
from .peers import PEERS
from .server import BenchRedis


@dataclass(frozen=True)
class Profile:
    calls: int
    probes: int
    overhead_batches: int
    overhead_calls: int
    serialization_repeats: int
    observe: float
    learn_repeats: int
    scale_breakers: int
    scale_live: int
    scale_batches: int
    gateway_seconds: float
    gateway_rounds: int
    model_processes: tuple[int, ...]
    model_seconds: float
    bulkhead_calls: int
    bulkhead_cancel: int
    bulkhead_adaptive: float
    bulkhead_fleet: float


FULL = Profile(
    200,
    3,
    9,
    500,
    3,
    2.5,
    5,
    1000,
    10_000,
    5,
    5.0,
    3,
    model.PROCESSES,
    model.SECONDS,
    5_000,
    100_000,
    30.0,
    10.0,
)
QUICK = Profile(
    100,
    1,
    5,
    200,
    1,
    1.0,
    1,
    1000,
    1_000,
    2,
    2.0,
    1,
    model.QUICK_PROCESSES,
    model.QUICK_SECONDS,
    1_000,
    10_000,
    12.0,
    4.0,
)
#: The peers that take part in the multi-process and scale scenarios.
FLEET_PEERS = [name for name in PEERS if name != "fleetbreaker async"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a run under a minute")
    parser.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"))
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else FULL
    # The benchmark stops its Redis under the breakers' event followers at the end.
    logging.getLogger("breaker").setLevel(logging.ERROR)
    started = time.monotonic()
    with BenchRedis() as server:
        results = report.Results(
            quick=args.quick,
            date=datetime.date.today().isoformat(),
            redis_version=server.version(),
            scale_breakers=profile.scale_breakers,
            scale_live=profile.scale_live,
        )
        driver = calls.Driver()
        peers = list(PEERS.values())
        _say("1. round trips per call")
        results.counts = calls.command_counts(peers, server, driver, profile.calls, profile.probes)
        _say("2. overhead")
        results.overhead = calls.overhead(
            peers, server, driver, profile.overhead_batches, profile.overhead_calls
        )
        _say("2b. Redis time per call, the embedded backend")
        results.server_time = calls.server_time(server, profile.overhead_calls * 4, 3)
        results.embedded_us = calls.embedded(profile.overhead_calls, profile.overhead_batches)
        _say("3. serialization")
        for peer in peers:
            results.serialization[peer.name] = calls.serialization(
                peer, server, driver, profile.serialization_repeats
            )
        driver.shutdown()
        for name in FLEET_PEERS:
            _say(f"4-6. fleet: {name}")
            server.flush()
            with fleet.FleetRun(name, server.url) as run:
                results.waste[name] = run.waste(profile.observe)
                results.probes[name] = run.probes()
                results.learn[name] = run.learn(profile.learn_repeats)
        for name in FLEET_PEERS:
            if name == "fleetbreaker batched":
                continue  # the same keys and calls as exact mode once closed+success is local
            _say(f"7. scale: {name}")
            results.scale[name] = scale.scale(
                name,
                server.url,
                profile.scale_breakers,
                profile.scale_live,
                profile.scale_batches,
            )
        server.flush()
        _say("8. gateway throughput")
        results.gateway = gateway.throughput(
            server.url, profile.gateway_seconds, profile.gateway_rounds
        )
        server.flush()
        _say("8b. bulkhead")
        results.bulkhead = bulkhead.section(
            server,
            profile.bulkhead_calls,
            profile.bulkhead_cancel,
            profile.bulkhead_adaptive,
            profile.bulkhead_fleet,
        )
        server.flush()
        _say("8c. quorum")
        results.quorum = quorum.section(server, profile.overhead_calls * 4, 3)
        server.flush()
        _say("9. fleet-scale model")
        results.fleet = fleet_model = model.measure(
            server, profile.model_processes, model.RATE, profile.model_seconds
        )
    # The plot goes beside the report, under docs/, so that the report's link holds.
    if model.plot(fleet_model, args.output.parent / model.PLOT):
        results.fleet_plot = model.PLOT.as_posix()
    results.seconds = time.monotonic() - started
    text = report.render(results)
    print(text)
    args.output.write_text(text, encoding="utf-8")
    _say(f"wrote {args.output} ({results.seconds:.0f} s)")
    return 0


_STARTED = time.monotonic()


def _say(message: str) -> None:
    print(f"bench: {time.monotonic() - _STARTED:5.1f} s  {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
