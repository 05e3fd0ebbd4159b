"""Listeners: what a breaker tells, to whoever wants to hear it.

pybreaker's model: a listener object overrides the methods it needs, and
``cb.add_listener(listener)`` registers every one it overrides. A plain function is a
transition listener. Listeners run where the thing happened (the caller's thread or
task, or the events follower), so they must not block; one that raises is logged and
skipped.
"""

from __future__ import annotations

from collections.abc import Callable

from ._models import OutcomeEvent, SettingsConflict, TransitionEvent


class BreakerListener:
    """Override what you need.

    >>> class Counting(BreakerListener):
    ...     def __init__(self) -> None:
    ...         self.failures = 0
    ...     def outcome(self, event: OutcomeEvent) -> None:
    ...         self.failures += event.outcome == "failure"
    """

    def transition(self, event: TransitionEvent) -> None:
        """A transition of the breaker, made by any process (or, registered with
        ``made_here_only``, by this object's own calls: once in the fleet)."""

    def outcome(self, event: OutcomeEvent) -> None:
        """How one call counted, or that it was rejected: the library's one judgement."""

    def backend_error(self, reason: str) -> None:
        """A Redis command failed (told once per failure, whichever breakers share the
        client)."""

    def backend_call(self, script: str, seconds: float) -> None:
        """A script answered on the shared lane, after ``seconds`` (the round trip)."""

    def subscribed(self, channel: str) -> None:
        """The events follower (re)subscribed: events missed before it may be lost."""

    def settings(self, name: str, conflict: SettingsConflict | None) -> None:
        """The settings stored with breaker ``name`` differ from this process's
        (``conflict``: how), or are this process's again (None)."""


class _Transitions(BreakerListener):
    """A plain function, heard as a transition listener."""

    def __init__(self, function: Callable[[TransitionEvent], None]) -> None:
        self.function = function

    def transition(self, event: TransitionEvent) -> None:
        self.function(event)

    def __repr__(self) -> str:
        return f"<transition listener {self.function!r}>"


#: What ``add_listener`` takes: a listener object, or a plain function of transitions.
Listener = BreakerListener | Callable[[TransitionEvent], None]


def as_listener(listener: Listener) -> BreakerListener:
    return listener if isinstance(listener, BreakerListener) else _Transitions(listener)


def overrides(listener: BreakerListener, method: str) -> bool:
    """Whether ``listener`` hears ``method`` (its class overrides the no-op)."""
    return getattr(type(listener), method) is not getattr(BreakerListener, method)
