"""The exceptions of the breaker library.

Every exception the library raises on purpose derives from ``BreakerError``; a raw
``redis`` exception never reaches the caller::

    BreakerError
    ├── CircuitOpenError          the breaker rejected the call; nothing was called
    ├── BackendUnavailableError   Redis could not be reached: a call refused under fail_closed,
    │                             or an operation that needs it (snapshot, reset, budget)
    ├── ConfigurationError        an invalid setting (also a ValueError), raised at construction
    ├── FallbackError             a fallback raised: ``__cause__`` is its exception, chained
    │                             in turn to the error the fallback stood in for
    └── PermitSettledError        a permit was settled twice (also a RuntimeError)
"""

from __future__ import annotations


class BreakerError(Exception):
    """Root of every exception raised by the breaker library."""


class CircuitOpenError(BreakerError):
    """The breaker is open: the protected call was not made.

    ``retry_after`` is how many seconds remain before the breaker lets a trial call
    through; for a breaker an operator forced open it is the configured
    ``reset_timeout``, a hint, since only a reset ends that state.
    """

    def __init__(
        self, name: str, retry_after: float, *, state: str = "open", reason: str = ""
    ) -> None:
        why = (
            " (this process isolated itself: its own failures alone would trip)"
            if (reason == "isolated")
            else ""
        )
        super().__init__(f"circuit {name!r} is {state}{why}; retry after {retry_after:.3f}s")
        self.name = name
        self.retry_after = retry_after
        self.state = state
        #: "isolated": the fleet's breaker is closed, but this process refuses its own
        #: calls (quorum); "" otherwise.
        self.reason = reason


class BulkheadFullError(BreakerError):
    """The bulkhead held its limit of leases: the call was not made.

    ``retry_after`` is a hint, in seconds: when a lease is likely to come back (the
    mean time a lease is held, over the limit)."""

    def __init__(self, name: str, retry_after: float, *, in_use: int, limit: int) -> None:
        super().__init__(
            f"bulkhead {name!r} is full ({in_use} of {limit} leases held); "
            f"retry after {retry_after:.3f}s"
        )
        self.name = name
        self.retry_after = retry_after
        self.in_use = in_use
        self.limit = limit


class BackendUnavailableError(BreakerError):
    """Redis could not be reached in time. ``refused_call``: a guarded call was refused
    for it (the policy is ``fail_closed``); else an operation that has no fallback (a
    snapshot, an operator's action, a retry budget) could not be done. ``sent``: the
    command may have gone out with no reply coming back (a timeout, a connection
    lost or refused): Redis may have done it; False when it was never sent (backing
    off)."""

    def __init__(
        self, name: str, reason: str, *, refused_call: bool = False, sent: bool = False
    ) -> None:
        super().__init__(f"breaker backend unavailable for {name!r}: {reason}")
        self.name = name
        self.reason = reason
        self.refused_call = refused_call
        self.sent = sent


class ConfigurationError(BreakerError, ValueError):
    """An invalid setting. ``field`` names the setting and ``problem`` says what is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class FallbackError(BreakerError):
    """A fallback raised while it answered for ``kind`` (``open``, ``exhausted``, ...).

    ``original`` is the error it stood in for (None when a retrier gave up on a result,
    such as a 503 response). The fallback's own exception is ``__cause__``, and its
    ``__context__`` is ``original``: a traceback shows the original error, then the
    fallback's, then this one.
    """

    def __init__(
        self, name: str, kind: str, original: BaseException | None, raised: BaseException
    ) -> None:
        why = kind if original is None else f"{kind}: {original}"
        super().__init__(
            f"the fallback of {name!r} raised {type(raised).__name__}: {raised}"
            f"; it was answering for {why}"
        )
        self.name = name
        self.kind = kind
        self.original = original


class PermitSettledError(BreakerError, RuntimeError):
    """A permit counts one call, once: it was settled already."""

    def __init__(self, name: str) -> None:
        super().__init__(f"this permit of breaker {name!r} was settled already")
        self.name = name
