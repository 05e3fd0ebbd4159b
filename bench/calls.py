"""Scenarios 1-3, in one process: Redis commands per guarded call, per-call overhead
against a raw EVALSHA, and serialization of concurrent callers."""

from __future__ import annotations

import asyncio
import functools
import statistics
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio

from breaker._store.scripts import function_name, script_source

from .peers import AsyncGuard, Peer, Rejected, Settings, SyncGuard, UpstreamDown
from .server import BenchRedis

#: Settings under which no failure in a measured batch trips the breaker.
NEVER_TRIPS = Settings(threshold=10_000, reset_timeout=30.0)
#: Open long enough to measure, short enough to wait for a half-open probe. pybreaker
#: keeps its opening time in whole seconds, so a shorter timeout would end at once.
SHORT_OPEN = Settings(threshold=3, reset_timeout=2.0)


def ok() -> None:
    return None


def down() -> None:
    raise UpstreamDown


async def aok() -> None:
    return None


async def adown() -> None:
    raise UpstreamDown


class Driver:
    """Builds and calls guards of any kind from synchronous code: async guards live on
    one event loop of the driver's own, kept for the whole run."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def guard(self, peer: Peer, url: str, settings: Settings) -> SyncGuard | AsyncGuard:
        name = f"bench-{uuid.uuid4().hex[:12]}"
        if peer.make is not None:
            return peer.make(url, name, settings)
        assert peer.amake is not None
        return self.loop.run_until_complete(peer.amake(url, name, settings))

    def calls(self, guard: SyncGuard | AsyncGuard, n: int, fail: bool = False) -> int:
        """Call ``n`` times; how many calls the breaker refused."""
        if isinstance(guard, SyncGuard):
            fn = down if fail else ok
            return sum(_sync_call(guard, fn) for _ in range(n))

        async def batch() -> int:
            afn = adown if fail else aok
            refused = 0
            for _ in range(n):
                refused += await _async_call(guard, afn)
            return refused

        return self.loop.run_until_complete(batch())

    def close(self, guard: SyncGuard | AsyncGuard) -> None:
        if isinstance(guard, SyncGuard):
            guard.close()
        else:
            self.loop.run_until_complete(guard.aclose())

    def shutdown(self) -> None:
        """Cancel what guards left running on the loop (event followers), then close it."""

        async def cancel_the_rest() -> None:
            pending = asyncio.all_tasks() - {asyncio.current_task()}
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        self.loop.run_until_complete(cancel_the_rest())
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


def _sync_call(guard: SyncGuard, fn: Callable[[], None]) -> int:
    try:
        guard.call(fn)
    except Rejected:
        return 1
    except UpstreamDown:
        pass
    return 0


async def _async_call(guard: AsyncGuard, fn: Callable[[], Awaitable[None]]) -> int:
    try:
        await guard.call(fn)
    except Rejected:
        return 1
    except UpstreamDown:
        pass
    return 0


# -- 1. Redis commands per guarded call ----------------------------------------------------


@dataclass(frozen=True)
class PerCall:
    round_trips: float  # commands a client sent, per guarded call
    commands: float  # commands Redis ran, inside scripts too, per guarded call


_PROBE_ATTEMPTS = 40
CASES = ("closed + success", "closed + failure", "open", "half-open probe", "batched success")


@dataclass
class CommandCounts:
    """Per guarded call, by case (``CASES``); a case missing: the peer has no such mode."""

    cases: dict[str, PerCall] = field(default_factory=dict)
    batched_rate: float | None = None  # calls per second while measuring batched
    notes: list[str] = field(default_factory=list)


def command_counts(
    peers: list[Peer], server: BenchRedis, driver: Driver, calls: int, probes: int
) -> dict[str, CommandCounts]:
    """Each case for every peer. Half-open probes: every peer is tripped, one wait for
    the reset timeout serves them all, then each one's trial call is counted."""
    counts = {peer.name: CommandCounts() for peer in peers}
    opened: dict[str, SyncGuard | AsyncGuard] = {}
    for peer in peers:
        found = counts[peer.name]
        guard = driver.guard(peer, server.url, NEVER_TRIPS)
        if peer.name == "fleetbreaker batched":
            started = time.perf_counter()
            found.cases["batched success"] = _per_call(server, driver, guard, calls * 10)
            found.batched_rate = calls * 10 / (time.perf_counter() - started)
        else:
            found.cases["closed + success"] = _per_call(server, driver, guard, calls)
        found.cases["closed + failure"] = _per_call(server, driver, guard, calls, fail=True)
        driver.close(guard)

        guard = opened[peer.name] = driver.guard(peer, server.url, SHORT_OPEN)
        driver.calls(guard, SHORT_OPEN.threshold, fail=True)
        with server.counting() as counted:
            refused = driver.calls(guard, calls)
        found.cases["open"] = PerCall(counted.round_trips / calls, counted.commands / calls)
        if refused != calls:
            found.notes.append(f"open: refused {refused} of {calls} calls")

    trials: dict[str, list[tuple[int, int]]] = {peer.name: [] for peer in peers}
    for _ in range(probes):
        time.sleep(SHORT_OPEN.reset_timeout * 1.1)
        for peer in peers:
            guard = opened[peer.name]
            for _attempt in range(_PROBE_ATTEMPTS):  # a peer may learn of half-open later
                with server.counting() as counted:
                    refused = driver.calls(guard, 1)  # the trial; it succeeds and closes
                    time.sleep(0.05)  # background writes of peers that defer them
                if not refused:
                    trials[peer.name].append((counted.round_trips, counted.commands))
                    break
                time.sleep(0.05)
            driver.calls(guard, SHORT_OPEN.threshold, fail=True)  # open again
    for peer in peers:
        found = counts[peer.name]
        if trials[peer.name]:
            found.cases["half-open probe"] = PerCall(
                statistics.mean(t for t, _ in trials[peer.name]),
                statistics.mean(c for _, c in trials[peer.name]),
            )
        elif probes:
            found.notes.append("half-open: no trial call admitted")
        driver.close(opened[peer.name])
    return counts


def _per_call(
    server: BenchRedis,
    driver: Driver,
    guard: SyncGuard | AsyncGuard,
    n: int,
    fail: bool = False,
) -> PerCall:
    driver.calls(guard, 3, fail)  # the first calls of a process may cost more
    with server.counting() as counted:
        driver.calls(guard, n, fail)
    return PerCall(counted.round_trips / n, counted.commands / n)


# -- 2. per-call overhead ------------------------------------------------------------------


@dataclass
class Overhead:
    micros: dict[str, float]  # peer name -> median µs per closed+success call
    raw_sync: float  # µs per raw EVALSHA, sync client
    raw_async: float
    # Where exact mode's time goes (sync): step -> median µs, each step adding one part.
    breakdown: dict[str, float] = field(default_factory=dict)


#: The steps from a raw EVALSHA to a guarded call, in the order they add cost.
BREAKDOWN = (
    "raw EVALSHA of `return 1`, no arguments",
    "… with the 3 keys and 8 arguments of a `record` call",
    "… running `record` as a FUNCTION (FCALL)",
    "fleetbreaker `cb.call(fn)`",
    "(the EVALSHA path: `record` as a script)",
)


def overhead(
    peers: list[Peer], server: BenchRedis, driver: Driver, batches: int, calls: int
) -> Overhead:
    """Medians over ``batches`` rounds; each round runs one batch of every contender in
    turn, so that the machine's noise falls on all of them alike."""
    sync_client = redis.Redis.from_url(server.url)
    async_client = redis.asyncio.Redis.from_url(server.url)
    sha = sync_client.script_load("return 1")
    guards = {peer.name: driver.guard(peer, server.url, NEVER_TRIPS) for peer in peers}
    for guard in guards.values():
        driver.calls(guard, 20)

    def raw_sync() -> None:
        for _ in range(calls):
            sync_client.evalsha(sha, 0)

    async def raw_async_batch() -> None:
        for _ in range(calls):
            await async_client.evalsha(sha, 0)

    def raw_async() -> None:
        driver.loop.run_until_complete(raw_async_batch())

    keys, args = _record_call(sync_client)
    record_sha = sync_client.script_load(script_source("record"))
    record_function = function_name("record")

    def with_args() -> None:
        for _ in range(calls):
            sync_client.evalsha(sha, 3, *keys, *args)

    def record_alone() -> None:
        for _ in range(calls):
            sync_client.fcall(record_function, 3, *keys, *args)

    def record_script() -> None:
        for _ in range(calls):
            sync_client.evalsha(record_sha, 3, *keys, *args)

    contenders: dict[str, Callable[[], Any]] = {
        "raw sync": raw_sync,
        "raw async": raw_async,
        BREAKDOWN[1]: with_args,
        BREAKDOWN[2]: record_alone,
        BREAKDOWN[4]: record_script,
    }
    for name, guard in guards.items():
        contenders[name] = functools.partial(driver.calls, guard, calls)
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(batches):
        for name, run in contenders.items():
            started = time.perf_counter()
            run()
            samples[name].append((time.perf_counter() - started) / calls * 1e6)
    for guard in guards.values():
        driver.close(guard)
    driver.loop.run_until_complete(async_client.aclose())
    sync_client.close()
    medians = {name: statistics.median(values) for name, values in samples.items()}
    return Overhead(
        micros={name: medians[name] for name in guards},
        raw_sync=medians["raw sync"],
        raw_async=medians["raw async"],
        breakdown={
            BREAKDOWN[0]: medians["raw sync"],
            BREAKDOWN[1]: medians[BREAKDOWN[1]],
            BREAKDOWN[2]: medians[BREAKDOWN[2]],
            BREAKDOWN[3]: medians.get("fleetbreaker", float("nan")),
            BREAKDOWN[4]: medians[BREAKDOWN[4]],
        },
    )


def _record_call(client: redis.Redis) -> tuple[list[str], list[str | int]]:
    """The keys and arguments of a closed+success ``record`` on a live breaker, as the
    library sends them (its private wire module: this is a measurement)."""
    from breaker import CircuitBreaker
    from breaker._store.wire import Wired, record_args

    cb = CircuitBreaker("bench-breakdown", redis=client, failure_threshold=10_000)
    cb.call(ok)
    created_at, generation = client.hmget(cb.keys.state, "created_at", "generation")
    args = record_args(
        Wired.of(cb.config, cb.name),
        version=(int(created_at or 0), int(generation or 0)),
        lease_id="",
        outcome="success",
        duration_ms=0,
        batch=None,
        now_ms=None,
    )
    keys = cb.keys.as_list()
    cb.close()
    return keys, args


# -- 3. serialization ---------------------------------------------------------------------

CALLERS = 16
CALLS_EACH = 5
UPSTREAM_SECONDS = 0.02


def serialization(peer: Peer, server: BenchRedis, driver: Driver, repeats: int) -> float:
    """Elapsed time of 16 concurrent callers x 5 calls of a 20 ms upstream through one
    breaker, divided by the ideal (5 x 20 ms); the median of ``repeats``."""
    ideal = CALLS_EACH * UPSTREAM_SECONDS
    guard = driver.guard(peer, server.url, NEVER_TRIPS)
    driver.calls(guard, 5)
    ratios = []
    for _ in range(repeats):
        if isinstance(guard, SyncGuard):
            ratios.append(_threads(guard) / ideal)
        else:
            ratios.append(driver.loop.run_until_complete(_tasks(guard)) / ideal)
    driver.close(guard)
    return statistics.median(ratios)


def _threads(guard: SyncGuard) -> float:
    start = threading.Barrier(CALLERS + 1)

    def upstream() -> None:
        time.sleep(UPSTREAM_SECONDS)

    def caller() -> None:
        start.wait()
        for _ in range(CALLS_EACH):
            guard.call(upstream)

    threads = [threading.Thread(target=caller) for _ in range(CALLERS)]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


async def _tasks(guard: AsyncGuard) -> float:
    async def upstream() -> None:
        await asyncio.sleep(UPSTREAM_SECONDS)

    async def caller() -> None:
        for _ in range(CALLS_EACH):
            await guard.call(upstream)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(CALLERS)))
    return time.perf_counter() - started


# -- 2b. Redis server time, and the embedded backend ---------------------------------------


@dataclass(frozen=True)
class ServerTime:
    """Redis's own µs per command (``INFO commandstats``), medians over rounds."""

    return_1: float  # EVALSHA of `return 1`, no keys
    fcall_record: float  # a closed success, as the library runs it (FUNCTION)
    evalsha_record: float  # the same code as a script (the EVALSHA path)

    @property
    def ratio(self) -> float:
        return self.fcall_record / self.return_1


def server_time(server: BenchRedis, calls: int, rounds: int) -> ServerTime:
    """Each round: ``calls`` raw EVALSHAs of `return 1`, then ``calls`` closed successes
    through a breaker in FUNCTION mode and in EVALSHA mode, each after CONFIG RESETSTAT
    on the benchmark's own Redis (nothing else talks to it)."""
    from breaker import CircuitBreaker

    client = redis.Redis.from_url(server.url)
    sha = client.script_load("return 1")
    breakers = {
        mode: CircuitBreaker(f"bench-server-{mode}", redis=client, script_mode=mode)
        for mode in ("functions", "eval")
    }
    for cb in breakers.values():
        for _ in range(20):
            cb.call(ok)

    def per_call(command: str, run: Callable[[], object]) -> float:
        client.config_resetstat()
        for _ in range(calls):
            run()
        return float(client.info("commandstats")[f"cmdstat_{command}"]["usec_per_call"])

    samples: dict[str, list[float]] = {"return_1": [], "functions": [], "eval": []}
    for _ in range(rounds):
        samples["return_1"].append(per_call("evalsha", lambda: client.evalsha(sha, 0)))
        samples["functions"].append(per_call("fcall", lambda: breakers["functions"].call(ok)))
        samples["eval"].append(per_call("evalsha", lambda: breakers["eval"].call(ok)))
    for cb in breakers.values():
        cb.close()
    client.close()
    return ServerTime(
        return_1=statistics.median(samples["return_1"]),
        fcall_record=statistics.median(samples["functions"]),
        evalsha_record=statistics.median(samples["eval"]),
    )


def embedded(calls: int, rounds: int) -> float:
    """µs per closed success on the embedded backend (no Redis): the median of
    ``rounds`` batches of ``calls``."""
    from breaker import CircuitBreaker

    cb = CircuitBreaker(f"bench-embedded-{uuid.uuid4().hex[:8]}", failure_threshold=10**6)
    for _ in range(20):
        cb.call(ok)
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            cb.call(ok)
        samples.append((time.perf_counter() - started) / calls * 1e6)
    cb.close()
    return statistics.median(samples)
