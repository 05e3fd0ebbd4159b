"""The retry runner: the decisions of one operation, written once, driven sync or async.

``_operation`` is a generator that yields what it needs done (an attempt, a budget
request, a wait) and receives the result; ``Retrier.run`` does it with blocking calls
and ``Retrier.arun`` with awaits. Each attempt takes a permit of the breaker, so
every attempt is counted fleet-wide, and an open breaker ends the operation at once.

What comes back is the last real outcome: the exception is re-raised as it was, the
response returned as it was, with the number of attempts attached (``attempts_of``)
and, when retries ran out, why (``_retry.delivery``). With a fallback (``with_fallback``),
an outcome it covers is answered by it instead (``_fallback``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, cast, overload

from .._breaker import CircuitBreaker
from .._clock import Clock, SystemClock
from .._decisions.permit import AsyncPermit, Permit
from .._decorating import decorate
from .._exceptions import CircuitOpenError
from .._fallback import Fallback, FallbackReason, as_fallback
from .operation import (
    _ATTEMPT,
    _Check,
    _deliver,
    _Discard,
    _ending,
    _operation,
    _Outcome,
    _reason,
    _Spend,
    _Steps,
    _Try,
    operation_tracer,
)
from .rules import Attempt, RetryRules, StopReason

logger = logging.getLogger("breaker.retry")

P = ParamSpec("P")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
#: Takes a result that counts as a success and the permit of its attempt, which it
#: settles later (a response whose body is still to come); returns what the caller
#: gets instead.
Hold = Callable[[Any, Permit], Any]
AsyncHold = Callable[[Any, AsyncPermit], Any]


class RetryPolicy(RetryRules):
    """How an operation is retried (``RetryRules``' settings and decisions), and the
    ways to run it: through a breaker (``bind``), or alone (``call``, decorator).

    >>> policy = RetryPolicy(attempts=4, deadline=10.0)
    >>> policy.backoff_ceiling(3)
    0.4
    """

    __slots__ = ()

    def bind(self, breaker: CircuitBreaker | None, *, clock: Clock | None = None) -> Retrier:
        """This policy applied through ``breaker`` (every attempt counted fleet-wide,
        an open breaker stops at once, retries within the fleet's budget).

        >>> from breaker import CircuitBreaker
        >>> @RetryPolicy(attempts=3).bind(CircuitBreaker("bind-doc"))
        ... def fetch() -> str:
        ...     return "ok"
        >>> fetch()
        'ok'
        """
        return Retrier(self, breaker, clock=clock)

    @overload
    def call(
        self, fn: Callable[P, Coroutine[Any, Any, T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, T]: ...

    @overload
    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T: ...

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` under this policy, with no breaker and no budget."""
        return Retrier(self).call(fn, *args, **kwargs)

    def __call__(self, fn: F) -> F:
        """Use the policy as a decorator (no breaker, no budget): ``@RetryPolicy()``."""
        return Retrier(self)(fn)


class Retrier:
    """A retry policy bound to a breaker (or to none) and a clock: runs operations.

    >>> from breaker import RetryPolicy
    >>> retrier = Retrier(RetryPolicy(attempts=2))
    >>> retrier.call(lambda: "ok")
    'ok'

    With a breaker, every attempt takes a permit, an open breaker ends the operation
    at once with ``CircuitOpenError``, and each retry asks the fleet's budget first.
    With a ``fallback`` (``with_fallback``), an operation that ends for a reason it
    covers is answered by it (``_fallback``).
    """

    def __init__(
        self,
        policy: RetryRules,
        breaker: CircuitBreaker | None = None,
        *,
        clock: Clock | None = None,
        fallback: Fallback | None = None,
    ) -> None:
        self.policy = policy
        self.breaker = breaker
        if clock is None:
            clock = breaker.clock if breaker is not None else SystemClock()
        self.clock = clock
        self.fallback = fallback

    def with_fallback(self, fallback: object, /) -> Retrier:
        """This retrier, answered by ``fallback`` (a value, a function of the
        ``FallbackReason``, or a ``Fallback``) when the operation ends unserved:
        by default when the breaker is open or retries ran out, on an exception or
        on a result (the last 503 response, closed first).

        >>> from breaker import RetryPolicy
        >>> retrier = Retrier(RetryPolicy(attempts=2, backoff=0)).with_fallback("cached")
        >>> def refused() -> str:
        ...     raise ConnectionError("refused")
        >>> retrier.call(refused)
        'cached'
        """
        return Retrier(self.policy, self.breaker, clock=self.clock, fallback=as_fallback(fallback))

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
            return self.arun(lambda attempt: fn(*args, **kwargs), label=label)
        return self.run(lambda attempt: fn(*args, **kwargs), label=label)

    def __call__(self, fn: F) -> F:
        """Use the retrier as a decorator, on a sync or an async function."""
        return decorate(fn, self.call)

    def _name(self, label: str) -> str:
        """The operation's name: its breaker's, else ``label``."""
        return self.breaker.name if self.breaker is not None else label

    def _operation(self, label: str, repeatable: bool | None) -> _Steps:
        """The steps of one operation, named after its breaker (else ``label``)."""
        budgeted = self.breaker is not None and self.policy.budget is not None
        return _operation(
            self.policy,
            self._name(label),
            self.clock,
            guarded=self.breaker is not None,
            budgeted=budgeted,
            repeatable=repeatable,
        )

    def run(
        self,
        attempt_fn: Callable[[Attempt], T],
        *,
        repeatable: bool | None = None,
        label: str = "request",
        hold: Hold | None = None,
    ) -> T:
        """Run the attempts of one operation, each ``attempt_fn(attempt)``.

        ``repeatable``: whether the operation may be sent again at all (a transport
        knows), or None to judge by the request an outcome carries. ``hold``: a
        result that counts as a success is handed to ``hold`` with its attempt's
        permit, to be settled later (a response judged when its body ends).
        """
        tracer = operation_tracer()
        if tracer is None:
            return self._run(attempt_fn, repeatable, label, hold)
        with tracer.operation(self._name(label), self.breaker):
            return self._run(attempt_fn, repeatable, label, hold)

    def _run(
        self,
        attempt_fn: Callable[[Attempt], T],
        repeatable: bool | None,
        label: str,
        hold: Hold | None,
    ) -> T:
        steps = self._operation(label, repeatable)
        step = next(steps)
        while True:
            reply: Any = None
            if isinstance(step, _Try):
                reply = self._try(attempt_fn, step.attempt, hold)
            elif isinstance(step, _Check):
                reply = self._rejection()
            elif isinstance(step, _Spend):
                breaker, budget = self.breaker, self.policy.budget
                reply = breaker is None or budget is None or breaker.spend_retry(budget).granted
            elif isinstance(step, _Discard):
                _close(step.value)
            else:
                self.clock.sleep(step.seconds)
            try:
                step = steps.send(reply)
            except StopIteration as done:
                outcome, attempts, stopped_by = _ending(done)
                break
        covered = self._covered(outcome, attempts, stopped_by, label)
        if covered is None:
            return cast(T, _deliver(outcome))
        fallback, reason = covered
        if outcome.error is None:
            _close(outcome.value)
        return cast(T, fallback.answer_for(reason))

    async def arun(
        self,
        attempt_fn: Callable[[Attempt], Awaitable[T]],
        *,
        repeatable: bool | None = None,
        label: str = "request",
        enforce_timeout: bool = True,
        hold: AsyncHold | None = None,
    ) -> T:
        """``run``, awaited. With ``enforce_timeout`` each attempt is cut off at its
        timeout (a transport that bounds its own I/O turns it off)."""
        tracer = operation_tracer()
        if tracer is None:
            return await self._arun(attempt_fn, repeatable, label, enforce_timeout, hold)
        with tracer.operation(self._name(label), self.breaker):
            return await self._arun(attempt_fn, repeatable, label, enforce_timeout, hold)

    async def _arun(
        self,
        attempt_fn: Callable[[Attempt], Awaitable[T]],
        repeatable: bool | None,
        label: str,
        enforce_timeout: bool,
        hold: AsyncHold | None,
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
                breaker, budget = self.breaker, self.policy.budget
                reply = (
                    breaker is None
                    or budget is None
                    or (await breaker.aspend_retry(budget)).granted
                )
            elif isinstance(step, _Discard):
                await _aclose(step.value)
            else:
                await self.clock.asleep(step.seconds)
            try:
                step = steps.send(reply)
            except StopIteration as done:
                outcome, attempts, stopped_by = _ending(done)
                break
        covered = self._covered(outcome, attempts, stopped_by, label)
        if covered is None:
            return cast(T, _deliver(outcome))
        fallback, reason = covered
        if outcome.error is None:
            await _aclose(outcome.value)
        return cast(T, await fallback.aanswer_for(reason))

    def _covered(
        self, outcome: _Outcome, attempts: int, stopped_by: StopReason | None, label: str
    ) -> tuple[Fallback, FallbackReason] | None:
        """The fallback and the reason it answers for this ending, or None (no
        fallback, or one that does not cover it: the outcome is delivered as it was)."""
        if self.fallback is None:
            return None
        name = self.breaker.name if self.breaker is not None else label
        reason = _reason(outcome, attempts, stopped_by, name)
        if reason is None or reason.kind not in self.fallback.on:
            return None
        return self.fallback, reason

    def _try(
        self, attempt_fn: Callable[[Attempt], Any], attempt: Attempt, hold: Hold | None
    ) -> _Outcome:
        token = _ATTEMPT.set(attempt)
        try:
            if self.breaker is None:
                return _Outcome(attempt_fn(attempt), None)
            permit = self.breaker.acquire()
            try:
                result = attempt_fn(attempt)
            except BaseException as exc:
                permit.settle(exc)
                raise
            if hold is not None and self.breaker.config.classify(None, result) == "success":
                return _Outcome(hold(result, permit), None)
            permit.settle(result=result)
            return _Outcome(result, None)
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
        token = _ATTEMPT.set(attempt)
        try:
            if self.breaker is None:
                return _Outcome(await _bounded(attempt_fn, attempt, enforce_timeout), None)
            permit = await self.breaker.aacquire()
            try:
                result = await _bounded(attempt_fn, attempt, enforce_timeout)
            except BaseException as exc:
                await permit.settle(exc)
                raise
            if hold is not None and self.breaker.config.classify(None, result) == "success":
                return _Outcome(hold(result, permit), None)
            await permit.settle(result=result)
            return _Outcome(result, None)
        except Exception as exc:
            return _Outcome(None, exc)
        finally:
            _ATTEMPT.reset(token)

    def _rejection(self) -> CircuitOpenError | None:
        return self.breaker.would_reject() if self.breaker is not None else None


async def _bounded(
    attempt_fn: Callable[[Attempt], Awaitable[Any]], attempt: Attempt, enforce: bool
) -> Any:
    if enforce and attempt.timeout is not None:
        async with asyncio.timeout(attempt.timeout):
            return await attempt_fn(attempt)
    return await attempt_fn(attempt)


def _close(value: Any) -> None:
    close = getattr(value, "close", None)
    if callable(close):
        close()


async def _aclose(value: Any) -> None:
    aclose = getattr(value, "aclose", None)
    if callable(aclose):
        await aclose()
        return
    close = getattr(value, "close", None)
    if callable(close):
        close()
