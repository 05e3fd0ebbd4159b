"""What one process knows of one breaker, and the decisions it makes without Redis.

The state machine itself lives in Lua; this module only keeps the process's view of
it fresh (from script replies and from events) and uses that view to skip round
trips: a closed breaker admits without asking, an open one rejects without asking
until ``open_until``. No I/O happens here.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, replace

from .._clock import Clock
from .._config import BreakerConfig
from .._exceptions import CircuitOpenError
from .._models import TransitionEvent
from .._store.wire import Batch, Reply, Version
from .._types import State

#: How often a process that rejects calls (and so sends nothing) reports how many.
REJECTIONS_EVERY = 1.0

_REMEMBERED_EVENTS = 256


@dataclass(frozen=True, slots=True)
class LocalView:
    """The breaker as this process last heard of it. Deadlines are local monotonic time."""

    state: State
    created_at: int
    generation: int
    last_failure_at: int
    open_until: float
    # A closed view is trusted for reset_timeout: a breaker that opened after the view
    # was taken cannot be half-open before then, so no admitted call can bypass the
    # fleet-wide trial limit.
    trusted_until: float
    # The backend's epoch when the view was taken: a later epoch (Redis came back, the
    # events follower resubscribed) means events may have been missed.
    epoch: int = 0

    @property
    def version(self) -> Version:
        return (self.created_at, self.generation)


@dataclass(frozen=True, slots=True)
class Ticket:
    """One admitted call: what record needs to know about its admission."""

    version: Version
    lease_id: str
    started: float
    via_fallback: bool
    #: The one call an isolated process lets through when its isolation ends (quorum).
    isolation_trial: bool = False


class BreakerCore:
    """The local view of one breaker on one backend (Redis, or the in-process fallback)."""

    def __init__(self, name: str, config: BreakerConfig, clock: Clock, *, fallback: bool) -> None:
        self.name = name
        self.config = config
        self.clock = clock
        self.fallback = fallback
        self.view: LocalView | None = None
        self._lock = threading.Lock()
        self._pending = 0
        self._pending_version: Version = (-1, -1)
        self._next_flush = 0.0
        self._rejected = 0
        self._next_rejection_report = 0.0
        self._seen: deque[tuple[int, int]] = deque(maxlen=_REMEMBERED_EVENTS)
        # No view keeps a call out longer than these settings can open a breaker:
        # whatever a store or a message says, a rejection without asking ends then.
        longest = config.reset_timeout_max or config.reset_timeout
        self._longest_open = longest * (1 + config.reset_timeout_jitter)

    @property
    def idle(self) -> bool:
        """Nothing of this view would be lost with it: it is closed (or there is none
        yet), and no batched successes or rejections wait to be recorded."""
        view = self.view
        closed = view is None or view.state in ("closed", "disabled")
        return closed and self._pending == 0 and self._rejected == 0

    # -- admission ---------------------------------------------------------------

    def admit_locally(self, epoch: int = 0) -> Ticket | None:
        """A ticket when the view decides alone; raises when it rejects; None: ask Redis
        (also when the view is of an older ``epoch`` than the backend's)."""
        view = self.view
        now = self.clock.monotonic()
        if view is None or view.epoch != epoch:
            return None
        if view.state in ("closed", "disabled") and now < view.trusted_until:
            return Ticket(view.version, "", now, self.fallback)
        if view.state == "open" and now < view.open_until:
            raise CircuitOpenError(self.name, view.open_until - now)
        if view.state == "forced_open" and now < view.trusted_until:
            raise CircuitOpenError(self.name, self.config.reset_timeout, state="forced_open")
        return None

    def admit_from(self, reply: Reply, lease_id: str, epoch: int = 0) -> Ticket:
        """Turn an ``acquire`` reply into a ticket, or raise ``CircuitOpenError``."""
        self.apply(reply, epoch)
        now = self.clock.monotonic()
        if reply.verdict == "admit":
            return Ticket(reply.version, "", now, self.fallback)
        if reply.verdict == "trial":
            return Ticket(reply.version, lease_id, now, self.fallback)
        if reply.state == "forced_open":
            raise CircuitOpenError(self.name, self.config.reset_timeout, state="forced_open")
        retry_at = int(reply.extra) if reply.extra else reply.open_until
        raise CircuitOpenError(
            self.name, max(0.0, (retry_at - reply.now) / 1000), state=reply.state
        )

    # -- outcomes ----------------------------------------------------------------

    def is_slow(self, ticket: Ticket) -> bool:
        limit = self.config.slow_call_duration
        return limit is not None and self.clock.monotonic() - ticket.started >= limit

    def absorb_success(self, ticket: Ticket) -> bool:
        """Count a closed-state success locally (batched mode); True when it was absorbed."""
        if self.config.batch_interval is None or ticket.lease_id:
            return False
        view = self.view
        if view is None or view.state != "closed" or view.version != ticket.version:
            return False
        with self._lock:
            if self._pending_version != ticket.version:
                # Successes of an older closed period say nothing about this one.
                self._pending = 0
                self._pending_version = ticket.version
            if self._pending == 0:
                self._next_flush = self.clock.monotonic() + self.config.batch_interval
            self._pending += 1
        return True

    def flush_due(self) -> bool:
        """Batched successes whose interval is up, or rejections whose report is due
        (at most once a second): the periodic flush sends them even when no call
        comes, so the fleet's counts lag this process's by at most that."""
        now = self.clock.monotonic()
        return (self._pending > 0 and now >= self._next_flush) or (
            self._rejected > 0 and now >= self._next_rejection_report
        )

    def take_batch(self, version: Version) -> Batch:
        """Hand over what was counted locally for the next record: the successes of
        ``version``, and the calls rejected since the last report."""
        view = self.view
        with self._lock:
            count = self._pending if self._pending_version == version else 0
            self._pending = 0
            rejected, self._rejected = self._rejected, 0
            self._next_rejection_report = self.clock.monotonic() + REJECTIONS_EVERY
            return Batch(count, rejected, view.last_failure_at if view else 0)

    def count_rejection(self) -> bool:
        """Count a call this process rejected; True when the count is due in Redis (a
        breaker that stays open sends nothing else: it reports at most once a second)."""
        now = self.clock.monotonic()
        with self._lock:
            if self._rejected == 0 and now >= self._next_rejection_report:
                self._next_rejection_report = now + REJECTIONS_EVERY
            self._rejected += 1
            return now >= self._next_rejection_report

    # -- keeping the view fresh --------------------------------------------------

    def apply(self, reply: Reply, epoch: int = 0) -> None:
        view = self.view
        # Replies of concurrent calls may come back out of order: never step back.
        if view is not None and reply.version < view.version:
            return
        now = self.clock.monotonic()
        self.view = LocalView(
            state=reply.state,
            created_at=reply.created_at,
            generation=reply.generation,
            last_failure_at=reply.last_failure_at,
            open_until=self._open_until(now, reply.retry_after, reply.state),
            trusted_until=now + self.config.reset_timeout,
            epoch=epoch,
        )

    def _open_until(self, now: float, remaining: float, state: State) -> float:
        return now + min(remaining, self._longest_open) if state == "open" else 0.0

    def distrust(self) -> None:
        """Something changed that this view has not seen (a hint on the channel):
        decide nothing alone until Redis answers a call of this breaker again."""
        view = self.view
        if view is not None:
            self.view = replace(view, trusted_until=0.0, open_until=0.0)

    def apply_event(self, event: TransitionEvent, epoch: int = 0) -> None:
        """An event that came in a reply (this process's own, or relayed from another
        breaker object of this process): Redis holds what it says."""
        view = self.view
        if view is not None and event.version <= view.version:
            return
        now = self.clock.monotonic()
        remaining = max(0.0, (event.open_until - event.at) / 1000)
        state: State = event.to_state  # type: ignore[assignment]  # a reply of our scripts
        self.view = LocalView(
            state=state,
            created_at=event.created_at,
            generation=event.generation,
            last_failure_at=view.last_failure_at if view else 0,
            open_until=self._open_until(now, remaining, state),
            trusted_until=now + self.config.reset_timeout,
            epoch=epoch if view is None else view.epoch,
        )

    def unseen(self, events: tuple[TransitionEvent, ...]) -> list[TransitionEvent]:
        """The events not yet delivered to listeners (replies and pub/sub both carry them)."""
        fresh = []
        with self._lock:
            for event in events:
                if event.version not in self._seen:
                    self._seen.append(event.version)
                    fresh.append(event)
        return fresh
