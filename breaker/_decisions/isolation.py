"""A process's own failures under a quorum: when they alone would trip the breaker,
the process isolates itself instead of the fleet.

Under a quorum the fleet's breaker opens only when several voters see failures, so a
process whose path to the upstream is broken (its network, its pool, its CPU) cannot
open it for everyone. It must not go on failing either: when its own calls meet the
breaker's trip condition on their own (``failure_threshold`` consecutive failures, or
a failure or slow-call rate over its own window of at least ``minimum_calls``), it
refuses its own calls for ``reset_timeout``, then lets one trial through: a success
ends the isolation, a failure starts another. Its failures still count as its vote.

Pure: the engine tells it each admission and each outcome, with the time; it keeps
no lock across either (its own lock guards a few fields only).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import deque
from dataclasses import dataclass

from .._clock import Clock
from .._config import BreakerConfig, host_voter
from .._exceptions import CircuitOpenError
from .._listeners import BreakerListener
from .._models import TransitionEvent
from .._store.wire import isolation_arg
from .._types import Outcome

logger = logging.getLogger("breaker")

#: The reason a rejection of an isolated process gives.
ISOLATED = "isolated"


@dataclass
class _Bucket:
    index: int
    calls: int = 0
    failures: int = 0
    slow: int = 0


class Isolation(BreakerListener):
    """One process's own view of its calls to one breaker's upstream. It listens to
    the breaker's transitions: an operator's reset ends an isolation."""

    def __init__(self, name: str, config: BreakerConfig, clock: Clock) -> None:
        self.name = name
        self.config = config
        self.clock = clock
        self.enabled = config.quorum != 1
        #: The voter this process's failures count for, and its own id in the admin view.
        self.voter = config.voter or host_voter()
        self.process = f"{self.voter}/{os.getpid()}"
        self._fraction = 0 < config.quorum < 1
        self._heartbeat_every = config.window / 4
        self._next_heartbeat = 0.0
        self._lock = threading.Lock()
        self._streak = 0
        self._window: deque[_Bucket] = deque()
        self._until = 0.0  # monotonic: isolated until then (0: not isolated)
        self._trial = False  # the one trial after an isolation is out

    @property
    def isolated(self) -> bool:
        return self._until > 0.0

    def admit(self) -> bool:
        """Whether this call is the isolation's trial; raises ``CircuitOpenError``
        (reason ``isolated``) while the process refuses its own calls."""
        if not self._until:
            return False
        with self._lock:
            self._refuse(self.clock.monotonic())
            if not self._until:
                return False
            self._trial = True
            return True

    def refusal(self) -> None:
        """Raise what ``admit`` would, changing nothing (a retrier's early stop)."""
        with self._lock:
            self._refuse(self.clock.monotonic())

    def withdraw_trial(self) -> None:
        """The trial ``admit`` granted was not made (the fleet refused it, or Redis went
        away): the next call is the trial."""
        with self._lock:
            self._trial = False

    def _refuse(self, now: float) -> None:
        """Raise while isolated: before its end, or while its trial is out."""
        if self._until and (now < self._until or self._trial):
            raise CircuitOpenError(self.name, max(0.0, self._until - now), reason=ISOLATED)

    def note(self, outcome: Outcome, slow: bool, *, trial: bool) -> str | None:
        """Count one of this process's calls; "isolated" when it isolates itself now
        (``remaining_ms`` tells for how long), "ended" when its trial ended an isolation."""
        if not self.enabled or outcome == "ignored":
            if trial:
                self.withdraw_trial()  # the next call is the trial
            return None
        now = self.clock.monotonic()
        failed = outcome == "failure"
        with self._lock:
            if trial:
                self._trial = False
                if not failed:
                    self._forget()
                    return "ended"
                self._until = now + self.config.reset_timeout
                return "isolated"
            self._count(now, failed, slow)
            if self._until or not self._would_trip():
                return None
            self._until = now + self.config.reset_timeout
            return "isolated"

    def record_extras(self, outcome: Outcome, slow: bool, *, trial: bool) -> tuple[str, str]:
        """Count a call recorded with the fleet; what its record carries besides: the
        voter (with a failure or a slow call, its vote; under a fractional quorum, a
        heartbeat every quarter window) and an isolation that starts or ends ("")."""
        if not self.enabled:
            return "", ""
        changed = self.note(outcome, slow, trial=trial)
        now = self.clock.monotonic()
        voter = ""
        if outcome == "failure" or slow or (self._fraction and now >= self._next_heartbeat):
            voter = self.voter
            self._next_heartbeat = now + self._heartbeat_every
        if changed is None:
            return voter, ""
        if changed == "ended":
            logger.info(
                "breaker %s: this process ends its isolation: its trial succeeded", self.name
            )
            return voter, isolation_arg(self.process, 0)
        logger.warning(
            "breaker %s: this process (%s) isolates itself for %.1fs: its own failures alone "
            "would trip the breaker, and the fleet's quorum (%s) has not seen them elsewhere; "
            "then it sends one trial",
            self.name,
            self.process,
            self.config.reset_timeout,
            self.config.quorum,
        )
        return voter, isolation_arg(self.process, self.remaining_ms())

    def remaining_ms(self) -> int:
        """How long the isolation lasts from now (ms): Redis adds its own clock."""
        return math.ceil(max(0.0, self._until - self.clock.monotonic()) * 1000)

    def transition(self, event: TransitionEvent) -> None:
        if event.reason == "reset":
            self.clear()

    def clear(self) -> None:
        """An operator reset the breaker: every process tries again."""
        with self._lock:
            self._forget()

    def _forget(self) -> None:
        """Not isolated, and nothing counted (the lock held)."""
        self._until = 0.0
        self._trial = False
        self._streak = 0
        self._window.clear()

    def _count(self, now: float, failed: bool, slow: bool) -> None:
        self._streak = self._streak + 1 if failed else 0
        index = math.floor(now / self.config.window_bucket)
        if not self._window or self._window[-1].index != index:
            self._window.append(_Bucket(index))
        bucket = self._window[-1]
        bucket.calls += 1
        bucket.failures += failed
        bucket.slow += slow
        oldest = index - self.config.buckets + 1
        while self._window and self._window[0].index < oldest:
            self._window.popleft()

    def _would_trip(self) -> bool:
        config = self.config
        if self._streak >= config.failure_threshold:
            return True
        calls = sum(bucket.calls for bucket in self._window)
        if calls < config.minimum_calls:
            return False
        failing = config.failure_rate_threshold
        if failing is not None and sum(b.failures for b in self._window) >= failing * calls:
            return True
        slowing = config.slow_call_rate_threshold
        return slowing is not None and sum(b.slow for b in self._window) >= slowing * calls
