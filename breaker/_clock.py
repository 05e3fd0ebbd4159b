"""Time, injectable: the breaker never reads the wall clock of the machine.

In production, scripts take time from Redis ``TIME`` and the process measures only
durations (``monotonic``). A test injects a ``ManualClock``: the scripts then get its
epoch time as an argument, so a test moves a whole fleet through its timeouts without
sleeping.
"""

from __future__ import annotations

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


class SystemClock:
    """Local durations from ``time.monotonic``; absolute time from Redis."""

    def monotonic(self) -> float:
        return time.monotonic()

    def epoch_ms(self) -> None:
        return None


class ManualClock:
    """A clock that moves only when told to; both local and script time follow it.

    >>> clock = ManualClock()
    >>> clock.advance(10.0)
    >>> clock.monotonic()
    1700000010.0
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds

    def monotonic(self) -> float:
        return self._now

    def epoch_ms(self) -> int:
        return round(self._now * 1000)
