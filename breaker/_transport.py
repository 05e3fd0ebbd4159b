"""httpx transports that put a shared breaker and a retry policy around every request.

``ResilientTransport`` (for ``httpx.AsyncClient``) and ``SyncResilientTransport`` (for
``httpx.Client``) are twins, like httpx's own ``AsyncHTTPTransport`` and
``HTTPTransport``. Each wraps an inner transport and passes ``close`` through.

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
  a failure, and a half-open trial holds its lease until then. A body its reader
  closes or abandons early counts as the success its headers said.
- A body that cannot be replayed (a generator or a file stream) is sent once.
- ``request.extensions["fleetbreaker.retry"]``: True opts a request in whatever its
  method, False opts it out of retries.
- The response carries the number of attempts in
  ``response.extensions["fleetbreaker.attempts"]``; an exception carries it too
  (``attempts_of``).
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx

from ._breaker import CircuitBreaker
from ._clock import Clock
from ._config import BreakerConfig
from ._exceptions import ConfigurationError
from ._permit import AsyncPermit, Permit
from ._policy import Attempt, RetryRules
from ._retrying import Retrier, RetryPolicy

#: A request extension: True retries the request whatever its method, False never.
RETRY_EXTENSION = "fleetbreaker.retry"
#: httpx's own network errors, retried where the policy retries ``TimeoutError``
#: (``httpx.TimeoutException``) or ``ConnectionError`` (the others).
HTTP_RETRY_EXCEPTIONS: tuple[type[BaseException], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)
#: httpx's errors that say this side failed, not the upstream: waiting for a
#: connection of an exhausted pool. Never a failure of a breaker, never retried: an
#: overload of one's own is no sign that the upstream is down, and a retry adds to it.
LOCAL_HTTP_EXCEPTIONS: tuple[type[BaseException], ...] = (httpx.PoolTimeout,)
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


class _Resilient:
    """What both transports share: the retry policy, one breaker per name (made on
    first use, at most ``max_breakers`` of them kept), and closing them."""

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
        config = config if config is not None else BreakerConfig()
        if config.failure_predicate is None:
            config = dataclasses.replace(config, failure_predicate=is_server_error)
        local = tuple(k for k in LOCAL_HTTP_EXCEPTIONS if k not in config.ignore_exceptions)
        if local:
            config = dataclasses.replace(config, ignore_exceptions=config.ignore_exceptions + local)
        if name_of is origin_of and config.key_ttl == _LIBRARY_KEY_TTL:
            config = _for_origins(config)
        self.retry = http_rules(retry if retry is not None else RetryPolicy())
        self.body_timeout = body_timeout
        self.max_breakers = max_breakers
        self._redis = redis
        self._config = config
        self._clock = clock
        self._name_of = name_of
        self._breakers: OrderedDict[str, CircuitBreaker] = OrderedDict()  # least recent first
        # Requests under way, per breaker name: a breaker a request holds is never
        # evicted, not even between its lookup and its first permit.
        self._users: dict[str, int] = {}
        self._lock = threading.Lock()

    def breaker(self, name: str) -> CircuitBreaker:
        """The breaker of ``name`` (an origin, by default), as this transport uses it.
        It stays the transport's: once idle and least recently used, with more than
        ``max_breakers`` kept, a request for another name closes it."""
        with self._lock:
            return self._kept(name)

    def _kept(self, name: str) -> CircuitBreaker:
        """The breaker of ``name``, made if need be, now the most recently used."""
        breaker = self._breakers.get(name)
        if breaker is None:
            breaker = CircuitBreaker(
                name, redis=self._redis, config=self._config, clock=self._clock
            )
            self._breakers[name] = breaker
        else:
            self._breakers.move_to_end(name)
        return breaker

    def _check_out(self, name: str) -> tuple[CircuitBreaker, list[CircuitBreaker]]:
        """The breaker of ``name``, held for one request until ``_check_in``; and those
        evicted to keep at most ``max_breakers``, which the caller closes (outside the
        lock: the async transport awaits ``aclose``)."""
        with self._lock:
            breaker = self._kept(name)
            self._users[name] = self._users.get(name, 0) + 1
            return breaker, self._evicted()

    def _check_in(self, name: str) -> None:
        with self._lock:
            users = self._users.pop(name) - 1
            if users:
                self._users[name] = users

    def _evicted(self) -> list[CircuitBreaker]:
        """Take out the least recently used idle breakers past ``max_breakers``. One
        that is open or half-open, held by a request, or has a permit unsettled or
        counts due is skipped: busy breakers may keep the transport over its cap."""
        excess = len(self._breakers) - self.max_breakers
        if excess <= 0:
            return []
        names: list[str] = []
        for name, breaker in self._breakers.items():
            if name not in self._users and breaker.idle:
                names.append(name)
                if len(names) == excess:
                    break
        return [self._breakers.pop(name) for name in names]

    def _route(self, request: httpx.Request, breaker: CircuitBreaker) -> tuple[Retrier, bool]:
        """The retrier for this request (bound to its breaker), and whether the
        request may be sent again: its body can be replayed, and the caller opted it
        in or its method (or an ``Idempotency-Key``) allows it."""
        retrier = Retrier(self.retry, breaker)
        choice = request.extensions.get(RETRY_EXTENSION)
        if choice is False or not isinstance(request.stream, httpx.ByteStream):
            return retrier, False
        return retrier, choice is True or self.retry.allows_method(request.method, request.headers)

    def _take_breakers(self) -> list[CircuitBreaker]:
        with self._lock:
            breakers, self._breakers = list(self._breakers.values()), OrderedDict()
        return breakers


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


class _Deadline:
    """When a response body must have ended (``body_timeout`` after its headers), and
    the error that says it did not. Both body streams check it as each chunk comes;
    the async one also cuts a read that stalls past it."""

    def __init__(self, request: httpx.Request, limit: float | None, now: float) -> None:
        self.request = request
        self.limit = limit
        self.at = None if limit is None else now + limit

    def passed(self, now: float) -> bool:
        return self.at is not None and now > self.at

    def error(self) -> httpx.ReadTimeout:
        return httpx.ReadTimeout(
            f"the response body took longer than {self.limit:g} s", request=self.request
        )


_RECORDING: set[asyncio.Future[Any]] = set()


class _SettledStream(httpx.AsyncByteStream):
    """A response body that settles its attempt's permit once, when it ends.

    The rule, the same as the sync twin's: a body that ends is the success its headers
    said; one that breaks off counts as its error does; one past ``body_timeout`` is a
    failure (``httpx.ReadTimeout``); a reader that stops early (closes, or is
    cancelled) leaves the headers' success standing.

    It settles in the context of the attempt that got the headers (made while the
    attempt ran), not the reader's: the breaker's listeners then see that attempt
    (``current_attempt()``) and its trace, as they do for a call settled at once.
    """

    def __init__(
        self, inner: httpx.AsyncByteStream, permit: AsyncPermit, deadline: _Deadline
    ) -> None:
        self._inner = inner
        self._permit = permit
        self._deadline = deadline
        self._context = contextvars.copy_context()

    async def _settle(self, error: BaseException | None) -> None:
        """Settle the permit, once. Shielded: a reader that is being cancelled (anyio
        cancels every await of a cancelled scope) still gets its call recorded."""
        if self._permit.settled:
            return
        settle = self._permit.success() if error is None else self._permit.settle(error)
        recording = asyncio.get_running_loop().create_task(settle, context=self._context)
        _RECORDING.add(recording)  # a task nobody awaits must be held, or it may vanish
        recording.add_done_callback(_RECORDING.discard)
        await asyncio.shield(recording)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = aiter(self._inner)
        try:
            while True:
                try:
                    async with asyncio.timeout_at(self._deadline.at):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                yield chunk
        except TimeoutError as exc:
            error = self._deadline.error()
            await self._settle(error)
            raise error from exc
        except asyncio.CancelledError:
            await self._settle(None)  # the reader went away: the headers' success stands
            raise
        except Exception as exc:
            await self._settle(exc)
            raise
        await self._settle(None)

    async def aclose(self) -> None:
        await self._settle(None)
        await self._inner.aclose()


class _SyncSettledStream(httpx.SyncByteStream):
    """The sync twin of ``_SettledStream``, by the same rule (and in the same
    context). It cannot interrupt a read: a stalled body is cut by httpx's read
    timeout, a trickling one here."""

    def __init__(self, inner: httpx.SyncByteStream, permit: Permit, deadline: _Deadline) -> None:
        self._inner = inner
        self._permit = permit
        self._deadline = deadline
        self._context = contextvars.copy_context()

    def _settle(self, error: BaseException | None) -> None:
        if self._permit.settled:
            return
        if error is None:
            self._context.copy().run(self._permit.success)
        else:
            self._context.copy().run(self._permit.settle, error)

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._inner:
                if self._deadline.passed(time.monotonic()):
                    raise self._deadline.error()
                yield chunk
        except Exception as exc:
            self._settle(exc)
            raise
        self._settle(None)

    def close(self) -> None:
        self._settle(None)
        self._inner.close()


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
        breaker, evicted = self._check_out(name)
        try:
            for old in evicted:
                await old.aclose()  # idle: no round trip, so no wait
            return await self._send(request, breaker)
        finally:
            self._check_in(name)

    async def _send(self, request: httpx.Request, breaker: CircuitBreaker) -> httpx.Response:
        retrier, repeatable = self._route(request, breaker)
        timeouts = request.extensions.get("timeout")

        async def attempt(attempt: Attempt) -> httpx.Response:
            _bounded(request, timeouts, attempt)
            if attempt.timeout is None:
                return await self._inner.handle_async_request(request)
            # httpx's timeouts bound each phase; this bounds the whole attempt, also
            # for an upstream that trickles, or an inner transport that ignores them.
            try:
                async with asyncio.timeout(attempt.timeout):
                    return await self._inner.handle_async_request(request)
            except TimeoutError as exc:
                raise httpx.TimeoutException(
                    f"attempt {attempt.number} took longer than {attempt.timeout:g} s",
                    request=request,
                ) from exc

        def hold(response: httpx.Response, permit: AsyncPermit) -> httpx.Response:
            assert isinstance(response.stream, httpx.AsyncByteStream)
            deadline = _Deadline(request, self.body_timeout, asyncio.get_running_loop().time())
            response.stream = _SettledStream(response.stream, permit, deadline)
            return response

        return await retrier.arun(attempt, repeatable=repeatable, enforce_timeout=False, hold=hold)

    async def aclose(self) -> None:
        for breaker in self._take_breakers():
            await breaker.aclose()
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
        breaker, evicted = self._check_out(name)
        try:
            for old in evicted:
                old.close()  # idle: no round trip
            return self._send(request, breaker)
        finally:
            self._check_in(name)

    def _send(self, request: httpx.Request, breaker: CircuitBreaker) -> httpx.Response:
        retrier, repeatable = self._route(request, breaker)
        timeouts = request.extensions.get("timeout")

        def attempt(attempt: Attempt) -> httpx.Response:
            _bounded(request, timeouts, attempt)
            return self._inner.handle_request(request)

        def hold(response: httpx.Response, permit: Permit) -> httpx.Response:
            assert isinstance(response.stream, httpx.SyncByteStream)
            deadline = _Deadline(request, self.body_timeout, time.monotonic())
            response.stream = _SyncSettledStream(response.stream, permit, deadline)
            return response

        return retrier.run(attempt, repeatable=repeatable, hold=hold)

    def close(self) -> None:
        for breaker in self._take_breakers():
            breaker.close()
        self._inner.close()
