"""Which of a connection's failures deserve a log line: the first, then at most one a
minute while the outage lasts, then one when it is over.

A follower that reconnects with backoff fails every few seconds for as long as Redis
is away; a line per attempt fills a log with the same words, forever, and hides the
one line that matters, when it came back.
"""

from __future__ import annotations

#: At most one line per this many seconds while an outage lasts.
OUTAGE_LOG_EVERY = 60.0


class OutageLog:
    """Decides the log lines of one connection's outages. Pure: the caller passes the
    time (any monotonic clock, in seconds) and logs what it is given back.

    >>> log = OutageLog("events channel breaker:events")
    >>> log.failed("Error 111", now=0.0)
    'events channel breaker:events lost: Error 111'
    >>> log.failed("Error 111", now=5.0) is None
    True
    >>> log.recovered(now=7.0)
    'events channel breaker:events back after 7 s (2 failed attempts)'
    """

    def __init__(
        self,
        what: str,
        every: float = OUTAGE_LOG_EVERY,
        *,
        lost: str = "lost",
        still: str = "still lost",
        back: str = "back",
    ) -> None:
        self.what = what
        self.every = every
        self._words = (lost, still, back)
        self._since: float | None = None  # when the outage began; None: no outage
        self._logged_at = 0.0
        self._failures = 0

    def failed(self, reason: str, now: float) -> str | None:
        """A failed attempt: its line, or None when the outage was logged too recently."""
        self._failures += 1
        if self._since is None:
            self._since = self._logged_at = now
            return f"{self.what} {self._words[0]}: {reason}"
        if now - self._logged_at < self.every:
            return None
        self._logged_at = now
        return (
            f"{self.what} {self._words[1]} after {now - self._since:.0f} s "
            f"({self._failures} failed attempts): {reason}"
        )

    @property
    def ongoing(self) -> bool:
        """An outage began and has not ended."""
        return self._since is not None

    def recovered(self, now: float) -> str | None:
        """A successful attempt: the line that ends an outage, or None if there was none."""
        if self._since is None:
            return None
        line = (
            f"{self.what} {self._words[2]} after {now - self._since:.0f} s "
            f"({self._failures} failed attempts)"
        )
        self._since = None
        self._failures = 0
        return line
