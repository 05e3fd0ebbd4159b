"""Every error the gateway answers with, mapped to HTTP in this one place.

Bodies are JSON, ``{"error": <code>, "detail": <text>, ...}``; never a traceback::

    GatewayError                      raised by the gateway's own checks
    ├── UnknownUpstream      404      unknown_upstream
    ├── NoBreaker            404      no_breaker (an upstream with breaker = false)
    ├── UnsafePath           400      invalid_path
    ├── ServiceWorkerRefused 403      service_worker_refused (a service worker's script,
    │                                 fetched through /proxy)
    ├── BadRequest           400      bad_request
    ├── ClientSide                    the request's own side failed, not the upstream:
    │   │                             never a failure of its breaker, never retried
    │   ├── BodyTooLarge     413      body_too_large
    │   ├── BodyStalled      408      request_timeout (no byte of the body for
    │   │                             body_idle_timeout)
    │   └── ClientGone       499      client_disconnected (nobody is left to read it)
    ├── HeadersTooLarge      431      headers_too_large
    ├── AdminDisabled        403      admin_disabled
    ├── Unauthorized         401      unauthorized
    ├── UnknownAsset         404      not_found (a file the dashboard does not have)
    └── TooManyStreams       503      too_many_streams (the dashboard's event streams)
    ProxyFailure                      the upstream call ended without a response
    ├── CircuitOpenError     503      circuit_open (Retry-After); for a GET or HEAD, the
    │                                 upstream's static fallback instead, if it has one
    ├── BulkheadFullError    503      bulkhead_full (Retry-After): the fleet's limit of
    │                                 calls in flight to the upstream is reached; not
    │                                 called, not counted by its breaker, not retried
    ├── BackendUnavailable   503      backend_unavailable
    ├── httpx.PoolTimeout    503      overloaded (this worker's connections to the
    │                                 upstream are all busy: local, not counted)
    ├── httpx.TimeoutException 504    upstream_timeout
    └── httpx.TransportError 502      upstream_unavailable
    BodyBrokenOff                     the upstream's body broke off after its headers
                                      were passed on: the client's response is cut
                                      (the connection closes before the body ends)
"""

from __future__ import annotations

import logging
import math
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from breaker import BackendUnavailableError, BulkheadFullError, CircuitOpenError

from ..config.upstreams import StaticFallback

logger = logging.getLogger("fleetbreaker.gateway")

#: The response header that gives how many attempts reached the upstream.
ATTEMPTS_HEADER = "X-Fleetbreaker-Attempts"
#: On a static fallback's answer: why the upstream's own answer is not there.
FALLBACK_HEADER = "X-Fleetbreaker-Fallback"
#: The methods a static fallback answers: those that only read (RFC 9110 section 9.2.1).
FALLBACK_METHODS = frozenset({"GET", "HEAD"})


class ErrorBody(BaseModel):
    """The body of every error answer."""

    error: str
    detail: str
    upstream: str | None = None
    retry_after: int | None = None


class GatewayError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, detail: str, *, upstream: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.upstream = upstream

    def headers(self) -> dict[str, str]:
        return {}


class UnknownUpstream(GatewayError):
    status = 404
    code = "unknown_upstream"


class NoBreaker(GatewayError):
    status = 404
    code = "no_breaker"


class UnsafePath(GatewayError):
    status = 400
    code = "invalid_path"


class BadRequest(GatewayError):
    status = 400
    code = "bad_request"


class ServiceWorkerRefused(GatewayError):
    """A browser fetching a service worker's script (``Service-Worker: script``) through
    the proxy: a worker registered there would run with the proxy's origin and take
    over the pages of every upstream, at any path its scope reaches."""

    status = 403
    code = "service_worker_refused"


class ClientSide(GatewayError):
    """The request's own side failed while its upstream call was under way (its body
    was too large, stalled, or its client left): the upstream did nothing wrong, so
    its breaker never counts it (``ignore_exceptions``)."""


class BodyTooLarge(ClientSide):
    status = 413
    code = "body_too_large"


class BodyStalled(ClientSide):
    """No byte of the request body came for ``body_idle_timeout`` seconds."""

    status = 408
    code = "request_timeout"


class ClientGone(ClientSide):
    """The client closed its connection before its request body ended (nginx's 499):
    the answer only reaches the logs."""

    status = 499
    code = "client_disconnected"


class HeadersTooLarge(GatewayError):
    status = 431
    code = "headers_too_large"


class AdminDisabled(GatewayError):
    status = 403
    code = "admin_disabled"


class Unauthorized(GatewayError):
    status = 401
    code = "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class UnknownAsset(GatewayError):
    status = 404
    code = "not_found"


class TooManyStreams(GatewayError):
    status = 503
    code = "too_many_streams"


class ProxyFailure(Exception):
    """The call to ``upstream`` ended without a response to pass on."""

    def __init__(self, upstream: str, cause: Exception, attempts: int) -> None:
        super().__init__(f"{upstream}: {type(cause).__name__}: {cause}")
        self.upstream = upstream
        self.cause = cause
        self.attempts = attempts


class BodyBrokenOff(Exception):
    """The upstream's body broke off (a reset, a protocol error, ``body_timeout``) after
    the status was sent to the client. It was logged once where it happened; raised
    on, it makes the server close the client's connection mid-body, which is how a
    client learns that a response was cut."""


def retry_after_header(seconds: float) -> int:
    """Whole seconds, rounded up, at least 1: a client told 0 would come straight back."""
    return max(1, math.ceil(seconds))


def failure_code(cause: Exception) -> tuple[int, str]:
    """The status and error code of a proxied call that ended in ``cause``."""
    if isinstance(cause, CircuitOpenError):
        return 503, "circuit_open"
    if isinstance(cause, BulkheadFullError):
        return 503, "bulkhead_full"
    if isinstance(cause, BackendUnavailableError):
        return 503, "backend_unavailable"
    if isinstance(cause, httpx.PoolTimeout):
        return 503, "overloaded"
    if isinstance(cause, httpx.TimeoutException):
        return 504, "upstream_timeout"
    return 502, "upstream_unavailable"


def proxy_failure_answer(failure: ProxyFailure) -> tuple[int, ErrorBody, dict[str, str]]:
    """The status, body and headers for a proxied call that got no response."""
    cause, upstream, attempts = failure.cause, failure.upstream, failure.attempts
    status, code = failure_code(cause)
    headers = {ATTEMPTS_HEADER: str(attempts)}
    retry_after = None
    if isinstance(cause, CircuitOpenError):
        retry_after = retry_after_header(cause.retry_after)
        headers["Retry-After"] = str(retry_after)
        detail = f"the circuit of {upstream!r} is {cause.state}; the upstream was not called"
        if cause.reason == "isolated":
            detail = (
                f"this replica isolated itself from {upstream!r}: its own calls failed, "
                "not the fleet's (quorum); the upstream was not called"
            )
        elif attempts:
            detail = f"the circuit of {upstream!r} opened after {attempts} attempt(s)"
    elif isinstance(cause, BulkheadFullError):
        retry_after = retry_after_header(cause.retry_after)
        headers["Retry-After"] = str(retry_after)
        detail = (
            f"{cause.in_use} of {cause.limit} calls to {upstream!r} are in flight across "
            "the fleet (max_concurrent); the upstream was not called"
        )
        if attempts:
            detail = f"{detail} again after {attempts} attempt(s)"
    elif isinstance(cause, BackendUnavailableError):
        detail = "the breaker's Redis is unreachable and this upstream is fail_closed"
    elif isinstance(cause, httpx.PoolTimeout):
        # This worker's own overload: the upstream was not called, and its breaker
        # did not count it. A second later a connection is likely free again.
        headers["Retry-After"] = "1"
        retry_after = 1
        detail = (
            f"every connection of this worker to {upstream!r} is busy; the upstream was not called"
        )
    elif isinstance(cause, httpx.TimeoutException):
        detail = f"no answer from {upstream!r} in time ({attempts} attempt(s))"
    else:
        detail = (
            f"{upstream!r} could not be reached ({attempts} attempt(s)): {type(cause).__name__}"
        )
    body = ErrorBody(error=code, detail=detail, upstream=upstream, retry_after=retry_after)
    return status, body, headers


def static_fallback_answer(fallback: StaticFallback, attempts: int) -> Response:
    """An upstream's static fallback, answered while its breaker is open: the
    configured status, headers and body, and what the gateway adds to every answer."""
    answer = Response(fallback.body, status_code=fallback.status)  # Content-Length only
    answer.raw_headers = [
        *((name.lower().encode(), value.encode()) for name, value in fallback.headers),
        *answer.raw_headers,
        (ATTEMPTS_HEADER.lower().encode(), str(attempts).encode()),
        (FALLBACK_HEADER.lower().encode(), b"circuit_open"),
    ]
    return answer


def _answer(status: int, body: ErrorBody, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


def gateway_error_answer(exc: GatewayError) -> JSONResponse:
    body = ErrorBody(error=exc.code, detail=exc.detail, upstream=exc.upstream)
    return _answer(exc.status, body, exc.headers())


def install(app: FastAPI) -> None:
    """Map every exception a route can raise to a JSON answer."""

    async def gateway_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, GatewayError)
        return gateway_error_answer(exc)

    async def proxy_failure(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ProxyFailure)
        return _answer(*proxy_failure_answer(exc))

    async def backend_unavailable(request: Request, exc: Exception) -> JSONResponse:
        body = ErrorBody(error="backend_unavailable", detail="the breaker's Redis is unreachable")
        return _answer(503, body)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        body = ErrorBody(error=code, detail=str(exc.detail))
        return _answer(exc.status_code, body, dict(exc.headers or {}))

    async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first: dict[str, Any] = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        detail = f"{where}: {first.get('msg', 'invalid')}" if where else "invalid request"
        return _answer(422, ErrorBody(error="invalid_request", detail=detail))

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, BodyBrokenOff):  # logged already; the answer was under way
            return _answer(502, ErrorBody(error="upstream_body_broken", detail=str(exc)))
        logger.error(
            "unhandled error",
            exc_info=exc,
            extra={"fields": {"event": "error", "path": request.url.path}},
        )
        return _answer(500, ErrorBody(error="internal", detail="internal error, see the logs"))

    app.add_exception_handler(GatewayError, gateway_error)
    app.add_exception_handler(ProxyFailure, proxy_failure)
    app.add_exception_handler(BackendUnavailableError, backend_unavailable)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(Exception, unexpected)
