"""The httpx transports against a real upstream (uvicorn), on every backend, sync and
async. Waits are recorded by a ``ManualClock``; only per-try timeouts run for real,
and they are a few hundredths of a second."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from breaker import (
    ATTEMPTS_EXTENSION,
    RETRY_EXTENSION,
    BreakerConfig,
    BreakerKeys,
    BreakerSnapshot,
    CircuitBreaker,
    CircuitOpenError,
    ConfigurationError,
    ResilientTransport,
    RetryPolicy,
    SyncResilientTransport,
    attempts_of,
    origin_of,
    redis_from_url,
)
from breaker._transport import BreakerTransport
from breaker.testing import ManualClock, set_testing
from tests.conftest import Harness
from tests.support.faulty import FaultyUpstream
from tests.support.lanes import harness_config
from tests.support.upstream import Reply, Upstream

NO_TRIP = harness_config(failure_threshold=1_000_000)
ONE_CONNECTION = httpx.Limits(max_connections=1, max_keepalive_connections=1)
# A request waits at most this long for a pooled connection: a response left open
# by a retry would hold the only one.
POOL_WAIT = httpx.Timeout(10.0, pool=1.0)


@dataclass
class Caller:
    """Sends one request through a fresh resilient transport of one kind.

    ``sync-*`` kinds use ``SyncResilientTransport`` on ``httpx.Client``, ``async-*``
    ones ``ResilientTransport`` on ``httpx.AsyncClient``; ``*-redis`` kinds keep the
    breakers in the real Redis, ``*-embedded`` ones in the embedded backend.
    """

    kind: str
    redis_url: str | None
    upstream: Upstream
    clock: ManualClock

    def send(
        self,
        method: str,
        path: str,
        *,
        retry: RetryPolicy | None = None,
        config: BreakerConfig = NO_TRIP,
        base: str | None = None,
        real_clock: bool = False,
        one_connection: bool = False,
        body_timeout: float | None = None,
        **request: Any,
    ) -> httpx.Response:
        url = (base or self.upstream.url) + path
        settings: dict[str, Any] = {
            "retry": retry or RetryPolicy(),
            "breaker_config": config,
            "clock": None if real_clock else self.clock,
            "body_timeout": body_timeout,
        }
        if self.kind.startswith("sync"):
            client = redis.Redis.from_url(self.redis_url) if self.redis_url else None
            inner = httpx.HTTPTransport(limits=ONE_CONNECTION) if one_connection else None
            transport = SyncResilientTransport(inner, redis=client, **settings)
            with httpx.Client(transport=transport, timeout=POOL_WAIT) as http:
                return http.request(method, url, **request)

        async def scenario() -> httpx.Response:
            client = aioredis.Redis.from_url(self.redis_url) if self.redis_url else None
            inner = httpx.AsyncHTTPTransport(limits=ONE_CONNECTION) if one_connection else None
            transport = ResilientTransport(inner, redis=client, **settings)
            try:
                async with httpx.AsyncClient(transport=transport, timeout=POOL_WAIT) as http:
                    return await http.request(method, url, **request)
            finally:
                if client is not None:
                    await client.aclose()

        return asyncio.run(scenario())

    def snapshot(self, name: str | None = None) -> BreakerSnapshot:
        client = redis.Redis.from_url(self.redis_url) if self.redis_url else None
        name = name or origin_of(httpx.Request("GET", self.upstream.url))
        cb = CircuitBreaker(name, redis=client, clock=self.clock)
        try:
            return cb.snapshot()
        finally:
            cb.close()


@pytest.fixture(params=["sync-redis", "sync-embedded", "async-redis", "async-embedded"])
def caller(request: pytest.FixtureRequest, upstream: Upstream) -> Caller:
    url = None
    if request.param.endswith("redis"):
        request.getfixturevalue("sync_redis")  # flushes the test db around the test
        url = request.getfixturevalue("redis_url")
    return Caller(request.param, url, upstream, ManualClock())


def http_date(epoch: float) -> str:
    return format_datetime(datetime.fromtimestamp(epoch, UTC), usegmt=True)


# -- what is retried -------------------------------------------------------------------


def test_a_transient_status_is_retried_until_success(caller: Caller) -> None:
    caller.upstream.plan("/flaky", Reply(503), Reply(502), Reply(200, body=b"fine"))
    response = caller.send("GET", "/flaky")
    assert (response.status_code, response.text) == (200, "fine")
    assert len(caller.upstream.hits_on("/flaky")) == 3
    assert response.extensions[ATTEMPTS_EXTENSION] == 3
    waits = caller.clock.sleeps
    assert len(waits) == 2
    assert 0 <= waits[0] <= 0.1
    assert 0 <= waits[1] <= 0.2


def test_when_attempts_run_out_the_last_response_passes_through(caller: Caller) -> None:
    caller.upstream.plan("/down", Reply(503, body=b"maintenance"))
    response = caller.send("GET", "/down", retry=RetryPolicy(attempts=4))
    assert (response.status_code, response.text) == (503, "maintenance")
    assert (len(caller.upstream.hits_on("/down")), attempts_of(response)) == (4, 4)


def test_a_retried_response_gives_its_connection_back(caller: Caller) -> None:
    caller.upstream.plan("/down", Reply(503))
    response = caller.send("GET", "/down", one_connection=True)
    assert (response.status_code, attempts_of(response)) == (503, 3)


@pytest.mark.parametrize("status", [400, 404, 409, 500])
def test_other_statuses_are_sent_once(caller: Caller, status: int) -> None:
    caller.upstream.plan("/x", Reply(status))
    assert caller.send("GET", "/x").status_code == status
    assert len(caller.upstream.hits_on("/x")) == 1


def test_a_server_error_counts_against_the_breaker(caller: Caller) -> None:
    caller.upstream.plan("/x", Reply(500))
    caller.send("GET", "/x")
    snapshot = caller.snapshot()
    assert (snapshot.failures, snapshot.window_failures) == (1, 1)


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"])
def test_idempotent_methods_are_retried(caller: Caller, method: str) -> None:
    caller.upstream.plan("/m", Reply(503))
    assert caller.send(method, "/m").status_code == 503
    assert [hit.method for hit in caller.upstream.hits_on("/m")] == [method] * 3


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_other_methods_are_never_retried_by_default(caller: Caller, method: str) -> None:
    caller.upstream.plan("/m", Reply(503))
    assert caller.send(method, "/m", content=b"order").status_code == 503
    assert len(caller.upstream.hits_on("/m")) == 1


def test_a_post_with_an_idempotency_key_is_retried_with_its_body(caller: Caller) -> None:
    caller.upstream.plan("/orders", Reply(503), Reply(201))
    response = caller.send(
        "POST", "/orders", content=b'{"qty": 1}', headers={"Idempotency-Key": "order-42"}
    )
    assert response.status_code == 201
    assert [hit.body for hit in caller.upstream.hits_on("/orders")] == [b'{"qty": 1}'] * 2


def test_a_request_can_opt_in_or_out_of_retries(caller: Caller) -> None:
    caller.upstream.plan("/m", Reply(503))
    caller.send("POST", "/m", extensions={RETRY_EXTENSION: True})
    assert len(caller.upstream.hits_on("/m")) == 3
    caller.send("GET", "/m", extensions={RETRY_EXTENSION: False})
    assert len(caller.upstream.hits_on("/m")) == 4


def test_a_streamed_body_that_cannot_be_replayed_is_sent_once(caller: Caller) -> None:
    caller.upstream.plan("/upload", Reply(503))

    def chunks() -> Iterator[bytes]:
        yield b"part one, "
        yield b"part two"

    async def achunks() -> Any:
        for chunk in chunks():
            yield chunk

    body = chunks() if caller.kind.startswith("sync") else achunks()
    assert caller.send("PUT", "/upload", content=body).status_code == 503
    hits = caller.upstream.hits_on("/upload")
    assert [hit.body for hit in hits] == [b"part one, part two"]


# -- connection failures -----------------------------------------------------------------


def test_a_dropped_connection_is_retried(caller: Caller) -> None:
    caller.upstream.plan("/drop", Reply(drop=True), Reply(200))
    response = caller.send("GET", "/drop")
    assert (response.status_code, attempts_of(response)) == (200, 2)


def test_a_refused_connection_is_retried_then_raised_with_its_attempts(caller: Caller) -> None:
    caller.upstream.close_port()
    with pytest.raises(httpx.ConnectError) as caught:
        caller.send("GET", "/x")
    assert attempts_of(caught.value) == 3
    caller.upstream.reopen()
    assert caller.send("GET", "/x").status_code == 200


def test_the_per_try_timeout_cuts_a_slow_attempt_and_the_next_succeeds(caller: Caller) -> None:
    caller.upstream.plan("/slow", Reply(delay_headers=5.0), Reply(200))
    response = caller.send("GET", "/slow", retry=RetryPolicy(per_try_timeout=0.05))
    assert (response.status_code, attempts_of(response)) == (200, 2)


@pytest.mark.parametrize("cut_by", ["pool_timeout", "per_try_timeout"])
def test_waiting_for_a_pooled_connection_is_a_local_overload_never_a_failure_nor_retried(
    upstream: Upstream, cut_by: str
) -> None:
    """The only connection is held by a response still streaming; the next request
    waits for it until httpx's pool timeout, or the policy's per-try timeout, cuts
    it. Either way it never reached the upstream: ``httpx.PoolTimeout``, once, and
    its breaker counts nothing (an exhausted pool is this side's overload)."""
    upstream.plan("/held", Reply(delay_body=5.0))
    per_try = 0.2 if cut_by == "per_try_timeout" else None
    pool_wait = 0.2 if cut_by == "pool_timeout" else 10.0

    async def scenario() -> BreakerSnapshot:
        transport = ResilientTransport(
            httpx.AsyncHTTPTransport(limits=ONE_CONNECTION),
            retry=RetryPolicy(attempts=3, backoff=0, per_try_timeout=per_try),
            breaker_config=NO_TRIP,
        )
        timeout = httpx.Timeout(10.0, pool=pool_wait)
        async with httpx.AsyncClient(transport=transport, timeout=timeout) as http:
            async with http.stream("GET", f"{upstream.url}/held"):  # holds the connection
                with pytest.raises(httpx.PoolTimeout) as waited:
                    await http.get(f"{upstream.url}/waits")
                assert attempts_of(waited.value) == 1
            return await transport.breaker(origin_of(waited.value.request)).asnapshot()

    snapshot = asyncio.run(scenario())
    assert (snapshot.window_calls, snapshot.window_failures) == (1, 0)  # /held's success
    assert upstream.hits_on("/waits") == []


def test_a_sync_pool_timeout_is_never_a_failure_nor_retried(upstream: Upstream) -> None:
    upstream.plan("/held", Reply(delay_body=5.0))
    transport = SyncResilientTransport(
        httpx.HTTPTransport(limits=ONE_CONNECTION),
        retry=RetryPolicy(attempts=3, backoff=0),
        breaker_config=NO_TRIP,
    )
    with httpx.Client(transport=transport, timeout=httpx.Timeout(10.0, pool=0.2)) as http:
        with http.stream("GET", f"{upstream.url}/held"):
            with pytest.raises(httpx.PoolTimeout) as waited:
                http.get(f"{upstream.url}/waits")
            assert attempts_of(waited.value) == 1
        snapshot = transport.breaker(origin_of(waited.value.request)).snapshot()
    assert (snapshot.window_calls, snapshot.window_failures) == (1, 0)
    assert upstream.hits_on("/waits") == []


def test_a_body_that_stalls_after_the_headers_is_the_callers_not_retried(
    caller: Caller,
) -> None:
    # Once the headers are in, the response is handed over: its body is read by the
    # caller, within the attempt's timeout, and a stall there is not sent again.
    caller.upstream.plan("/stall", Reply(200, delay_body=5.0), Reply(200))
    with pytest.raises(httpx.ReadTimeout):  # 0.5 s: the headers come in time when loaded
        caller.send("GET", "/stall", retry=RetryPolicy(per_try_timeout=0.5))
    assert len(caller.upstream.hits_on("/stall")) == 1


def test_the_deadline_holds_on_the_real_clock(caller: Caller) -> None:
    caller.upstream.plan("/slow", Reply(delay_headers=5.0))
    policy = RetryPolicy(attempts=5, deadline=0.1)
    started = time.monotonic()
    set_testing(True)
    try:
        with pytest.raises(httpx.TimeoutException) as caught:
            caller.send("GET", "/slow", retry=policy, real_clock=True)
    finally:
        set_testing(False)
    # The only attempt was cut at the deadline: no second attempt started after it,
    # and the call ended long before the upstream's 5 s answer.
    assert (len(caller.upstream.hits_on("/slow")), attempts_of(caught.value)) == (1, 1)
    assert time.monotonic() - started < 5.0


# -- Retry-After ----------------------------------------------------------------------


def test_retry_after_in_seconds_sets_the_wait(caller: Caller) -> None:
    caller.upstream.plan("/busy", Reply(429, retry_after="3"), Reply(200))
    assert caller.send("GET", "/busy").status_code == 200
    assert caller.clock.sleeps == [3.0]


def test_retry_after_as_an_http_date_sets_the_wait(caller: Caller) -> None:
    later = http_date(caller.clock.wall() + 5)
    caller.upstream.plan("/busy", Reply(503, retry_after=later), Reply(200))
    assert caller.send("GET", "/busy").status_code == 200
    assert caller.clock.sleeps == [5.0]


def test_retry_after_in_the_past_falls_back_to_the_backoff(caller: Caller) -> None:
    earlier = http_date(caller.clock.wall() - 60)
    caller.upstream.plan("/busy", Reply(503, retry_after=earlier), Reply(200))
    assert caller.send("GET", "/busy").status_code == 200
    assert 0 <= caller.clock.sleeps[0] <= 0.1


def test_retry_after_is_capped(caller: Caller) -> None:
    caller.upstream.plan("/busy", Reply(503, retry_after="3600"), Reply(200))
    caller.send("GET", "/busy", retry=RetryPolicy(max_retry_after=2.0))
    assert caller.clock.sleeps == [2.0]


# -- with the breaker ---------------------------------------------------------------


def test_an_open_breaker_stops_the_retries_and_spares_the_upstream(caller: Caller) -> None:
    caller.upstream.plan("/down", Reply(503))
    config = harness_config(failure_threshold=2)
    with pytest.raises(CircuitOpenError) as caught:
        caller.send("GET", "/down", retry=RetryPolicy(attempts=5), config=config)
    assert (len(caller.upstream.hits_on("/down")), attempts_of(caught.value)) == (2, 2)
    with pytest.raises(CircuitOpenError):
        caller.send("GET", "/down", config=config)
    assert len(caller.upstream.hits_on("/down")) == 2
    assert caller.snapshot().state == "open"


def test_each_origin_has_its_own_breaker(caller: Caller) -> None:
    other = Upstream()
    other.start()
    try:
        caller.upstream.plan("/x", Reply(500))
        config = harness_config(failure_threshold=1)
        caller.send("GET", "/x", config=config)
        with pytest.raises(CircuitOpenError):
            caller.send("GET", "/x", config=config)
        assert caller.send("GET", "/x", config=config, base=other.url).status_code == 200
    finally:
        other.close_port()


def test_origins_name_their_breakers() -> None:
    assert (
        origin_of(httpx.Request("GET", "https://api.example/v1?q=1")) == "https://api.example:443"
    )
    assert origin_of(httpx.Request("GET", "http://api.example/")) == "http://api.example:80"
    assert origin_of(httpx.Request("GET", "http://[::1]:8080/")) == "http://[::1]:8080"


def test_a_naming_function_can_share_one_breaker_across_origins(upstream: Upstream) -> None:
    other = Upstream()
    other.start()
    try:
        upstream.plan("/x", Reply(500))
        transport = SyncResilientTransport(
            breaker_config=harness_config(failure_threshold=1),
            breaker_name=lambda request: "partner-api",
            clock=ManualClock(),
        )
        with httpx.Client(transport=transport) as http:
            http.get(upstream.url + "/x")
            with pytest.raises(CircuitOpenError):
                http.get(other.url + "/x")
        assert transport.breaker("partner-api").snapshot().state == "open"
        assert other.hits == []
    finally:
        other.close_port()


# -- plumbing -----------------------------------------------------------------------


class Recording(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """An inner transport that only records that it was closed."""

    closed = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200)

    def close(self) -> None:
        self.closed += 1

    async def aclose(self) -> None:
        self.closed += 1


class Hanging(httpx.AsyncBaseTransport):
    """An inner transport that never answers and knows nothing of timeouts."""

    calls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def test_the_async_transport_bounds_a_whole_attempt_whatever_the_inner_transport() -> None:
    inner = Hanging()
    transport = ResilientTransport(
        inner, retry=RetryPolicy(attempts=2, per_try_timeout=0.05), clock=ManualClock()
    )

    async def scenario() -> None:
        async with httpx.AsyncClient(transport=transport) as http:
            await http.get("http://hanging.test/")

    with pytest.raises(httpx.TimeoutException, match=r"took longer than 0\.05 s") as caught:
        asyncio.run(scenario())
    assert (inner.calls, attempts_of(caught.value)) == (2, 2)


def test_close_passes_through_to_the_inner_transport() -> None:
    inner = Recording()
    SyncResilientTransport(inner).close()
    asyncio.run(ResilientTransport(inner).aclose())
    assert inner.closed == 2


# -- the body decides too --------------------------------------------------------------


def faulty_name(faulty: FaultyUpstream) -> str:
    return origin_of(httpx.Request("GET", faulty.url))


def test_a_body_that_breaks_off_after_good_headers_counts_as_a_failure(
    caller: Caller, faulty: FaultyUpstream
) -> None:
    with pytest.raises(httpx.TransportError):
        caller.send("GET", "/reset", base=faulty.url)
    snapshot = caller.snapshot(faulty_name(faulty))
    assert (snapshot.failures, snapshot.window_failures) == (1, 1)


def test_a_body_that_outlasts_the_body_timeout_is_cut_and_counts_as_a_failure(
    caller: Caller, faulty: FaultyUpstream
) -> None:
    with pytest.raises(httpx.ReadTimeout, match=r"body took longer than 0\.2 s"):
        caller.send("GET", "/trickle", base=faulty.url, body_timeout=0.2)
    assert caller.snapshot(faulty_name(faulty)).failures == 1


@pytest.mark.slow  # it waits for a real read timeout, which nothing can inject
def test_a_stalled_body_is_cut_by_the_async_deadline_or_the_sync_read_timeout(
    caller: Caller, faulty: FaultyUpstream
) -> None:
    """The one rule of both twins: a body past ``body_timeout`` is a failure. The async
    one cuts a read that stalls at the deadline; the sync one cannot interrupt a read,
    and httpx's read timeout cuts it."""
    sync = caller.kind.startswith("sync")
    expected = r"timed out" if sync else r"body took longer than 0\.2 s"
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout, match=expected):
        caller.send("GET", "/stall", base=faulty.url, body_timeout=0.2, timeout=0.4)
    assert time.monotonic() - started < 5.0  # a hang check, not a speed check
    assert caller.snapshot(faulty_name(faulty)).failures == 1


def test_a_reader_that_stops_early_leaves_the_headers_success_standing(
    harness: Harness, faulty: FaultyUpstream
) -> None:
    config = harness_config(failure_threshold=1)
    transport = SyncResilientTransport(redis=harness.client, breaker_config=config)
    with (
        httpx.Client(transport=transport, timeout=POOL_WAIT) as http,
        http.stream("GET", f"{faulty.url}/trickle") as response,
    ):
        assert next(response.iter_raw())  # one chunk of many, then the reader leaves
    snapshot = harness.breaker(faulty_name(faulty)).snapshot()
    assert (snapshot.window_calls, snapshot.failures) == (1, 0)

    async def scenario() -> None:
        client = redis_from_url(harness.url, asyncio=True) if harness.url else None
        transport = ResilientTransport(redis=client, breaker_config=config)
        async with (
            httpx.AsyncClient(transport=transport, timeout=POOL_WAIT) as http,
            http.stream("GET", f"{faulty.url}/trickle") as response,
        ):
            async for _ in response.aiter_raw():
                break
        if client is not None:
            await client.aclose()

    asyncio.run(scenario())
    snapshot = harness.breaker(faulty_name(faulty)).snapshot()
    assert (snapshot.window_calls, snapshot.failures) == (2, 0)


def test_a_body_read_to_its_end_counts_as_one_success(
    caller: Caller, faulty: FaultyUpstream
) -> None:
    assert caller.send("GET", "/ok", base=faulty.url, body_timeout=5.0).text == "ok"
    snapshot = caller.snapshot(faulty_name(faulty))
    assert (snapshot.failures, snapshot.window_calls) == (0, 1)


def test_a_half_open_trial_holds_its_lease_until_its_body_ends(
    harness: Harness, upstream: Upstream
) -> None:
    upstream.plan("/t", Reply(500), Reply(200, body=b"trial"), Reply(200))
    config = harness_config(failure_threshold=1, reset_timeout=1.0, half_open_max_calls=1)
    transport = SyncResilientTransport(
        redis=harness.client,
        retry=RetryPolicy(attempts=1),
        breaker_config=config,
        clock=harness.clock,
    )
    with httpx.Client(transport=transport, base_url=upstream.url, timeout=POOL_WAIT) as http:
        assert http.get("/t").status_code == 500  # trips
        harness.clock.advance(1.5)
        with http.stream("GET", "/t") as trial:  # the trial: headers in, body not read
            assert trial.status_code == 200
            with pytest.raises(CircuitOpenError):
                http.get("/t")  # the lease is still held
            assert trial.read() == b"trial"
        assert http.get("/t").status_code == 200  # the body ended: closed
    assert len(upstream.hits_on("/t")) == 3


# -- many origins: at most max_breakers kept ---------------------------------------------


def answer(request: httpx.Request) -> httpx.Response:
    """The mocked network: ``down.test`` answers 500, every other origin 200. The body
    is a stream, as from a socket (``content=`` would be read already, and httpx would
    never end it: the permit would wait for the response to be collected)."""
    status = 500 if request.url.host == "down.test" else 200
    return httpx.Response(status, stream=httpx.ByteStream(b"ok"))


class Origins:
    """One resilient transport of one kind over the mocked network, driven from sync
    code: an async kind runs each request in one asyncio.Runner's loop."""

    def __init__(self, kind: str, redis_url: str | None, **settings: Any) -> None:
        self.kind = kind
        inner = httpx.MockTransport(answer)
        settings.setdefault("retry", RetryPolicy(attempts=1))
        if kind.startswith("sync"):
            self.client: Any = redis.Redis.from_url(redis_url) if redis_url else None
            self.transport: Any = SyncResilientTransport(inner, redis=self.client, **settings)
            self.http: Any = httpx.Client(transport=self.transport)
            return
        self.runner = asyncio.Runner()

        async def start() -> None:
            self.client = aioredis.Redis.from_url(redis_url) if redis_url else None
            self.transport = ResilientTransport(inner, redis=self.client, **settings)
            self.http = httpx.AsyncClient(transport=self.transport)

        self.runner.run(start())

    def _run(self, outcome: Any) -> Any:
        return outcome if self.kind.startswith("sync") else self.runner.run(outcome)

    def get(self, url: str) -> httpx.Response:
        return self._run(self.http.get(url))  # type: ignore[no-any-return]

    def open_stream(self, url: str) -> httpx.Response:
        """A response whose body is not read yet: its permit is still unsettled."""
        return self._run(self.http.send(self.http.build_request("GET", url), stream=True))  # type: ignore[no-any-return]

    def close_stream(self, response: httpx.Response) -> None:
        if self.kind.startswith("sync"):
            response.close()
        else:
            self.runner.run(response.aclose())

    def breaker(self, url: str) -> CircuitBreaker:
        return self.transport.breaker(origin_of(httpx.Request("GET", url)))  # type: ignore[no-any-return]

    @property
    def kept(self) -> int:
        return len(self.transport._retriers)

    def close(self) -> None:
        if self.kind.startswith("sync"):
            self.http.close()
            if self.client is not None:
                self.client.close()
            return

        async def stop() -> None:
            await self.http.aclose()
            if self.client is not None:
                await self.client.aclose()

        self.runner.run(stop())
        self.runner.close()


@pytest.fixture(params=["sync-redis", "sync-embedded", "async-redis", "async-embedded"])
def origins(request: pytest.FixtureRequest) -> Iterator[Callable[..., Origins]]:
    url = None
    if request.param.endswith("redis"):
        request.getfixturevalue("sync_redis")  # flushes the test db around the test
        url = request.getfixturevalue("redis_url")
    made: list[Origins] = []

    def make(**settings: Any) -> Origins:
        made.append(Origins(request.param, url, **settings))
        return made[-1]

    yield make
    for each in made:
        each.close()


def is_closed(cb: CircuitBreaker) -> bool:
    """Whether ``cb`` was closed: a closed breaker refuses every call."""
    try:
        cb.acquire().ignore()
    except RuntimeError as exc:
        return "is closed" in str(exc)
    except TypeError:  # not closed, on an asyncio client: its calls are awaited
        return False
    return False


def test_many_origins_keep_at_most_max_breakers(origins: Callable[..., Origins]) -> None:
    client = origins(max_breakers=3)
    for number in range(25):
        assert client.get(f"http://origin-{number}.test/").status_code == 200
        assert client.kept <= 3


def test_an_evicted_breaker_is_closed(origins: Callable[..., Origins]) -> None:
    client = origins(max_breakers=3)
    seen = []
    for number in range(10):
        client.get(f"http://origin-{number}.test/")
        seen.append(client.breaker(f"http://origin-{number}.test/"))
    assert [is_closed(cb) for cb in seen] == [True] * 7 + [False] * 3


def test_the_most_recently_used_origin_keeps_its_breaker(origins: Callable[..., Origins]) -> None:
    client = origins(max_breakers=3)
    client.get("http://busy.test/")
    busy = client.breaker("http://busy.test/")
    for number in range(25):
        client.get(f"http://origin-{number}.test/")
        client.get("http://busy.test/")
    assert client.breaker("http://busy.test/") is busy
    assert not is_closed(busy)


def test_a_breaker_whose_body_is_still_to_come_is_not_evicted(
    origins: Callable[..., Origins],
) -> None:
    client = origins(max_breakers=2)
    streaming = client.open_stream("http://streaming.test/")
    held = client.breaker("http://streaming.test/")
    for number in range(10):
        client.get(f"http://origin-{number}.test/")
    assert client.breaker("http://streaming.test/") is held
    client.close_stream(streaming)  # the body ends: idle, and the least recently used
    client.get("http://origin-10.test/")
    client.get("http://origin-11.test/")
    assert is_closed(held)


def test_an_open_breaker_is_not_evicted(origins: Callable[..., Origins]) -> None:
    client = origins(max_breakers=2, breaker_config=harness_config(failure_threshold=1))
    assert client.get("http://down.test/").status_code == 500  # opens it
    opened = client.breaker("http://down.test/")
    for number in range(10):
        client.get(f"http://origin-{number}.test/")
    assert client.breaker("http://down.test/") is opened


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "10"])
def test_max_breakers_must_be_a_positive_integer(value: object) -> None:
    with pytest.raises(ConfigurationError) as refused:
        SyncResilientTransport(max_breakers=value)  # type: ignore[arg-type]
    assert refused.value.field == "max_breakers"


def key_hours(client: redis.Redis, name: str) -> float:
    return client.pttl(BreakerKeys.of("breaker", name).state) / 3_600_000


def test_only_breakers_named_by_origin_keep_their_keys_hours_not_a_week(
    sync_redis: redis.Redis,
) -> None:
    inner = httpx.MockTransport(answer)
    week = 7 * 24.0

    def through(url: str, **settings: Any) -> None:
        transport = SyncResilientTransport(inner, redis=sync_redis, **settings)
        with httpx.Client(transport=transport) as http:
            http.get(url)

    through("http://by-origin.test/")
    through("http://named.test/", breaker_name=lambda request: "partner")
    through("http://set.test/", breaker_config=harness_config(key_ttl=48 * 3600.0))
    long_open = harness_config(reset_timeout=60.0, reset_timeout_max=8 * 3600.0)
    through("http://long-open.test/", breaker_config=long_open)
    assert 5.9 < key_hours(sync_redis, "http://by-origin.test:80") <= 6.0
    assert week - 0.1 < key_hours(sync_redis, "partner") <= week  # an upstream's, say
    assert 47.9 < key_hours(sync_redis, "http://set.test:80") <= 48.0
    # 6 hours would not outlive its open time: it keeps the library's week.
    assert week - 0.1 < key_hours(sync_redis, "http://long-open.test:80") <= week


def test_one_breakers_transport_counts_each_concurrent_requests_own_attempts() -> None:
    """``BreakerTransport`` builds its retrier once, with its breaker: requests under way
    at once each get their own attempts (the retrier keeps nothing of a call)."""
    seen: dict[str, int] = {}

    async def answer(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.001)  # the requests interleave
        path = request.url.path
        seen[path] = seen.get(path, 0) + 1
        failures = int(path.rsplit("/", 1)[1])
        return httpx.Response(503 if seen[path] <= failures else 200)

    async def main() -> list[httpx.Response]:
        transport = BreakerTransport(
            httpx.MockTransport(answer),
            "concurrent",
            redis=None,
            retry=RetryPolicy(attempts=4, backoff=0, budget=None),
            breaker_config=NO_TRIP,
        )
        async with httpx.AsyncClient(transport=transport, base_url="http://upstream") as http:
            return await asyncio.gather(*(http.get(f"/{n}/{n % 4}") for n in range(40)))

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [200] * 40
    assert [attempts_of(r) for r in responses] == [n % 4 + 1 for n in range(40)]
