"""The values the library hands out: transitions, outcomes, snapshots, budget verdicts.

Frozen and slotted; nothing here does I/O or decides anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ._types import BackendKind, CallOutcome, State


@dataclass(frozen=True, slots=True)
class TransitionEvent:
    """One state change of one breaker, as published on ``<prefix>:events``.

    ``at``, ``open_until`` and ``created_at`` are epoch milliseconds of the Redis
    clock. ``(created_at, generation)`` orders the transitions of one breaker, also
    across a Redis that lost the breaker's hash and started its generations again.
    """

    name: str
    from_state: str
    to_state: str
    at: int
    reason: str
    created_at: int
    generation: int
    open_until: int

    @property
    def version(self) -> tuple[int, int]:
        return (self.created_at, self.generation)

    @property
    def is_resync(self) -> bool:
        """No state change: the store moved its version past one the fleet had seen,
        after it lost writes (a failover). Views follow it; listeners are not told."""
        return self.reason == "resync"

    @classmethod
    def from_json(cls, raw: str | bytes) -> TransitionEvent | None:
        """Decode a published event; None for anything that is not one."""
        try:
            body = json.loads(raw)
            return cls(
                name=str(body["name"]),
                from_state=str(body["from"]),
                to_state=str(body["to"]),
                at=int(body["at"]),
                reason=str(body["reason"]),
                created_at=int(body["created_at"]),
                generation=int(body["generation"]),
                open_until=int(body["open_until"]),
            )
        except (ValueError, KeyError, TypeError):
            return None

    def as_dict(self) -> dict[str, Any]:
        """The event as published: ``from`` and ``to`` rather than the attribute names."""
        return {
            "name": self.name,
            "from": self.from_state,
            "to": self.to_state,
            "at": self.at,
            "reason": self.reason,
            "generation": self.generation,
            "open_until": self.open_until,
        }


@dataclass(frozen=True, slots=True)
class OutcomeEvent:
    """How one call through a breaker counted, told to its outcome listeners.

    ``outcome`` is ``success``, ``failure`` or ``ignored`` for a call that was made
    (``duration`` is how long it took, in seconds), or ``rejected`` for one the breaker
    refused (``duration`` is None). ``reason`` says why: the exception's type, the
    result's status (``status 503``), ``body_broken``, or for a rejection the state
    (``open``, ``half_open``, ``forced_open``), ``isolated`` (this process refuses its
    own calls, under a quorum) or ``backend_unavailable``. ``backend`` is where the
    decision was made: ``fallback`` while Redis cannot be reached.
    """

    name: str
    outcome: CallOutcome
    duration: float | None
    reason: str
    backend: BackendKind

    @property
    def local_origin(self) -> bool:
        """A failure at the connection level: refused, reset before the request was
        written, a connect time-out, a failed DNS lookup. The request never reached
        the upstream: when one process alone sees these, its path is broken, not the
        upstream (a quorum then isolates that process). It still counts as a failure."""
        return self.outcome == "failure" and self.reason in LOCAL_ORIGIN_ERRORS


#: The exceptions (by type name: httpx's, the standard library's) of a request that
#: never reached its upstream.
LOCAL_ORIGIN_ERRORS = frozenset(
    {
        "ConnectError",
        "ConnectTimeout",
        "WriteError",
        "ConnectionRefusedError",
        "gaierror",
        "NameResolutionError",
    }
)


@dataclass(frozen=True, slots=True)
class SettingsConflict:
    """The breaker's stored settings differ from this process's own: every call runs
    with the stored ones (the newest process's). ``differences`` maps each setting that
    differs to (stored, this process's), as stored: durations in ms, a rate of -1 off."""

    name: str
    stored_digest: str
    own_digest: str
    differences: dict[str, tuple[Any, Any]]

    def describe(self) -> str:
        """One line: ``failure_threshold 2 (stored) / 5 (here), ...``."""
        return ", ".join(
            f"{field} {stored!r} (stored) / {own!r} (here)"
            for field, (stored, own) in sorted(self.differences.items())
        )


@dataclass(frozen=True, slots=True)
class BudgetVerdict:
    """The ``budget`` operation's answer, with the window's figures as they stood then."""

    granted: bool
    retries: int
    requests: int
    #: The ratio's room: retries it allows for the first attempts in the window.
    limit: float
    #: Tokens the floor's bucket held (at most a quarter of a second of its rate).
    tokens: float


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """A consistent read of one breaker. Times are epoch ms of the Redis clock (0: never)."""

    name: str
    state: State
    failures: int
    last_failure_at: int
    opened_at: int
    created_at: int
    open_until: int
    retry_after: float
    generation: int
    reopens: int
    trial_successes: int
    half_open_leases: int
    window_calls: int
    window_failures: int
    window_slow_calls: int
    window_retries: int
    window_retries_refused: int
    #: Calls the breaker refused, fleet-wide (each process reports its own in batches).
    window_rejections: int
    backend: BackendKind
    #: The settings every call runs with, as stored with the breaker (durations in ms,
    #: a rate of -1: off); the digest of the process that stored them is ``digest``.
    settings: dict[str, Any] = field(default_factory=dict, compare=False)
    digest: str = ""
    #: Under a quorum: the voters of the current failure streak, the voters live in
    #: the window, and the processes isolated now (process id -> until, epoch ms).
    streak_voters: tuple[str, ...] = ()
    live_voters: int = 0
    isolated: dict[str, int] = field(default_factory=dict, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}
