"""One breaker's listeners, and the one place that tells them: transitions (logged
once per version), outcomes, backend calls and settings conflicts. A listener that
fails is logged and skipped; a call pays only for what someone hears.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .._listeners import BreakerListener, overrides
from .._models import OutcomeEvent, SettingsConflict, TransitionEvent
from .._outage import OutageLog
from .._types import BackendKind, CallOutcome
from .core import BreakerCore

logger = logging.getLogger("breaker")


class Hearing:
    """Each listener of one breaker, under every method it overrides."""

    def __init__(self) -> None:
        self._by_method: dict[str, list[BreakerListener]] = {
            method: []
            for method in ("transition", "made_here", "outcome", "backend_call", "settings")
        }

    def add(self, listener: BreakerListener, *, made_here_only: bool) -> None:
        if overrides(listener, "transition"):
            self._by_method["made_here" if made_here_only else "transition"].append(listener)
        for method in ("outcome", "backend_call", "settings"):
            if overrides(listener, method):
                self._by_method[method].append(listener)

    def backend_call(self, script: str, seconds: float) -> None:
        for listener in self._by_method["backend_call"]:
            tell(listener.backend_call, script, seconds)

    def settings(self, name: str, conflict: SettingsConflict | None) -> None:
        for listener in self._by_method["settings"]:
            tell(listener.settings, name, conflict)

    def made_here(self, event: TransitionEvent) -> None:
        """A transition this process's own call made: once in the fleet."""
        for listener in self._by_method["made_here"]:
            tell(listener.transition, event)

    def outcome(
        self,
        name: str,
        outcome: CallOutcome,
        duration: float | None,
        reason: str,
        backend: BackendKind,
    ) -> None:
        if self._by_method["outcome"]:
            event = OutcomeEvent(name, outcome, duration, reason, backend)
            for listener in self._by_method["outcome"]:
                tell(listener.outcome, event)

    def transition(self, core: BreakerCore, event: TransitionEvent) -> None:
        """Log a transition and tell the listeners, once per version."""
        for fresh in core.unseen((event,)):
            if fresh.is_resync:
                logger.warning(
                    "breaker %s: the store held an older version than this fleet had "
                    "seen (a failover lost writes); it moved on to generation %d, %s",
                    fresh.name,
                    fresh.generation,
                    fresh.to_state,
                )
                continue
            logger.info(
                "breaker %s: %s -> %s (%s)%s",
                fresh.name,
                fresh.from_state,
                fresh.to_state,
                fresh.reason,
                " [fallback]" if core.fallback else "",
            )
            for listener in self._by_method["transition"]:
                tell(listener.transition, fresh)


def tell(method: Callable[..., None], *arguments: Any) -> None:
    """Call one listener's method; one that fails is logged and skipped."""
    try:
        method(*arguments)
    except Exception:
        logger.exception("breaker listener %r failed", method)


def describe(error: BaseException | None, result: object = None) -> str:
    """The ``reason`` of an outcome event: the exception's type, or the status of a
    result that has one (``status 503``)."""
    if error is not None:
        return type(error).__name__
    status = getattr(result, "status_code", None)
    if isinstance(status, int) and not isinstance(status, bool):
        return f"status {status}"
    return ""


class Unreachable:
    """One WARNING when a breaker's calls start being decided without Redis (then at
    most one a minute while it lasts), naming what happens instead; one INFO when
    Redis answers again."""

    def __init__(self, name: str, on_backend_error: str) -> None:
        self.on_backend_error = on_backend_error
        self._log = OutageLog(
            f"breaker {name}: Redis",
            lost="is unreachable",
            still="still unreachable",
            back="answers again",
        )

    def failed(self, reason: str, now: float) -> None:
        line = self._log.failed(reason, now)
        if line is not None:
            instead = (
                "refusing its calls (on_backend_error=fail_closed)"
                if self.on_backend_error == "fail_closed"
                else "deciding its calls in this process alone, not with the fleet "
                "(on_backend_error=fail_open)"
            )
            logger.warning("%s; %s until Redis answers", line, instead)

    @property
    def ongoing(self) -> bool:
        return self._log.ongoing

    def recovered(self, now: float) -> None:
        back = self._log.recovered(now)
        if back is not None:
            logger.info("%s; deciding with the fleet again", back)
