"""httpx transports that put a shared breaker and a retry policy around every request.

``ResilientTransport`` (for ``httpx.AsyncClient``) and ``SyncResilientTransport`` (for
``httpx.Client``) are twins, like httpx's own ``AsyncHTTPTransport`` and
``HTTPTransport``. Each wraps an inner transport and passes ``close`` through.

- One breaker per origin (``scheme://host:port``) by default, or named by a function
  of the request; a response with a 5xx status counts as a failure of its breaker.
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
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx

from ._breaker import CircuitBreaker
from ._clock import Clock
from ._config import BreakerConfig
from ._policy import Attempt, RetryPolicy
from ._protocol import Outcome
from ._retrying import Retrier

#: A request extension: True retries the request whatever its method, False never.
RETRY_EXTENSION = "fleetbreaker.retry"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(request: httpx.Request) -> str:
    """The breaker name of a request: its origin, ``scheme://host:port``."""
    url = request.url
    host = f"[{url.host}]" if ":" in url.host else url.host
    port = url.port or _DEFAULT_PORTS.get(url.scheme, 0)
    return f"{url.scheme}://{host}:{port}"


def is_server_error(result: Any) -> bool:
    """The transports' default failure predicate: a response with a 5xx status."""
    return isinstance(result, httpx.Response) and result.status_code >= 500


class _Routing:
    """What both twins share: the retry policy, and one breaker per name, made on
    first use (names should be few: origins, or upstreams)."""

    def __init__(
        self,
        redis: Any,
        retry: RetryPolicy | None,
        config: BreakerConfig | None,
        name_of: Callable[[httpx.Request], str],
        clock: Clock | None,
    ) -> None:
        config = config if config is not None else BreakerConfig()
        if config.failure_predicate is None:
            config = dataclasses.replace(config, failure_predicate=is_server_error)
        self.retry = retry if retry is not None else RetryPolicy()
        self._redis = redis
        self._config = config
        self._clock = clock
        self._name_of = name_of
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()

    def route(self, request: httpx.Request) -> tuple[Retrier, bool]:
        """The retrier for this request (bound to its breaker), and whether the request
        may be sent again."""
        retrier = Retrier(self.retry, self.get(self._name_of(request)))
        return retrier, _repeatable(request, self.retry)

    def get(self, name: str) -> CircuitBreaker:
        breaker = self._breakers.get(name)
        if breaker is None:
            with self._lock:
                breaker = self._breakers.get(name)
                if breaker is None:
                    breaker = CircuitBreaker(
                        name, redis=self._redis, config=self._config, clock=self._clock
                    )
                    self._breakers[name] = breaker
        return breaker


def _repeatable(request: httpx.Request, policy: RetryPolicy) -> bool:
    """Whether this request may be sent again: its body can be replayed, and the
    caller opted it in or its method (or an ``Idempotency-Key``) allows it."""
    choice = request.extensions.get(RETRY_EXTENSION)
    if choice is False or not isinstance(request.stream, httpx.ByteStream):
        return False
    return choice is True or policy.allows_method(request.method, request.headers)


def _bounded(request: httpx.Request, timeouts: Any, attempt: Attempt) -> None:
    """Give this attempt httpx timeouts no longer than the attempt may take."""
    if attempt.timeout is None:
        return
    limit = attempt.timeout
    current = timeouts if isinstance(timeouts, dict) else {}
    request.extensions = {
        **request.extensions,
        "timeout": {
            phase: limit if current.get(phase) is None else min(current[phase], limit)
            for phase in ("connect", "read", "write", "pool")
        },
    }


def _body_timed_out(request: httpx.Request, limit: float) -> httpx.ReadTimeout:
    return httpx.ReadTimeout(f"the response body took longer than {limit:g} s", request=request)


_RECORDING: set[asyncio.Future[None]] = set()


class _SettledStream(httpx.AsyncByteStream):
    """A response body that records its attempt's outcome once, when it ends."""

    def __init__(
        self,
        inner: httpx.AsyncByteStream,
        settle: Callable[[Outcome], Awaitable[None]],
        config: BreakerConfig,
        request: httpx.Request,
        body_timeout: float | None,
    ) -> None:
        self._inner = inner
        self._settle_once: Callable[[Outcome], Awaitable[None]] | None = settle
        self._config = config
        self._request = request
        self._body_timeout = body_timeout

    async def _settle(self, outcome: Outcome) -> None:
        """Record ``outcome``, once. Shielded: a reader that is being cancelled (anyio
        cancels every await of a cancelled scope) still gets its call recorded."""
        settle, self._settle_once = self._settle_once, None
        if settle is None:
            return
        recording = asyncio.ensure_future(settle(outcome))
        _RECORDING.add(recording)  # a task nobody awaits must be held, or it may vanish
        recording.add_done_callback(_RECORDING.discard)
        await asyncio.shield(recording)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = aiter(self._inner)
        limit = self._body_timeout
        deadline = None if limit is None else asyncio.get_running_loop().time() + limit
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                yield chunk
        except TimeoutError as exc:
            assert limit is not None
            error = _body_timed_out(self._request, limit)
            await self._settle(self._config.classify(error))
            raise error from exc
        except asyncio.CancelledError:
            # The reader went away (a server cancels a response whose client has
            # closed, often once the last byte is out): the headers' success stands.
            await self._settle("success")
            raise
        except Exception as exc:
            await self._settle(self._config.classify(exc))
            raise
        await self._settle("success")

    async def aclose(self) -> None:
        await self._settle("success")
        await self._inner.aclose()


class _SyncSettledStream(httpx.SyncByteStream):
    """The sync twin of ``_SettledStream``: it cannot interrupt a read, so
    ``body_timeout`` is checked as each chunk arrives (the read timeout bounds a
    stall)."""

    def __init__(
        self,
        inner: httpx.SyncByteStream,
        settle: Callable[[Outcome], None],
        config: BreakerConfig,
        request: httpx.Request,
        body_timeout: float | None,
    ) -> None:
        self._inner = inner
        self._settle_once: Callable[[Outcome], None] | None = settle
        self._config = config
        self._request = request
        self._body_timeout = body_timeout

    def _settle(self, outcome: Outcome) -> None:
        settle, self._settle_once = self._settle_once, None
        if settle is not None:
            settle(outcome)

    def __iter__(self) -> Iterator[bytes]:
        limit = self._body_timeout
        deadline = None if limit is None else time.monotonic() + limit
        try:
            for chunk in self._inner:
                if deadline is not None and time.monotonic() > deadline:
                    assert limit is not None
                    raise _body_timed_out(self._request, limit)
                yield chunk
        except Exception as exc:
            self._settle(self._config.classify(exc))
            raise
        self._settle("success")

    def close(self) -> None:
        self._settle("success")
        self._inner.close()


class ResilientTransport(httpx.AsyncBaseTransport):
    """An ``httpx.AsyncClient`` transport with a fleet-wide breaker and retries.

    >>> import httpx
    >>> client = httpx.AsyncClient(transport=ResilientTransport())

    ``redis`` is a ``redis.asyncio.Redis`` (None: the embedded backend);
    ``breaker_config`` applies to every breaker this transport creates.
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        redis: Any = None,
        retry: RetryPolicy | None = None,
        breaker_config: BreakerConfig | None = None,
        breaker_name: Callable[[httpx.Request], str] = origin_of,
        clock: Clock | None = None,
        body_timeout: float | None = None,
    ) -> None:
        self._inner = transport if transport is not None else httpx.AsyncHTTPTransport()
        self._routing = _Routing(redis, retry, breaker_config, breaker_name, clock)
        self._body_timeout = body_timeout

    def breaker(self, name: str) -> CircuitBreaker:
        """The breaker of ``name`` (an origin, by default), as this transport uses it."""
        return self._routing.get(name)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        retrier, repeatable = self._routing.route(request)
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

        def hold(
            response: httpx.Response, settle: Callable[[Outcome], Awaitable[None]]
        ) -> httpx.Response:
            assert isinstance(response.stream, httpx.AsyncByteStream)
            response.stream = _SettledStream(
                response.stream, settle, config, request, self._body_timeout
            )
            return response

        config = retrier.breaker.config if retrier.breaker is not None else BreakerConfig()
        return await retrier._adrive(
            attempt, repeatable=repeatable, enforce_timeout=False, hold=hold
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


class SyncResilientTransport(httpx.BaseTransport):
    """The ``httpx.Client`` twin of ``ResilientTransport`` (``redis``: a ``redis.Redis``).

    >>> import httpx
    >>> client = httpx.Client(transport=SyncResilientTransport())
    """

    def __init__(
        self,
        transport: httpx.BaseTransport | None = None,
        *,
        redis: Any = None,
        retry: RetryPolicy | None = None,
        breaker_config: BreakerConfig | None = None,
        breaker_name: Callable[[httpx.Request], str] = origin_of,
        clock: Clock | None = None,
        body_timeout: float | None = None,
    ) -> None:
        self._inner = transport if transport is not None else httpx.HTTPTransport()
        self._routing = _Routing(redis, retry, breaker_config, breaker_name, clock)
        self._body_timeout = body_timeout

    def breaker(self, name: str) -> CircuitBreaker:
        """The breaker of ``name`` (an origin, by default), as this transport uses it."""
        return self._routing.get(name)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        retrier, repeatable = self._routing.route(request)
        timeouts = request.extensions.get("timeout")

        def attempt(attempt: Attempt) -> httpx.Response:
            _bounded(request, timeouts, attempt)
            return self._inner.handle_request(request)

        def hold(response: httpx.Response, settle: Callable[[Outcome], None]) -> httpx.Response:
            assert isinstance(response.stream, httpx.SyncByteStream)
            response.stream = _SyncSettledStream(
                response.stream, settle, config, request, self._body_timeout
            )
            return response

        config = retrier.breaker.config if retrier.breaker is not None else BreakerConfig()
        return retrier._drive(attempt, repeatable=repeatable, hold=hold)

    def close(self) -> None:
        self._inner.close()
