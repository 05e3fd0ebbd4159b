"""The retry runner: the decisions of one operation, written once, driven sync or async.

``_operation`` is a generator that yields what it needs done (an attempt, a budget
request, a wait) and receives the result; ``Retrier._drive`` does it with blocking
calls and ``Retrier._adrive`` with awaits. Each attempt goes through the breaker, so
every attempt is counted fleet-wide, and an open breaker ends the operation at once.

What comes back is the last real outcome: the exception is re-raised as it was, the
response returned as it was, with the number of attempts attached (``attempts_of``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine, Generator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast, overload

from ._clock import Clock, SystemClock
from ._decorating import decorate
from ._exceptions import CircuitOpenError
from ._policy import Attempt, RetryDetails, RetryPolicy, StopReason, request_of

if TYPE_CHECKING:
    from ._breaker import AsyncHold, CircuitBreaker, Hold

logger = logging.getLogger("breaker.retry")

P = ParamSpec("P")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: Where a response carries the number of attempts made for it.
ATTEMPTS_EXTENSION = "fleetbreaker.attempts"
_ATTEMPTS_ATTRIBUTE = "fleetbreaker_attempts"
_ATTEMPT: ContextVar[Attempt | None] = ContextVar("fleetbreaker_attempt", default=None)


def current_attempt() -> Attempt | None:
    """The attempt under way in this thread or task, or None outside a retried call.

    Sync code cannot be interrupted from outside; it reads the attempt's ``timeout``
    here to bound its own I/O (``requests.get(url, timeout=current_attempt().timeout)``).
    """
    return _ATTEMPT.get()


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
# Yields what it needs done; returns the final outcome and the attempts it took.
_Steps = Generator[_Step, Any, tuple[_Outcome, int]]


def _operation(
    policy: RetryPolicy,
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
            return outcome, number - 1
        cause = outcome.cause
        if repeatable is False or not policy.wants_retry(cause):
            return outcome, number
        if repeatable is None and not policy.allows_method(*request_of(cause)):
            return outcome, number
        if number >= policy.attempts:
            _tell(policy, RetryDetails(name, number, None, cause, "attempts"))
            return outcome, number
        delay = policy.delay_after(number, cause, now_epoch=clock.wall())
        if deadline_at is not None and clock.monotonic() + delay >= deadline_at:
            _tell(policy, RetryDetails(name, number, delay, cause, "deadline"))
            return outcome, number
        # This attempt may have opened the breaker: then stop now, without waiting.
        rejection: CircuitOpenError | None = (yield _Check()) if guarded else None
        if rejection is not None:
            rejection.__cause__ = outcome.error
            if outcome.error is None:
                yield _Discard(outcome.value)
            return _Outcome(None, rejection), number
        if budgeted and not (yield _Spend()):
            _tell(policy, RetryDetails(name, number, None, cause, "budget"))
            return outcome, number
        _tell(policy, RetryDetails(name, number, delay, cause))
        if outcome.error is None:
            yield _Discard(outcome.value)
        if delay > 0:
            yield _Wait(delay)


def _timeout(policy: RetryPolicy, clock: Clock, deadline_at: float | None) -> float | None:
    """What one attempt may take: the per-try timeout, within what is left of the deadline."""
    limits = [policy.per_try_timeout] if policy.per_try_timeout is not None else []
    if deadline_at is not None:
        # Never 0: the attempt was allowed to start, so it gets a moment to run.
        limits.append(max(deadline_at - clock.monotonic(), 0.001))
    return min(limits) if limits else None


def _rejected_here(error: Exception | None, name: str) -> bool:
    """This operation's own breaker refused the attempt (not some inner breaker)."""
    return isinstance(error, CircuitOpenError) and error.name == name


def _tell(policy: RetryPolicy, details: RetryDetails) -> None:
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


def _deliver(outcome: _Outcome, attempts: int) -> Any:
    """Hand back the last real outcome, as it was, with the attempt count attached."""
    if outcome.error is not None:
        error = outcome.error
        setattr(error, _ATTEMPTS_ATTRIBUTE, attempts)
        error.add_note(f"fleetbreaker: {attempts} attempt(s) made")
        raise error
    extensions = getattr(outcome.value, "extensions", None)
    if isinstance(extensions, dict):
        extensions[ATTEMPTS_EXTENSION] = attempts
    return outcome.value


# -- the drivers ---------------------------------------------------------------------


class Retrier:
    """A ``RetryPolicy`` bound to a breaker (or to none) and a clock: runs operations.

    >>> from breaker import RetryPolicy
    >>> retrier = RetryPolicy(attempts=2).bind(None)
    >>> retrier.call(lambda: "ok")
    'ok'

    With a breaker, every attempt goes through it, an open breaker ends the operation
    at once with ``CircuitOpenError``, and each retry asks the fleet's budget first.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        breaker: CircuitBreaker | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.policy = policy
        self.breaker = breaker
        if clock is None:
            clock = breaker.clock if breaker is not None else SystemClock()
        self.clock = clock

    @overload
    def call(
        self, fn: Callable[P, Coroutine[Any, Any, T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, T]: ...

    @overload
    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T: ...

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` under the policy; await it if ``fn`` is async."""
        label = getattr(fn, "__qualname__", None) or repr(fn)
        if inspect.iscoroutinefunction(fn):
            return self._adrive(lambda attempt: fn(*args, **kwargs), repeatable=None, label=label)
        return self._drive(lambda attempt: fn(*args, **kwargs), repeatable=None, label=label)

    def __call__(self, fn: F) -> F:
        """Use the retrier as a decorator, on a sync or an async function."""
        return decorate(fn, self.call)

    def _operation(self, label: str, repeatable: bool | None) -> _Steps:
        """The steps of one operation, named after its breaker (else ``label``)."""
        budgeted = self.breaker is not None and self.policy.budget is not None
        return _operation(
            self.policy,
            self.breaker.name if self.breaker is not None else label,
            self.clock,
            guarded=self.breaker is not None,
            budgeted=budgeted,
            repeatable=repeatable,
        )

    def _drive(
        self,
        attempt_fn: Callable[[Attempt], T],
        *,
        repeatable: bool | None,
        label: str = "request",
        hold: Hold | None = None,
    ) -> T:
        """``hold``: see ``CircuitBreaker._call_settled_later``."""
        steps = self._operation(label, repeatable)
        step = next(steps)
        while True:
            reply: Any = None
            if isinstance(step, _Try):
                reply = self._try(attempt_fn, step.attempt, hold)
            elif isinstance(step, _Check):
                reply = self._rejection()
            elif isinstance(step, _Spend):
                reply = self._spend()
            elif isinstance(step, _Discard):
                close = getattr(step.value, "close", None)
                if callable(close):
                    close()
            else:
                self.clock.sleep(step.seconds)
            try:
                step = steps.send(reply)
            except StopIteration as done:
                return cast(T, _deliver(*done.value))

    async def _adrive(
        self,
        attempt_fn: Callable[[Attempt], Awaitable[T]],
        *,
        repeatable: bool | None,
        label: str = "request",
        enforce_timeout: bool = True,
        hold: AsyncHold | None = None,
    ) -> T:
        steps = self._operation(label, repeatable)
        step = next(steps)
        while True:
            reply: Any = None
            if isinstance(step, _Try):
                reply = await self._atry(attempt_fn, step.attempt, enforce_timeout, hold)
            elif isinstance(step, _Check):
                reply = self._rejection()
            elif isinstance(step, _Spend):
                reply = await self._aspend()
            elif isinstance(step, _Discard):
                await _aclose(step.value)
            else:
                await self.clock.asleep(step.seconds)
            try:
                step = steps.send(reply)
            except StopIteration as done:
                return cast(T, _deliver(*done.value))

    def _try(
        self, attempt_fn: Callable[[Attempt], Any], attempt: Attempt, hold: Hold | None
    ) -> _Outcome:
        token = _ATTEMPT.set(attempt)
        try:
            if self.breaker is None:
                return _Outcome(attempt_fn(attempt), None)
            if hold is not None:
                held = self.breaker._call_settled_later(lambda: attempt_fn(attempt), hold)
                return _Outcome(held, None)
            return _Outcome(self.breaker.call(attempt_fn, attempt), None)
        except Exception as exc:
            return _Outcome(None, exc)
        finally:
            _ATTEMPT.reset(token)

    async def _atry(
        self,
        attempt_fn: Callable[[Attempt], Awaitable[Any]],
        attempt: Attempt,
        enforce_timeout: bool,
        hold: AsyncHold | None,
    ) -> _Outcome:
        async def bounded(attempt: Attempt) -> Any:
            if enforce_timeout and attempt.timeout is not None:
                async with asyncio.timeout(attempt.timeout):
                    return await attempt_fn(attempt)
            return await attempt_fn(attempt)

        token = _ATTEMPT.set(attempt)
        try:
            if self.breaker is None:
                return _Outcome(await bounded(attempt), None)
            if hold is not None:
                held = await self.breaker._acall_settled_later(lambda: bounded(attempt), hold)
                return _Outcome(held, None)
            return _Outcome(await self.breaker.call(bounded, attempt), None)
        except Exception as exc:
            return _Outcome(None, exc)
        finally:
            _ATTEMPT.reset(token)

    def _rejection(self) -> CircuitOpenError | None:
        return self.breaker._rejection_now() if self.breaker is not None else None

    def _spend(self) -> bool:
        breaker, budget = self.breaker, self.policy.budget
        return breaker is None or budget is None or breaker.spend_retry(budget).granted

    async def _aspend(self) -> bool:
        breaker, budget = self.breaker, self.policy.budget
        return breaker is None or budget is None or (await breaker.aspend_retry(budget)).granted


async def _aclose(value: Any) -> None:
    aclose = getattr(value, "aclose", None)
    if callable(aclose):
        await aclose()
        return
    close = getattr(value, "close", None)
    if callable(close):
        close()
