"""A reply lost after its command ran: the breaker never runs the command again, so
nothing is counted twice. Every redis-py client the breaker makes for itself has
retries off; a lost reply is a ``BackendUnavailableError``, decided by the policy.
A ``FaultProxy`` forwards the command to Redis, waits for the reply, and throws it
away (``tests/support/proxy.py``); Redis itself is read directly. What a client that
retries would do instead is in ``test_topology_support`` (an INCR runs twice)."""

from __future__ import annotations

import asyncio
import contextlib

import redis
import redis.asyncio as aioredis

from breaker import CircuitBreaker
from breaker.testing import ManualClock
from tests.conftest import Breakers
from tests.support.proxy import FaultProxy
from tests.support.servers import RedisServer, text_hash
from tests.test_round_trips import fail, succeed


def window_counts(server: RedisServer, name: str) -> tuple[int, int]:
    window = text_hash(server.client(), f"breaker:{{{name}}}:window")
    calls = sum(int(v) for k, v in window.items() if k.endswith(":c"))
    failures = sum(int(v) for k, v in window.items() if k.endswith(":f"))
    return calls, failures


def test_a_record_whose_reply_is_lost_counts_once(
    breakers: Breakers, redis_server: RedisServer, fault_proxy: FaultProxy
) -> None:
    # The caller's client retries (redis-py's default): the breaker's own does not.
    client = redis.Redis.from_url(fault_proxy.url)
    cb = breakers("p", redis=client, clock=ManualClock(), failure_threshold=100)
    succeed(cb)  # connected, the library loaded, the settings stored
    # Following: the next call's view decides alone, so its one FCALL is the record.
    assert cb.follow_events(timeout=5.0)
    sent = fault_proxy.requests_containing(b"FCALL")
    fault_proxy.cut_after_request(b"FCALL")
    fail(cb)  # record runs in Redis; its reply never comes back
    assert fault_proxy.cuts == 1
    assert fault_proxy.requests_containing(b"FCALL") == sent + 1  # sent once, never again
    assert window_counts(redis_server, "p") == (2, 1)
    assert text_hash(redis_server.client(), "breaker:{p}")["failures"] == "1"


def test_an_async_record_whose_reply_is_lost_counts_once(
    redis_server: RedisServer, fault_proxy: FaultProxy
) -> None:
    sent: list[int] = []

    async def scenario() -> None:
        client = aioredis.Redis.from_url(fault_proxy.url)
        cb = CircuitBreaker("p", redis=client, clock=ManualClock(), failure_threshold=100)

        async def upstream_down() -> None:
            raise ConnectionError

        async with cb:
            pass
        for _ in range(500):  # bounded: the follower subscribes in its own time
            if cb.following:
                break
            await asyncio.sleep(0.01)
        assert cb.following  # the next call's view decides alone: its one FCALL is record
        sent.append(fault_proxy.requests_containing(b"FCALL"))
        fault_proxy.cut_after_request(b"FCALL")
        with contextlib.suppress(ConnectionError):
            await cb.call(upstream_down)
        await cb.aclose()
        await client.aclose()

    asyncio.run(scenario())
    assert fault_proxy.requests_containing(b"FCALL") == sent[0] + 1
    assert window_counts(redis_server, "p") == (2, 1)
