"""One operation's retry decisions, written once: ``operation`` is a generator that
yields what it needs done (an attempt, a budget request, a wait) and receives the
result; the runner (``runner.Retrier``) does it blocking or awaited. Also the
process-wide operation tracer (``breaker.otel``) and the current attempt, a context
variable each attempt sets.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from .._breaker import CircuitBreaker
from .._clock import Clock
from .._exceptions import CircuitOpenError
from .._fallback import FallbackReason, reason_for
from .delivery import mark
from .rules import Attempt, RetryDetails, RetryRules, StopReason, request_of

logger = logging.getLogger("breaker.retry")


_ATTEMPT: ContextVar[Attempt | None] = ContextVar("fleetbreaker_attempt", default=None)


class OperationTracer(Protocol):
    """Wraps every operation a retrier runs (``breaker.otel`` opens a span in it)."""

    def operation(
        self, name: str, breaker: CircuitBreaker | None
    ) -> AbstractContextManager[object]: ...


# Process-wide, like stamina's instrumentation: None (the default) costs one check per
# operation. Set by ``breaker.otel.instrument()``.
_tracer: OperationTracer | None = None


def set_operation_tracer(tracer: OperationTracer | None) -> None:
    """Wrap every operation of every retrier in ``tracer``'s ``operation``; None stops."""
    global _tracer
    _tracer = tracer


def current_attempt() -> Attempt | None:
    """The attempt under way in this thread or task, or None outside a retried call.

    Sync code cannot be interrupted from outside; it reads the attempt's ``timeout``
    here to bound its own I/O (``requests.get(url, timeout=current_attempt().timeout)``).
    """
    return _ATTEMPT.get()


# -- the decisions, written once -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Outcome:
    value: Any
    error: Exception | None

    @property
    def cause(self) -> Any:
        return self.error if self.error is not None else self.value


@dataclass(frozen=True, slots=True)
class _Try:
    attempt: Attempt


@dataclass(frozen=True, slots=True)
class _Check:
    """Is the breaker open now (by its local view, no round trip)?"""


@dataclass(frozen=True, slots=True)
class _Spend:
    pass


@dataclass(frozen=True, slots=True)
class _Discard:
    """A response that will not be returned: close it, so its connection is freed."""

    value: Any


@dataclass(frozen=True, slots=True)
class _Wait:
    seconds: float


_Step = _Try | _Check | _Spend | _Discard | _Wait
# Yields what it needs done; returns the final outcome, the attempts it took and, if
# it gave up on an outcome it wanted to try again, what stopped it.
_Steps = Generator[_Step, Any, tuple[_Outcome, int, StopReason | None]]


def _operation(
    policy: RetryRules,
    name: str,
    clock: Clock,
    *,
    guarded: bool,
    budgeted: bool,
    repeatable: bool | None,
) -> _Steps:
    """One operation's decisions. ``name`` is its breaker's when ``guarded``.

    ``repeatable``: whether the request may be sent again (a transport knows), or
    None to judge by the request an outcome carries (a plain function's have none)."""
    deadline_at = None if policy.deadline is None else clock.monotonic() + policy.deadline
    number = 0
    while True:
        number += 1
        outcome: _Outcome = yield _Try(Attempt(number, _timeout(policy, clock, deadline_at)))
        if guarded and _rejected_here(outcome.error, name):
            return outcome, number - 1, None
        cause = outcome.cause
        if repeatable is False or not policy.wants_retry(cause):
            return outcome, number, None
        if repeatable is None and not policy.allows_method(*request_of(cause)):
            return outcome, number, None
        if number >= policy.attempts:
            _tell(policy, RetryDetails(name, number, None, cause, "attempts"))
            return outcome, number, "attempts"
        delay = policy.delay_after(number, cause, now_epoch=clock.wall())
        if deadline_at is not None and clock.monotonic() + delay >= deadline_at:
            _tell(policy, RetryDetails(name, number, delay, cause, "deadline"))
            return outcome, number, "deadline"
        # This attempt may have opened the breaker: then stop now, without waiting.
        rejection: CircuitOpenError | None = (yield _Check()) if guarded else None
        if rejection is not None:
            rejection.__cause__ = outcome.error
            if outcome.error is None:
                yield _Discard(outcome.value)
            return _Outcome(None, rejection), number, None
        if budgeted and not (yield _Spend()):
            _tell(policy, RetryDetails(name, number, None, cause, "budget"))
            return outcome, number, "budget"
        _tell(policy, RetryDetails(name, number, delay, cause))
        if outcome.error is None:
            yield _Discard(outcome.value)
        if delay > 0:
            yield _Wait(delay)


def _timeout(policy: RetryRules, clock: Clock, deadline_at: float | None) -> float | None:
    """What one attempt may take: the per-try timeout, within what is left of the deadline."""
    limits = [policy.per_try_timeout] if policy.per_try_timeout is not None else []
    if deadline_at is not None:
        # Never 0: the attempt was allowed to start, so it gets a moment to run.
        limits.append(max(deadline_at - clock.monotonic(), 0.001))
    return min(limits) if limits else None


def _rejected_here(error: Exception | None, name: str) -> bool:
    """This operation's own breaker refused the attempt (not some inner breaker)."""
    return isinstance(error, CircuitOpenError) and error.name == name


def _tell(policy: RetryRules, details: RetryDetails) -> None:
    if details.stopped_by is None:
        logger.debug(
            "%s: attempt %d failed (%s); retrying in %.3fs",
            details.name,
            details.attempt,
            _describe(details.cause),
            details.delay,
        )
    else:
        logger.info(
            "%s: giving up after attempt %d (%s): %s",
            details.name,
            details.attempt,
            _describe(details.cause),
            _STOPPED[details.stopped_by],
        )
    for hook in policy.hooks:
        try:
            hook(details)
        except Exception:
            logger.exception("retry hook %r failed", hook)


_STOPPED: dict[StopReason, str] = {
    "attempts": "no attempts left",
    "deadline": "the next attempt would start after the deadline",
    "budget": "the fleet's retry budget is spent",
}


def _describe(cause: Any) -> str:
    if isinstance(cause, BaseException):
        return type(cause).__name__
    status = getattr(cause, "status_code", None)
    return f"status {status}" if status is not None else type(cause).__name__


def _ending(done: StopIteration) -> tuple[_Outcome, int, StopReason | None]:
    """The operation's end, its outcome marked with the attempts it took and, if
    retries ran out on it, why (``_retry.delivery``)."""
    outcome, attempts, stopped_by = done.value
    mark(outcome.error if outcome.error is not None else outcome.value, attempts, stopped_by)
    return outcome, attempts, stopped_by


def _deliver(outcome: _Outcome) -> Any:
    """Hand back the last real outcome, as it was."""
    if outcome.error is not None:
        raise outcome.error
    return outcome.value


def _reason(
    outcome: _Outcome, attempts: int, stopped_by: StopReason | None, name: str
) -> FallbackReason | None:
    """Why the operation ended unserved, or None: it ended in a result the retrier
    did not give up on (a success, or an answer not worth another try)."""
    if outcome.error is not None:
        return reason_for(outcome.error, name)
    if stopped_by is None:
        return None
    return FallbackReason("exhausted", name, result=outcome.value, attempts=attempts)


# -- the policy, and its runner ------------------------------------------------------


def operation_tracer() -> OperationTracer | None:
    """The tracer ``set_operation_tracer`` installed, read at each operation."""
    return _tracer
