"""What the events channel says, kept until Redis confirms it.

Anyone who may PUBLISH can write on the channel, so a message is only a hint: it
never moves a view. Hints are numbered as they come; one read of the breaker (the
follower's, or the reply of this process's next call) tells those Redis holds and
drops, with a warning, those it does not.
"""

from __future__ import annotations

import logging
import threading

from .._models import TransitionEvent
from .._store.wire import Version

logger = logging.getLogger("breaker")

#: Hints kept while unconfirmed: a flood of messages on the channel costs no memory.
_KEPT = 64


class Hints:
    """One breaker's unconfirmed hints, and whether a read of it is due."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._hints: list[tuple[int, TransitionEvent]] = []
        self.latest = 0  # the number of the last hint heard
        self.due = False
        # Round trips of this breaker under way: a hint heard meanwhile is most often
        # this call's own transition, published before its reply came back. The reply
        # confirms it; the follower reads only if a hint is left once none is.
        self._in_flight = 0

    def __bool__(self) -> bool:
        return bool(self._hints)

    def heard(self, event: TransitionEvent) -> None:
        with self._lock:
            self.latest += 1
            self._hints.append((self.latest, event))
            del self._hints[:-_KEPT]
            self.due = True

    def calling(self, started: bool) -> None:
        with self._lock:
            self._in_flight += 1 if started else -1

    @property
    def pending(self) -> bool:
        """A hint waits for a read: none of this breaker's own round trips is under way
        (its reply would tell)."""
        return self.due and self._in_flight == 0

    @property
    def idle(self) -> bool:
        """No round trip of this breaker is under way."""
        return self._in_flight == 0

    def asking(self) -> int | None:
        """A read is about to be made: the number of the last hint it answers, or None
        when no hint is left to confirm."""
        with self._lock:
            self.due = False
            return self.latest if self._hints else None

    def confirm(self, stored: Version, asked: int) -> list[TransitionEvent]:
        """The hints Redis holds (their version is not past ``stored``), to be told;
        those it does not are dropped if they came before the read was asked
        (``asked``), and logged."""
        with self._lock:
            held = [event for _, event in self._hints if event.version <= stored]
            refused = [
                event for seq, event in self._hints if event.version > stored and seq <= asked
            ]
            self._hints = [
                (seq, event) for seq, event in self._hints if event.version > stored and seq > asked
            ]
            if not self._hints:
                self.due = False
        for event in refused:
            logger.warning(
                "breaker %s: ignored a message on its events channel that Redis does not "
                "hold (%s -> %s, version %d:%d; Redis is at %d:%d)",
                self.name,
                event.from_state,
                event.to_state,
                *event.version,
                *stored,
            )
        return held
