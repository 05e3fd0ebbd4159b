"""BENCHMARKS.md from one run's results: the side-by-side table, the targets met or not
with their figures, the machine, and each peer's exact configuration."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field

from . import model
from .calls import BREAKDOWN, CASES, SHORT_OPEN, CommandCounts, Overhead, ServerTime
from .fleet import CALLERS, PROBE_SETTINGS, PROCESSES, THRESHOLD, Learn, Waste
from .gateway import CONNECTIONS, Throughput
from .peers import PEERS
from .scale import Scale

NA = "n/a"


@dataclass
class Results:
    quick: bool
    date: str
    redis_version: str
    counts: dict[str, CommandCounts] = field(default_factory=dict)
    overhead: Overhead | None = None
    serialization: dict[str, float] = field(default_factory=dict)
    server_time: ServerTime | None = None
    embedded_us: float | None = None
    waste: dict[str, Waste] = field(default_factory=dict)
    probes: dict[str, int] = field(default_factory=dict)
    learn: dict[str, Learn] = field(default_factory=dict)
    scale: dict[str, Scale] = field(default_factory=dict)
    scale_breakers: int = 0
    scale_live: int = 0
    gateway: Throughput | None = None
    fleet: model.Measured | None = None
    fleet_plot: str | None = None  # the plot's path, relative to the report
    bulkhead: list[str] = field(default_factory=list)  # its section, as bench.bulkhead wrote it
    quorum: list[str] = field(default_factory=list)  # its section, as bench.quorum wrote it
    seconds: float = 0.0


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def _num(value: float | None, digits: int = 2) -> str:
    if value is None:
        return NA
    return f"{value:.{digits}f}"


def render(results: Results) -> str:
    peers = list(PEERS)
    lines = [
        "# Benchmarks",
        "",
        f"fleetbreaker against pybreaker 1.4.1, purgatory 3.0.1 and interlock-cb 2.8.2, all "
        f"measured in one run of `python -m bench{' --quick' if results.quick else ''}` on "
        f"{results.date}.",
        "",
        f"- **Machine:** {machine()}; Redis {results.redis_version} of the benchmark's own "
        "on loopback (nothing else talks to it). The machine is shared and noisy: read the "
        "ratios, taken within this run, not the absolute times.",
        f"- **Run:** {'quick' if results.quick else 'full'}, "
        f"{results.seconds:.0f} s. Reproduce: `./scripts/setup && .venv/bin/python -m bench` "
        "(the peers are in the `bench` extra, installed by the setup).",
        "",
        "## Side by side",
        "",
        "| | " + " | ".join(peers) + " |",
        "|---|" + "---|" * len(peers),
    ]

    def row(label: str, cell: Callable[[str], str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(name) for name in peers) + " |")

    for case in CASES:

        def trips(name: str, case: str = case) -> str:
            found = results.counts.get(name)
            per_call = found.cases.get(case) if found else None
            if per_call is None:
                return NA
            return f"{per_call.round_trips:.2f} ({per_call.commands:.1f})"

        row(f"round trips (commands run) per call: {case}", trips)
    overhead = results.overhead
    if overhead is not None:

        def micros(name: str) -> str:
            return _num(overhead.micros.get(name), 0)

        def ratio(name: str) -> str:
            value = overhead.micros.get(name)
            if value is None:
                return NA
            raw = overhead.raw_async if PEERS[name].kind == "async" else overhead.raw_sync
            return f"{value / raw:.2f}"

        row("µs per closed + success call", micros)
        row("… as a multiple of one raw EVALSHA (same kind of client)", ratio)
    row("serialization: elapsed / ideal", lambda n: _num(results.serialization.get(n)))
    row(
        f"fleet waste: upstream calls after it failed (ideal {THRESHOLD})",
        lambda n: str(results.waste[n].calls_after) if n in results.waste else NA,
    )
    row(
        "… the last of them, ms after the failure began",
        lambda n: _num(results.waste[n].last_call_ms, 0) if n in results.waste else NA,
    )
    row(
        f"half-open: calls reaching the upstream (ideal {PROBE_SETTINGS.half_open_max_calls})",
        lambda n: str(results.probes[n]) if n in results.probes else NA,
    )
    row(
        "time to learn of a trip, ms: median (worst)",
        lambda n: (
            f"{_num(results.learn[n].median)} ({_num(results.learn[n].worst)})"
            if n in results.learn
            else NA
        ),
    )
    row(
        f"Redis bytes per breaker ({results.scale_breakers} breakers)",
        lambda n: _num(results.scale[n].bytes_per_breaker, 0) if n in results.scale else NA,
    )
    row(
        "keys without a TTL",
        lambda n: str(results.scale[n].keys_without_ttl) if n in results.scale else NA,
    )
    row(
        f"cost per call, {results.scale_live} live breakers / 1",
        lambda n: (
            _num(results.scale[n].cost_ratio)
            if n in results.scale and results.scale[n].cost_ratio is not None
            else (results.scale[n].note or NA)
            if n in results.scale
            else NA
        ),
    )
    lines += [
        "",
        "n/a: the peer has no such mode, or was not run in that scenario: the async "
        "variant of fleetbreaker shares exact mode's scripts and keys, so the "
        "multi-process and scale scenarios run the sync one; batched mode keeps the same "
        "keys as exact mode (scale) and counts closed-state successes locally.",
        "",
    ]
    lines += _targets(results)
    lines += _breakdown(results)
    lines += _server_time(results)
    lines += _gateway(results)
    lines += results.bulkhead
    lines += results.quorum
    if results.fleet is not None:
        lines += model.section(results.fleet, results.fleet_plot)
    lines += _setup(results)
    return "\n".join(lines) + "\n"


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("**met**" if met else "**not met**")


def _targets(results: Results) -> list[str]:
    rows: list[tuple[str, str, bool | None]] = []
    fb = results.counts.get("fleetbreaker")
    batched = results.counts.get("fleetbreaker batched")
    if fb is not None:
        success = fb.cases["closed + success"].round_trips
        rows.append(
            ("closed + success: ≤ 1.0 round trips per call", f"{success:.2f}", success <= 1.0)
        )
        opened = fb.cases["open"].round_trips
        rows.append(("open: 0 round trips", f"{opened:.2f}", opened == 0))
    if batched is not None and batched.batched_rate is not None:
        value = batched.cases["batched success"].round_trips
        rate = batched.batched_rate
        rows.append(
            (
                "batched: ≤ 0.05 round trips per call at ≥ 1000 calls/s",
                f"{value:.3f} at {rate:,.0f} calls/s",
                value <= 0.05 and rate >= 1000,
            )
        )
    overhead = results.overhead
    if overhead is not None:
        exact = overhead.micros["fleetbreaker"] / overhead.raw_sync
        rows.append(
            (
                "exact-mode overhead: ≤ 1.25 × one raw EVALSHA (sync)",
                f"{exact:.2f} × ({overhead.micros['fleetbreaker']:.0f} µs / "
                f"{overhead.raw_sync:.0f} µs)",
                exact <= 1.25,
            )
        )
        exact_async = overhead.micros["fleetbreaker async"] / overhead.raw_async
        rows.append(
            (
                "exact-mode overhead: ≤ 1.4 × one raw EVALSHA (async)",
                f"{exact_async:.2f} × ({overhead.micros['fleetbreaker async']:.0f} µs / "
                f"{overhead.raw_async:.0f} µs)",
                exact_async <= 1.4,
            )
        )
        interlock = overhead.micros.get("interlock-cb 2.8.2")
        if interlock:
            batched_us = overhead.micros["fleetbreaker batched"]
            rows.append(
                (
                    "batched overhead: ≤ 1.5 × interlock-cb's per-call cost",
                    f"{batched_us / interlock:.2f} × ({batched_us:.1f} µs / {interlock:.1f} µs)",
                    batched_us <= 1.5 * interlock,
                )
            )
    server = results.server_time
    if server is not None:
        rows.append(
            (
                "Redis time per closed success: ≤ 5 × a `return 1` script",
                f"{server.ratio:.2f} × ({server.fcall_record:.1f} µs / {server.return_1:.1f} µs)",
                server.ratio <= 5,
            )
        )
    if results.embedded_us is not None:
        rows.append(
            (
                "embedded backend: ≤ 150 µs per guarded call",
                f"{results.embedded_us:.0f} µs",
                results.embedded_us <= 150,
            )
        )
    for name in ("fleetbreaker", "fleetbreaker async"):
        if name in results.serialization:
            value = results.serialization[name]
            rows.append((f"serialization ({name}): ≤ 1.1", f"{value:.2f}", value <= 1.1))
    limit = THRESHOLD + PROCESSES * CALLERS
    for name in ("fleetbreaker", "fleetbreaker batched"):
        if name in results.waste:
            value = results.waste[name].calls_after
            rows.append((f"fleet waste ({name}): ≤ {limit}", str(value), value <= limit))
    for name in ("fleetbreaker", "fleetbreaker batched"):
        if name in results.probes:
            value = results.probes[name]
            ideal = PROBE_SETTINGS.half_open_max_calls
            rows.append((f"half-open probes ({name}): exactly {ideal}", str(value), value == ideal))
    for name in ("fleetbreaker", "fleetbreaker batched"):
        if name in results.learn:
            worst = results.learn[name].worst
            rows.append(
                (
                    f"time to learn ({name}): ≤ 50 ms",
                    f"worst {_num(worst)} ms",
                    worst is not None and worst <= 50,
                )
            )
    scale = results.scale.get("fleetbreaker")
    if scale is not None:
        rows.append(
            (
                "memory: ≤ 2 KB per breaker, every key with a TTL",
                f"{scale.bytes_per_breaker:.0f} B, {scale.keys_without_ttl} keys without TTL",
                scale.bytes_per_breaker <= 2048 and scale.keys_without_ttl == 0,
            )
        )
        if scale.cost_ratio is not None:
            rows.append(
                (
                    f"cost with {results.scale_live} breakers: ≤ 1.1 × with 1",
                    f"{scale.cost_ratio:.2f} × ({scale.cost_many_us:.0f} µs / "
                    f"{scale.cost_one_us:.0f} µs)",
                    scale.cost_ratio <= 1.1,
                )
            )
    gateway = results.gateway
    if gateway is not None:
        rows.append(
            (
                f"gateway throughput, default ({gateway.default}): ≥ 0.92 × off",
                f"{gateway.default_ratio:.2f} ×",
                gateway.default_ratio >= 0.92,
            )
        )
        rows.append(
            (
                "gateway throughput, exact: ≥ 0.8 × off",
                f"{gateway.exact_ratio:.2f} × ({gateway.exact.requests_per_second:,.0f} / "
                f"{gateway.off.requests_per_second:,.0f} req/s)",
                gateway.exact_ratio >= 0.8,
            )
        )
    lines = ["## Targets", "", "| target | figure | |", "|---|---|---|"]
    lines += [f"| {target} | {figure} | {_verdict(met)} |" for target, figure, met in rows]
    return [*lines, ""]


def _breakdown(results: Results) -> list[str]:
    overhead = results.overhead
    if overhead is None or not overhead.breakdown:
        return []
    base = overhead.breakdown[BREAKDOWN[0]]
    script = overhead.breakdown[BREAKDOWN[2]] / base
    lines = [
        "## Where exact mode's time goes",
        "",
        "The same rounds as the overhead row, sync client: each step adds one part of a "
        f"guarded call. Sending the `record` call's arguments and running the script, "
        f"with no Python of the breaker's at all, already take {script:.2f} × a raw "
        "EVALSHA; the rest is the breaker's bookkeeping in Python (local view, outcome, "
        "reply decoding, events).",
        "",
        "| step | µs | × raw EVALSHA |",
        "|---|---|---|",
    ]
    for step in BREAKDOWN:
        micros = overhead.breakdown[step]
        lines.append(f"| {step} | {micros:.1f} | {micros / base:.2f} |")
    return [*lines, ""]


def _server_time(results: Results) -> list[str]:
    server = results.server_time
    if server is None:
        return []
    return [
        "## Redis's own time per closed success",
        "",
        "From `INFO commandstats` on the benchmark's Redis, after CONFIG RESETSTAT, in the "
        "same run: a raw EVALSHA of `return 1`, then closed successes through a breaker "
        "running the library as a FUNCTION, then as EVALSHA scripts (the path for servers "
        "that refuse FUNCTION). Medians of the rounds.",
        "",
        "| command | µs per call | × `return 1` |",
        "|---|---|---|",
        f"| EVALSHA `return 1` | {server.return_1:.2f} | 1.00 |",
        f"| FCALL `record` (the default) | {server.fcall_record:.2f} | {server.ratio:.2f} |",
        f"| EVALSHA `record` | {server.evalsha_record:.2f} | "
        f"{server.evalsha_record / server.return_1:.2f} |",
        "",
    ]


def _gateway(results: Results) -> list[str]:
    gateway = results.gateway
    if gateway is None:
        return []
    lines = [
        "## Gateway throughput",
        "",
        "`fleetbreaker serve --workers 2` on the benchmark's Redis, proxying a fast local "
        "server (`bench/upstream.py`) as three upstreams: `exact` records every success "
        "(`batch_interval = false`), `batched` flushes successes every 50 ms, `off` has "
        f"`breaker = false`. Load: {gateway.off.tool}, {CONNECTIONS} connections, "
        f"{gateway.rounds} rounds of {gateway.seconds:.0f} s each per upstream, in a "
        f"rotating order; medians. The gateway's default is {gateway.default}.",
        "",
        "| | requests/s | p50 ms | p99 ms | errors | × off |",
        "|---|---|---|---|---|---|",
    ]
    for label, load in (
        ("exact", gateway.exact),
        ("batched", gateway.batched),
        ("breaker off", gateway.off),
    ):
        ratio = load.requests_per_second / gateway.off.requests_per_second
        lines.append(
            f"| {label} | {load.requests_per_second:,.0f} | {load.p50_ms:.1f} | "
            f"{load.p99_ms:.1f} | {load.errors} | {ratio:.2f} |"
        )
    return [*lines, ""]


def _setup(results: Results) -> list[str]:
    lines = [
        "## How each contender is configured",
        "",
        f"Every breaker trips on {THRESHOLD} consecutive failures and admits "
        f"{PROBE_SETTINGS.half_open_max_calls} half-open trial. Round trips are counted "
        "with MONITOR (commands sent by clients, without the once-per-connection HELLO, "
        "CLIENT and SUBSCRIBE); commands run, with `INFO commandstats` deltas (they "
        "include those run inside Lua scripts).",
        "",
    ]
    lines += [f"- **{peer.name}:** {peer.setup}" for peer in PEERS.values()]
    lines += [
        "",
        "## Scenarios",
        "",
        f"1. **Round trips per call**: 100–200 calls per case after 3 warm-up calls. Open: "
        f"after {SHORT_OPEN.threshold} failures. Half-open: one trial call after the "
        f"{SHORT_OPEN.reset_timeout:.0f} s reset timeout (pybreaker keeps its opening time "
        "in whole seconds, so shorter ones end at once), counted until 50 ms after it "
        "returns, for peers that write in the background.",
        "2. **Overhead**: a no-op function through each breaker, and one raw EVALSHA of "
        "`return 1` from a sync and an asyncio redis-py client; rounds of one batch of "
        "each contender in turn, medians over the rounds.",
        "3. **Serialization**: 16 threads (tasks for async peers) × 5 calls of a 20 ms "
        "upstream through one breaker; elapsed / 100 ms.",
        f"4. **Fleet waste**: {PROCESSES} processes × {CALLERS} callers (threads or tasks), "
        "each call 2 ms; a refused caller waits 2 ms. The upstream fails from a known "
        "moment; calls that reach it after that moment, until every process has stopped "
        "(observed for 1–2.5 s).",
        f"5. **Half-open probes**: one process trips the breaker; "
        f"{PROBE_SETTINGS.reset_timeout:.0f} s + 1.2 s later (so that peers polling every "
        "second have caught up), every caller of every process calls once; a trial call "
        "takes 300 ms. Calls that reach the upstream.",
        "6. **Time to learn**: process A fails until its own breaker refuses it; process "
        "B, which only succeeds, calls every millisecond. From A's last failure to B's "
        "first refusal; 3 s means never.",
        f"7. **Scale**: {results.scale_breakers} breakers, each after 3 successes and a "
        "trip, then `MEMORY USAGE` of every key; then closed + success calls cycling over "
        f"{results.scale_live} live breakers against calls on one, in alternate batches.",
        "8. **Gateway**: above.",
        "9. **Fleet-scale model**: above.",
        "",
    ]
    notes = [
        f"- {name}: {note}" for name, counts in results.counts.items() for note in counts.notes
    ]
    if notes:
        lines += ["Notes from this run:", "", *notes, ""]
    return lines
