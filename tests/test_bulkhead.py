"""The bulkhead as its users hold it: a fleet-wide limit of calls in flight, leases
given back exactly once (on exceptions and cancellations too), waiting woken by the
fleet's channel, leases of a killed process gone within their TTL, and the local
share while Redis is away. The Lua itself is held to a model in
tests/test_bulkhead_model.py."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from bench.bulkhead import Capacity
from breaker import (
    AdaptiveLimit,
    BackendUnavailableError,
    BreakerConfig,
    Bulkhead,
    BulkheadConfig,
    BulkheadFullError,
    ConfigurationError,
)
from breaker._bulkhead.giving import Giving
from breaker._keys import BulkheadKeys
from breaker._store.backend import Backend, embedded_backend
from breaker._upstreams import Upstream as GuardedUpstream
from breaker._upstreams import guarded_client
from breaker.testing import ManualClock
from tests.support.servers import RedisServer
from tests.support.upstream import Reply, Upstream


@pytest.fixture(params=["redis", "embedded"])
def client(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A Redis client on the test db, or None: the embedded backend."""
    if request.param == "embedded":
        yield None
        return
    yield request.getfixturevalue("sync_redis")


def bulkhead(client: Any, **settings: Any) -> Bulkhead:
    """A bulkhead of the test's own (the embedded backend lives as long as the process)."""
    settings.setdefault("limit", 3)
    settings.setdefault("backend_timeout", 5.0)
    return Bulkhead(f"inventory-{uuid.uuid4().hex[:8]}", redis=client, **settings)


def stored(inventory: Bulkhead, client: Any) -> int:
    """The leases in the store, read with a client of the test's own."""
    raw = embedded_backend().client if client is None else client
    count: int = raw.zcard(inventory.keys.slots)
    return count


def test_leases_up_to_the_limit_then_a_refusal_with_a_hint(client: Any) -> None:
    inventory = bulkhead(client, limit=3, lease_ttl=8.0)
    leases = [inventory.acquire() for _ in range(3)]
    with pytest.raises(BulkheadFullError) as refused:
        inventory.acquire()
    assert (refused.value.in_use, refused.value.limit) == (3, 3)
    # No lease came back yet: the hint is a quarter of the TTL.
    assert refused.value.retry_after == pytest.approx(2.0)
    leases[0].release()
    assert inventory.snapshot().in_use == 2
    inventory.acquire().release()
    assert stored(inventory, client) == 2
    inventory.close()  # gives back what is still held
    assert stored(inventory, client) == 0


def test_a_lease_is_given_back_once_however_often_it_is_released(client: Any) -> None:
    inventory = bulkhead(client, limit=2)
    first = inventory.acquire()
    second = inventory.acquire()
    first.release()
    first.release()
    with first:
        pass
    assert inventory.snapshot().in_use == 1  # the second lease is still held
    assert (first.held, second.held) == (False, True)
    second.release()
    assert inventory.snapshot().in_use == 0
    inventory.close()


def _failing_first(
    monkeypatch: pytest.MonkeyPatch, script: str, *, applied: bool
) -> list[list[Any]]:
    """Every call of ``script``'s arguments, as sent; the first one fails as a reply
    slower than ``backend_timeout`` does: done in Redis (``applied``) or not, but not
    known to be."""
    real = Backend.run
    calls: list[list[Any]] = []

    def flaky(
        self: Backend, name: str, called: Any, keys: list[str], args: list[Any], now: float
    ) -> list[Any]:
        if called == script:
            calls.append(args)
            if len(calls) == 1:
                if applied:
                    real(self, name, called, keys, args, now)
                raise BackendUnavailableError(name, "Timeout reading from socket", sent=True)
        return real(self, name, called, keys, args, now)

    monkeypatch.setattr(Backend, "run", flaky)
    return calls


@pytest.mark.parametrize("applied", [False, True], ids=["lost", "done-but-slow"])
def test_a_give_that_fails_goes_again_with_the_next_give(
    sync_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch, applied: bool
) -> None:
    inventory = bulkhead(sync_redis, limit=2, lease_ttl=60.0)
    gives = _failing_first(monkeypatch, "give", applied=applied)
    first = inventory.acquire()
    first.release()
    assert stored(inventory, sync_redis) == (0 if applied else 1)
    assert not first.held  # given back, as far as its holder knows
    inventory.acquire().release()
    assert stored(inventory, sync_redis) == 0  # long before the lease's 60 s TTL
    assert first.id in gives[1]  # in the same call as the second lease's give
    inventory.acquire().release()
    assert first.id not in gives[2]  # owed once, sent once
    inventory.close()


def test_a_take_granted_in_redis_whose_reply_was_lost_is_given_back_after_its_call(
    sync_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The take timed out after Redis granted it: the call went on with a lease of the
    fallback lane. Redis keeps counting it while the call goes on (the fleet's count on
    the safe side), and gives it back with the first give after the call's end."""
    inventory = bulkhead(sync_redis, limit=3, lease_ttl=60.0)
    takes = _failing_first(monkeypatch, "take", applied=True)
    orphan = inventory.acquire()
    assert orphan.lane == "local"
    assert stored(inventory, sync_redis) == 1  # granted in Redis, unknown here
    inventory.acquire().release()  # a give while the orphan's call goes on
    assert stored(inventory, sync_redis) == 1
    orphan.release()
    inventory.acquire().release()
    assert stored(inventory, sync_redis) == 0
    assert len(takes) == 3
    inventory.close()


def test_a_give_that_fails_goes_again_with_the_next_renewal(
    sync_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    inventory = bulkhead(sync_redis, limit=2, lease_ttl=4.0)
    gives = _failing_first(monkeypatch, "give", applied=False)
    inventory.acquire().release()
    members: Any = sync_redis.zrange(inventory.keys.slots, 0, -1, withscores=True)
    [(_, expiry)] = members
    deadline = time.monotonic() + 3.0  # renewals come every second
    while stored(inventory, sync_redis) and time.monotonic() < deadline:
        time.sleep(0.05)
    seconds, micros = sync_redis.time()
    assert stored(inventory, sync_redis) == 0
    assert seconds * 1000 + micros // 1000 < expiry  # given back, not expired
    assert len(gives) == 2
    inventory.close()


def test_with_gives_the_lease_back_on_an_exception_and_nests(client: Any) -> None:
    inventory = bulkhead(client, limit=2)
    with pytest.raises(ZeroDivisionError), inventory:
        raise ZeroDivisionError
    with inventory as outer:
        with inventory as inner:
            assert inventory.snapshot().in_use == 2
        assert (outer.held, inner.held) == (True, False)
    assert inventory.snapshot().in_use == 0
    inventory.close()


def test_threads_never_hold_more_than_the_limit(client: Any) -> None:
    inventory = bulkhead(client, limit=4)
    in_flight = 0
    most = 0
    refused = 0
    lock = threading.Lock()

    def call() -> None:
        nonlocal in_flight, most, refused
        for _ in range(20):
            try:
                with inventory:
                    with lock:
                        in_flight += 1
                        most = max(most, in_flight)
                    time.sleep(0.002)
                    with lock:
                        in_flight -= 1
            except BulkheadFullError:
                with lock:
                    refused += 1

    threads = [threading.Thread(target=call) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert most <= 4
    assert refused > 0  # ten threads for four leases: some were turned away
    assert inventory.snapshot().in_use == 0
    inventory.close()


def test_settings_are_checked_and_name_the_key() -> None:
    for settings, key in (
        ({"limit": 0}, "limit"),
        ({"limit": 2.5}, "limit"),
        ({"lease_ttl": 0.0}, "lease_ttl"),
        ({"max_wait": -1}, "max_wait"),
        ({"max_wait": float("inf")}, "max_wait"),
    ):
        with pytest.raises(ConfigurationError) as refused:
            Bulkhead("settings", **settings)
        assert refused.value.field == key


# -- asyncio ---------------------------------------------------------------------


@pytest.fixture(params=["redis", "embedded"])
def async_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "embedded":
        return None
    request.getfixturevalue("sync_redis")  # flushes the db around the test
    url: str = request.getfixturevalue("redis_url")
    return url


def test_async_with_and_a_cancelled_holder_gives_its_lease_back(async_url: str | None) -> None:
    asyncio.run(cancelled_holders(async_url))


async def cancelled_holders(async_url: str | None) -> None:
    client = aioredis.Redis.from_url(async_url) if async_url else None
    inventory = Bulkhead(
        f"async-{uuid.uuid4().hex[:8]}", redis=client, limit=2, backend_timeout=5.0
    )
    async with inventory:
        assert (await inventory.asnapshot()).in_use == 1
    started = asyncio.Event()

    async def holder() -> None:
        async with inventory:
            started.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(holder())
    await started.wait()
    assert (await inventory.asnapshot()).in_use == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await inventory.asnapshot()).in_use == 0
    # Cancelled while taking: a lease granted meanwhile goes back too.
    for _ in range(20):
        taking = asyncio.create_task(inventory.aacquire())
        await asyncio.sleep(0)
        taking.cancel()
        try:
            lease = await taking
        except asyncio.CancelledError:
            continue
        await lease.arelease()
    # An orphan's give runs as a task of its own, and on the embedded backend its take
    # and give on the loop's executor: bounded at 5 s (the drift lane on a loaded
    # machine once took more than 1 s).
    for _ in range(250):
        if (await inventory.asnapshot()).in_use == 0:
            break
        await asyncio.sleep(0.02)
    # Held here (renewed by this process) or not (left to expire): which leak it is.
    assert (await inventory.asnapshot()).in_use == 0, sorted(inventory._held)
    await inventory.aclose()
    if client is not None:
        await client.aclose()


# -- the fleet: other processes ----------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys, time, redis
    from breaker import Bulkhead
    url, name, count, ttl, release_after = sys.argv[1:6]
    client = redis.Redis.from_url(url)
    inventory = Bulkhead(name, redis=client, limit=int(count), lease_ttl=float(ttl))
    leases = [inventory.acquire() for _ in range(int(count))]
    print("held", flush=True)
    if float(release_after) > 0:
        time.sleep(float(release_after))
        leases[0].release()
        print("released", flush=True)
    time.sleep(120)
    """
)


def start_holder(url: str, name: str, count: int, ttl: float, release_after: float) -> Any:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url, name, str(count), str(ttl), str(release_after)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_waiter_is_woken_by_a_lease_another_process_gives_back(
    sync_redis: redis.Redis, redis_url: str
) -> None:
    # The safety re-check comes every lease_ttl / 4 = 10 s, after the 5 s wait: only
    # the channel can wake the waiter in time.
    holder = start_holder(redis_url, "woken", 2, 40.0, 0.3)
    waiter = Bulkhead("woken", redis=sync_redis, limit=2, lease_ttl=40.0, max_wait=5.0)
    try:
        lease = waiter.acquire()
        assert holder.stdout.readline().strip() == "released"
        assert waiter.snapshot().in_use == 2
        lease.release()
    finally:
        holder.kill()
        holder.wait()
        waiter.close()


def test_the_leases_of_a_killed_process_are_gone_within_their_ttl(
    sync_redis: redis.Redis, redis_url: str
) -> None:
    holder = start_holder(redis_url, "killed", 6, 1.0, 0)
    inventory = Bulkhead("killed", redis=sync_redis, limit=6, lease_ttl=1.0)
    try:
        # Renewed while it lives: still held past their TTL.
        time.sleep(1.5)
        assert inventory.snapshot().in_use == 6
        with pytest.raises(BulkheadFullError):
            inventory.acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        seconds, micros = sync_redis.time()
        killed_at_ms = int(seconds) * 1000 + int(micros) // 1000
        # No lease outlives the kill by more than its TTL, on Redis's clock.
        held: list[tuple[bytes, float]] = sync_redis.zrange(  # type: ignore[assignment]
            inventory.keys.slots, 0, -1, withscores=True
        )
        expiries = [score for _, score in held]
        assert len(expiries) == 6
        assert max(expiries) <= killed_at_ms + 1000
        deadline = time.monotonic() + 5
        while inventory.snapshot().in_use and time.monotonic() < deadline:
            time.sleep(0.05)
        assert inventory.snapshot().in_use == 0
        with inventory:
            pass
    finally:
        holder.kill()
        holder.wait()
        inventory.close()


def test_without_redis_each_process_takes_its_share(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    clients = [redis_server.client(1) for _ in range(4)]
    fleet = [
        Bulkhead("shared-share", redis=c, limit=10, backend_timeout=0.5, lease_ttl=60.0)
        for c in clients
    ]
    for member in fleet:  # four processes seen by Redis
        member.acquire().release()
    mine = fleet[0]
    with mine:
        pass
    assert mine.processes == 4
    redis_server.kill()
    caplog.set_level(logging.WARNING, logger="breaker")
    leases = [mine.acquire(), mine.acquire()]  # 10 // 4
    with pytest.raises(BulkheadFullError):
        mine.acquire()
    assert [lease.lane for lease in leases] == ["local", "local"]
    outage_lines = [r for r in caplog.records if "takes at most its share" in r.message]
    assert len(outage_lines) == 1
    assert "2 of 10 (4 processes" in outage_lines[0].message
    for lease in leases:
        lease.release()
    mine.acquire().release()
    for member in fleet:
        member.close()


def test_keys_live_in_the_upstreams_hash_tag() -> None:
    keys = BulkheadKeys.of("breaker", "pay}ments")
    assert keys.as_list() == [
        "breaker:{pay%7Dments}:slots",
        "breaker:{pay%7Dments}:bulkhead",
        "breaker:{pay%7Dments}:slots:procs",
        "breaker:{pay%7Dments}:slots:waiters",
    ]


# -- the adaptive limit --------------------------------------------------------------


def test_an_adaptive_limit_follows_the_upstreams_capacity_down_and_up(
    sync_redis: redis.Redis, redis_url: str
) -> None:
    """Four processes' bulkheads on one learnt limit, six callers each, against an
    upstream that serves 4 calls at once and queues the rest; then 30."""

    async def scenario() -> tuple[list[int], list[int]]:
        client = aioredis.Redis.from_url(redis_url)
        adaptive = AdaptiveLimit(min=2, max=40, initial=20, interval=0.05)
        fleet = [Bulkhead("learnt", redis=client, limit=adaptive) for _ in range(4)]
        upstream = Capacity(4, 0.02)
        stop = asyncio.Event()

        async def caller(bulkhead: Bulkhead) -> None:
            while not stop.is_set():
                try:
                    async with bulkhead:
                        await upstream.call()
                except BulkheadFullError:
                    await asyncio.sleep(0.02)

        async def limits_until(done: Any, seconds: float) -> list[int]:
            seen = []
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                seen.append(int(await client.hget(fleet[0].keys.bulkhead, "limit") or 0))
                if done(seen[-1]):
                    break
            return seen

        tasks = [asyncio.create_task(caller(b)) for b in fleet for _ in range(6)]
        down = await limits_until(lambda limit: limit <= 7, 20.0)
        await upstream.set_capacity(30)
        up = await limits_until(lambda limit: limit >= 20, 20.0)
        stop.set()
        await asyncio.gather(*tasks)
        for bulkhead in fleet:
            await bulkhead.aclose()
        await client.aclose()
        return down, up

    down, up = asyncio.run(scenario())
    # 1.1 x 4 + 1 is where the rule settles for a capacity of 4 (docs/howto/bulkhead.md).
    assert down[-1] <= 7, f"the limit never came down to the capacity: {down}"
    assert up[-1] >= 20, f"the limit never grew back: {up}"


def test_an_adaptive_take_obeys_the_limit_the_fleet_learnt_not_its_own_start(
    client: Any,
) -> None:
    inventory = bulkhead(client, limit=AdaptiveLimit(min=1, max=50, initial=10))
    raw = embedded_backend().client if client is None else client
    raw.hset(inventory.keys.bulkhead, "alimit", "2.5")  # what tune stored for the fleet
    leases = [inventory.acquire(), inventory.acquire()]
    with pytest.raises(BulkheadFullError) as refused:
        inventory.acquire()
    assert (refused.value.limit, inventory.limit) == (2, 2)
    for lease in leases:
        lease.release()
    inventory.close()


def test_a_guarded_calls_body_end_sends_the_give_beside_the_record(
    async_url: str | None, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the transport, in the breaker's exact mode: one round trip to take the
    lease before the call, then the record and the give sent together when the body
    ends (each begins before either ends), so a call waits two round trips, not three.
    A body closed early gives its lease back too."""
    upstream.plan("/item", Reply(200, body=b"x" * 10_000))
    events: list[tuple[str, str]] = []
    run = Backend.arun

    async def spied(self: Backend, name: str, script: str, *rest: Any) -> list[Any]:
        events.append(("start", script))
        try:
            return await run(self, name, script, *rest)  # type: ignore[arg-type]
        finally:
            events.append(("end", script))

    monkeypatch.setattr(Backend, "arun", spied)

    async def scenario() -> None:
        client = aioredis.Redis.from_url(async_url) if async_url else None
        guarded = guarded_client(
            GuardedUpstream(
                f"paired-{uuid.uuid4().hex[:8]}",
                upstream.url,
                breaker=BreakerConfig(backend_timeout=5.0),
                bulkhead=BulkheadConfig(limit=2),
            ),
            redis=client,
        )
        assert guarded.bulkhead is not None
        async with guarded.client as http:
            assert (await http.get("/item")).status_code == 200  # the breaker learns its state
            events.clear()
            response = await http.get("/item")
            assert response.content == b"x" * 10_000
            scripts = [script for _, script in events]
            assert scripts[:2] == ["take", "take"]  # before the call: one round trip
            end = events[2:]
            assert sorted(end) == sorted(
                [("start", "record"), ("end", "record"), ("start", "give"), ("end", "give")]
            )
            assert end[0][0] == end[1][0] == "start"  # both sent before either came back
            assert (await guarded.bulkhead.asnapshot()).in_use == 0
            async with http.stream("GET", "/item") as streamed:
                async for _ in streamed.aiter_raw(1000):
                    break  # the reader stops early: the response is closed
            assert (await guarded.bulkhead.asnapshot()).in_use == 0
        if client is not None:
            await client.aclose()

    asyncio.run(scenario())


def test_owed_gives_survive_a_payment_torn_down_mid_call() -> None:
    """A renewal task cancelled, or a close cancelled, while it sends the owed gives:
    its driver is torn down (GeneratorExit at the call), and the gives stay owed."""
    clock = ManualClock()
    giving = Giving("owed", "host:1:ab", 60.0, "", clock, None)
    giving.owed.owe([("host:1:ab:7", 0.1, clock.monotonic())])
    steps = giving.pay()
    call = next(steps)
    assert (call.lane, call.script) == ("shared", "give")
    steps.close()
    assert [owed[0] for owed in giving.owed.due(clock.monotonic())] == ["host:1:ab:7"]
