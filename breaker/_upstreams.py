"""One way to build an upstream's guarded client: the gateway's routes and
``breaker.fastapi``'s lifespan both call ``guarded_client``.

An upstream (``Upstream``) is a name (its breaker's, in Redis), a base URL, breaker
settings and a retry policy. Its client is an ``httpx.AsyncClient`` with a pool of its
own (so that one upstream's slow callers never take another's connections), a
``BreakerTransport`` that holds the upstream's one breaker and its retrier, and the
defaults a shared
client needs: no cookie jar (a cookie set for one caller must never ride on another's
request), no proxy from the environment (it would reroute upstream calls), no
redirects followed.
"""

from __future__ import annotations

import http.cookiejar
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, NamedTuple

import httpx

from ._breaker import CircuitBreaker
from ._bulkhead.bulkhead import Bulkhead
from ._bulkhead.config import BulkheadConfig
from ._clock import Clock
from ._config import BreakerConfig
from ._exceptions import ConfigurationError
from ._listeners import Listener
from ._models import TransitionEvent
from ._retry.rules import RetryHook
from ._retry.runner import RetryPolicy
from ._transport import BreakerTransport


@dataclass(frozen=True, slots=True)
class Upstream:
    """A service the app calls: its ``name`` (that of its breaker, in Redis), its base
    ``url``, the ``breaker`` settings and the ``retry`` policy of its client.

    >>> Upstream("inventory", "http://inventory.internal:8080").retry.attempts
    3

    The breaker counts network errors and 5xx answers as failures (unless its
    ``failure_predicate`` says otherwise); the policy retries GET, HEAD, OPTIONS, PUT,
    DELETE and TRACE requests (and those with an ``Idempotency-Key``), with full
    jitter, honouring ``Retry-After``, within the fleet's retry budget.
    """

    name: str
    url: str
    _: KW_ONLY
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: A fleet-wide limit of calls in flight to it (None: no limit): each attempt
    #: holds a lease until its body ends.
    bulkhead: BulkheadConfig | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigurationError("name", f"must be a non-blank string, got {self.name!r}")
        key = f"upstreams.{self.name}"
        try:
            url = httpx.URL(self.url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise ConfigurationError(f"{key}.url", f"{self.url!r} is not a URL: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigurationError(f"{key}.url", f"{self.url!r} must be http(s)://host...")
        if not isinstance(self.breaker, BreakerConfig):
            raise ConfigurationError(f"{key}.breaker", "must be a BreakerConfig")
        if not isinstance(self.retry, RetryPolicy):
            raise ConfigurationError(f"{key}.retry", "must be a RetryPolicy")
        if self.bulkhead is not None and not isinstance(self.bulkhead, BulkheadConfig):
            raise ConfigurationError(f"{key}.bulkhead", "must be a BulkheadConfig or None")


class _NoCookies(http.cookiejar.CookiePolicy):
    """One client serves every caller: a cookie an upstream sets for one of them must
    never be kept, let alone sent on another's request."""

    netscape = True
    rfc2965 = False
    hide_cookie2 = False

    def set_ok(self, cookie: http.cookiejar.Cookie, request: urllib.request.Request) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: urllib.request.Request) -> bool:
        return False

    def domain_return_ok(self, domain: str, request: urllib.request.Request) -> bool:
        return False

    def path_return_ok(self, path: str, request: urllib.request.Request) -> bool:
        return False


def shared_client(
    transport: httpx.AsyncBaseTransport, *, base_url: str = "", timeout: httpx.Timeout | None
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` fit to serve many callers at once: no cookie jar, no
    proxy from the environment, no redirects followed."""
    return httpx.AsyncClient(
        transport=transport,
        base_url=base_url,
        timeout=timeout if timeout is not None else httpx.Timeout(5.0),
        follow_redirects=False,
        trust_env=False,
        cookies=http.cookiejar.CookieJar(policy=_NoCookies()),
    )


class Guarded(NamedTuple):
    """An upstream's client and what guards it; closing the client closes them."""

    client: httpx.AsyncClient
    breaker: CircuitBreaker
    bulkhead: Bulkhead | None


def guarded_client(
    upstream: Upstream,
    *,
    redis: Any,
    transport: httpx.AsyncBaseTransport | None = None,
    timeout: httpx.Timeout | None = None,
    body_timeout: float | None = None,
    clock: Clock | None = None,
    retry_hooks: tuple[RetryHook, ...] = (),
    listeners: Iterable[Listener] = (),
    made_here_listeners: Iterable[Callable[[TransitionEvent], None]] = (),
) -> Guarded:
    """``upstream``'s guarded client on ``url`` (its ``base_url``), its breaker and its
    bulkhead (None without ``upstream.bulkhead``).

    ``transport``: the client's own pool (default: one of httpx's, which retries
    nothing itself); ``redis``: an asyncio client (None: the embedded backend). The
    breaker follows the fleet's transitions from now on, so a worker hears that
    another opened it before its own next call; closing the client closes it.
    """
    limit = upstream.bulkhead
    bulkhead = (
        None
        if limit is None
        else Bulkhead(
            upstream.name,
            redis=redis,
            limit=limit.limit,
            lease_ttl=limit.lease_ttl,
            max_wait=limit.max_wait,
            prefix=upstream.breaker.prefix,
            backend_timeout=upstream.breaker.backend_timeout,
            clock=clock,
        )
    )
    guard = BreakerTransport(
        transport if transport is not None else httpx.AsyncHTTPTransport(retries=0),
        upstream.name,
        redis=redis,
        retry=upstream.retry.replace(hooks=retry_hooks) if retry_hooks else upstream.retry,
        breaker_config=upstream.breaker,
        clock=clock,
        body_timeout=body_timeout,
        bulkhead=bulkhead,
    )
    breaker = guard.breaker
    for listener in listeners:
        breaker.add_listener(listener)
    for listener in made_here_listeners:
        breaker.add_listener(listener, made_here_only=True)
    breaker.follow_events()
    return Guarded(shared_client(guard, base_url=upstream.url, timeout=timeout), breaker, bulkhead)
