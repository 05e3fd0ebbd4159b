"""Retry rules: what is retried, when, and how long to wait. Values and pure decisions.

Nothing here does I/O or reads a clock: the runner (``_retry.runner``) passes time in, so
every decision is tested as a plain function. Nothing here knows an HTTP library
either: a status is any result's ``status_code``, a ``Retry-After`` its
``headers``; the httpx transports add httpx's own network errors
(``HTTP_RETRY_EXCEPTIONS``).

The defaults follow the references the project set out to beat:

- full-jitter exponential backoff (the AWS "Exponential Backoff and Jitter" study):
  the wait before retry n is uniform in [0, min(max_backoff, backoff * 2^(n-1))];
- only idempotent methods are retried (RFC 9110 section 9.2.2), unless the request
  carries an ``Idempotency-Key`` or the caller opts in;
- connection errors, timeouts, 429, 502, 503 and 504 are retried; other 4xx and
  programming errors never are;
- ``Retry-After`` (delta-seconds or HTTP-date) replaces the backoff, capped by
  ``max_retry_after``; a date in the past falls back to the backoff;
- a fleet-wide budget (``RetryBudget``) caps retries at 20 % of the first attempts
  the whole fleet made in the breaker's window, plus a floor for quiet services that
  refills at 10 retries a second.
"""

from __future__ import annotations

import datetime
import email.utils
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, Protocol, Self

from .._config import check_seconds
from .._exceptions import BreakerError, ConfigurationError
from .budget import RetryBudget

#: RFC 9110 section 9.2.2: a repeat of these has the same effect as one request.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
#: Transient answers: rate limited, bad gateway, unavailable, gateway timeout.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: Failures of the network, not of the request: safe to try again. The transports
#: count httpx's own network errors among them (``HTTP_RETRY_EXCEPTIONS``).
RETRY_EXCEPTIONS: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)
#: Bugs: retrying them only repeats the bug, whatever ``retry_exceptions`` says.
NEVER_RETRIED: tuple[type[BaseException], ...] = (
    AssertionError,
    AttributeError,
    ImportError,
    NameError,
    NotImplementedError,
    SyntaxError,
    TypeError,
    BreakerError,
)
IDEMPOTENCY_HEADER = "Idempotency-Key"

StopReason = Literal["attempts", "deadline", "budget"]
Seconds = float | datetime.timedelta


_DEFAULT_BUDGET = RetryBudget()


@dataclass(frozen=True, slots=True)
class RetryDetails:
    """What a retry hook hears: after attempt ``attempt`` failed with ``cause``.

    ``delay`` is the wait before the next attempt; when ``stopped_by`` is set, no
    attempt follows (``delay`` is then what the wait would have been, or None when
    the budget refused before any was drawn).
    """

    name: str
    attempt: int
    delay: float | None
    cause: Any
    stopped_by: StopReason | None = None


class RetryHook(Protocol):
    def __call__(self, details: RetryDetails, /) -> None: ...


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt of an operation: its number (from 1) and the seconds it may take."""

    number: int
    timeout: float | None


@dataclass(frozen=True, slots=True, init=False)
class RetryRules:
    """How an operation is retried, as values and pure decisions; ``RetryPolicy``
    adds the ways to run it. Durations are seconds or ``timedelta``.

    >>> rules = RetryRules(attempts=4, deadline=10.0)
    >>> rules.backoff_ceiling(3)
    0.4
    """

    #: Attempts in all, the first one included.
    attempts: int
    #: Ceiling of the first wait; each further wait's ceiling doubles.
    backoff: float
    #: Largest ceiling of a wait.
    max_backoff: float
    #: Seconds the whole operation may take, waits included; None: no cap.
    deadline: float | None
    #: Seconds one attempt may take; None: no cap (besides the deadline).
    per_try_timeout: float | None
    #: Largest wait a ``Retry-After`` can ask for.
    max_retry_after: float
    #: Exceptions that are retried (never a type in ``NEVER_RETRIED``).
    retry_exceptions: tuple[type[BaseException], ...]
    #: Failures of this side, not of the call (a connection pool exhausted): never
    #: retried, whatever ``retry_exceptions`` says (a retry would only add to them).
    local_exceptions: tuple[type[BaseException], ...]
    #: Response status codes that are retried.
    retry_statuses: frozenset[int]
    #: HTTP methods that are retried; others only with an ``Idempotency-Key``.
    retry_methods: frozenset[str]
    #: The fleet-wide budget, applied when the policy is bound to a breaker; None: off.
    budget: RetryBudget | None
    #: Called on every retry and on every retry refused (``RetryDetails``).
    hooks: tuple[RetryHook, ...]

    def __init__(
        self,
        *,
        attempts: int = 3,
        backoff: Seconds = 0.1,
        max_backoff: Seconds = 5.0,
        deadline: Seconds | None = None,
        per_try_timeout: Seconds | None = None,
        max_retry_after: Seconds = 60.0,
        retry_exceptions: tuple[type[BaseException], ...] = RETRY_EXCEPTIONS,
        local_exceptions: tuple[type[BaseException], ...] = (),
        retry_statuses: Iterable[int] = RETRY_STATUSES,
        retry_methods: Iterable[str] = IDEMPOTENT_METHODS,
        budget: RetryBudget | None = _DEFAULT_BUDGET,
        hooks: Iterable[RetryHook] = (),
    ) -> None:
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ConfigurationError("attempts", f"must be an integer >= 1, got {attempts!r}")
        for name, kinds in (
            ("retry_exceptions", retry_exceptions),
            ("local_exceptions", local_exceptions),
        ):
            if not isinstance(kinds, tuple) or not all(
                isinstance(kind, type) and issubclass(kind, BaseException) for kind in kinds
            ):
                raise ConfigurationError(name, "must be a tuple of exception types")
        if budget is not None and not isinstance(budget, RetryBudget):
            raise ConfigurationError("budget", "must be a RetryBudget or None")
        hooks = tuple(hooks)
        if not all(callable(hook) for hook in hooks):
            raise ConfigurationError("hooks", "must be callables taking RetryDetails")
        values = {
            "attempts": attempts,
            "backoff": _seconds("backoff", backoff, zero=True),
            "max_backoff": _seconds("max_backoff", max_backoff, zero=True),
            "deadline": _optional_seconds("deadline", deadline),
            "per_try_timeout": _optional_seconds("per_try_timeout", per_try_timeout),
            "max_retry_after": _seconds("max_retry_after", max_retry_after, zero=True),
            "retry_exceptions": retry_exceptions,
            "local_exceptions": local_exceptions,
            "retry_statuses": _statuses(retry_statuses),
            "retry_methods": _methods(retry_methods),
            "budget": budget,
            "hooks": hooks,
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def replace(self, **changes: Any) -> Self:
        """A copy with some settings changed (validated again)."""
        values = {item.name: getattr(self, item.name) for item in fields(self)}
        values.update(changes)
        return type(self)(**values)

    # -- pure decisions -------------------------------------------------------------

    def backoff_ceiling(self, attempt: int) -> float:
        """The largest wait after attempt ``attempt`` (1-based) failed."""
        if self.backoff == 0:
            return 0.0
        # 2 ** n overflows a float past n = 1023; the cap is reached long before.
        exponent = min(attempt - 1, 1000)
        return min(self.max_backoff, self.backoff * 2.0**exponent)

    def draw_backoff(self, attempt: int, sample: float | None = None) -> float:
        """Full jitter: uniform in [0, ceiling]; ``sample`` in [0, 1) for tests."""
        if sample is None:
            sample = random.random()
        return sample * self.backoff_ceiling(attempt)

    def wants_retry(self, outcome: Any) -> bool:
        """Whether this exception or result is a transient failure worth another try."""
        if isinstance(outcome, BaseException):
            if isinstance(outcome, NEVER_RETRIED + self.local_exceptions) or not isinstance(
                outcome, Exception
            ):
                return False
            status = _status_of(getattr(outcome, "response", None))  # httpx.HTTPStatusError
            if status is not None:
                return status in self.retry_statuses
            return isinstance(outcome, self.retry_exceptions)
        return _status_of(outcome) in self.retry_statuses

    def allows_method(self, method: str | None, headers: Mapping[str, str] | None) -> bool:
        """Whether a request with this method and these headers may be sent again.

        An unknown method (a plain function, not an HTTP request) is the caller's
        call: wrapping it in a retry policy is the opt-in.
        """
        if method is None or method.upper() in self.retry_methods:
            return True
        return headers is not None and bool(headers.get(IDEMPOTENCY_HEADER))

    def delay_after(
        self,
        attempt: int,
        outcome: Any,
        *,
        now_epoch: float,
        sample: float | None = None,
    ) -> float:
        """The wait before the next attempt: ``Retry-After`` if the answer gave one in
        the future (capped by ``max_retry_after``), else the jittered backoff."""
        wait = retry_after_of(outcome, now_epoch)
        if wait is not None:
            return min(wait, self.max_retry_after)
        return self.draw_backoff(attempt, sample)


def parse_retry_after(value: str, now_epoch: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value, or None when it gives no future time.

    RFC 9110 section 10.2.3: delta-seconds (``120``) or an HTTP-date
    (``Wed, 21 Oct 2015 07:28:00 GMT``). A date in the past, a negative or garbled
    value gives None, and the caller falls back to its backoff.
    """
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # asctime dates carry no zone: HTTP-dates are always GMT
        when = when.replace(tzinfo=datetime.UTC)
    seconds = when.timestamp() - now_epoch
    return seconds if seconds > 0 else None


def _carrier(outcome: Any) -> Any:
    """What answers for an outcome: a response, or the response an error carries
    (``httpx.HTTPStatusError``, ``requests.HTTPError``)."""
    if isinstance(outcome, BaseException):
        response = getattr(outcome, "response", None)
        if _status_of(response) is not None:
            return response
    return outcome


def retry_after_of(outcome: Any, now_epoch: float) -> float | None:
    """The ``Retry-After`` of a response, or of the response an error carries."""
    response = _carrier(outcome)
    headers = getattr(response, "headers", None)
    if _status_of(response) is None or headers is None:
        return None
    value = headers.get("Retry-After")
    return parse_retry_after(value, now_epoch) if isinstance(value, str) else None


def request_of(outcome: Any) -> tuple[str | None, Mapping[str, str] | None]:
    """The method and headers of the request behind an outcome, when it tells them.

    httpx responses and request errors carry their request; a plain function's
    results and exceptions do not (their method is None).
    """
    carrier = _carrier(outcome)
    try:
        request = getattr(carrier, "request", None)
    except RuntimeError:  # httpx: ".request property has not been set"
        return None, None
    method = getattr(request, "method", None)
    headers = getattr(request, "headers", None)
    if isinstance(method, bytes):
        method = method.decode("ascii", "replace")
    return (method if isinstance(method, str) else None), headers


def _status_of(outcome: Any) -> int | None:
    status = getattr(outcome, "status_code", None)
    return status if isinstance(status, int) and not isinstance(status, bool) else None


def _seconds(name: str, value: object, *, zero: bool) -> float:
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    return check_seconds(name, value, zero=zero)


def _optional_seconds(name: str, value: object) -> float | None:
    return None if value is None else _seconds(name, value, zero=False)


def _statuses(values: Iterable[int]) -> frozenset[int]:
    statuses = frozenset(values)
    if not all(
        isinstance(code, int) and not isinstance(code, bool) and 100 <= code <= 599
        for code in statuses
    ):
        raise ConfigurationError("retry_statuses", "must be HTTP status codes (100..599)")
    return statuses


def _methods(values: Iterable[str]) -> frozenset[str]:
    if isinstance(values, str):
        raise ConfigurationError("retry_methods", "must be a set of method names, not a string")
    methods = frozenset(values)
    if not all(isinstance(method, str) and method.isalpha() for method in methods):
        raise ConfigurationError("retry_methods", "must be HTTP method names")
    return frozenset(method.upper() for method in methods)
