"""Scenario 8: gateway throughput with the breaker on and off, in one gateway.

``fleetbreaker serve --workers 2`` on the benchmark's Redis proxies three upstreams
that are the same fast local server: ``exact`` records every success
(``batch_interval = false``), ``batched`` counts successes locally and flushes them
every 50 ms, and ``off`` has ``breaker = false``. The load goes to each in turn, round
by round, in a rotating order, so that all three see the same machine."""

from __future__ import annotations

import io
import os
import statistics
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from app.config.upstreams import DEFAULT_BATCH_INTERVAL
from app.localfleet.ports import free_port
from app.localfleet.services import FleetError, Service, http_ok, serve_command, wait_ready

from .loadgen import Load, run_load

CONNECTIONS = 32
_WARM_SECONDS = 1.0
_ROOT = Path(__file__).resolve().parent.parent

CONFIG = """
[upstreams.exact]
url = "{upstream}"
breaker.batch_interval = false

[upstreams.batched]
url = "{upstream}"
breaker.batch_interval = 0.05

[upstreams.off]
url = "{upstream}"
breaker = false
"""
VARIANTS = ("exact", "batched", "off")


@dataclass(frozen=True)
class Throughput:
    exact: Load
    batched: Load
    off: Load
    rounds: int
    seconds: float
    # The gateway's own CPU (every process of ``serve``: utime + stime) per request,
    # in µs, by variant: less swayed by what else the machine runs than throughput.
    cpu_us: dict[str, float]

    @property
    def exact_ratio(self) -> float:
        return self.exact.requests_per_second / self.off.requests_per_second

    @property
    def batched_ratio(self) -> float:
        return self.batched.requests_per_second / self.off.requests_per_second

    @property
    def default(self) -> str:
        """The mode an upstream gets when its configuration names none."""
        return "exact" if DEFAULT_BATCH_INTERVAL is None else "batched"

    @property
    def default_ratio(self) -> float:
        return self.exact_ratio if self.default == "exact" else self.batched_ratio


def throughput(redis_url: str, seconds: float, rounds: int) -> Throughput:
    output = io.StringIO()  # the processes' logs, shown only if one fails to start
    lock = threading.Lock()
    with tempfile.TemporaryDirectory(prefix="fleetbreaker-bench-") as folder:
        config = Path(folder) / "gateway.toml"
        upstream_port, gateway_port = free_port(), free_port()
        upstream_url = f"http://127.0.0.1:{upstream_port}"
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        config.write_text(CONFIG.format(upstream=upstream_url))
        services = [
            Service(
                name="upstream",
                argv=[sys.executable, "-m", "bench.upstream", str(upstream_port)],
                environ={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(_ROOT)},
                ready=lambda: http_ok(f"{upstream_url}/"),
            ),
            Service(
                name="gateway",
                argv=serve_command(gateway_port, free_port(), workers=2, log_level="warning"),
                environ={
                    "PATH": "/usr/bin:/bin",
                    "BREAKER_REDIS_URL": redis_url,
                    "BREAKER_CONFIG": str(config),
                },
                ready=lambda: all(http_ok(f"{gateway_url}/proxy/{v}/") for v in VARIANTS),
            ),
        ]
        try:
            for service in services:
                service.start(output, lock)
                try:
                    wait_ready([service])
                except FleetError as exc:
                    raise RuntimeError(f"bench: {exc}:\n{output.getvalue()}") from None
            for variant in VARIANTS:  # connections, pools, scripts loaded
                run_load(f"{gateway_url}/proxy/{variant}/warm", _WARM_SECONDS, CONNECTIONS)
            samples: dict[str, list[Load]] = {variant: [] for variant in VARIANTS}
            cpu: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
            gateway = services[1].process
            assert gateway is not None
            session = os.getsid(gateway.pid)
            for index in range(rounds):
                turn = index % len(VARIANTS)
                for variant in VARIANTS[turn:] + VARIANTS[:turn]:
                    before = _session_cpu(session)
                    load = run_load(f"{gateway_url}/proxy/{variant}/item", seconds, CONNECTIONS)
                    used = _session_cpu(session) - before
                    samples[variant].append(load)
                    requests = max(1.0, load.requests_per_second * seconds)
                    cpu[variant].append(used / requests * 1e6)
        finally:
            for service in reversed(services):
                service.stop()
    return Throughput(
        exact=_median(samples["exact"]),
        batched=_median(samples["batched"]),
        off=_median(samples["off"]),
        rounds=rounds,
        seconds=seconds,
        cpu_us={variant: statistics.median(values) for variant, values in cpu.items()},
    )


def _session_cpu(session: int) -> float:
    """CPU seconds (user + system) used so far by every process of ``session``."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[3]) == session:  # fields after the name: state, ppid, pgrp, session
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def _median(loads: list[Load]) -> Load:
    return Load(
        requests_per_second=statistics.median(load.requests_per_second for load in loads),
        p50_ms=statistics.median(load.p50_ms for load in loads),
        p99_ms=statistics.median(load.p99_ms for load in loads),
        errors=sum(load.errors for load in loads),
        tool=loads[0].tool,
    )
