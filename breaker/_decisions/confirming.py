"""The channel's hints, confirmed with Redis before they count: the part of a
breaker's engine that hears what the events channel says of other processes'
transitions, distrusts its view, and reads the breaker once to confirm them.
"""

from __future__ import annotations

from .._clock import Clock
from .._models import TransitionEvent
from .._store.wire import Version, decode_reply, snapshot_args
from .core import BreakerCore
from .hints import Hints
from .settings import StoredSettings
from .steps import Call, Steps
from .telling import Hearing


class Confirming:
    """The engine's hints (a part of ``Engine``, which sets these attributes)."""

    shared: BreakerCore
    hints: Hints
    hearing: Hearing
    clock: Clock
    settings: StoredSettings

    @property
    def _epoch(self) -> int:
        raise NotImplementedError

    def _hint(self, event: TransitionEvent) -> None:
        """A message on the channel says the breaker moved on. Anyone who may PUBLISH
        can write one, and it never moves the view, its version or its open time:
        the view stops deciding alone, and the follower reads the breaker (one round
        trip per transition per process) or the next call's reply confirms it."""
        view = self.shared.view
        if view is not None and event.version <= view.version:
            self.hearing.transition(self.shared, event)  # Redis had told of it already
            return
        self.hints.heard(event)
        self.shared.distrust()

    def calling(self, started: bool) -> None:
        """The driver starts (``started``) or has finished a round trip of this breaker."""
        self.hints.calling(started)

    @property
    def confirm_pending(self) -> bool:
        """A hint waits for a read, and no round trip of this breaker would tell."""
        return self.hints.pending

    def confirming(self) -> Steps[None]:
        """Read the breaker once for the hints heard so far: the view becomes what
        Redis holds, and the listeners hear the hinted transitions it confirms."""
        asked = self.hints.asking()
        if asked is None:
            return
        epoch = self._epoch
        raw = yield Call("shared", "snapshot", snapshot_args(self.clock.epoch_ms()))
        reply = decode_reply(raw)
        self.shared.apply(reply, epoch)
        self._confirm_hints(reply.version, asked)
        yield from self.settings.read(reply.digest, raw)

    def _confirm_hints(self, stored: Version, asked: int) -> None:
        """Tell the hints Redis holds (their version is not past ``stored``)."""
        for event in self.hints.confirm(stored, asked):
            self.hearing.transition(self.shared, event)
