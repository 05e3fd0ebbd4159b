"""The gateway's runtime: what one worker builds at startup, and routes read.

The lifespan builds, once per worker: the Redis client of ``BREAKER_REDIS_URL`` (a
server, a Cluster or a Sentinel set; or none: the embedded backend) and, per upstream,
a ``Route``: its guarded client, built by the library's ``guarded_client`` (the one
``breaker.fastapi`` builds too), on a pool of its own, with its breaker and its static
fallback (a ``Fallback``). The client's transport holds that breaker and its retrier,
built here once: the proxy sends a request through its route's client, and nothing
looks the upstream up again on the way. Routes only read ``app.state.gateway``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import Request, Response

from breaker import (
    BackendUnavailableError,
    BreakerListener,
    BreakerSnapshot,
    Bulkhead,
    BulkheadSnapshot,
    CircuitBreaker,
    Clock,
    Fallback,
    FallbackReason,
    OutcomeEvent,
    RetryDetails,
    RetryHook,
    TransitionEvent,
    current_attempt,
)
from breaker._upstreams import Upstream as GuardedUpstream
from breaker._upstreams import guarded_client, shared_client

from ..config.redisclient import aclose, async_client
from ..config.settings import GatewayConfig
from ..config.upstreams import StaticFallback, Upstream
from ..telemetry.events import EventFeed
from ..telemetry.metrics import (
    BACKEND_CALL_DURATION,
    BACKEND_ERRORS,
    CALL_DURATION,
    CALLS,
    EVENTS_SUBSCRIPTIONS,
    FALLBACK_DECISIONS,
    LATENCY,
    LOCAL_ORIGIN_FAILURES,
    LOOP_LAG,
    RETRIES,
    RETRIES_REFUSED,
    RETRY_SUCCESSES,
    TRANSITIONS,
    zero_series,
)
from ..telemetry.refusals import RefusalLogger
from . import errors

logger = logging.getLogger("fleetbreaker.gateway")


class _Timed(httpx.AsyncBaseTransport):
    """One upstream's attempts on its pool, with their latency; closes the pool."""

    def __init__(self, pool: httpx.AsyncBaseTransport, upstream: str) -> None:
        self._pool = pool
        self._latency = LATENCY.labels(upstream)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        started = time.perf_counter()
        response = await self._pool.handle_async_request(request)
        self._latency.observe(time.perf_counter() - started)
        return response

    async def aclose(self) -> None:
        await self._pool.aclose()


def _retry_hook(name: str) -> RetryHook:
    retries = RETRIES.labels(name)

    def hook(details: RetryDetails, /) -> None:
        if details.stopped_by is not None:
            RETRIES_REFUSED.labels(name, details.stopped_by).inc()
        else:
            retries.inc()

    return hook


class _Metrics(BreakerListener):
    """What the breakers tell, counted: every call as the breaker counted it (the one
    judgement, made by the library, that the metrics only read), and the store's
    health: errors, script round trips, resubscriptions.

    One instance serves every breaker: the library tells a Redis error and a
    resubscription once per client, whichever breakers share it."""

    def outcome(self, event: OutcomeEvent) -> None:
        CALLS.labels(event.name, event.outcome).inc()
        if event.local_origin:
            LOCAL_ORIGIN_FAILURES.labels(event.name).inc()
        if event.backend == "fallback":
            FALLBACK_DECISIONS.labels(event.name, event.outcome).inc()
        if event.duration is not None:
            CALL_DURATION.labels(event.name, event.outcome).observe(event.duration)
        # Outcomes are told in the context of the attempt they settle, a response's
        # too when its body ends later: a success of attempt 2 or more is a retry's.
        attempt = current_attempt()
        if event.outcome == "success" and attempt is not None and attempt.number > 1:
            RETRY_SUCCESSES.labels(event.name).inc()

    def backend_error(self, reason: str) -> None:
        BACKEND_ERRORS.inc()

    def backend_call(self, script: str, seconds: float) -> None:
        BACKEND_CALL_DURATION.labels(script).observe(seconds)

    def subscribed(self, channel: str) -> None:
        EVENTS_SUBSCRIPTIONS.inc()


_METRICS = _Metrics()


@dataclass(frozen=True, slots=True)
class Route:
    """One upstream of this worker: its client (guarded by its breaker, on a pool of
    its own), the breaker itself, and what answers a read while it is open."""

    upstream: Upstream
    client: httpx.AsyncClient
    breaker: CircuitBreaker | None  # None: ``breaker = false``
    #: The upstream's static fallback, answering a GET or HEAD the open breaker refused.
    fallback: Fallback | None = None
    #: The fleet's limit of calls in flight to it (``max_concurrent``), held by the
    #: client's transport: each attempt takes a lease after the breaker let it through.
    bulkhead: Bulkhead | None = None

    def fallback_for(self, method: str) -> Fallback | None:
        """The fallback that answers a ``method`` request, if any: only those that read."""
        return self.fallback if method in errors.FALLBACK_METHODS else None


def _static_fallback(static: StaticFallback) -> Fallback:
    """The library's fallback for an upstream's static one: it answers only when the
    breaker refused the call, with the configured answer."""

    def answer(reason: FallbackReason) -> Response:
        return errors.static_fallback_answer(static, reason.attempts or 0)

    return Fallback(answer, on="open")


_LAG_EVERY = 0.1


async def _watch_loop_lag() -> None:
    """Sleeps a tenth of a second at a time and notes how late it woke: a loop that
    something blocks (a blocking call, a long computation) wakes late."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(_LAG_EVERY)
        LOOP_LAG.observe(max(0.0, loop.time() - started - _LAG_EVERY))


class Gateway:
    """One worker's clients and breakers, built by ``start`` and closed by ``aclose``."""

    def __init__(
        self,
        config: GatewayConfig,
        redis_client: Any,  # redisclient.async_client's (a server, Cluster or Sentinel set)
        routes: dict[str, Route],
        feed: EventFeed,
    ) -> None:
        self.config = config
        self.redis = redis_client
        self.routes = routes
        self.feed = feed
        loop = asyncio.get_running_loop()
        #: The admin listener's refused tokens, logged at most once a minute.
        self.refusals = RefusalLogger(loop)
        self._lag = loop.create_task(_watch_loop_lag(), name="loop-lag")

    @classmethod
    async def start(cls, config: GatewayConfig, clock: Clock | None = None) -> Gateway:
        redis_client = async_client(config.redis_url) if config.redis_url else None
        feed = EventFeed(asyncio.get_running_loop())
        routes: dict[str, Route] = {}
        for name, upstream in config.upstreams.items():
            zero_series(name, guarded=upstream.breaker is not None)
            # A pool per upstream: one upstream's slow callers never wait for another's
            # connections.
            pool = _Timed(httpx.AsyncHTTPTransport(limits=config.client.limits(), retries=0), name)
            if upstream.breaker is None:
                client = shared_client(pool, timeout=config.client.timeout())
                routes[name] = Route(upstream, client, None)
                continue
            # What fails on the request's own side (its body stalled, too large, its
            # client gone) is no failure of the upstream.
            breaker_config = dataclasses.replace(
                upstream.breaker,
                ignore_exceptions=(*upstream.breaker.ignore_exceptions, errors.ClientSide),
            )
            client, breaker, bulkhead = guarded_client(
                GuardedUpstream(
                    name,
                    str(upstream.url),
                    breaker=breaker_config,
                    retry=upstream.retry,
                    bulkhead=upstream.bulkhead,
                ),
                redis=redis_client,
                transport=pool,
                timeout=config.client.timeout(),
                body_timeout=config.client.body_timeout,
                clock=clock,
                retry_hooks=(_retry_hook(name),),
                listeners=(feed.publish, _METRICS),
                made_here_listeners=(_log_transition,),
            )
            fallback = None if upstream.fallback is None else _static_fallback(upstream.fallback)
            routes[name] = Route(upstream, client, breaker, fallback, bulkhead)
        if redis_client is None:
            logger.warning(
                "no BREAKER_REDIS_URL: breakers live in this process only, "
                "not shared with other workers or replicas",
                extra={"fields": {"event": "startup", "backend": "embedded"}},
            )
        return cls(config, redis_client, routes, feed)

    def route(self, name: str) -> Route:
        route = self.routes.get(name)
        if route is None:
            raise errors.UnknownUpstream(f"no upstream named {name!r}", upstream=name)
        return route

    @property
    def breakers(self) -> dict[str, CircuitBreaker]:
        """The upstreams that have a breaker, by name."""
        return {
            name: route.breaker for name, route in self.routes.items() if route.breaker is not None
        }

    def breaker(self, name: str) -> CircuitBreaker:
        breaker = self.route(name).breaker
        if breaker is None:
            raise errors.NoBreaker(
                f"upstream {name!r} runs without a breaker (breaker = false)", upstream=name
            )
        return breaker

    async def snapshot(self, name: str) -> BreakerSnapshot:
        return await self.breaker(name).asnapshot()

    async def snapshots(self) -> dict[str, BreakerSnapshot | None]:
        """Every breaker's snapshot; None for those the backend could not give."""
        result: dict[str, BreakerSnapshot | None] = {}
        for name, breaker in self.breakers.items():
            try:
                result[name] = await breaker.asnapshot()
            except BackendUnavailableError:
                result[name] = None
        return result

    async def occupancy(self, name: str) -> BulkheadSnapshot | None:
        """The fleet's leases in use on upstream ``name``'s bulkhead, and its limit;
        None without one (or while its backend cannot answer)."""
        bulkhead = self.route(name).bulkhead
        if bulkhead is None:
            return None
        try:
            return await bulkhead.asnapshot()
        except BackendUnavailableError:
            return None

    async def occupancies(self) -> dict[str, BulkheadSnapshot | None]:
        """Every bulkhead's occupancy, by upstream (None: its backend did not answer)."""
        return {
            name: await self.occupancy(name)
            for name, route in self.routes.items()
            if route.bulkhead is not None
        }

    async def aclose(self) -> None:
        self.refusals.close()
        self._lag.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._lag
        for route in self.routes.values():
            await route.client.aclose()  # its transport: the breaker, then the pool
        if self.redis is not None:
            await aclose(self.redis)


def _log_transition(event: TransitionEvent) -> None:
    TRANSITIONS.labels(event.name, event.from_state, event.to_state).inc()
    logger.info(
        "breaker %s: %s -> %s",
        event.name,
        event.from_state,
        event.to_state,
        extra={"fields": {"event": "transition", "upstream": event.name, **event.as_dict()}},
    )


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway
