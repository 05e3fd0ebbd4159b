"""A breaker's settings, stored with it: sent with its first call on each lane (and
again when the store holds none), and compared when the store says it holds others.
Two apps that share a Redis and a prefix rewrite each other's breakers this way; a
rolling deploy that changes settings does it on purpose. Either is said loudly, once
per digest, and listeners hear it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .._clock import Clock
from .._exceptions import BackendUnavailableError
from .._models import BreakerSnapshot, SettingsConflict
from .._store.wire import Wired, decode_snapshot, reply_text, snapshot_args
from .._types import BackendKind, ScriptName
from .steps import Call, Lane, Steps
from .telling import Hearing

logger = logging.getLogger("breaker")


class StoredSettings:
    """What one breaker's process knows of the settings its store holds."""

    def __init__(
        self, name: str, wired: Wired, clock: Clock, kind: BackendKind, hearing: Hearing
    ) -> None:
        self.name = name
        self.wired = wired
        self.clock = clock
        self.kind = kind
        self.hearing = hearing
        # Whether this breaker's settings are known stored on each lane: its first call
        # there sends them (and the newest process's settings win).
        self._offered: dict[Lane, bool] = {"shared": False, "local": False}
        # The digest of the settings the store last said it holds, and how they differ
        # from this process's (None: they are this process's, or not known yet).
        self._stored_digest = ""
        self.conflict: SettingsConflict | None = None

    def ask(
        self, lane: Lane, script: ScriptName, args_for: Callable[[bool], list[Any]]
    ) -> Steps[list[Any]]:
        """Run ``script`` on ``lane``, sending this breaker's settings with its first
        call there, and again if the breaker holds none (a flushed or new Redis)."""
        raw = yield Call(lane, script, args_for(not self._offered[lane]))
        if reply_text(raw, "verdict") == "unconfigured":
            raw = yield Call(lane, script, args_for(True))
        self._offered[lane] = True
        stored = reply_text(raw, "digest")
        if lane == "shared" and stored and stored != self._stored_digest:
            self._stored_digest = stored
            yield from self._compare_settings(stored)
        return raw

    def _compare_settings(
        self, stored: str, snapshot: BreakerSnapshot | None = None
    ) -> Steps[None]:
        """The store holds settings of another digest than it did: when they are not
        this process's, read them (one snapshot, unless one is at hand) and say loudly
        how they differ, once per digest. Two apps that share a Redis and a prefix
        rewrite each other's breakers this way; a rolling deploy that changes settings
        does it on purpose."""
        if stored == self.wired.digest:
            if self.conflict is not None:
                self.conflict = None
                logger.info("breaker %s: runs with this process's own settings again", self.name)
                self.hearing.settings(self.name, None)
            return
        if snapshot is None:
            try:
                raw = yield Call("shared", "snapshot", snapshot_args(self.clock.epoch_ms()))
            except BackendUnavailableError:
                self._stored_digest = ""  # ask again with the next reply
                return
            snapshot = decode_snapshot(self.name, raw, self.kind)
        self.conflict = self.conflict_in(snapshot)
        if self.conflict is None:  # the same settings (another topology's channel, say)
            return
        logger.error(
            "breaker %s: another process stored other settings for it, and every call "
            "runs with them: %s. Two apps on one Redis must not share a prefix (give "
            "each its own); a reset through this process stores its settings again",
            self.name,
            self.conflict.describe(),
        )
        self.hearing.settings(self.name, self.conflict)

    def conflict_in(self, snapshot: BreakerSnapshot) -> SettingsConflict | None:
        """How the settings ``snapshot`` read differ from this process's, or None."""
        if not snapshot.digest or snapshot.digest == self.wired.digest:
            return None
        differences = self.wired.differences(snapshot.settings)
        if not differences:
            return None
        return SettingsConflict(self.name, snapshot.digest, self.wired.digest, differences)

    def read(self, digest: str, raw: list[Any]) -> Steps[None]:
        """A snapshot read (``raw``) said the store holds settings of ``digest``."""
        if digest and digest != self._stored_digest:
            self._stored_digest = digest
            yield from self._compare_settings(digest, decode_snapshot(self.name, raw, self.kind))
