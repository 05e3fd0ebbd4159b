"""Scenarios 4-6, across OS processes sharing one breaker through Redis: fleet waste,
half-open probes, and the time a process takes to learn of a trip it did not see.

Each process builds its own guard of the peer under test and runs its callers as
threads (sync peers) or tasks (async peers). The upstream is simulated in each
process; what reaches it is counted there and summed by the parent. Time is
``time.monotonic()``, one clock for every process of the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.synchronize
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .peers import PEERS, AsyncGuard, Rejected, Settings, SyncGuard, UpstreamDown

PROCESSES = 4
CALLERS = 8
THRESHOLD = 5
_CONTEXT = multiprocessing.get_context("spawn")
_JOIN_TIMEOUT = 60.0
_UPSTREAM_SECONDS = 0.002  # each simulated upstream call
_REFUSED_PAUSE = 0.002  # a refused caller waits this long before asking again


def _build(peer_name: str, url: str, name: str, settings: Settings) -> SyncGuard:
    """A sync peer's guard (async peers are built inside their loop, by ``_abuild``)."""
    make = PEERS[peer_name].make
    assert make is not None
    return make(url, name, settings)


async def _abuild(peer_name: str, url: str, name: str, settings: Settings) -> AsyncGuard:
    peer = PEERS[peer_name]
    assert peer.amake is not None
    return await peer.amake(url, name, settings)


def _is_async(peer_name: str) -> bool:
    return PEERS[peer_name].kind == "async"


class _Counter:
    def __init__(self) -> None:
        self.value = 0
        self.last: float | None = None
        self._lock = threading.Lock()

    def hit(self) -> None:
        with self._lock:
            self.value += 1
            self.last = time.monotonic()


@dataclass
class _Sync:
    """What the processes of one run share, made before they start, reused by each
    scenario in turn (the parent clears the events between scenarios)."""

    ready: multiprocessing.synchronize.Barrier
    pair: multiprocessing.synchronize.Barrier  # processes 0 and 1, for time to learn
    failing: multiprocessing.synchronize.Event
    stop: multiprocessing.synchronize.Event
    tripped: multiprocessing.synchronize.Event
    go: multiprocessing.synchronize.Event


class FleetRun:
    """``PROCESSES`` worker processes for one peer, started once and given each
    scenario in turn through a queue of their own."""

    def __init__(self, peer_name: str, url: str) -> None:
        self.peer_name = peer_name
        self.url = url
        self.sync = _Sync(
            ready=_CONTEXT.Barrier(PROCESSES + 1),
            pair=_CONTEXT.Barrier(2),
            failing=_CONTEXT.Event(),
            stop=_CONTEXT.Event(),
            tripped=_CONTEXT.Event(),
            go=_CONTEXT.Event(),
        )
        self.orders: list[Any] = [_CONTEXT.Queue() for _ in range(PROCESSES)]
        self.results: Any = _CONTEXT.Queue()
        self.processes = [
            _CONTEXT.Process(
                target=_serve, args=(index, peer_name, url, self.sync, orders, self.results)
            )
            for index, orders in enumerate(self.orders)
        ]
        for process in self.processes:
            process.start()

    def __enter__(self) -> FleetRun:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for orders in self.orders:
            orders.put(("exit",))
        for process in self.processes:
            process.join(_JOIN_TIMEOUT)
            if process.is_alive():
                process.kill()

    def _order(self, *order: Any, to: int = PROCESSES) -> None:
        for event in (self.sync.failing, self.sync.stop, self.sync.tripped, self.sync.go):
            event.clear()
        for orders in self.orders[:to]:
            orders.put(order)

    def _collect(self, count: int, timeout: float = _JOIN_TIMEOUT) -> list[Any]:
        return [self.results.get(timeout=timeout) for _ in range(count)]

    def waste(self, observe: float) -> Waste:
        """4 processes x 8 callers on one breaker (threshold 5); the upstream starts
        failing at a known moment. Upstream calls made after it, fleet-wide."""
        self._order("waste", f"waste-{uuid.uuid4().hex[:10]}")
        self.sync.ready.wait(_JOIN_TIMEOUT)
        time.sleep(0.3)  # healthy traffic first
        failing_at = time.monotonic()
        self.sync.failing.set()
        time.sleep(observe)
        self.sync.stop.set()
        counts = [result for _, result in self._collect(PROCESSES)]
        lasts = [last for _, last in counts if last is not None]
        return Waste(
            calls_after=sum(count for count, _ in counts),
            last_call_ms=(max(lasts) - failing_at) * 1000 if lasts else 0.0,
            ideal=THRESHOLD,
        )

    def probes(self) -> int:
        """Process 0 trips the breaker; after the reset timeout, 4 processes x 8
        callers call at once. How many calls reached the upstream."""
        self._order("probes", f"probes-{uuid.uuid4().hex[:10]}")
        self.sync.ready.wait(_JOIN_TIMEOUT)
        self.sync.tripped.wait(_JOIN_TIMEOUT)
        time.sleep(PROBE_SETTINGS.reset_timeout + _LEARN_SLACK)
        self.sync.go.set()
        return sum(result for _, result in self._collect(PROCESSES))

    def learn(self, repeats: int) -> Learn:
        """Process A (0) trips a fresh breaker; process B (1), which has only seen
        successes, calls every millisecond. The time from A's tripping call returning
        (its last failure before its own breaker refuses it) to B's first refused call,
        per repeat. B's successes may reset a consecutive count: A fails until refused."""
        names = [f"learn-{uuid.uuid4().hex[:10]}" for _ in range(repeats)]
        self._order("learn", names, to=2)
        reported = dict(self._collect(2, timeout=_JOIN_TIMEOUT + repeats * 2 * _LEARN_LIMIT))
        millis: list[float | None] = []
        for tripped_at, learned_at in zip(reported[0], reported[1], strict=True):
            if learned_at is None or tripped_at is None:
                millis.append(None)
            else:
                millis.append(max(0.0, learned_at - tripped_at) * 1000)
        return Learn(millis)


def _serve(index: int, peer_name: str, url: str, sync: _Sync, orders: Any, results: Any) -> None:
    while True:
        order = orders.get()
        if order[0] == "waste":
            results.put((index, _waste_worker(peer_name, url, order[1], sync)))
        elif order[0] == "probes":
            results.put((index, _probe_worker(peer_name, url, order[1], index == 0, sync)))
        elif order[0] == "learn":
            role = "A" if index == 0 else "B"
            results.put((index, _learn_worker(role, peer_name, url, order[1], sync)))
        else:
            return


# -- 4. fleet waste ----------------------------------------------------------------------


@dataclass(frozen=True)
class Waste:
    calls_after: int  # upstream calls made after it started failing, fleet-wide
    last_call_ms: float  # after the failure began, when the last of them was made
    ideal: int


WASTE_SETTINGS = Settings(threshold=THRESHOLD, reset_timeout=60.0)


def _waste_worker(peer_name: str, url: str, name: str, sync: _Sync) -> tuple[int, float | None]:
    settings, ready, failing, stop = WASTE_SETTINGS, sync.ready, sync.failing, sync.stop
    after = _Counter()
    if _is_async(peer_name):

        async def upstream() -> None:
            await asyncio.sleep(_UPSTREAM_SECONDS)
            if failing.is_set():
                after.hit()
                raise UpstreamDown

        async def main() -> None:
            guard = await _abuild(peer_name, url, name, settings)
            await asyncio.to_thread(ready.wait, _JOIN_TIMEOUT)

            async def caller() -> None:
                while not stop.is_set():
                    try:
                        await guard.call(upstream)
                    except Rejected:
                        await asyncio.sleep(_REFUSED_PAUSE)
                    except UpstreamDown:
                        pass

            await asyncio.gather(*(caller() for _ in range(CALLERS)))

        asyncio.run(main())
    else:
        guard = _build(peer_name, url, name, settings)

        def sync_upstream() -> None:
            time.sleep(_UPSTREAM_SECONDS)
            if failing.is_set():
                after.hit()
                raise UpstreamDown

        def sync_caller() -> None:
            while not stop.is_set():
                try:
                    guard.call(sync_upstream)
                except Rejected:
                    time.sleep(_REFUSED_PAUSE)
                except UpstreamDown:
                    pass

        ready.wait(_JOIN_TIMEOUT)
        _run_threads(sync_caller, CALLERS)
    return after.value, after.last


def _run_threads(target: Callable[[], None], count: int) -> None:
    threads = [threading.Thread(target=target) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# -- 5. half-open probes -------------------------------------------------------------------

PROBE_SETTINGS = Settings(threshold=THRESHOLD, reset_timeout=2.0, half_open_max_calls=1)
_PROBE_HOLD = 0.3  # a trial call takes this long, so every caller asks while it is out
_LEARN_SLACK = 1.2  # past the reset timeout: peers that poll (1 s) have caught up


def _probe_worker(peer_name: str, url: str, name: str, trips: bool, sync: _Sync) -> int:
    ready, tripped, go = sync.ready, sync.tripped, sync.go
    hits = _Counter()
    if _is_async(peer_name):

        async def fail() -> None:
            raise UpstreamDown

        async def upstream() -> None:
            hits.hit()
            await asyncio.sleep(_PROBE_HOLD)

        async def main() -> None:
            guard = await _abuild(peer_name, url, name, PROBE_SETTINGS)
            await asyncio.to_thread(ready.wait, _JOIN_TIMEOUT)
            if trips:
                for _ in range(PROBE_SETTINGS.threshold):
                    with contextlib.suppress(UpstreamDown, Rejected):
                        await guard.call(fail)
                tripped.set()
            await asyncio.to_thread(go.wait, _JOIN_TIMEOUT)

            async def once() -> None:
                with contextlib.suppress(Rejected):
                    await guard.call(upstream)

            await asyncio.gather(*(once() for _ in range(CALLERS)))

        asyncio.run(main())
    else:
        guard = _build(peer_name, url, name, PROBE_SETTINGS)

        def sync_fail() -> None:
            raise UpstreamDown

        def sync_upstream() -> None:
            hits.hit()
            time.sleep(_PROBE_HOLD)

        ready.wait(_JOIN_TIMEOUT)
        if trips:
            for _ in range(PROBE_SETTINGS.threshold):
                with contextlib.suppress(UpstreamDown, Rejected):
                    guard.call(sync_fail)
            tripped.set()

        def sync_once() -> None:
            go.wait(_JOIN_TIMEOUT)
            with contextlib.suppress(Rejected):
                guard.call(sync_upstream)

        _run_threads(sync_once, CALLERS)
    return hits.value


# -- 6. time to learn ------------------------------------------------------------------------

_LEARN_LIMIT = 3.0  # B gives up after this long
_TRIP_ATTEMPTS = 200  # A fails until its own breaker refuses it: then it has tripped
_B_INTERVAL = 0.001  # B calls this often


@dataclass(frozen=True)
class Learn:
    millis: list[float | None]  # per repeat; None: B never learned within the limit

    @property
    def median(self) -> float | None:
        known = [m if m is not None else _LEARN_LIMIT * 1000 for m in self.millis]
        return statistics.median(known) if known else None

    @property
    def worst(self) -> float | None:
        known = [m if m is not None else _LEARN_LIMIT * 1000 for m in self.millis]
        return max(known) if known else None


LEARN_SETTINGS = Settings(threshold=THRESHOLD, reset_timeout=60.0)


def _learn_worker(
    role: str, peer_name: str, url: str, names: list[str], sync: _Sync
) -> list[float | None]:
    settings, step = LEARN_SETTINGS, sync.pair
    times: list[float | None] = []
    if _is_async(peer_name):

        async def main() -> None:
            for name in names:
                guard = await _abuild(peer_name, url, name, settings)
                times.append(await _alearn_round(role, guard, settings, step))

        asyncio.run(main())
    else:
        for name in names:
            guard = _build(peer_name, url, name, settings)
            times.append(_learn_round(role, guard, settings, step))
    return times


def _learn_round(
    role: str, guard: SyncGuard, settings: Settings, step: multiprocessing.synchronize.Barrier
) -> float | None:
    def ok() -> None:
        return None

    def fail() -> None:
        raise UpstreamDown

    guard.call(ok)  # both start from a closed breaker they have used
    step.wait(_JOIN_TIMEOUT)
    if role == "A":
        time.sleep(0.1)
        tripped_at = None
        for _ in range(_TRIP_ATTEMPTS):  # B's successes may reset the count: fail on
            try:
                guard.call(fail)
            except UpstreamDown:
                tripped_at = time.monotonic()
            except Rejected:
                break
        step.wait(_JOIN_TIMEOUT + _LEARN_LIMIT)
        return tripped_at
    learned_at = None
    deadline = time.monotonic() + _LEARN_LIMIT
    while time.monotonic() < deadline:
        try:
            guard.call(ok)
        except Rejected:
            learned_at = time.monotonic()
            break
        time.sleep(_B_INTERVAL)
    step.wait(_JOIN_TIMEOUT + _LEARN_LIMIT)
    return learned_at


async def _alearn_round(
    role: str, guard: AsyncGuard, settings: Settings, step: multiprocessing.synchronize.Barrier
) -> float | None:
    async def ok() -> None:
        return None

    async def fail() -> None:
        raise UpstreamDown

    await guard.call(ok)
    await asyncio.to_thread(step.wait, _JOIN_TIMEOUT)
    if role == "A":
        await asyncio.sleep(0.1)
        tripped_at = None
        for _ in range(_TRIP_ATTEMPTS):
            try:
                await guard.call(fail)
            except UpstreamDown:
                tripped_at = time.monotonic()
            except Rejected:
                break
        await asyncio.to_thread(step.wait, _JOIN_TIMEOUT + _LEARN_LIMIT)
        return tripped_at
    learned_at = None
    deadline = time.monotonic() + _LEARN_LIMIT
    while time.monotonic() < deadline:
        try:
            await guard.call(ok)
        except Rejected:
            learned_at = time.monotonic()
            break
        await asyncio.sleep(_B_INTERVAL)
    await asyncio.to_thread(step.wait, _JOIN_TIMEOUT + _LEARN_LIMIT)
    return learned_at
