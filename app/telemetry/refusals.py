"""Refused admin tokens in the log: the first at once, then at most one line a minute
with how many came, from where, for as long as they keep coming.

A wrong token is answered 401 in well under a millisecond, so guessing runs at
hundreds of tries a second. A line per try would flood the log (and the guesser
decides how much); no line at all hid 3,000 of them. The token sent is never logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

logger = logging.getLogger("fleetbreaker.gateway")

#: At most one line per this many seconds while refusals keep coming.
REFUSALS_LOG_EVERY = 60.0
#: How many clients a line names, the most frequent first.
_CLIENTS_NAMED = 5


class RefusalLog:
    """Decides the lines about one worker's refused tokens. Pure: the caller passes
    the time (any monotonic clock, in seconds), logs what it is given back, and calls
    ``tick`` at ``due``.

    >>> log = RefusalLog(every=60.0)
    >>> log.refused("203.0.113.7", now=0.0)
    'admin API: refused a missing or wrong token from 203.0.113.7'
    >>> log.refused("203.0.113.7", now=1.0) is None
    True
    >>> log.due
    60.0
    >>> log.tick(now=60.0)
    'admin API: refused 1 more missing or wrong token in 60 s, from 203.0.113.7 (1)'
    >>> log.tick(now=120.0) is None  # none came: quiet again, the next one is told at once
    True
    """

    def __init__(self, every: float = REFUSALS_LOG_EVERY) -> None:
        self.every = every
        self.due: float | None = None  # when ``tick`` is next wanted; None: quiet
        self._since = 0.0
        self._clients: Counter[str] = Counter()

    def refused(self, client: str | None, now: float) -> str | None:
        """A refused request: its line, or None when it is counted for the next one."""
        who = client or "an unknown client"
        if self.due is None:
            self.due = now + self.every
            self._since = now
            return f"admin API: refused a missing or wrong token from {who}"
        self._clients[who] += 1
        return None

    def tick(self, now: float) -> str | None:
        """The line for the refusals counted since the last line, or None (and quiet
        again) when there were none."""
        if not self._clients:
            self.due = None
            return None
        line = self._line(now)
        self._clients.clear()
        self._since = now
        self.due = now + self.every
        return line

    def _line(self, now: float) -> str:
        count = sum(self._clients.values())
        clients = ", ".join(
            f"{client} ({times})" for client, times in self._clients.most_common(_CLIENTS_NAMED)
        )
        if len(self._clients) > _CLIENTS_NAMED:
            clients += f" and {len(self._clients) - _CLIENTS_NAMED} more"
        tokens = "token" if count == 1 else "tokens"
        return (
            f"admin API: refused {count} more missing or wrong {tokens} in "
            f"{now - self._since:.0f} s, from {clients}"
        )

    @property
    def counted(self) -> int:
        """Refusals counted and not yet told."""
        return sum(self._clients.values())


class RefusalLogger:
    """Logs one worker's refused tokens as ``RefusalLog`` decides, on a timer of the
    event loop; ``close`` tells what is still counted and stops the timer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, every: float = REFUSALS_LOG_EVERY) -> None:
        self._loop = loop
        self._log = RefusalLog(every)
        self._timer: asyncio.TimerHandle | None = None

    def refused(self, client: str | None) -> None:
        line = self._log.refused(client, self._loop.time())
        if line is not None:
            _write(line, 1, client)
            self._schedule()

    def _tick(self) -> None:
        count = self._log.counted
        line = self._log.tick(self._loop.time())
        self._timer = None
        if line is not None:
            _write(line, count, None)
            self._schedule()

    def _schedule(self) -> None:
        if self._log.due is not None:
            self._timer = self._loop.call_at(self._log.due, self._tick)

    def close(self) -> None:
        """Stop the timer; tell what is counted and not told yet."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        count = self._log.counted
        line = self._log.tick(self._loop.time())
        if line is not None:
            _write(line, count, None)


def _write(line: str, count: int, client: str | None) -> None:
    logger.warning(
        line, extra={"fields": {"event": "admin_refused", "refused": count, "client": client}}
    )
