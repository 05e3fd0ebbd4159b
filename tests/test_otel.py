"""OpenTelemetry spans (``breaker.otel``), read back from the SDK's in-memory exporter:
one span per operation and per attempt, what they say, the transitions as events,
and nothing of OpenTelemetry imported by ``import breaker``."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable, Iterator

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from breaker import CircuitBreaker, CircuitOpenError, ResilientTransport, RetryPolicy
from breaker.otel import BreakerTracing, instrument, uninstrument
from breaker.testing import ManualClock
from tests.conftest import Breakers
from tests.support.upstream import Reply, Upstream

NO_WAIT = RetryPolicy(attempts=3, backoff=0, budget=None)


class Traced:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracing: BreakerTracing = instrument(self.provider)

    def spans(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.exporter.get_finished_spans() if span.name == name]


@pytest.fixture
def traced() -> Iterator[Traced]:
    made = Traced()
    yield made
    uninstrument()
    made.provider.shutdown()


def flaky(clock: ManualClock, failures: int) -> Callable[[], str]:
    """A function that fails ``failures`` times, then succeeds; each call takes 0.25 s."""
    left = [failures]

    def call() -> str:
        clock.advance(0.25)
        if left[0]:
            left[0] -= 1
            raise ConnectionError("refused")
        return "ok"

    return call


def test_a_retried_operation_is_a_span_with_one_child_per_attempt(
    traced: Traced, breakers: Breakers
) -> None:
    clock = ManualClock()
    cb = breakers("traced", clock=clock)
    assert NO_WAIT.bind(cb).call(flaky(clock, 2)) == "ok"
    [operation] = traced.spans("fleetbreaker.operation")
    attempts = traced.spans("fleetbreaker.attempt")
    assert operation.attributes == {"fleetbreaker.breaker.name": "traced"}
    assert [span.parent.span_id for span in attempts if span.parent] == [
        operation.context.span_id
    ] * 3
    extras: list[tuple[str, dict[str, object]]] = [
        ("failure", {"error.type": "ConnectionError"}),
        ("failure", {"error.type": "ConnectionError", "http.request.resend_count": 1}),
        ("success", {"http.request.resend_count": 2}),
    ]
    assert [dict(span.attributes or {}) for span in attempts] == [
        {
            "fleetbreaker.breaker.name": "traced",
            "fleetbreaker.breaker.decision": "admitted",
            "fleetbreaker.breaker.outcome": outcome,
            "fleetbreaker.breaker.backend": "embedded",
            "fleetbreaker.breaker.state": "closed",
            **extra,
        }
        for outcome, extra in extras
    ]
    assert [span.status.status_code for span in attempts] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]


def test_an_attempt_span_lasts_what_the_breaker_measured(
    traced: Traced, breakers: Breakers
) -> None:
    clock = ManualClock()
    cb = traced.tracing.watch(breakers("timed", clock=clock))
    cb.call(flaky(clock, 0))
    [span] = traced.spans("fleetbreaker.attempt")
    assert span.end_time is not None
    assert span.start_time is not None
    assert span.end_time - span.start_time == 250_000_000


def test_a_rejection_is_an_error_span_with_error_type_circuit_open(
    traced: Traced, breakers: Breakers
) -> None:
    clock = ManualClock()
    cb = traced.tracing.watch(breakers("tripped", clock=clock, failure_threshold=1))
    with pytest.raises(ConnectionError):
        cb.call(flaky(clock, 1))
    with pytest.raises(CircuitOpenError):
        cb.call(flaky(clock, 0))
    rejected = traced.spans("fleetbreaker.attempt")[-1]
    assert rejected.attributes is not None
    assert rejected.attributes["fleetbreaker.breaker.decision"] == "rejected"
    assert rejected.attributes["fleetbreaker.breaker.state"] == "open"
    assert rejected.attributes["error.type"] == "circuit_open"
    assert rejected.status.status_code == StatusCode.ERROR


def test_an_operation_ended_by_an_open_breaker_says_circuit_open(
    traced: Traced, breakers: Breakers
) -> None:
    clock = ManualClock()
    cb = breakers("stopped", clock=clock, failure_threshold=1)
    with pytest.raises(CircuitOpenError):
        NO_WAIT.bind(cb).call(flaky(clock, 5))
    [operation] = traced.spans("fleetbreaker.operation")
    assert operation.attributes is not None
    assert operation.attributes["error.type"] == "circuit_open"
    assert operation.attributes["fleetbreaker.breaker.state"] == "open"
    assert len(traced.spans("fleetbreaker.attempt")) == 1  # the open breaker stopped it


def test_a_transition_is_an_event_on_the_span_of_the_call_that_made_it(
    traced: Traced, breakers: Breakers
) -> None:
    clock = ManualClock()
    cb = traced.tracing.watch(breakers("events", clock=clock, failure_threshold=1))
    tracer = traced.provider.get_tracer("test")
    with tracer.start_as_current_span("request"), pytest.raises(ConnectionError):
        cb.call(flaky(clock, 1))
    [request] = traced.spans("request")
    [event] = request.events
    assert event.name == "fleetbreaker.transition"
    assert event.attributes is not None
    assert (
        event.attributes["fleetbreaker.transition.from"],
        event.attributes["fleetbreaker.transition.to"],
    ) == ("closed", "open")


def test_a_transition_made_outside_any_span_gets_a_span_of_its_own(
    traced: Traced, breakers: Breakers
) -> None:
    cb = traced.tracing.watch(breakers("alone"))
    cb.force_open()
    [span] = traced.spans("fleetbreaker.transition")
    assert [event.name for event in span.events] == ["fleetbreaker.transition"]


def test_the_transport_counts_resends_on_a_response_settled_when_its_body_ends(
    traced: Traced, upstream: Upstream
) -> None:
    upstream.plan("/flaky", Reply(503), Reply(200, body=b"x" * 10_000))

    async def scenario() -> None:
        transport = ResilientTransport(retry=NO_WAIT, clock=ManualClock())
        async with httpx.AsyncClient(transport=transport) as client:
            assert (await client.get(f"{upstream.url}/flaky")).status_code == 200

    asyncio.run(scenario())
    [operation] = traced.spans("fleetbreaker.operation")
    attempts = traced.spans("fleetbreaker.attempt")
    assert [(s.attributes or {}).get("error.type") for s in attempts] == ["503", None]
    assert [(s.attributes or {}).get("http.request.resend_count") for s in attempts] == [None, 1]
    assert {s.parent.span_id for s in attempts if s.parent} == {operation.context.span_id}


def test_importing_breaker_imports_no_opentelemetry_of_its_own() -> None:
    """redis-py (8) imports OpenTelemetry itself when it is installed, for its own
    observability: the baseline is what ``import redis`` brought."""
    probe = (
        "import sys, redis; before = set(sys.modules); import breaker; "
        "print(sorted(m for m in set(sys.modules) - before "
        "if m.startswith(('opentelemetry', 'breaker.otel'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


def test_breakers_are_not_watched_twice(traced: Traced, breakers: Breakers) -> None:
    clock = ManualClock()
    cb: CircuitBreaker = breakers("once", clock=clock)
    traced.tracing.watch(cb)
    traced.tracing.watch(cb)
    cb.call(flaky(clock, 0))
    assert len(traced.spans("fleetbreaker.attempt")) == 1
