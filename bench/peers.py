"""Every breaker under test behind one small interface: build it on a Redis URL with the
same settings, call through it, and learn whether it refused.

Each peer is configured as its documentation shows for a Redis-shared breaker; the
exact configuration is written into BENCHMARKS.md (``Peer.setup``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import redis
import redis.asyncio

T = TypeVar("T")
Kind = Literal["sync", "async"]


class Rejected(Exception):
    """The breaker refused the call without running it."""


class UpstreamDown(Exception):
    """What the simulated upstream raises while it fails."""


@dataclass(frozen=True)
class Settings:
    """The same breaker for everyone: trip on ``threshold`` consecutive failures, stay
    open ``reset_timeout`` seconds, then admit ``half_open_max_calls`` trials."""

    threshold: int = 5
    reset_timeout: float = 30.0
    half_open_max_calls: int = 1


class SyncGuard:
    def __init__(self, call: Callable[[Callable[[], Any]], Any], close: Callable[[], None]):
        self._call = call
        self.close = close

    def call(self, fn: Callable[[], T]) -> T:
        result: T = self._call(fn)
        return result


class AsyncGuard:
    def __init__(
        self,
        call: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]],
        close: Callable[[], Awaitable[None]],
    ):
        self._call = call
        self.aclose = close

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        result: T = await self._call(fn)
        return result


@dataclass(frozen=True)
class Peer:
    """One contender. ``make`` builds a guard in the calling process (sync guards) or
    ``amake`` inside a running loop (async guards)."""

    name: str
    kind: Kind
    setup: str  # how it is configured, for the report
    make: Callable[[str, str, Settings], SyncGuard] | None = None
    amake: Callable[[str, str, Settings], Awaitable[AsyncGuard]] | None = None


# One client per process (and loop), shared by every guard, as an application would.
_SYNC_CLIENTS: dict[str, redis.Redis] = {}
_ASYNC_CLIENTS: dict[tuple[str, int], redis.asyncio.Redis] = {}


def sync_client(url: str) -> redis.Redis:
    client = _SYNC_CLIENTS.get(url)
    if client is None:
        client = _SYNC_CLIENTS[url] = redis.Redis.from_url(url)
    return client


def async_client(url: str) -> redis.asyncio.Redis:
    key = (url, id(asyncio.get_running_loop()))
    client = _ASYNC_CLIENTS.get(key)
    if client is None:
        client = _ASYNC_CLIENTS[key] = redis.asyncio.Redis.from_url(url)
    return client


# -- fleetbreaker -------------------------------------------------------------------------

_FOLLOW_WITHIN = 5.0  # a bound on a subscription, never a delay


def _fleetbreaker_sync(batch_interval: float | None) -> Callable[[str, str, Settings], SyncGuard]:
    def make(url: str, name: str, settings: Settings) -> SyncGuard:
        from breaker import CircuitBreaker, CircuitOpenError

        cb = CircuitBreaker(
            name,
            redis=sync_client(url),
            failure_threshold=settings.threshold,
            reset_timeout=settings.reset_timeout,
            half_open_max_calls=settings.half_open_max_calls,
            batch_interval=batch_interval,
            prefix="fb",
        )
        # Measured as a process that has run a while: until its follower subscribes,
        # every call asks Redis (no view decides alone while one could go unheard).
        cb.follow_events(timeout=_FOLLOW_WITHIN)

        def call(fn: Callable[[], Any]) -> Any:
            try:
                return cb.call(fn)
            except CircuitOpenError:
                raise Rejected from None

        return SyncGuard(call, cb.close)

    return make


async def _fleetbreaker_async(url: str, name: str, settings: Settings) -> AsyncGuard:
    from breaker import CircuitBreaker, CircuitOpenError

    cb = CircuitBreaker(
        name,
        redis=async_client(url),
        failure_threshold=settings.threshold,
        reset_timeout=settings.reset_timeout,
        half_open_max_calls=settings.half_open_max_calls,
        prefix="fb",
    )
    cb.follow_events()
    for _ in range(int(_FOLLOW_WITHIN / 0.005)):  # bounded: the follower subscribes soon
        if cb.following:
            break
        await asyncio.sleep(0.005)

    async def call(fn: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await cb.call(fn)
        except CircuitOpenError:
            raise Rejected from None

    return AsyncGuard(call, cb.aclose)


# -- pybreaker ------------------------------------------------------------------------------


def _pybreaker(url: str, name: str, settings: Settings) -> SyncGuard:
    import pybreaker

    storage = pybreaker.CircuitRedisStorage(
        pybreaker.STATE_CLOSED, sync_client(url), namespace=name
    )
    cb = pybreaker.CircuitBreaker(
        fail_max=settings.threshold,
        reset_timeout=settings.reset_timeout,
        state_storage=storage,
        throw_new_error_on_trip=False,
    )

    def call(fn: Callable[[], Any]) -> Any:
        try:
            return cb.call(fn)
        except pybreaker.CircuitBreakerError:
            raise Rejected from None

    return SyncGuard(call, lambda: None)


# -- purgatory ------------------------------------------------------------------------------


async def _purgatory(url: str, name: str, settings: Settings) -> AsyncGuard:
    # Its sync Redis repository wraps an asyncio client and cannot work; the async one
    # is its Redis path.
    from purgatory import AsyncCircuitBreakerFactory, AsyncRedisUnitOfWork
    from purgatory.domain.model import OpenedState

    key = (url, settings, id(asyncio.get_running_loop()))
    factory = _PURGATORY_FACTORIES.get(key)
    if factory is None:  # one factory (and client) per process, as its docs show
        factory = AsyncCircuitBreakerFactory(
            default_threshold=settings.threshold,
            default_ttl=settings.reset_timeout,
            uow=AsyncRedisUnitOfWork(url),
        )
        await factory.initialize()
        _PURGATORY_FACTORIES[key] = factory

    async def call(fn: Callable[[], Awaitable[Any]]) -> Any:
        try:
            async with await factory.get_breaker(name):
                return await fn()
        except OpenedState:
            raise Rejected from None

    async def close() -> None:
        """The factory serves the process's other guards."""

    return AsyncGuard(call, close)


_PURGATORY_FACTORIES: dict[tuple[str, Settings, int], Any] = {}


# -- interlock ------------------------------------------------------------------------------


def _interlock(url: str, name: str, settings: Settings) -> SyncGuard:
    from interlock import CircuitBreaker, CircuitOpenError, Config
    from interlock.integrations.redis import RedisStorage
    from interlock.window import WindowType

    cb = CircuitBreaker(
        name=name,
        # Consecutive failures as a window of the last `threshold` calls, all failed.
        config=Config(
            failure_rate_threshold=1.0,
            minimum_number_of_calls=settings.threshold,
            window_type=WindowType.COUNT_BASED,
            window_size=settings.threshold,
            wait_duration_in_open=settings.reset_timeout,
            permitted_calls_in_half_open=settings.half_open_max_calls,
            max_concurrent_probes=settings.half_open_max_calls,
        ),
        storage=RedisStorage(sync_client(url)),
    )

    def call(fn: Callable[[], Any]) -> Any:
        try:
            return cb.call_sync(fn)
        except CircuitOpenError:
            raise Rejected from None

    # `cb.close()` would close the circuit, not stop its poller: a daemon thread.
    return SyncGuard(call, lambda: None)


PEERS: dict[str, Peer] = {
    peer.name: peer
    for peer in (
        Peer(
            "fleetbreaker",
            "sync",
            "`CircuitBreaker(name, redis=redis.Redis, failure_threshold, reset_timeout, "
            "half_open_max_calls)`, exact mode; `cb.call(fn)`",
            make=_fleetbreaker_sync(None),
        ),
        Peer(
            "fleetbreaker batched",
            "sync",
            "as above with `batch_interval=0.05`: closed-state successes counted locally, "
            "flushed at most every 50 ms",
            make=_fleetbreaker_sync(0.05),
        ),
        Peer(
            "fleetbreaker async",
            "async",
            "as exact mode, on `redis.asyncio.Redis`; `await cb.call(fn)`",
            amake=_fleetbreaker_async,
        ),
        Peer(
            "pybreaker 1.4.1",
            "sync",
            "`CircuitBreaker(fail_max, reset_timeout, state_storage=CircuitRedisStorage("
            "STATE_CLOSED, redis.Redis, namespace=name), throw_new_error_on_trip=False)`; "
            "`cb.call(fn)`",
            make=_pybreaker,
        ),
        Peer(
            "purgatory 3.0.1",
            "async",
            "`AsyncCircuitBreakerFactory(default_threshold, default_ttl=reset_timeout, "
            "uow=AsyncRedisUnitOfWork(url))`; `async with await factory.get_breaker(name)` "
            "per call, as its decorator does (its sync Redis repository builds an asyncio "
            "client and cannot run)",
            amake=_purgatory,
        ),
        Peer(
            "interlock-cb 2.8.2",
            "sync",
            "`CircuitBreaker(name, config=Config(failure_rate_threshold=1.0, "
            "minimum_number_of_calls=threshold, window COUNT_BASED of size threshold, "
            "wait_duration_in_open=reset_timeout, permitted_calls_in_half_open and "
            "max_concurrent_probes=half_open_max_calls), storage=RedisStorage(redis.Redis))` "
            "(default `poll_interval` 1 s); `cb.call_sync(fn)`",
            make=_interlock,
        ),
    )
}
