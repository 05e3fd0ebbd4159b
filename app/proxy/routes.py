"""``ANY /proxy/{upstream}/{path}``: forward through the upstream's breaker and retries.

Request bodies up to ``retry_buffer_bytes`` are buffered, so that an attempt can be
sent again; larger ones are streamed to the upstream as they arrive and sent once.
Responses are streamed back as they come, bytes untouched (compressed stays
compressed). Every proxied answer carries ``X-Fleetbreaker-Attempts``: how many
attempts reached the upstream (0 when the breaker refused the first one).

What upstreams serve runs in browsers with the proxy's origin, which they all share:
no request for a service worker's script is forwarded, and no answer may widen a
worker's scope (``forwarding.WIDENING``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from breaker import BackendUnavailableError, BulkheadFullError, CircuitOpenError, attempts_of

from ..telemetry.metrics import BODIES_BROKEN, REQUEST_ATTEMPTS, REQUESTS, result_of
from .errors import (
    ATTEMPTS_HEADER,
    BodyBrokenOff,
    BodyStalled,
    BodyTooLarge,
    ClientGone,
    ClientSide,
    ErrorBody,
    ProxyFailure,
    ServiceWorkerRefused,
    failure_code,
)
from .forwarding import (
    check_segment,
    declared_length,
    request_headers,
    response_headers,
    split_target,
    target_url,
)
from .runtime import Route, gateway_of
from .upload import Upload

logger = logging.getLogger("fleetbreaker.gateway")

#: How a proxied call ends without a response from the upstream.
_NO_RESPONSE = (CircuitOpenError, BulkheadFullError, BackendUnavailableError, httpx.TransportError)

router = APIRouter(tags=["proxy"])

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "The path tries to leave the upstream's base."},
    403: {"model": ErrorBody, "description": "A service worker's script (Service-Worker)."},
    404: {"model": ErrorBody, "description": "No upstream has this name."},
    413: {"model": ErrorBody, "description": "The request body is larger than allowed."},
    431: {"model": ErrorBody, "description": "The request's path and headers are too large."},
    502: {"model": ErrorBody, "description": "The upstream could not be reached."},
    503: {
        "model": ErrorBody,
        "description": "The upstream's circuit is open (with Retry-After), "
        "or Redis is down and the upstream is fail_closed.",
    },
    504: {"model": ErrorBody, "description": "The upstream did not answer in time."},
}
_DESCRIPTION = (
    "Forwards the request to the upstream's base URL + path + query, through the "
    "upstream's circuit breaker (shared by the fleet) and its retry policy. The "
    "upstream's answer passes through as it is, with `X-Fleetbreaker-Attempts`."
)


async def proxy_path(request: Request, upstream: str, path: str) -> Response:
    return await _proxy(request, upstream)


async def proxy_base(request: Request, upstream: str) -> Response:
    return await _proxy(request, upstream)


# One route per method, so that each has its own operation in the OpenAPI document.
for _method in METHODS:
    router.add_api_route(
        "/proxy/{upstream}/{path:path}",
        proxy_path,
        methods=[_method],
        responses=_ERRORS,
        summary=f"Proxy a {_method} request to an upstream",
        description=_DESCRIPTION,
        operation_id=f"proxy_{_method.lower()}",
    )
    router.add_api_route(
        "/proxy/{upstream}",
        proxy_base,
        methods=[_method],
        responses=_ERRORS,
        summary=f"Proxy a {_method} request to an upstream's base URL",
        description=_DESCRIPTION,
        operation_id=f"proxy_base_{_method.lower()}",
    )


async def _proxy(request: Request, name: str) -> Response:
    if request.headers.get("service-worker", "").strip().lower() == "script":
        raise ServiceWorkerRefused("the gateway does not serve service workers' scripts")
    gateway = gateway_of(request)
    route = gateway.route(name)
    raw_path: bytes = request.scope.get("raw_path") or request.scope["path"].encode()
    segment, tail = split_target(raw_path)
    check_segment(segment, name)
    url = target_url(route.upstream.url, tail, request.scope["query_string"])
    raw_headers = list(request.headers.raw)
    upload = Upload(
        request.receive,
        limit=gateway.config.max_body_bytes,
        declared=declared_length(raw_headers),
        expects_continue=request.headers.get("expect", "").lower() == "100-continue",
        idle_timeout=gateway.config.body_idle_timeout,
    )
    try:
        return await _forward(request, route, url, raw_headers, upload)
    except BodyTooLarge as exc:
        await upload.drain()
        _refused(route, request, exc)
        raise
    except (ClientGone, BodyStalled) as exc:
        _refused(route, request, exc)
        raise


async def _forward(
    request: Request,
    route: Route,
    url: httpx.URL,
    raw_headers: list[tuple[bytes, bytes]],
    upload: Upload,
) -> Response:
    gateway = gateway_of(request)
    content = await upload.content(gateway.config.retry_buffer_bytes)
    client = request.client
    # A request of its own, not the client's ``build_request``: that would add
    # httpx's default headers (Accept-Encoding, User-Agent, ...) and cookies.
    outgoing = httpx.Request(
        request.method,
        url,
        headers=request_headers(
            raw_headers, client_host=client.host if client else None, scheme=request.url.scheme
        ),
        content=content,
    )
    fallback = route.fallback_for(request.method)
    try:
        if fallback is not None:
            answer: Response = await fallback.call(_answer, request, route, outgoing)
            return answer
        return await _answer(request, route, outgoing)
    except _NO_RESPONSE as exc:
        raise ProxyFailure(route.upstream.name, exc, attempts_of(exc) or _sent_once(route)) from exc


async def _answer(request: Request, route: Route, outgoing: httpx.Request) -> Response:
    """The upstream's answer, streamed back as it comes. A call that ended in an error
    is accounted, and the error raised as it is: the route's fallback answers for it
    where it covers it."""
    try:
        upstream_response = await route.client.send(outgoing, stream=True)
    except _NO_RESPONSE as exc:
        _account(route, request, exc, attempts_of(exc) or _sent_once(route))
        raise
    attempts = attempts_of(upstream_response) or _sent_once(route)
    _account(route, request, upstream_response, attempts)
    headers = response_headers(upstream_response.headers.raw)
    headers.append((ATTEMPTS_HEADER.lower().encode(), str(attempts).encode()))
    answer = StreamingResponse(
        _passed_on(upstream_response, request, route),
        status_code=upstream_response.status_code,
        background=BackgroundTask(upstream_response.aclose),
    )
    answer.raw_headers = headers
    return answer


async def _passed_on(
    upstream_response: httpx.Response, request: Request, route: Route
) -> AsyncIterator[bytes]:
    """The upstream's body as it comes (the transport settles its breaker permit when
    it ends). If it breaks off, the status is already with the client: log it once,
    count it, and cut the client's response."""
    name = route.upstream.name
    try:
        async for chunk in upstream_response.aiter_raw():
            yield chunk
    except httpx.TransportError as exc:
        timed_out = isinstance(exc, httpx.TimeoutException)
        code = "upstream_body_timeout" if timed_out else "upstream_body_broken"
        BODIES_BROKEN.labels(name, code).inc()
        logger.warning(
            "%s %s via %s: the body broke off after the headers (%s)",
            request.method,
            request.url.path,
            name,
            type(exc).__name__,
            extra={
                "fields": {
                    "event": "body_broken",
                    "upstream": name,
                    "path": request.url.path,
                    "status": upstream_response.status_code,
                    "error": code,
                }
            },
        )
        raise BodyBrokenOff(f"{name!r}: the body broke off: {type(exc).__name__}") from exc


def _sent_once(route: Route) -> int:
    """Attempts of a request that no breaker counted: one, when there is no breaker."""
    return 1 if route.breaker is None else 0


def _refused(route: Route, request: Request, error: ClientSide) -> None:
    """Count, and log once, a request whose body ended it before any answer came."""
    REQUESTS.labels(route.upstream.name, error.code).inc()
    logger.info(
        "%s %s via %s: %s",
        request.method,
        request.url.path,
        route.upstream.name,
        error.detail,
        extra={
            "fields": {
                "event": "refused",
                "upstream": route.upstream.name,
                "method": request.method,
                "path": request.url.path,
                "error": error.code,
            }
        },
    )


def _account(
    route: Route, request: Request, last: httpx.Response | Exception, attempts: int
) -> None:
    """The request's answer in metrics, and one log line if it was retried or
    rejected. How each attempt counted for the breaker is the breaker's to tell: its
    outcome events feed ``fleetbreaker_calls_total``."""
    name = route.upstream.name
    error = last if isinstance(last, Exception) else None
    code = None if error is None else failure_code(error)[1]
    status = last.status_code if isinstance(last, httpx.Response) else None
    REQUESTS.labels(name, result_of(status, code)).inc()
    if route.breaker is not None:
        REQUEST_ATTEMPTS.labels(name).observe(attempts)
    if attempts > 1 or isinstance(error, CircuitOpenError | BulkheadFullError):
        logger.info(
            "%s %s via %s: %s after %d attempt(s)",
            request.method,
            request.url.path,
            name,
            status or code,
            attempts,
            extra={
                "fields": {
                    "event": (
                        "rejected"
                        if isinstance(error, CircuitOpenError | BulkheadFullError)
                        else "retried"
                    ),
                    "upstream": name,
                    "method": request.method,
                    "path": request.url.path,
                    "status": status,
                    "error": code,
                    "attempts": attempts,
                }
            },
        )
