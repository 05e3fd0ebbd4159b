"""``Bulkhead``: at most ``limit`` calls in flight to one upstream, across the fleet.

Each call holds a lease, a member of the bulkhead's sorted set in Redis scored by its
expiry on Redis's clock (``lua/fleetbreaker.lua``: take, give, renew). A process
renews the leases it has held for a quarter of ``lease_ttl`` or more, all in one call,
every quarter of ``lease_ttl``; a process that dies stops renewing, and its leases
are gone ``lease_ttl`` later. A lease is given back exactly once (``Lease.release``),
also on an exception or a cancellation. A give that fails (Redis away, or a reply
slower than ``backend_timeout``) is sent again with the next give or renewal, while
the lease would still hold its place.

While Redis cannot be reached, each process takes leases from the fallback lane (the
same Lua, in this process) up to its share of the limit: ``limit // processes``, the
processes Redis last counted, at least 1. No lock of this module is held across a
Redis call or the protected call.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import itertools
import logging
import os
import secrets
import socket
import threading
from types import TracebackType
from typing import Any

from .._clock import Clock, SystemClock
from .._decisions.steps import Call, Lane
from .._exceptions import BackendUnavailableError, BulkheadFullError
from .._keys import BulkheadKeys, check_prefix, slots_channel
from .._store.backend import Backend, open_backend, release
from .._store.local import fallback_engine
from .._types import ScriptMode
from .config import AdaptiveLimit, BulkheadConfig
from .giving import Giving
from .lanes import Lanes, Steps
from .lease import Lease
from .renewal import Renewer
from .wakeups import Wakeups
from .wire import (
    BulkheadSnapshot,
    decode_slots,
    occupancy_args,
    renew_args,
    take_args,
)

logger = logging.getLogger("breaker")

#: The gives of leases granted to cancelled takers, while they run.
_ORPHANS: set[asyncio.Task[None]] = set()


class Bulkhead:
    """A fleet-wide limit on the calls in flight through it.

    >>> inventory = Bulkhead("bulkhead-doc", limit=2)
    >>> with inventory:
    ...     inventory.snapshot().in_use
    1
    >>> inventory.close()
    """

    def __init__(
        self,
        name: str,
        *,
        redis: Any = None,
        limit: int | AdaptiveLimit = 20,
        lease_ttl: float = 2.0,
        max_wait: float = 0.0,
        prefix: str = "breaker",
        backend_timeout: float = 0.25,
        script_mode: ScriptMode = "auto",
        clock: Clock | None = None,
    ) -> None:
        config = BulkheadConfig(limit=limit, lease_ttl=lease_ttl, max_wait=max_wait)
        check_prefix(prefix)
        self.keys = BulkheadKeys.of(prefix, name)  # checks the name
        self.name = name
        given = config.limit
        #: The limit learnt by the fleet (None: ``limit`` is fixed).
        self.adaptive = given if isinstance(given, AdaptiveLimit) else None
        #: The limit: fixed, or the fleet's learnt one as the last reply said.
        self.limit = given.initial if isinstance(given, AdaptiveLimit) else given
        self.lease_ttl = config.lease_ttl
        self.max_wait = config.max_wait
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._backend: Backend = open_backend(redis, backend_timeout, script_mode)
        backend = self._backend
        self._lanes = Lanes(name, self.keys.as_list(), backend, fallback_engine(), self.clock)
        self._channel = (
            slots_channel(prefix, name, db=backend.db, cluster=backend.cluster)
            if backend.kind == "redis"
            else ""
        )
        self.process = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._held: dict[str, Lease] = {}
        self._entered: contextvars.ContextVar[tuple[Lease, ...]] = contextvars.ContextVar(
            f"bulkhead:{name}", default=()
        )
        #: Processes Redis last counted: the fallback lane's share divides by them.
        self.processes = 1
        self._away = False  # taking from the fallback lane (logged once per outage)
        # Wake-ups: a lease given back here, or heard of from the channel.
        self._wakeups = Wakeups(
            name, self._channel, cluster=backend.cluster, is_async=backend.is_async
        )
        self._renewer = Renewer(name, self.lease_ttl / 4, self._renew, self._arenew)
        self._gives = Giving(
            name, self.process, self.lease_ttl, self._channel, self.clock, self.adaptive
        )
        self._closed = False

    # -- the share while Redis is away -------------------------------------------

    @property
    def local_share(self) -> int:
        """How many leases this process may hold while Redis cannot be reached."""
        return max(1, self.limit // max(1, self.processes))

    # -- taking and giving: the steps, then the drivers that run them ----------------

    def _taking(self, lease_id: str, waiter: str, wait: float) -> Steps:
        now = self.clock.epoch_ms()
        start = self.clock.monotonic()
        try:
            raw = yield Call(
                "shared",
                "take",
                take_args(
                    now,
                    self.process,
                    self.lease_ttl,
                    limit=self.limit if self.adaptive is None else self.adaptive.initial,
                    lease=lease_id,
                    waiter=waiter,
                    wait=wait,
                    adaptive=self.adaptive is not None,
                ),
            )
        except BackendUnavailableError as exc:
            if not self._away:
                self._away = True
                logger.warning(
                    "bulkhead %r: Redis unreachable (%s): this process takes at most its "
                    "share of the limit, %d of %d (%d processes last seen), until it is back",
                    self.name,
                    exc.reason,
                    self.local_share,
                    self.limit,
                    self.processes,
                )
            # Calls let through by Redis before it went away are still in flight:
            # they count against the share, or the upstream would see both at once.
            with self._lock:
                shared = sum(lease.lane == "shared" for lease in self._held.values())
            raw = yield Call(
                "local",
                "take",
                take_args(
                    now,
                    self.process,
                    self.lease_ttl,
                    limit=max(0, self.local_share - shared),
                    lease=lease_id,
                ),
            )
            occupancy = decode_slots(raw)
            if exc.sent:  # Redis may have granted it: its give is owed (``Giving``)
                self._gives.lost_take(lease_id, start, going_on=occupancy.granted)
            return "local", occupancy
        occupancy = decode_slots(raw)
        self.processes = max(1, occupancy.processes)
        if self.adaptive is not None:
            self.limit = max(1, occupancy.limit)
        if self._away:
            self._away = False
            logger.warning("bulkhead %r: Redis is back: leases are fleet-wide again", self.name)
        return "shared", occupancy

    def _giving(self, lease: Lease) -> Steps:
        held = yield from self._gives.give(lease)
        self._wakeups.wake()
        if lease.lane == "shared":
            limit = yield from self._gives.tune(held)
            if limit is not None:
                self.limit = limit

    def _renewing(self) -> Steps:
        """One call per lane for every lease held a quarter of ``lease_ttl`` or more;
        then the gives owed, if any (after: a give that fails starts the backend's
        backoff, which would skip the renewals)."""
        due = self.clock.monotonic() - self.lease_ttl / 4
        with self._lock:
            leases = [lease for lease in self._held.values() if lease.taken_at <= due]
        for lane in ("shared", "local"):
            ids = [lease.id for lease in leases if lease.lane == lane]
            if not ids:
                continue
            args = renew_args(self.clock.epoch_ms(), self.process, self.lease_ttl, ids)
            try:
                occupancy = decode_slots((yield Call(lane, "renew", args)))
            except BackendUnavailableError:
                continue  # the next renewal tries again; a lease lost meanwhile is lost
            if occupancy.count < len(ids):
                logger.warning(
                    "bulkhead %r: %d of %d leases had expired before their renewal (this "
                    "process stalled for longer than lease_ttl %.3fs): the fleet may have "
                    "let as many more calls through",
                    self.name,
                    len(ids) - occupancy.count,
                    len(ids),
                    self.lease_ttl,
                )
        yield from self._gives.pay()

    def _drive(self, steps: Steps) -> Any:
        return self._lanes.drive(steps)

    async def _adrive(self, steps: Steps) -> Any:
        return await self._lanes.adrive(steps)

    # -- leases ----------------------------------------------------------------------

    def _new_lease_id(self) -> str:
        return f"{self.process}:{next(self._ids)}"

    def _holding(self, lease_id: str, lane: Lane) -> Lease:
        lease = Lease(self, lease_id, lane, self.clock.monotonic())
        with self._lock:
            self._held[lease_id] = lease
        return lease

    def _holds(self, lease: Lease) -> bool:
        with self._lock:
            return lease.id in self._held

    def _settle(self, lease: Lease) -> bool:
        """True once per lease: the caller gives it back."""
        with self._lock:
            return self._held.pop(lease.id, None) is not None

    def _full(self, occupancy: BulkheadSnapshot, lane: Lane) -> BulkheadFullError:
        if lane == "local":  # the share, of which calls let through by Redis take some
            return BulkheadFullError(
                self.name, occupancy.retry_after, in_use=self.held(), limit=self.local_share
            )
        return BulkheadFullError(
            self.name, occupancy.retry_after, in_use=occupancy.in_use, limit=occupancy.limit
        )

    def acquire(self) -> Lease:
        """A lease, or ``BulkheadFullError`` once ``max_wait`` has passed without one."""
        self._check(sync=True)
        deadline = self.clock.monotonic() + self.max_wait
        waiter = self._new_lease_id() if self.max_wait > 0 else ""
        while True:
            lease_id = self._new_lease_id()
            remaining = deadline - self.clock.monotonic()
            seen = self._wakeups.frees
            lane, occupancy = self._drive(
                self._taking(lease_id, waiter if remaining > 0 else "", remaining)
            )
            if occupancy.granted:
                lease = self._holding(lease_id, lane)
                self._renewer.start_thread()
                return lease
            if remaining <= 0:
                raise self._full(occupancy, lane)
            self._wakeups.follow(self._backend.subscriber)
            self._wakeups.wait(seen, min(remaining, self.lease_ttl / 4))

    async def aacquire(self) -> Lease:
        """``acquire``, awaited. A lease granted while the caller was cancelled is
        given back at once."""
        self._check(sync=False)
        deadline = self.clock.monotonic() + self.max_wait
        waiter = self._new_lease_id() if self.max_wait > 0 else ""
        loop = asyncio.get_running_loop()
        while True:
            lease_id = self._new_lease_id()
            remaining = deadline - self.clock.monotonic()
            seen = self._wakeups.frees
            task = loop.create_task(
                self._adrive(self._taking(lease_id, waiter if remaining > 0 else "", remaining))
            )
            try:
                lane, occupancy = await asyncio.shield(task)
            except asyncio.CancelledError:
                task.add_done_callback(functools.partial(self._orphan, lease_id=lease_id))
                raise
            if occupancy.granted:
                lease = self._holding(lease_id, lane)
                if self._backend.is_async:
                    self._renewer.start_task()
                else:  # the embedded backend: blocking calls, on a thread
                    self._renewer.start_thread()
                return lease
            if remaining <= 0:
                raise self._full(occupancy, lane)
            self._wakeups.follow(self._backend.subscriber)
            await self._wakeups.await_free(seen, min(remaining, self.lease_ttl / 4))

    def _orphan(self, task: asyncio.Task[Any], *, lease_id: str) -> None:
        """A take whose caller was cancelled: its lease, if granted, goes back."""
        if task.cancelled() or task.exception() is not None:
            return
        lane, occupancy = task.result()
        if occupancy.granted:
            lease = self._holding(lease_id, lane)
            giving = task.get_loop().create_task(lease.arelease())
            _ORPHANS.add(giving)  # held until done: the loop keeps weak references only
            giving.add_done_callback(_ORPHANS.discard)

    def _renew(self) -> None:
        self._drive(self._renewing())

    async def _arenew(self) -> None:
        await self._adrive(self._renewing())

    # -- the rest of the API -----------------------------------------------------------

    def snapshot(self) -> BulkheadSnapshot:
        """The leases held now, the limit last asked for (this process's, before any
        lease was), the processes seen lately."""
        return self._seen(self._lanes.run(self._occupancy()))

    async def asnapshot(self) -> BulkheadSnapshot:
        return self._seen(await self._lanes.arun(self._occupancy()))

    def _occupancy(self) -> Call:
        return Call("shared", "occupancy", occupancy_args(self.clock.epoch_ms()))

    def _seen(self, raw: list[Any]) -> BulkheadSnapshot:
        seen = decode_slots(raw)
        return seen if seen.limit else dataclasses.replace(seen, limit=self.limit)

    def held(self) -> int:
        """How many leases this process holds now."""
        with self._lock:
            return len(self._held)

    def _check(self, *, sync: bool) -> None:
        if self._closed:
            raise RuntimeError(f"bulkhead {self.name!r} is closed")
        if sync and not self._backend.serves_sync:
            raise TypeError(f"bulkhead {self.name!r} uses an asyncio Redis client: use aacquire")
        if not sync and not self._backend.serves_async:
            raise TypeError(f"bulkhead {self.name!r} uses a sync Redis client: use acquire")

    def __enter__(self) -> Lease:
        lease = self.acquire()
        self._entered.set((*self._entered.get(), lease))
        return lease

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        *rest, lease = self._entered.get()
        self._entered.set(tuple(rest))
        lease.release()

    async def __aenter__(self) -> Lease:
        lease = await self.aacquire()
        self._entered.set((*self._entered.get(), lease))
        return lease

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        *rest, lease = self._entered.get()
        self._entered.set(tuple(rest))
        await lease.arelease()

    def close(self) -> None:
        """Give back every lease still held, stop renewing and following, let go of
        the backend."""
        if self._stop_all():
            for lease in self._remaining():
                lease.release()
            self._drive(self._gives.pay())
            self._wakeups.stop()
            if release(self._backend):
                self._backend.close()

    async def aclose(self) -> None:
        if self._stop_all():
            for lease in self._remaining():
                await lease.arelease()
            await asyncio.shield(self._adrive(self._gives.pay()))
            await self._wakeups.astop()
            if release(self._backend):
                await self._backend.aclose()

    def _stop_all(self) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._closed = True
        self._renewer.stop()
        return True

    def _remaining(self) -> list[Lease]:
        with self._lock:
            return list(self._held.values())

    def __repr__(self) -> str:
        return f"Bulkhead({self.name!r}, limit={self.limit}, lease_ttl={self.lease_ttl})"
