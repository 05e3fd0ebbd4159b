"""Time, injectable: the breaker never reads the wall clock of the machine.

In production, scripts take time from Redis ``TIME`` and the process measures only
durations (``monotonic``). A test injects a ``ManualClock``: the scripts then get its
epoch time as an argument, so a test moves a whole fleet through its timeouts without
sleeping. Retry waits go through the clock too: a ``ManualClock`` records them and
moves on, and ``set_testing(True)`` makes the ``SystemClock`` skip them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds, for durations and local deadlines."""
        ...

    def epoch_ms(self) -> int | None:
        """Epoch ms to hand to the scripts, or None to let them read Redis ``TIME``."""
        ...

    def wall(self) -> float:
        """Epoch seconds of this machine, only to read an HTTP-date ``Retry-After``."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait before a retry (blocking)."""
        ...

    async def asleep(self, seconds: float) -> None:
        """Wait before a retry (in the event loop)."""
        ...


_testing = False


def set_testing(on: bool) -> None:
    """Make every retry wait of the ``SystemClock`` return at once (for test suites)."""
    global _testing
    _testing = on


class SystemClock:
    """Local durations from ``time.monotonic``; absolute time from Redis."""

    def monotonic(self) -> float:
        return time.monotonic()

    def epoch_ms(self) -> None:
        return None

    def wall(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if not _testing:
            time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        if not _testing:
            await asyncio.sleep(seconds)


class ManualClock:
    """A clock that moves only when told to; both local and script time follow it.

    A wait moves it forward at once and is recorded in ``sleeps``.

    >>> clock = ManualClock()
    >>> clock.advance(10.0)
    >>> clock.monotonic()
    1700000010.0
    >>> clock.sleep(0.5)
    >>> clock.sleeps
    [0.5]
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds

    def monotonic(self) -> float:
        return self._now

    def epoch_ms(self) -> int:
        return round(self._now * 1000)

    def wall(self) -> float:
        return self._now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self._now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)
