"""Fallbacks: an answer that stands in for a call the breaker or the retrier could not
make good. Resilience4j, Polly and Hystrix have them; pybreaker and purgatory leave
them to the caller's ``except``.

A fallback answers only for the reasons it is given (``on``)::

    open                  the breaker refused the call (CircuitOpenError)
    backend_unavailable   Redis is unreachable and the breaker is fail_closed
    exhausted             the retrier wanted another attempt and had none left
                          (attempts, deadline or budget), on an exception or a result
    error                 any other exception the call raised

The default is ``open`` and ``exhausted``: the two cases where the service behind
the call is known to be unwell. An ``error`` may as well be a bug of the caller's, and
a default answer would hide it: that one is asked for by name.

A fallback runs after the call's permit is settled, or without one (the call was
refused): it is never counted as a success or a failure, and never holds a trial
lease. A fallback that raises ends in ``FallbackError``, whose ``__cause__`` is the
fallback's own exception, itself chained to the error it stood in for
(``__context__``, as Python chains an error raised while handling another): a
traceback shows all three, the original first.

Where one goes:

- ``cb.with_fallback(fallback)``: the breaker's ``call`` and decorator, answered by it;
- ``retrier.with_fallback(fallback)``: the retrier's, which also gives up on results
  (the last 503 response);
- ``Fallback(...).call(fn)``, or ``@Fallback(...)``: around code guarded elsewhere,
  such as a client through ``ResilientTransport``.

``call(fn, *args, **kwargs)`` hands every keyword to ``fn``: a ``fallback=`` of its
own could belong to ``fn`` (or vanish into its ``**kwargs``), so the fallback is never
a keyword of ``call``; ``with_fallback`` returns a guard whose ``call`` keeps that
promise, and whose decorator comes with it.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Literal, ParamSpec, Protocol, TypeVar, get_args, overload

from ._decorating import decorate
from ._exceptions import (
    BackendUnavailableError,
    CircuitOpenError,
    ConfigurationError,
    FallbackError,
)
from ._retry.delivery import attempts_of, stopped_by_of

P = ParamSpec("P")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

FallbackKind = Literal["open", "backend_unavailable", "exhausted", "error"]
_KINDS: tuple[str, ...] = get_args(FallbackKind)
#: The reasons a fallback answers unless told otherwise.
DEFAULT_REASONS: frozenset[FallbackKind] = frozenset({"open", "exhausted"})


@dataclass(frozen=True, slots=True)
class FallbackReason:
    """Why a fallback is answering, handed to a fallback that is a function.

    ``error`` is the exception the call ended in (``CircuitOpenError``,
    ``BackendUnavailableError``, or the call's own last one); it is None when the
    retrier gave up on a ``result``, such as a 503 response, which is closed by then
    (its status and headers stay readable). ``attempts``: how many reached the call,
    when a retrier counted them.
    """

    kind: FallbackKind
    #: The breaker's name; without a breaker, the function's qualified name.
    name: str
    error: BaseException | None = None
    result: Any = None
    attempts: int | None = None

    @property
    def retry_after(self) -> float | None:
        """Seconds until the open breaker lets a trial through (``open`` only)."""
        return self.error.retry_after if isinstance(self.error, CircuitOpenError) else None


def reason_for(error: Exception, name: str) -> FallbackReason:
    """The reason a call that raised ``error`` ended: the breaker's refusal, Redis, a
    retrier that gave up on it (it says so on the error, ``_retry.delivery``), or the error."""
    kind: FallbackKind = "error"
    if isinstance(error, CircuitOpenError | BackendUnavailableError):
        kind = "open" if isinstance(error, CircuitOpenError) else "backend_unavailable"
        name = error.name
    elif stopped_by_of(error) is not None:
        kind = "exhausted"
    attempts = attempts_of(error)
    if attempts is None:  # an error raised for a response (``raise_for_status``)
        attempts = attempts_of(getattr(error, "response", None))
    return FallbackReason(kind, name, error, attempts=attempts)


@dataclass(frozen=True, slots=True, init=False)
class Fallback:
    """An answer for a call that could not be made good, for the reasons in ``on``.

    >>> from breaker import CircuitBreaker
    >>> cb = CircuitBreaker("fallback-doc")
    >>> cb.force_open()
    >>> cb.with_fallback(Fallback([], on={"open"})).call(lambda: ["fresh"])
    []
    >>> cb.close()

    ``answer``: a value, or a function of the ``FallbackReason`` (sync, or async for
    async calls) whose return is the answer. A function is always called: to answer
    with a function, return it from one. The answer stands in for the call's result,
    so give it the same type. ``on``: the reasons it answers (``open``,
    ``backend_unavailable``, ``exhausted``, ``error``); open and exhausted by default.
    """

    answer: Any
    on: frozenset[FallbackKind]

    def __init__(
        self, answer: Any, *, on: FallbackKind | Iterable[FallbackKind] = DEFAULT_REASONS
    ) -> None:
        reasons: object = {on} if isinstance(on, str) else on
        if not isinstance(reasons, Iterable):
            raise ConfigurationError("on", f"must be a set of reasons, got {on!r}")
        chosen = frozenset(reasons)
        for reason in sorted(chosen, key=str):
            if reason not in _KINDS:
                known = ", ".join(_KINDS)
                raise ConfigurationError("on", f"unknown reason {reason!r}; the reasons: {known}")
        if not chosen:
            raise ConfigurationError("on", "must name at least one reason")
        object.__setattr__(self, "answer", answer)
        object.__setattr__(self, "on", chosen)

    def answer_for(self, reason: FallbackReason) -> Any:
        """The answer for ``reason``, for a sync caller: ``FallbackError`` if the
        function raises, or is async (a sync caller cannot await it)."""
        if not callable(self.answer):
            return self.answer
        try:
            answer = self.answer(reason)
            if inspect.isawaitable(answer):
                if inspect.iscoroutine(answer):
                    answer.close()  # never awaited, and never warned about
                raise TypeError("an async fallback can only answer an async call")
        except Exception as exc:
            raise _failure(reason, exc) from exc
        return answer

    async def aanswer_for(self, reason: FallbackReason) -> Any:
        """``answer_for``, for an async caller: an async function is awaited."""
        if not callable(self.answer):
            return self.answer
        try:
            answer = self.answer(reason)
            if inspect.isawaitable(answer):
                answer = await answer
        except Exception as exc:
            raise _failure(reason, exc) from exc
        return answer

    @overload
    def call(
        self, fn: Callable[P, Coroutine[Any, Any, T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, T]: ...

    @overload
    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T: ...

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)``, guarded elsewhere (a client through
        ``ResilientTransport``), and answer for what it raises; await it if async."""
        return _answered(self, _label(fn), fn, fn, args, kwargs)

    def __call__(self, fn: F) -> F:
        """Use the fallback as a decorator, on a sync or an async function."""
        return decorate(fn, self.call)


def as_fallback(fallback: object) -> Fallback:
    """``fallback`` itself if it is a ``Fallback``, else one answering with it."""
    return fallback if isinstance(fallback, Fallback) else Fallback(fallback)


class Guard(Protocol):
    """What a fallback is put around: a breaker, by its ``name`` and ``call``."""

    @property
    def name(self) -> str: ...

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any: ...


class FallbackGuard:
    """A breaker's ``call`` and decorator, answered by a fallback: what
    ``CircuitBreaker.with_fallback`` returns.

    >>> from breaker import CircuitBreaker
    >>> cb = CircuitBreaker("guard-doc")
    >>> guarded = cb.with_fallback(lambda reason: f"{reason.name} is {reason.kind}")
    >>> cb.force_open()
    >>> guarded.call(lambda: "fresh")
    'guard-doc is open'
    >>> cb.close()
    """

    def __init__(self, guard: Guard, fallback: object) -> None:
        self.guard = guard
        self.fallback = as_fallback(fallback)

    def __repr__(self) -> str:
        return f"<FallbackGuard {self.guard.name!r} on {sorted(self.fallback.on)}>"

    @overload
    def call(
        self, fn: Callable[P, Coroutine[Any, Any, T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, T]: ...

    @overload
    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T: ...

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` through the breaker, answering for what the
        fallback covers; await it if ``fn`` is async. Every keyword goes to ``fn``."""
        return _answered(self.fallback, self.guard.name, fn, self.guard.call, args, kwargs, fn)

    def __call__(self, fn: F) -> F:
        """Use it as a decorator, on a sync or an async function."""
        return decorate(fn, self.call)


def _answered(
    fallback: Fallback,
    name: str,
    fn: Callable[..., Any],
    run: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *through: Callable[..., Any],
) -> Any:
    """``run(*through, *args, **kwargs)``, answered by ``fallback`` for what it covers:
    ``run`` is ``fn`` itself, or a guard's ``call`` with ``fn`` passed ``through``."""
    if inspect.iscoroutinefunction(fn):
        return _aanswered(fallback, name, run, (*through, *args), kwargs)
    try:
        return run(*through, *args, **kwargs)
    except Exception as error:
        reason = reason_for(error, name)
        if reason.kind not in fallback.on:
            raise
        return fallback.answer_for(reason)


async def _aanswered(
    fallback: Fallback,
    name: str,
    run: Callable[..., Awaitable[Any]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    try:
        return await run(*args, **kwargs)
    except Exception as error:
        reason = reason_for(error, name)
        if reason.kind not in fallback.on:
            raise
        return await fallback.aanswer_for(reason)


def _failure(reason: FallbackReason, raised: Exception) -> FallbackError:
    """The error for a fallback that raised: its exception is chained to the one the
    fallback stood in for, as if raised while handling it (which a retrier's give-up,
    handed over after the fact, was not)."""
    if raised.__context__ is None and reason.error is not None and raised is not reason.error:
        raised.__context__ = reason.error
    return FallbackError(reason.name, reason.kind, reason.error, raised)


def _label(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)
