"""``/admin``: inspect and control the fleet's breakers. Bearer token, constant time.

Served on the admin listener only. Refused tokens are logged, at most once a minute
with their count (``refusals``).

Every action runs a Lua script on the breaker's backend: with Redis, each worker and
replica sees it on its next request (their local views also hear it on the events
channel at once).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from breaker import BreakerSnapshot

from ..proxy.errors import AdminDisabled, BadRequest, ErrorBody, Unauthorized
from ..proxy.runtime import Gateway, gateway_of
from ..telemetry.events import stream

logger = logging.getLogger("fleetbreaker.gateway")

# Seconds of silence after which an event stream sends a comment, so that idle
# proxies and clients keep the connection.
HEARTBEAT = 15.0
BEARER = HTTPBearer(auto_error=False, description="BREAKER_ADMIN_TOKEN")
#: Query parameters that would carry the admin token: refused, and never logged.
TOKEN_PARAMETERS = ("token", "access_token", "admin_token")


def wants_admin(request: Request) -> bool:
    """Whether the request offers a token at all (a header, or a parameter that the
    check refuses): a route open to anyone tells more to an admin."""
    return "authorization" in request.headers or _token_in_url(request)


def check_admin_token(request: Request, credentials: HTTPAuthorizationCredentials | None) -> None:
    """Raise unless the request holds the admin token, sent as it must be."""
    gateway = gateway_of(request)
    token = gateway.config.admin_token
    if token is None:
        raise AdminDisabled(
            "the admin API is off: set BREAKER_ADMIN_TOKEN and send 'Authorization: Bearer <token>'"
        )
    if _token_in_url(request):
        # URLs end up in logs and browser history: a token there is already leaked.
        raise BadRequest("send the admin token in the Authorization header, not in the URL")
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        gateway.refusals.refused(request.client.host if request.client else None)
        raise Unauthorized("a valid 'Authorization: Bearer <token>' header is required")


def _token_in_url(request: Request) -> bool:
    return any(name.lower() in TOKEN_PARAMETERS for name in request.query_params)


async def require_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
) -> None:
    check_admin_token(request, credentials)


router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses={
        401: {"model": ErrorBody, "description": "Missing or wrong token."},
        403: {"model": ErrorBody, "description": "No BREAKER_ADMIN_TOKEN is configured."},
    },
)
_UNKNOWN: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No upstream has this name."}
}


class BulkheadView(BaseModel):
    """An upstream's bulkhead (``max_concurrent``), as Redis holds it now."""

    in_use: int
    limit: int
    processes: int


class BreakerView(BaseModel):
    """One upstream's breaker. Times are epoch milliseconds of the Redis clock (0: never)."""

    name: str
    url: str
    state: Literal["closed", "open", "half_open", "forced_open", "disabled"]
    failures: int
    last_failure_at: int
    opened_at: int
    open_until: int
    retry_after: float
    generation: int
    half_open_leases: int
    window_calls: int
    window_failures: int
    window_slow_calls: int
    window_retries: int
    window_retries_refused: int
    window_rejections: int
    backend: Literal["redis", "embedded", "fallback"]
    #: The settings stored with the breaker that differ from this replica's (another
    #: app, or a replica of another version, stored them; every call runs with them):
    #: ``{setting: {"stored": ..., "here": ...}}``, durations in ms; None: none differ.
    settings_conflict: dict[str, dict[str, Any]] | None = None
    #: The fleet's leases in use and its limit of calls in flight; None: no
    #: ``max_concurrent`` (or its backend did not answer).
    bulkhead: BulkheadView | None = None
    #: Under a quorum: the voters (instances) of the current failure streak, the
    #: voters live in the window, and the processes (``<instance>/<pid>``) that
    #: isolated themselves, with when each isolation ends (epoch ms).
    streak_voters: list[str] = []
    live_voters: int = 0
    isolated: dict[str, int] = {}


class BreakerList(BaseModel):
    breakers: list[BreakerView]


async def _view(gateway: Gateway, snapshot: BreakerSnapshot) -> BreakerView:
    url = str(gateway.route(snapshot.name).upstream.url)
    own = ("url", "settings_conflict", "bulkhead")
    fields = {name: getattr(snapshot, name) for name in BreakerView.model_fields if name not in own}
    fields["streak_voters"] = list(snapshot.streak_voters)
    conflict = gateway.breaker(snapshot.name).settings_conflict(snapshot)
    differences = None
    if conflict is not None:
        differences = {
            setting: {"stored": stored, "here": here}
            for setting, (stored, here) in conflict.differences.items()
        }
    occupancy = await gateway.occupancy(snapshot.name)
    bulkhead = (
        None
        if occupancy is None
        else BulkheadView(
            in_use=occupancy.in_use, limit=occupancy.limit, processes=occupancy.processes
        )
    )
    return BreakerView(url=url, settings_conflict=differences, bulkhead=bulkhead, **fields)


@router.get("/breakers", summary="Every upstream's breaker")
async def list_breakers(request: Request) -> BreakerList:
    gateway = gateway_of(request)
    views = [await _view(gateway, await gateway.snapshot(name)) for name in gateway.breakers]
    return BreakerList(breakers=views)


@router.get("/breakers/{name}", summary="One upstream's breaker", responses=_UNKNOWN)
async def get_breaker(request: Request, name: str) -> BreakerView:
    gateway = gateway_of(request)
    return await _view(gateway, await gateway.snapshot(name))


Action = Literal["reset", "open", "disable"]


async def _act(request: Request, name: str, action: Action) -> BreakerView:
    gateway = gateway_of(request)
    breaker = gateway.breaker(name)
    if action == "reset":
        await breaker.areset()
    elif action == "open":
        await breaker.aforce_open()
    else:
        await breaker.adisable()
    client = request.client
    logger.info(
        "admin %s %s",
        action,
        name,
        extra={
            "fields": {
                "event": "admin",
                "action": action,
                "upstream": name,
                "client": client.host if client else None,
            }
        },
    )
    return await _view(gateway, await breaker.asnapshot())


@router.post(
    "/breakers/{name}/reset",
    summary="Close the breaker and clear its counters and operator state, fleet-wide",
    responses=_UNKNOWN,
)
async def reset_breaker(request: Request, name: str) -> BreakerView:
    return await _act(request, name, "reset")


@router.post(
    "/breakers/{name}/open",
    summary="Force the breaker open, fleet-wide, until a reset",
    responses=_UNKNOWN,
)
async def open_breaker(request: Request, name: str) -> BreakerView:
    return await _act(request, name, "open")


@router.post(
    "/breakers/{name}/disable",
    summary="Let every call through, still recording outcomes, until a reset",
    responses=_UNKNOWN,
)
async def disable_breaker(request: Request, name: str) -> BreakerView:
    return await _act(request, name, "disable")


@router.get(
    "/events",
    summary="Server-Sent Events: every state transition of the fleet's breakers",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def events(request: Request) -> StreamingResponse:
    body: AsyncIterator[str] = stream(gateway_of(request).feed, HEARTBEAT)
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
