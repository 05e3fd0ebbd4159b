"""OpenTelemetry spans for guarded calls; opt in, with the ``otel`` extra.

Importing ``breaker`` never imports OpenTelemetry: this module does, and only an
application that imports it pays for it.

>>> from breaker.otel import instrument
>>> tracing = instrument()            # the global TracerProvider, or pass one

What it records:

- ``fleetbreaker.operation``: one span per operation of a retrier (``RetryPolicy.bind``,
  the httpx transports), from its first attempt to its last outcome. A rejection
  that ends it sets ``error.type=circuit_open``.
- ``fleetbreaker.attempt``: one span per call through a breaker, from the outcome
  the breaker tells its listeners: timed by the library's own measure, a child of
  whatever span is current (the operation's, for a retrier). Attributes: the
  breaker's name, the state it decided in, its decision (``admitted`` or
  ``rejected``), the outcome, the backend; ``http.request.resend_count`` on a retry;
  ``error.type`` on a failure (the exception's type, or the status: ``503``) and
  ``circuit_open`` on a rejection.
- ``fleetbreaker.transition``: a span event for every transition this process's
  calls made (each transition once in the fleet), on the span current when it was
  made; a span of its own when none is.

A retrier's breaker is watched from its first operation; other breakers
(``cb.call``, ``with cb``, permits) are watched with ``tracing.watch(cb)``.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer, TracerProvider

from ._breaker import CircuitBreaker
from ._exceptions import CircuitOpenError
from ._listeners import BreakerListener
from ._models import OutcomeEvent, TransitionEvent
from ._retry.operation import current_attempt, set_operation_tracer

#: Attribute names: OpenTelemetry's where one exists, fleetbreaker's otherwise.
NAME = "fleetbreaker.breaker.name"
STATE = "fleetbreaker.breaker.state"
DECISION = "fleetbreaker.breaker.decision"
OUTCOME = "fleetbreaker.breaker.outcome"
BACKEND = "fleetbreaker.breaker.backend"
RESEND_COUNT = "http.request.resend_count"
ERROR_TYPE = "error.type"

_STATUS_PREFIX = "status "


class BreakerTracing(BreakerListener):
    """Turns what breakers tell into spans; also the retriers' operation tracer."""

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        self._tracer: Tracer = trace.get_tracer("fleetbreaker", tracer_provider=tracer_provider)
        # The state each breaker was last heard in, by name: every transition of the
        # fleet updates it, and a rejection says it.
        self._states: dict[str, str] = {}
        self._watched: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()
        self._lock = threading.Lock()

    def watch(self, breaker: CircuitBreaker) -> CircuitBreaker:
        """Trace ``breaker``'s calls and transitions (once, however often called)."""
        with self._lock:
            if breaker in self._watched:
                return breaker
            self._watched.add(breaker)
        rejection = breaker.would_reject()
        self._states.setdefault(breaker.name, rejection.state if rejection else "closed")
        breaker.add_listener(self, made_here_only=True)
        breaker.add_listener(_StateFollower(self._states))
        return breaker

    @contextmanager
    def operation(self, name: str, breaker: CircuitBreaker | None) -> Iterator[None]:
        """One retried operation, as the current span while it runs."""
        if breaker is not None:
            self.watch(breaker)
        with self._tracer.start_as_current_span(
            "fleetbreaker.operation",
            kind=SpanKind.INTERNAL,
            attributes={NAME: name},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield
            except CircuitOpenError as exc:
                span.set_attributes({DECISION: "rejected", STATE: exc.state})
                span.set_attribute(ERROR_TYPE, "circuit_open")
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                raise
            except Exception as exc:
                span.set_attribute(ERROR_TYPE, type(exc).__qualname__)
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                raise

    # -- what the breakers tell ------------------------------------------------------

    def outcome(self, event: OutcomeEvent) -> None:
        ended = time.time_ns()
        rejected = event.outcome == "rejected"
        # A rejection names the state that refused, unless the store did (fail_closed).
        refused_by_state = rejected and event.reason != "backend_unavailable"
        attributes: dict[str, str | int] = {
            NAME: event.name,
            DECISION: "rejected" if rejected else "admitted",
            OUTCOME: event.outcome,
            BACKEND: event.backend,
            STATE: event.reason if refused_by_state else self._states.get(event.name, "closed"),
        }
        attempt = current_attempt()
        if attempt is not None and attempt.number > 1:
            attributes[RESEND_COUNT] = attempt.number - 1
        error = _error_type(event)
        if error is not None:
            attributes[ERROR_TYPE] = error
        span = self._tracer.start_span(
            "fleetbreaker.attempt",
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            start_time=ended - round((event.duration or 0.0) * 1e9),
        )
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, event.reason))
        span.end(end_time=ended)

    def transition(self, event: TransitionEvent) -> None:
        self._states[event.name] = event.to_state
        attributes: dict[str, str | int] = {
            NAME: event.name,
            "fleetbreaker.transition.from": event.from_state,
            "fleetbreaker.transition.to": event.to_state,
            "fleetbreaker.transition.reason": event.reason,
            "fleetbreaker.transition.generation": event.generation,
        }
        current = trace.get_current_span()
        if current.is_recording():
            current.add_event("fleetbreaker.transition", attributes)
            return
        with self._tracer.start_as_current_span("fleetbreaker.transition") as span:
            span.add_event("fleetbreaker.transition", attributes)


class _StateFollower(BreakerListener):
    """Hears every transition of the fleet (``BreakerTracing`` hears only those made
    here, for its events): keeps the state that attempt spans report."""

    def __init__(self, states: dict[str, str]) -> None:
        self._states = states

    def transition(self, event: TransitionEvent) -> None:
        self._states[event.name] = event.to_state


def _error_type(event: OutcomeEvent) -> str | None:
    """OpenTelemetry's ``error.type``: the exception's type, a failing status as its
    code (``503``), and ``circuit_open`` for a breaker that refused the call."""
    if event.outcome == "rejected":
        return "backend_unavailable" if event.reason == "backend_unavailable" else "circuit_open"
    if event.outcome != "failure":
        return None
    return event.reason.removeprefix(_STATUS_PREFIX) or "failure"


def instrument(tracer_provider: TracerProvider | None = None) -> BreakerTracing:
    """Trace every retrier's operations (and the breakers they use) from now on.

    ``tracer_provider``: where spans go; the global one by default. Returns the
    tracing, whose ``watch(cb)`` adds breakers used without a retrier."""
    tracing = BreakerTracing(tracer_provider)
    set_operation_tracer(tracing)
    return tracing


def uninstrument() -> None:
    """Stop opening operation spans. Breakers already watched keep their listeners."""
    set_operation_tracer(None)
