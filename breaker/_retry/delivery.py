"""What a retrier writes on the outcome it hands back, and how others read it.

The retrier returns the last real outcome as it was (``_retry.runner``); on it, it notes
how many attempts it took and, when it gave up on an outcome it wanted to try again,
why (``attempts``, ``deadline`` or ``budget``). An exception carries both as
attributes (and a note for tracebacks), a response in its ``extensions``. Fallbacks
read the second: a retrier's give-up is the ``exhausted`` reason, however many layers
(a transport, a client, the caller's code) the outcome crossed on its way out.
"""

from __future__ import annotations

from typing import Any, cast, get_args

from .rules import StopReason

#: Where a response carries the number of attempts made for it.
ATTEMPTS_EXTENSION = "fleetbreaker.attempts"
#: Where a response carries why its retrier gave up on it: absent when it did not.
STOPPED_EXTENSION = "fleetbreaker.stopped_by"
_ATTEMPTS_ATTRIBUTE = "fleetbreaker_attempts"
_STOPPED_ATTRIBUTE = "fleetbreaker_stopped_by"
_STOP_REASONS: frozenset[str] = frozenset(get_args(StopReason))


def mark(outcome: Any, attempts: int, stopped_by: StopReason | None) -> None:
    """Note on ``outcome`` the attempts it took, and why retries stopped (if they did)."""
    if isinstance(outcome, BaseException):
        setattr(outcome, _ATTEMPTS_ATTRIBUTE, attempts)
        if stopped_by is not None:
            setattr(outcome, _STOPPED_ATTRIBUTE, stopped_by)
        outcome.add_note(f"fleetbreaker: {attempts} attempt(s) made")
        return
    extensions = getattr(outcome, "extensions", None)
    if isinstance(extensions, dict):
        extensions[ATTEMPTS_EXTENSION] = attempts
        if stopped_by is not None:
            extensions[STOPPED_EXTENSION] = stopped_by


def attempts_of(outcome: Any) -> int | None:
    """How many attempts produced this exception or response (None if not retried here)."""
    if isinstance(outcome, BaseException):
        value = getattr(outcome, _ATTEMPTS_ATTRIBUTE, None)
        return value if isinstance(value, int) else None
    extensions = getattr(outcome, "extensions", None)
    if isinstance(extensions, dict):
        value = extensions.get(ATTEMPTS_EXTENSION)
        return value if isinstance(value, int) else None
    return None


def stopped_by_of(outcome: Any) -> StopReason | None:
    """Why a retrier gave up on this exception or response, or None: it was not
    retried, or the retrier did not want another attempt (a success, a 404, a bug).
    An error that carries a response (``httpx.HTTPStatusError``) answers for it."""
    if isinstance(outcome, BaseException):
        value = getattr(outcome, _STOPPED_ATTRIBUTE, None)
        if value is None:
            return stopped_by_of(getattr(outcome, "response", None))
    else:
        extensions = getattr(outcome, "extensions", None)
        value = extensions.get(STOPPED_EXTENSION) if isinstance(extensions, dict) else None
    return cast(StopReason, value) if value in _STOP_REASONS else None
