"""A listener hears each outcome in the context of the attempt it settles: a response
that counts when its body ends too, though its reader is elsewhere by then. The
gateway's retry-success count and the OpenTelemetry spans read the attempt there."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from breaker import (
    BreakerListener,
    BulkheadConfig,
    OutcomeEvent,
    ResilientTransport,
    RetryPolicy,
    SyncResilientTransport,
    current_attempt,
)
from breaker._upstreams import Upstream as GuardedUpstream
from breaker._upstreams import guarded_client
from breaker.testing import ManualClock
from tests.support.upstream import Reply, Upstream

NO_WAIT = RetryPolicy(attempts=3, backoff=0, budget=None)


class _Attempts(BreakerListener):
    def __init__(self) -> None:
        self.heard: list[tuple[str, int | None]] = []

    def outcome(self, event: OutcomeEvent) -> None:
        attempt = current_attempt()
        self.heard.append((event.outcome, attempt.number if attempt else None))


def test_the_async_transport_settles_a_body_in_its_attempts_context(upstream: Upstream) -> None:
    upstream.plan("/flaky", Reply(503), Reply(200, body=b"x" * 100_000))
    listener = _Attempts()

    async def scenario() -> None:
        transport = ResilientTransport(retry=NO_WAIT, clock=ManualClock())
        transport.breaker(upstream.url).add_listener(listener)  # named by its origin
        async with (
            httpx.AsyncClient(transport=transport) as client,
            client.stream("GET", f"{upstream.url}/flaky") as response,
        ):
            assert current_attempt() is None  # the attempt is over for the caller
            await response.aread()

    asyncio.run(scenario())
    assert listener.heard == [("failure", 1), ("success", 2)]


def test_the_sync_transport_settles_a_body_in_its_attempts_context(upstream: Upstream) -> None:
    upstream.plan("/flaky", Reply(503), Reply(200, body=b"x" * 100_000))
    listener = _Attempts()
    transport = SyncResilientTransport(retry=NO_WAIT, clock=ManualClock())
    with httpx.Client(transport=transport) as client:
        transport.breaker(upstream.url).add_listener(listener)
        with client.stream("GET", f"{upstream.url}/flaky") as response:
            assert current_attempt() is None
            response.read()
    assert listener.heard == [("failure", 1), ("success", 2)]


def test_a_leased_body_settles_in_its_attempts_context_beside_its_give(
    upstream: Upstream,
) -> None:
    """With a bulkhead the body's end sends the record and the give together: the
    record still runs in the attempt's context, not the reader's (seen in CI: the
    gateway's retry successes went uncounted for an upstream with ``max_concurrent``)."""
    upstream.plan("/flaky", Reply(503), Reply(200, body=b"x" * 100_000))
    listener = _Attempts()

    async def scenario() -> None:
        guarded = guarded_client(
            GuardedUpstream(
                f"leased-{uuid.uuid4().hex[:8]}",
                upstream.url,
                retry=NO_WAIT,
                bulkhead=BulkheadConfig(limit=2),
            ),
            redis=None,
            clock=ManualClock(),
            listeners=[listener],
        )
        async with (
            guarded.client as client,
            client.stream("GET", "/flaky") as response,
        ):
            assert current_attempt() is None
            await response.aread()

    asyncio.run(scenario())
    assert listener.heard == [("failure", 1), ("success", 2)]
