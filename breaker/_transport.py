"""httpx transports that put a shared breaker and a retry policy around every request.

``ResilientTransport`` (for ``httpx.AsyncClient``) and ``SyncResilientTransport`` (for
``httpx.Client``) are twins, like httpx's own ``AsyncHTTPTransport`` and
``HTTPTransport``. Each wraps an inner transport and passes ``close`` through.
``BreakerTransport`` is the async one for a single breaker (one upstream's client,
``_upstreams``): it holds the breaker and its retrier, so a request is looked up nowhere.

- One breaker per origin (``scheme://host:port``) by default, or named by a function
  of the request; a response with a 5xx status counts as a failure of its breaker.
- At most ``max_breakers`` breakers are kept: past it, the least recently used idle
  one is closed (``CircuitBreaker.idle``: closed, nothing under way, no counts due).
  Breakers named by origin keep their Redis keys ``ORIGIN_KEY_TTL`` (6 hours) after
  their last write, not the library's week, unless the config sets its own.
- Each attempt gets the per-try timeout, within the deadline, as httpx's own timeouts,
  so a slow upstream ends in ``httpx.TimeoutException`` like any other. The async
  transport also bounds the attempt as a whole; the sync one cannot interrupt a
  phase that keeps receiving bytes.
- A response that counts as a success is judged again when its body ends: a body
  that breaks off (a reset, a protocol error) or outlasts ``body_timeout`` counts as
  a failure, and a half-open trial holds its lease until then (``_bodies``). A body
  its reader closes or abandons early counts as the success its headers said.
- A body that cannot be replayed (a generator or a file stream) is sent once.
- ``request.extensions["fleetbreaker.retry"]``: True opts a request in whatever its
  method, False opts it out of retries.
- The response carries the number of attempts in
  ``response.extensions["fleetbreaker.attempts"]``; an exception carries it too
  (``attempts_of``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import httpx

from ._bodies import Deadline, SettledStream, SyncSettledStream, leased
from ._breaker import CircuitBreaker
from ._bulkhead.bulkhead import Bulkhead
from ._clock import Clock
from ._config import BreakerConfig
from ._decisions.permit import AsyncPermit, Permit
from ._exceptions import BulkheadFullError, ConfigurationError
from ._retry.rules import Attempt, RetryRules
from ._retry.runner import Retrier, RetryPolicy

#: A request extension: True retries the request whatever its method, False never.
RETRY_EXTENSION = "fleetbreaker.retry"
#: httpx's own network errors, retried where the policy retries ``TimeoutError``
#: (``httpx.TimeoutException``) or ``ConnectionError`` (the others).
HTTP_RETRY_EXCEPTIONS: tuple[type[BaseException], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)
#: The errors that say this side held the call back, not the upstream: waiting for a
#: connection of an exhausted pool, a bulkhead at its limit. Never a failure of a
#: breaker, never retried: an overload of one's own is no sign that the upstream is
#: down, and a retry adds to it.
LOCAL_HTTP_EXCEPTIONS: tuple[type[BaseException], ...] = (httpx.PoolTimeout, BulkheadFullError)
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: Breakers a transport keeps by default; past it, the least recently used idle one
#: is closed. About 7 KB of memory each.
MAX_BREAKERS = 1000
#: How long the Redis keys of a breaker named by origin live after its last write
#: (unless ``breaker_config`` sets a ``key_ttl`` other than the library's default):
#: a client that met thousands of origins once leaves no week of keys behind.
ORIGIN_KEY_TTL = 6 * 3600.0
_LIBRARY_KEY_TTL = BreakerConfig().key_ttl


def origin_of(request: httpx.Request) -> str:
    """The breaker name of a request: its origin, ``scheme://host:port``."""
    url = request.url
    host = f"[{url.host}]" if ":" in url.host else url.host
    port = url.port or _DEFAULT_PORTS.get(url.scheme, 0)
    return f"{url.scheme}://{host}:{port}"


def is_server_error(result: Any) -> bool:
    """The transports' default failure predicate: a response with a 5xx status."""
    return isinstance(result, httpx.Response) and result.status_code >= 500


def http_rules(policy: RetryRules) -> RetryRules:
    """``policy`` with httpx's network errors counted as the errors they stand for,
    and its local ones (``LOCAL_HTTP_EXCEPTIONS``) never retried."""
    extra: list[type[BaseException]] = []
    if any(issubclass(TimeoutError, kind) for kind in policy.retry_exceptions):
        extra.append(httpx.TimeoutException)
    if any(issubclass(ConnectionError, kind) for kind in policy.retry_exceptions):
        extra += [httpx.NetworkError, httpx.RemoteProtocolError]
    missing = tuple(kind for kind in extra if kind not in policy.retry_exceptions)
    local = tuple(kind for kind in LOCAL_HTTP_EXCEPTIONS if kind not in policy.local_exceptions)
    if not missing and not local:
        return policy
    return policy.replace(
        retry_exceptions=policy.retry_exceptions + missing,
        local_exceptions=policy.local_exceptions + local,
    )


def http_config(config: BreakerConfig | None, *, by_origin: bool = False) -> BreakerConfig:
    """``config`` as a transport's breakers use it: a 5xx answer is a failure (unless
    it says otherwise), this side's own httpx errors (``LOCAL_HTTP_EXCEPTIONS``) never
    are, and a breaker named by origin keeps its keys ``ORIGIN_KEY_TTL``."""
    config = config if config is not None else BreakerConfig()
    if config.failure_predicate is None:
        config = dataclasses.replace(config, failure_predicate=is_server_error)
    local = tuple(k for k in LOCAL_HTTP_EXCEPTIONS if k not in config.ignore_exceptions)
    if local:
        config = dataclasses.replace(config, ignore_exceptions=config.ignore_exceptions + local)
    if by_origin and config.key_ttl == _LIBRARY_KEY_TTL:
        config = _for_origins(config)
    return config


def _repeatable(request: httpx.Request, rules: RetryRules) -> bool:
    """Whether ``request`` may be sent again: its body can be replayed, and the caller
    opted it in (``RETRY_EXTENSION``) or its method (or an ``Idempotency-Key``) allows it."""
    choice = request.extensions.get(RETRY_EXTENSION)
    if choice is False or not isinstance(request.stream, httpx.ByteStream):
        return False
    return choice is True or rules.allows_method(request.method, request.headers)


class _Resilient:
    """What both routing transports share: the retry policy, one breaker per name
    with its retrier (made on first use, at most ``max_breakers`` kept), and closing
    them."""

    def __init__(
        self,
        redis: Any,
        retry: RetryRules | None,
        config: BreakerConfig | None,
        name_of: Callable[[httpx.Request], str],
        clock: Clock | None,
        body_timeout: float | None,
        max_breakers: int,
    ) -> None:
        if isinstance(max_breakers, bool) or not isinstance(max_breakers, int) or max_breakers < 1:
            raise ConfigurationError(
                "max_breakers", f"must be an integer >= 1, got {max_breakers!r}"
            )
        self.retry = http_rules(retry if retry is not None else RetryPolicy())
        self.body_timeout = body_timeout
        self.max_breakers = max_breakers
        self._redis = redis
        self._config = http_config(config, by_origin=name_of is origin_of)
        self._clock = clock
        self._name_of = name_of
        # Each breaker's retrier (built once: it keeps no state of a call), least
        # recently used first.
        self._retriers: OrderedDict[str, Retrier] = OrderedDict()
        # Requests under way, per breaker name: a breaker a request holds is never
        # evicted, not even between its lookup and its first permit.
        self._users: dict[str, int] = {}
        self._lock = threading.Lock()

    def breaker(self, name: str) -> CircuitBreaker:
        """The breaker of ``name`` (an origin, by default), as this transport uses it.
        It stays the transport's: once idle and least recently used, with more than
        ``max_breakers`` kept, a request for another name closes it."""
        with self._lock:
            return _breaker_of(self._kept(name))

    def _kept(self, name: str) -> Retrier:
        """The retrier of ``name``'s breaker, made if need be, now the most recently used."""
        retrier = self._retriers.get(name)
        if retrier is None:
            breaker = CircuitBreaker(
                name, redis=self._redis, config=self._config, clock=self._clock
            )
            retrier = self._retriers[name] = Retrier(self.retry, breaker)
        else:
            self._retriers.move_to_end(name)
        return retrier

    def _check_out(self, name: str) -> tuple[Retrier, list[CircuitBreaker]]:
        """The retrier of ``name``'s breaker, held for one request until ``_check_in``;
        and the breakers evicted to keep at most ``max_breakers``, which the caller
        closes (outside the lock: the async transport awaits ``aclose``)."""
        with self._lock:
            retrier = self._kept(name)
            self._users[name] = self._users.get(name, 0) + 1
            return retrier, self._evicted()

    def _check_in(self, name: str) -> None:
        with self._lock:
            users = self._users.pop(name) - 1
            if users:
                self._users[name] = users

    def _evicted(self) -> list[CircuitBreaker]:
        """Take out the least recently used idle breakers past ``max_breakers``. One
        that is open or half-open, held by a request, or has a permit unsettled or
        counts due is skipped: busy breakers may keep the transport over its cap."""
        excess = len(self._retriers) - self.max_breakers
        if excess <= 0:
            return []
        names: list[str] = []
        for name, retrier in self._retriers.items():
            if name not in self._users and _breaker_of(retrier).idle:
                names.append(name)
                if len(names) == excess:
                    break
        return [_breaker_of(self._retriers.pop(name)) for name in names]

    def _take_breakers(self) -> list[CircuitBreaker]:
        with self._lock:
            retriers, self._retriers = list(self._retriers.values()), OrderedDict()
        return [_breaker_of(retrier) for retrier in retriers]


def _breaker_of(retrier: Retrier) -> CircuitBreaker:
    assert retrier.breaker is not None  # every retrier of a transport has its breaker
    return retrier.breaker


def _for_origins(config: BreakerConfig) -> BreakerConfig:
    """``config`` with the key TTL of breakers named by origin, unless its window or
    open time outlasts that (then its keys must live longer: it keeps its own)."""
    try:
        return dataclasses.replace(config, key_ttl=ORIGIN_KEY_TTL)
    except ConfigurationError:
        return config


#: The share of an attempt's time it may spend waiting for a pooled connection: the
#: wait ends (``httpx.PoolTimeout``: local, never the upstream's failure) before the
#: attempt's own bound, so that an attempt cut by that bound always reached the upstream.
_POOL_SHARE = 0.9


def _bounded(request: httpx.Request, timeouts: Any, attempt: Attempt) -> None:
    """Give this attempt httpx timeouts no longer than the attempt may take."""
    if attempt.timeout is None:
        return
    current = timeouts if isinstance(timeouts, dict) else {}
    bounds = {
        "connect": attempt.timeout,
        "read": attempt.timeout,
        "write": attempt.timeout,
        "pool": attempt.timeout * _POOL_SHARE,
    }
    request.extensions = {
        **request.extensions,
        "timeout": {
            phase: limit if current.get(phase) is None else min(current[phase], limit)
            for phase, limit in bounds.items()
        },
    }


async def _asend(
    inner: httpx.AsyncBaseTransport,
    retrier: Retrier,
    request: httpx.Request,
    body_timeout: float | None,
    bulkhead: Bulkhead | None = None,
) -> httpx.Response:
    """Send ``request`` on ``inner`` through ``retrier`` and its breaker, each attempt
    holding a lease of ``bulkhead`` (if any) until its body ends: the breaker decides
    first (an open one holds no lease), and an attempt that gets no lease is not sent
    (``BulkheadFullError``: never a failure, never retried)."""
    timeouts = request.extensions.get("timeout")

    async def attempt(attempt: Attempt) -> httpx.Response:
        _bounded(request, timeouts, attempt)
        if attempt.timeout is None:
            return await inner.handle_async_request(request)
        # httpx's timeouts bound each phase; this bounds the whole attempt, also for an
        # upstream that trickles, or an inner transport that ignores them.
        try:
            async with asyncio.timeout(attempt.timeout):
                return await inner.handle_async_request(request)
        except TimeoutError as exc:
            raise httpx.TimeoutException(
                f"attempt {attempt.number} took longer than {attempt.timeout:g} s",
                request=request,
            ) from exc

    def hold(response: httpx.Response, permit: AsyncPermit) -> httpx.Response:
        assert isinstance(response.stream, httpx.AsyncByteStream)
        deadline = Deadline(request, body_timeout, asyncio.get_running_loop().time())
        response.stream = SettledStream(response.stream, permit, deadline)
        return response

    send = attempt if bulkhead is None else leased(bulkhead, attempt)
    repeatable = _repeatable(request, retrier.policy)
    return await retrier.arun(send, repeatable=repeatable, enforce_timeout=False, hold=hold)


class ResilientTransport(_Resilient, httpx.AsyncBaseTransport):
    """An ``httpx.AsyncClient`` transport with a fleet-wide breaker and retries.

    >>> import httpx
    >>> client = httpx.AsyncClient(transport=ResilientTransport())

    ``redis`` is a ``redis.asyncio.Redis`` (None: the embedded backend);
    ``breaker_config`` applies to every breaker this transport creates, and at most
    ``max_breakers`` idle ones are kept. Closing it (``aclose``, or ``async with``)
    closes them and the inner transport.
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        redis: Any = None,
        retry: RetryRules | None = None,
        breaker_config: BreakerConfig | None = None,
        breaker_name: Callable[[httpx.Request], str] = origin_of,
        clock: Clock | None = None,
        body_timeout: float | None = None,
        max_breakers: int = MAX_BREAKERS,
    ) -> None:
        super().__init__(
            redis, retry, breaker_config, breaker_name, clock, body_timeout, max_breakers
        )
        self._inner = transport if transport is not None else httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        name = self._name_of(request)
        retrier, evicted = self._check_out(name)
        try:
            for old in evicted:
                await old.aclose()  # idle: no round trip, so no wait
            return await _asend(self._inner, retrier, request, self.body_timeout)
        finally:
            self._check_in(name)

    async def aclose(self) -> None:
        for breaker in self._take_breakers():
            await breaker.aclose()
        await self._inner.aclose()


class BreakerTransport(httpx.AsyncBaseTransport):
    """An ``httpx.AsyncClient`` transport of one breaker, such as one upstream's:
    the breaker and its retrier are built with it, so a request goes through them
    with no lookup. Closing it closes the breaker and the inner transport."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        name: str,
        *,
        redis: Any,
        retry: RetryRules,
        breaker_config: BreakerConfig | None = None,
        clock: Clock | None = None,
        body_timeout: float | None = None,
        bulkhead: Bulkhead | None = None,
    ) -> None:
        self.breaker = CircuitBreaker(
            name, redis=redis, config=http_config(breaker_config), clock=clock
        )
        #: Each attempt's lease, held until its body ends (None: no limit). Closed
        #: with the transport.
        self.bulkhead = bulkhead
        self.body_timeout = body_timeout
        self._retrier = Retrier(http_rules(retry), self.breaker)
        self._inner = transport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await _asend(self._inner, self._retrier, request, self.body_timeout, self.bulkhead)

    async def aclose(self) -> None:
        await self.breaker.aclose()
        if self.bulkhead is not None:
            await self.bulkhead.aclose()
        await self._inner.aclose()


class SyncResilientTransport(_Resilient, httpx.BaseTransport):
    """The ``httpx.Client`` twin of ``ResilientTransport`` (``redis``: a ``redis.Redis``).

    >>> import httpx
    >>> client = httpx.Client(transport=SyncResilientTransport())
    """

    def __init__(
        self,
        transport: httpx.BaseTransport | None = None,
        *,
        redis: Any = None,
        retry: RetryRules | None = None,
        breaker_config: BreakerConfig | None = None,
        breaker_name: Callable[[httpx.Request], str] = origin_of,
        clock: Clock | None = None,
        body_timeout: float | None = None,
        max_breakers: int = MAX_BREAKERS,
    ) -> None:
        super().__init__(
            redis, retry, breaker_config, breaker_name, clock, body_timeout, max_breakers
        )
        self._inner = transport if transport is not None else httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        name = self._name_of(request)
        retrier, evicted = self._check_out(name)
        try:
            for old in evicted:
                old.close()  # idle: no round trip
            return self._send(request, retrier)
        finally:
            self._check_in(name)

    def _send(self, request: httpx.Request, retrier: Retrier) -> httpx.Response:
        timeouts = request.extensions.get("timeout")

        def attempt(attempt: Attempt) -> httpx.Response:
            _bounded(request, timeouts, attempt)
            return self._inner.handle_request(request)

        def hold(response: httpx.Response, permit: Permit) -> httpx.Response:
            assert isinstance(response.stream, httpx.SyncByteStream)
            deadline = Deadline(request, self.body_timeout, time.monotonic())
            response.stream = SyncSettledStream(response.stream, permit, deadline)
            return response

        return retrier.run(attempt, repeatable=_repeatable(request, retrier.policy), hold=hold)

    def close(self) -> None:
        for breaker in self._take_breakers():
            breaker.close()
        self._inner.close()
