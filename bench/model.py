"""Scenario 9, a fleet-scale model: how much of one Redis core a fleet of guarded
processes takes, and so how large a fleet one core, or N Cluster shards, carries.

Measured: 1, 4, 16 and 64 spawned processes each make guarded calls at a fixed rate
(``RATE`` a second, at most ``RATE * seconds`` calls, stopping at the deadline
whatever they made), round robin over ``BREAKERS`` breakers, in exact and in batched
mode. The upstream is a no-op: every call succeeds, a healthy fleet. Redis's own
counters are read before and after each run, on the benchmark's own redis-server:
``INFO cpu`` (user + sys CPU of the redis-server process) and ``INFO commandstats``
(calls and µs by command). An idle window just before each run, with the whole
fleet connected, gives what Redis spends on nothing, and that is taken out.

Derived, in pure functions: exact mode costs Redis ``c`` CPU-seconds per guarded
call, so one core at 70 % carries ``0.7 / c`` calls a second. Batched mode costs per
flush (one ``record``), and a flush carries every success one process made on one
breaker since its batch began (``calls_per_flush``): its load follows processes times
breakers, and calls only up to 1 / ``batch_interval`` a second per breaker (a
breaker called less often than once per interval and half a follower poll costs a
flush per call, as in exact mode: the follower flushes each batch on time).

``python -m bench.model [--quick]`` runs it alone: it prints its section of
BENCHMARKS.md and writes the plot (``--plot``, default ``docs/fleet-model.png``).
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing
import queue
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import redis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from breaker import CircuitBreaker

from .server import BenchRedis

Mode = Literal["exact", "batched"]
MODES: tuple[Mode, ...] = ("exact", "batched")
#: Calls a second each process is asked for: 64 of them must keep it up on 2 cores,
#: next to Redis, so that what is measured is Redis's cost, not the clients' queue.
RATE = 100.0
#: Breakers each process calls, round robin: their keys spread over Cluster slots.
BREAKERS = 16
NAMES = tuple(f"upstream-{index:02d}" for index in range(BREAKERS))
BATCH_INTERVAL = 0.05
#: Fleet sizes measured, and how long each runs: the full run and ``--quick``.
PROCESSES = (1, 4, 16, 64)
SECONDS = 4.0
QUICK_PROCESSES = (1, 4, 16)
QUICK_SECONDS = 1.0
#: Share of one core a Redis primary is planned to run at.
TARGET = 0.70
SHARDS = (1, 3, 6)
#: Fleet sizes of the load table and the plot: (processes, calls a second each).
FLEETS = ((10, 100), (100, 100), (1000, 100), (100, 1000), (1000, 1000), (10_000, 100))
#: Calls a second per process of the capacity table.
RATES = (10, 100, 1000)
#: Where ``python -m bench`` writes the plot, relative to the report it links it from.
PLOT = Path("docs/fleet-model.png")

#: What clients send to run the library; their usec includes the commands they run.
_SCRIPT_CALLS = frozenset({"fcall", "fcall_ro", "evalsha", "evalsha_ro", "eval", "eval_ro"})
#: What the measurement itself sends to Redis while counting.
_OWN_COMMANDS = frozenset({"info"})
_PREFIX = "fleet-model"
_CONTEXT = multiprocessing.get_context("spawn")
_START_TIMEOUT = 120.0  # 64 processes importing the library on 2 cores
_TIMEOUT = 60.0
_IDLE_SECONDS = 1.0
# A loaded 2-core machine can stall a process past the default 0.25 s: a call failed
# open then would be a guarded call that Redis never saw.
_BACKEND_TIMEOUT = 2.0


# -- what Redis did --------------------------------------------------------------------


@dataclass(frozen=True)
class Counters:
    """Redis's own counters at one moment: CPU-seconds, and commandstats by command."""

    cpu_seconds: float
    calls: dict[str, int]
    usec: dict[str, int]

    @classmethod
    def read(cls, client: redis.Redis) -> Counters:
        cpu = client.info("cpu")
        stats = client.info("commandstats")
        calls: dict[str, int] = {}
        usec: dict[str, int] = {}
        for key, entry in stats.items():
            command = key.removeprefix("cmdstat_").split("|")[0]
            calls[command] = calls.get(command, 0) + int(entry["calls"])
            usec[command] = usec.get(command, 0) + int(entry["usec"])
        return cls(float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), calls, usec)

    def since(self, earlier: Counters) -> Counters:
        return Counters(
            self.cpu_seconds - earlier.cpu_seconds,
            {name: n - earlier.calls.get(name, 0) for name, n in self.calls.items()},
            {name: n - earlier.usec.get(name, 0) for name, n in self.usec.items()},
        )


@dataclass(frozen=True)
class Run:
    """One fleet in one mode: what its processes achieved, what Redis did meanwhile."""

    mode: Mode
    processes: int
    rate_asked: float  # calls a second asked of each process
    process_rates: tuple[float, ...]  # calls a second each process achieved
    calls: int  # guarded calls made, fleet-wide
    seconds: float  # the window: from the start signal to the last process's report
    round_trips: int  # script calls Redis received (FCALL, EVALSHA)
    commands: int  # commands Redis ran, inside scripts too
    script_usec: int  # commandstats µs of those script calls, their commands included
    cpu_seconds: float  # redis-server CPU during the window
    idle_cpu_share: float  # redis-server CPU per second with the same fleet idle

    @property
    def calls_per_second(self) -> float:
        return self.calls / self.seconds

    @property
    def commands_per_second(self) -> float:
        return self.commands / self.seconds

    @property
    def round_trips_per_call(self) -> float:
        return self.round_trips / self.calls

    @property
    def commands_per_call(self) -> float:
        return self.commands / self.calls

    @property
    def usec_per_call(self) -> float:
        return self.script_usec / self.calls

    @property
    def usec_per_round_trip(self) -> float:
        return self.script_usec / self.round_trips if self.round_trips else 0.0

    @property
    def core_share(self) -> float:
        """Redis CPU over the window, as a share of one core, idle included."""
        return self.cpu_seconds / self.seconds

    @property
    def busy_cpu_seconds(self) -> float:
        """Redis CPU the calls cost: the window's, less an idle Redis's over as long."""
        return max(0.0, self.cpu_seconds - self.idle_cpu_share * self.seconds)

    @property
    def cpu_per_call(self) -> float:
        return self.busy_cpu_seconds / self.calls

    @property
    def cpu_per_round_trip(self) -> float:
        return self.busy_cpu_seconds / self.round_trips if self.round_trips else 0.0


@dataclass(frozen=True)
class Measured:
    """Every run of one measurement, how it was asked for, and where its keys live."""

    runs: tuple[Run, ...]
    rate: float
    seconds: float
    slots: tuple[int, ...]  # the Cluster slot of each breaker's keys


def measure(server: BenchRedis, processes: Sequence[int], rate: float, seconds: float) -> Measured:
    """Each fleet size in turn, both modes on the same spawned processes."""
    runs: list[Run] = []
    slots: tuple[int, ...] = ()
    for count in processes:
        with _Fleet(server.url, count) as fleet:
            for mode in MODES:
                run, slots = fleet.run(server.client, mode, rate, seconds)
                runs.append(run)
    return Measured(tuple(runs), rate, seconds, slots)


class _Fleet:
    """``count`` worker processes, started once and given each mode in turn."""

    def __init__(self, url: str, count: int) -> None:
        self.count = count
        self.go = _CONTEXT.Event()
        self.finish = _CONTEXT.Event()
        self.results: Any = _CONTEXT.Queue()
        self.orders: list[Any] = [_CONTEXT.Queue() for _ in range(count)]
        self.processes = [
            _CONTEXT.Process(
                target=_serve,
                args=(index, url, self.go, self.finish, orders, self.results),
                daemon=True,
            )
            for index, orders in enumerate(self.orders)
        ]
        for process in self.processes:
            process.start()

    def __enter__(self) -> _Fleet:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        # After a failure the others may be waiting on a signal that will never come.
        if exc_type is None:
            for orders in self.orders:
                orders.put(None)
            deadline = time.monotonic() + _TIMEOUT
            for process in self.processes:
                process.join(max(0.0, deadline - time.monotonic()))
        for process in self.processes:
            if process.is_alive():
                process.kill()
                process.join(_TIMEOUT)

    def run(
        self, client: redis.Redis, mode: Mode, rate: float, seconds: float
    ) -> tuple[Run, tuple[int, ...]]:
        self.go.clear()  # every worker said "closed" after the last run: none waits on them
        self.finish.clear()
        for orders in self.orders:
            orders.put((mode, rate, seconds))
        slots = self._collect("ready", _START_TIMEOUT)[0]

        idle_from = Counters.read(client)
        idle_started = time.monotonic()
        time.sleep(_IDLE_SECONDS)
        idle_cpu = Counters.read(client).cpu_seconds - idle_from.cpu_seconds
        idle_share = idle_cpu / (time.monotonic() - idle_started)

        before = Counters.read(client)
        started = time.monotonic()
        self.go.set()
        made = self._collect("made", seconds + _TIMEOUT)
        window = time.monotonic() - started
        seen = Counters.read(client).since(before)
        self.finish.set()
        self._collect("closed", _TIMEOUT)

        run = Run(
            mode=mode,
            processes=self.count,
            rate_asked=rate,
            process_rates=tuple(calls / elapsed for calls, elapsed in made),
            calls=sum(calls for calls, _ in made),
            seconds=window,
            round_trips=sum(seen.calls.get(name, 0) for name in _SCRIPT_CALLS),
            commands=sum(n for name, n in seen.calls.items() if name not in _OWN_COMMANDS),
            script_usec=sum(seen.usec.get(name, 0) for name in _SCRIPT_CALLS),
            cpu_seconds=seen.cpu_seconds,
            idle_cpu_share=idle_share,
        )
        return run, slots

    def _collect(self, kind: str, timeout: float) -> list[Any]:
        """One ``kind`` report from every worker; a worker that fails says so at once."""
        reports: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(reports) < self.count:
            try:
                _index, said, payload = self.results.get(
                    timeout=max(0.0, deadline - time.monotonic())
                )
            except queue.Empty:
                raise RuntimeError(
                    f"fleet model: {self.count - len(reports)} of {self.count} processes "
                    f"sent no {kind!r} within {timeout:.0f} s"
                ) from None
            if said == "failed":
                raise RuntimeError(f"fleet model: a process failed: {payload}")
            assert said == kind, (said, kind)
            reports.append(payload)
        return reports


def _serve(index: int, url: str, go: Any, finish: Any, orders: Any, results: Any) -> None:
    logging.getLogger("breaker").setLevel(logging.ERROR)
    while True:
        try:
            order = orders.get(timeout=_START_TIMEOUT + _TIMEOUT)
        except queue.Empty:
            return  # the parent is gone
        if order is None:
            return
        mode, rate, seconds = order
        try:
            _run_mode(index, url, mode, rate, seconds, go, finish, results)
        except Exception as exc:
            results.put((index, "failed", repr(exc)))
            return


def _run_mode(
    index: int,
    url: str,
    mode: Mode,
    rate: float,
    seconds: float,
    go: Any,
    finish: Any,
    results: Any,
) -> None:
    client = redis.Redis.from_url(url)
    breakers = [
        CircuitBreaker(
            name,
            redis=client,
            prefix=f"{_PREFIX}-{mode}",
            batch_interval=BATCH_INTERVAL if mode == "batched" else None,
            backend_timeout=_BACKEND_TIMEOUT,
        )
        for name in NAMES
    ]
    try:
        # The first call of each breaker in a process takes a round trip more
        # (acquire), and the events subscription is made once: both before the window.
        breakers[0].follow_events(timeout=_TIMEOUT)
        for cb in breakers:
            cb.call(_ok)
            cb.flush()
        slots = tuple(key_slot(cb.keys.state.encode()) for cb in breakers)
        results.put((index, "ready", slots))
        if not go.wait(_START_TIMEOUT + _TIMEOUT):
            return
        results.put((index, "made", _paced(breakers, rate, seconds, offset=index)))
        finish.wait(seconds + _TIMEOUT)
    finally:
        for cb in breakers:
            cb.close()
        client.close()
    results.put((index, "closed", None))


def _ok() -> None:
    return None


def _paced(
    breakers: list[CircuitBreaker], rate: float, seconds: float, offset: int
) -> tuple[int, float]:
    """Call at ``rate`` for ``seconds``: at most ``rate * seconds`` calls, and none after
    the deadline. A process the machine held back catches up, within both bounds.
    Returns the calls made and the seconds they took."""
    quota = max(1, round(rate * seconds))
    started = time.monotonic()
    deadline = started + seconds
    made = 0
    while made < quota:
        now = time.monotonic()
        if now >= deadline:
            break
        due = started + made / rate
        if due > now:
            time.sleep(due - now)
        breakers[(offset + made) % len(breakers)].call(_ok)
        made += 1
    return made, time.monotonic() - started


# -- the model: figures in, capacity out ----------------------------------------------


@dataclass(frozen=True)
class Costs:
    """Redis CPU-seconds per exact-mode guarded call and per batched-mode flush."""

    exact_per_call: float
    batched_per_flush: float
    batch_interval: float = BATCH_INTERVAL
    breakers: int = BREAKERS


def basis(runs: Iterable[Run], mode: Mode) -> Run:
    """The run a mode's cost is taken from: the one with the most round trips, where
    Redis's own CPU stands furthest above its idle noise."""
    return max((run for run in runs if run.mode == mode), key=lambda run: run.round_trips)


def costs_from(runs: Sequence[Run]) -> Costs:
    return Costs(
        exact_per_call=basis(runs, "exact").cpu_per_call,
        batched_per_flush=basis(runs, "batched").cpu_per_round_trip,
    )


#: How often the events follower flushes due batches (``_events._POLL``): on average
#: half a poll after a batch's interval ends.
FOLLOWER_POLL = 0.1


def calls_per_flush(per_breaker_rate: float, interval: float) -> int:
    """Successes one batched flush carries, a breaker's calls in a process evenly
    spaced: the first call of a batch is counted locally, and the batch goes with the
    first call at least ``interval`` after it, itself included, unless the events
    follower flushed it first (half a poll after the interval, on average): then it
    carries that one call."""
    if per_breaker_rate * (interval + FOLLOWER_POLL / 2) < 1:
        return 1  # the next call comes after the follower flushed
    gaps = math.ceil(round(interval * per_breaker_rate, 9))
    return max(1, gaps) + 1


def redis_cores(costs: Costs, mode: Mode, processes: float, rate: float) -> float:
    """Redis CPU, in cores, of ``processes`` each making ``rate`` calls a second spread
    evenly over ``costs.breakers`` breakers."""
    calls = processes * rate
    if mode == "exact":
        return calls * costs.exact_per_call
    flushes = calls / calls_per_flush(rate / costs.breakers, costs.batch_interval)
    return flushes * costs.batched_per_flush


def largest_fleet(
    costs: Costs, mode: Mode, rate: float, shards: int = 1, target: float = TARGET
) -> float:
    """How many processes, each making ``rate`` calls a second, ``shards`` primaries
    carry at ``target`` of a core each, the breakers spread evenly over them."""
    return target * shards / redis_cores(costs, mode, 1, rate)


def shards_needed(cores: float, target: float = TARGET) -> int:
    """Primaries for a load of ``cores``, each at ``target`` of one, spread evenly."""
    return max(1, math.ceil(round(cores / target, 9)))


def shard_of(slot: int, shards: int) -> int:
    """The primary that holds ``slot`` when ``redis-cli --cluster create`` splits the
    16384 slots over ``shards`` primaries: contiguous ranges, even but for rounding."""
    per_shard = REDIS_CLUSTER_HASH_SLOTS / shards
    for index in range(shards - 1):
        if slot <= math.floor(per_shard * (index + 1) - 1 + 0.5):
            return index
    return shards - 1


def busiest_shard(slots: Iterable[int], shards: int) -> int:
    """How many of these breakers the busiest of ``shards`` primaries holds."""
    held = [0] * shards
    for slot in slots:
        held[shard_of(slot, shards)] += 1
    return max(held)


# -- the report's section and the plot --------------------------------------------------


def section(measured: Measured, plot_link: str | None) -> list[str]:
    """The "Fleet-scale model" section of BENCHMARKS.md."""
    costs = costs_from(measured.runs)
    exact, batched = basis(measured.runs, "exact"), basis(measured.runs, "batched")
    per_breaker = measured.rate / BREAKERS
    carried = calls_per_flush(per_breaker, BATCH_INTERVAL)
    one_core = TARGET / costs.exact_per_call
    lightest = min((r for r in measured.runs if r.mode == "exact"), key=lambda r: r.calls)
    busiest = max(run.core_share for run in measured.runs)
    lines = [
        "## Fleet-scale model",
        "",
        f"How much of one Redis core a fleet takes, and so how large a fleet one core "
        f"carries at {TARGET * 100:.0f} %. {_listed(sorted({r.processes for r in measured.runs}))} "
        f"spawned processes each made guarded calls at {measured.rate:.0f} calls/s "
        f"(at most {measured.rate * measured.seconds:.0f} calls, stopping at "
        f"{measured.seconds:.0f} s whatever they made), round robin over {BREAKERS} "
        f"breakers, through a no-op upstream (every call a success), in exact mode and "
        f"with `batch_interval={BATCH_INTERVAL}`. Redis's own counters, read before and "
        "after: `INFO cpu` (user + sys of the redis-server process), less what the same "
        "Redis spent in an idle window just before with the fleet connected, and "
        "`INFO commandstats` (round trips: FCALL and EVALSHA calls; commands: all, "
        "inside scripts too; µs: those of the FCALLs, which include their commands). "
        "Calls/s are what the processes achieved, not what was asked.",
        "",
        "| processes | mode | calls/s per process: median (slowest) | fleet calls/s "
        "| Redis commands/s | round trips per call | commands per call "
        "| commandstats µs per call | Redis CPU µs per call | Redis CPU, % of a core "
        "(of it idle) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in measured.runs:
        lines.append(
            f"| {run.processes} | {run.mode} | {statistics.median(run.process_rates):.0f} "
            f"({min(run.process_rates):.0f}) | {run.calls_per_second:,.0f} "
            f"| {run.commands_per_second:,.0f} | {run.round_trips_per_call:.2f} "
            f"| {run.commands_per_call:.1f} | {run.usec_per_call:.1f} "
            f"| {run.cpu_per_call * 1e6:.1f} "
            f"| {run.core_share * 100:.1f} ({run.idle_cpu_share * 100:.1f}) |"
        )
    lines += [
        "",
        "### From those figures to a fleet",
        "",
        f"- **Exact mode** costs Redis one `record` per call: "
        f"{costs.exact_per_call * 1e6:.1f} µs of CPU per guarded call (the "
        f"{exact.processes}-process run, the most calls, where Redis's CPU stands "
        f"furthest above its idle noise). One core at {TARGET * 100:.0f} % carries "
        f"{TARGET:.2f} / {costs.exact_per_call * 1e6:.1f} µs = **{one_core:,.0f} "
        "guarded calls/s**, however they are split into processes.",
        f"- **Batched mode** costs Redis a `record` per flush: "
        f"{costs.batched_per_flush * 1e6:.1f} µs of CPU each ({batched.processes} "
        f"processes; commandstats: {batched.usec_per_round_trip:.1f} µs per flush, "
        f"against {exact.usec_per_round_trip:.1f} per exact-mode "
        "`record`). A flush carries the successes one process made on one breaker since "
        "its batch began: the first is counted locally, and the first call at least "
        f"{BATCH_INTERVAL * 1000:.0f} ms later sends the batch. With a breaker's calls "
        f"in a process r a second, evenly spaced, that is ⌈{BATCH_INTERVAL} × r⌉ + 1 "  # noqa: RUF001
        f"calls per flush: at this run's {per_breaker:.2f} calls/s per breaker, "
        f"{carried} (measured: {batched.round_trips_per_call:.2f} round trips per call). "
        "So a breaker flushes fewer than 1 / "
        f"{BATCH_INTERVAL} = {1 / BATCH_INTERVAL:.0f} times a second per process whatever "
        "its call rate, and batched load is bounded by processes × busy breakers, not "  # noqa: RUF001
        f"by calls: one core at {TARGET * 100:.0f} % carries at least "
        f"{TARGET * BATCH_INTERVAL / costs.batched_per_flush:,.0f} (process, breaker) "
        f"pairs, at any call rate. Up to {1 / BATCH_INTERVAL:.0f} calls/s per breaker in "
        "a process, a flush carries 2 calls: half exact mode's round trips.",
        "- **N Cluster shards**: a breaker's keys share one hash tag, `{name}`, so one "
        "slot; breakers spread over the primaries by slot. The model takes the capacity "
        "as linear in shards, assuming the load spreads evenly: many breakers of "
        "similar traffic. Two limits of that: one breaker's calls all go to one "
        "primary, so a single breaker never carries more than the one-core figure; and "
        "a few breakers spread unevenly. "
        + _spread(measured.slots)
        + " On a Cluster, a transition's event is an SPUBLISH on the breaker's own "
        "channel, `<prefix>:{name}:events`, which stays in the breaker's shard: per "
        "transition, not per call, and on one shard.",
        "",
        f"Largest fleet at {TARGET * 100:.0f} % of each primary's core, in processes (fleet "
        f"calls/s), {BREAKERS} breakers per process:",
        "",
        "| calls/s per process | mode | "
        + " | ".join(f"{n} shard{'s' * (n > 1)}" for n in SHARDS)
        + " |",
        "|---|---|" + "---|" * len(SHARDS),
    ]
    for rate in RATES:
        for mode in MODES:
            cells = []
            for shards in SHARDS:
                most = largest_fleet(costs, mode, rate, shards)
                cells.append(f"{most:,.0f} ({most * rate:,.0f})")
            lines.append(f"| {rate:,} | {mode} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Redis load against fleet size, {BREAKERS} breakers per process; primaries "
        f"needed at {TARGET * 100:.0f} % each, spread evenly:",
        "",
        "| processes × calls/s each | fleet calls/s | exact: cores | primaries "  # noqa: RUF001
        "| batched: cores | primaries |",
        "|---|---|---|---|---|---|",
    ]
    for processes, rate in FLEETS:
        loads = [redis_cores(costs, mode, processes, rate) for mode in MODES]
        lines.append(
            f"| {processes:,} × {rate:,} | {processes * rate:,} | {loads[0]:.2f} "  # noqa: RUF001
            f"| {shards_needed(loads[0])} | {loads[1]:.2f} | {shards_needed(loads[1])} |"
        )
    lines += [
        "",
        "What the model leaves out, and which way it errs:",
        "",
        f"- Redis's CPU per call was measured at up to {busiest * 100:.0f} % of a core, and "
        "it fell as the load rose (exact mode: "
        f"{lightest.cpu_per_call * 1e6:.1f} µs per call with {lightest.processes} "
        f"process{'es' * (lightest.processes > 1)}, {exact.cpu_per_call * 1e6:.1f} with "
        f"{exact.processes}): busier, Redis serves several clients per event-loop "
        "wake-up. At 70 % it costs less per call than that: the capacities above are a "
        "floor.",
        "- Only successes. A failure costs a `record` in both modes (more commands inside "
        "it): count failing calls as exact-mode calls. A breaker that stays open costs "
        "nothing per call (a report of rejections once a second per process).",
        "- Connections: each process holds one for commands and one for events (more with "
        "threads), and Redis's default `maxclients` is 10,000.",
        "",
    ]
    if plot_link is not None:
        lines += [f"![Redis load against fleet size]({plot_link})", ""]
    return lines


def _listed(numbers: Sequence[int]) -> str:
    words = [f"{n:,}" for n in numbers]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _spread(slots: Sequence[int]) -> str:
    if not slots:
        return ""
    parts = [
        f"{busiest_shard(slots, shards)} of {len(slots)} on the busiest of {shards} "
        f"(even: {len(slots) / shards:.1f})"
        for shards in SHARDS
        if shards > 1
    ]
    return f"This run's {len(slots)} breakers, by their slots: " + "; ".join(parts) + "."


def plot(measured: Measured, path: Path) -> bool:
    """Redis load against fleet size, measured and modelled, as a PNG at ``path``.
    False, and no file, without matplotlib (the ``bench`` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    costs = costs_from(measured.runs)
    figure, axes = plt.subplots(figsize=(8, 5), dpi=120)
    fleets = [10 ** (exponent / 10) for exponent in range(10, 71)]  # 10 to 10^7 calls/s
    styles = {"exact": "tab:blue", "batched": "tab:orange"}
    for mode in MODES:
        for rate in (measured.rate, 1000.0) if mode == "batched" else (measured.rate,):
            for shards, dash in ((1, "-"), (6, "--")):
                load = [redis_cores(costs, mode, f / rate, rate) / shards for f in fleets]
                label = f"{mode}, {shards} shard{'s' * (shards > 1)}"
                if mode == "batched":
                    label += f", {rate:.0f} calls/s per process"
                alpha = 1.0 if rate == measured.rate else 0.5
                axes.plot(fleets, load, dash, color=styles[mode], alpha=alpha, label=label)
        runs = [run for run in measured.runs if run.mode == mode]
        axes.plot(
            [run.calls_per_second for run in runs],
            [run.busy_cpu_seconds / run.seconds for run in runs],
            "o",
            color=styles[mode],
            label=f"{mode}, measured (1 shard), labelled with its processes",
        )
        for run in runs:
            axes.annotate(
                f"{run.processes}",
                (run.calls_per_second, run.busy_cpu_seconds / run.seconds),
                textcoords="offset points",
                xytext=(4, -10),
                fontsize=7,
            )
    axes.axhline(TARGET, color="tab:red", linewidth=1)
    axes.annotate(
        f"{TARGET * 100:.0f} % of a core",
        (fleets[0], TARGET),
        xytext=(2, 3),
        textcoords="offset points",
        color="tab:red",
        fontsize=8,
    )
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_ylim(1e-4, 10)
    axes.set_xlabel("fleet: guarded calls per second (processes × calls/s each)")  # noqa: RUF001
    axes.set_ylabel("Redis CPU per primary, cores")
    axes.set_title(f"Redis load against fleet size ({BREAKERS} breakers per process)")
    axes.grid(True, which="major", linewidth=0.4)
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return True


# -- python -m bench.model --------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.model", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer processes, 1 s each")
    parser.add_argument("--plot", type=Path, default=PLOT, help="where the PNG goes")
    args = parser.parse_args(argv)
    processes, seconds = (QUICK_PROCESSES, QUICK_SECONDS) if args.quick else (PROCESSES, SECONDS)
    logging.getLogger("breaker").setLevel(logging.ERROR)
    with BenchRedis() as server:
        measured = measure(server, processes, RATE, seconds)
    link = str(args.plot) if plot(measured, args.plot) else None
    print("\n".join(section(measured, link)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
