"""The event feed behind /admin/events: fan-out, bounded queues, the SSE framing."""

from __future__ import annotations

import asyncio
import json
import threading

from app.telemetry.events import EventFeed, sse_message, stream
from breaker import TransitionEvent


def event(generation: int, to_state: str = "open") -> TransitionEvent:
    return TransitionEvent(
        name="api",
        from_state="closed",
        to_state=to_state,
        at=1000 + generation,
        reason="failure_threshold",
        created_at=1000,
        generation=generation,
        open_until=31_000,
    )


def test_sse_message_is_one_transition_event_with_json_data() -> None:
    message = sse_message(event(1))
    assert message.endswith("\n\n")
    kind, data = message.strip().split("\n")
    assert kind == "event: transition"
    assert json.loads(data.removeprefix("data: ")) == {
        "name": "api",
        "from": "closed",
        "to": "open",
        "at": 1001,
        "reason": "failure_threshold",
        "generation": 1,
        "open_until": 31_000,
    }


def test_every_subscriber_gets_every_event_and_leaving_unsubscribes() -> None:
    async def scenario() -> None:
        feed = EventFeed(asyncio.get_running_loop())
        async with feed.subscribe() as first, feed.subscribe() as second:
            assert feed.subscribers == 2
            feed.publish(event(1))
            assert await first.get() == await second.get() == event(1)
        assert feed.subscribers == 0

    asyncio.run(scenario())


def test_a_slow_subscriber_loses_its_oldest_events_not_the_gateways_memory() -> None:
    async def scenario() -> None:
        feed = EventFeed(asyncio.get_running_loop())
        async with feed.subscribe() as queue:
            for generation in range(queue.maxsize + 5):
                feed.publish(event(generation))
            assert queue.qsize() == queue.maxsize
            assert await queue.get() == event(5)

    asyncio.run(scenario())


def test_events_from_another_thread_reach_the_loop() -> None:
    async def scenario() -> None:
        feed = EventFeed(asyncio.get_running_loop())
        async with feed.subscribe() as queue:
            thread = threading.Thread(target=feed.publish, args=(event(7),))
            thread.start()
            received = await asyncio.wait_for(queue.get(), timeout=10.0)
            thread.join()
            assert received == event(7)

    asyncio.run(scenario())


def test_stream_opens_with_a_comment_then_sends_events_and_keep_alives() -> None:
    async def scenario() -> None:
        feed = EventFeed(asyncio.get_running_loop())
        body = stream(feed, heartbeat=0.01)
        assert await anext(body) == ": fleetbreaker transitions\n\n"
        assert feed.subscribers == 1
        feed.publish(event(3))
        assert await anext(body) == sse_message(event(3))
        assert await anext(body) == ": keep-alive\n\n"
        await body.aclose()  # the client went away
        assert feed.subscribers == 0

    asyncio.run(scenario())


def test_closing_the_feed_ends_every_stream_open_or_to_come() -> None:
    """A stopping worker closes its feed, so that its event streams end and their
    connections close at once, not at the end of the graceful shutdown's wait."""

    async def scenario() -> None:
        feed = EventFeed(asyncio.get_running_loop())
        open_one = stream(feed, heartbeat=60.0)
        assert await anext(open_one) == ": fleetbreaker transitions\n\n"
        feed.close()
        assert [message async for message in open_one] == []
        assert feed.subscribers == 0
        later = stream(feed, heartbeat=60.0)
        assert [message async for message in later] == [": fleetbreaker transitions\n\n"]

    asyncio.run(asyncio.wait_for(scenario(), timeout=10.0))
