"""Liveness, readiness and metrics.

``/readyz`` tells anyone its status; what the gateway sees of Redis (its address, its
error, which breakers a Cluster leaves unserved) only an admin: on the admin listener,
with the admin token. The proxy's listener, which the load balancer exposes, answers
the status alone, always.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel

from ..config.redisclient import see
from ..proxy.errors import ErrorBody
from ..proxy.runtime import Gateway, gateway_of
from ..telemetry.metrics import CONTENT_TYPE, exposition
from .api import BEARER, check_admin_token, wants_admin

#: The admin listener's.
router = APIRouter(tags=["operations"])
#: The proxy listener's: the admin listener's document describes them.
proxy_router = APIRouter(tags=["operations"], include_in_schema=False)


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    """``degraded``: some or all breakers' Redis does not answer, and their in-process
    fallback breakers serve (fail_open upstreams); ``unavailable``: none of it
    answers and every upstream is fail_closed. With the admin token only: ``backend``;
    ``topology`` and ``redis`` say what the gateway sees: the server; the master the
    sentinels name; or the Cluster's primaries, the slots of each and whether each
    answers. ``breakers_unserved``: on a Cluster, the breakers whose slot's primary
    does not answer, when not all are. ``detail``: Redis's error."""

    status: Literal["ready", "degraded", "unavailable"]
    backend: Literal["redis", "embedded", "fallback"] | None = None
    topology: Literal["standalone", "sentinel", "cluster"] | None = None
    redis: dict[str, Any] | None = None
    breakers_unserved: list[str] | None = None
    detail: str | None = None


async def healthz() -> Health:
    return Health(status="ok")


for _router in (router, proxy_router):
    _router.add_api_route("/healthz", healthz, summary="Liveness: the process answers")


@router.get(
    "/readyz",
    summary="Readiness: its status; with the admin token, what the gateway sees of Redis",
    description="Without an `Authorization` header, the status alone (as on the proxy's "
    "listener, always); with one, it must hold the admin token.",
    responses={
        401: {"model": ErrorBody, "description": "A wrong token."},
        403: {"model": ErrorBody, "description": "No BREAKER_ADMIN_TOKEN is configured."},
        503: {"model": Readiness, "description": "Every upstream is fail_closed."},
    },
)
async def readyz(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
) -> JSONResponse:
    if not wants_admin(request):
        return await status_only(request)
    check_admin_token(request, credentials)
    return _ready(*await readiness(gateway_of(request)))


@proxy_router.get("/readyz")
async def status_only(request: Request) -> JSONResponse:
    found, status = await readiness(gateway_of(request))
    return _ready(Readiness(status=found.status), status)


async def readiness(gateway: Gateway) -> tuple[Readiness, int]:
    """What the gateway sees of its Redis, and the HTTP status that goes with it."""
    breakers = gateway.breakers
    if gateway.redis is None or not breakers:
        return Readiness(status="ready", backend="embedded"), 200
    timeout = max(breaker.config.backend_timeout for breaker in breakers.values())
    view = await see(gateway.redis, timeout)
    without = sorted(
        name for name, breaker in breakers.items() if not view.serves(breaker.config.prefix, name)
    )
    seen = Readiness(
        status="ready",
        backend="redis",
        topology=view.topology,
        redis=view.seen,
        # Only a part of a Cluster can fail some breakers and not the others.
        breakers_unserved=without if 0 < len(without) < len(breakers) else None,
        detail=view.problem,
    )
    if not without:  # all of it answers, or the part that does not holds none of them
        return seen, 200
    policies = {breakers[name].config.on_backend_error for name in without}
    if len(without) == len(breakers) and policies == {"fail_closed"}:
        return seen.model_copy(update={"status": "unavailable"}), 503
    return seen.model_copy(update={"status": "degraded", "backend": "fallback"}), 200


def _ready(readiness: Readiness, status: int = 200) -> JSONResponse:
    return JSONResponse(readiness.model_dump(exclude_none=True), status_code=status)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}}},
)
async def metrics(request: Request) -> Response:
    gateway = gateway_of(request)
    snapshots = await gateway.snapshots()
    backend_up = all(snapshot is not None for snapshot in snapshots.values())
    conflicts = {
        name: gateway.breaker(name).settings_conflict(snapshot) is not None
        for name, snapshot in snapshots.items()
        if snapshot is not None
    }
    occupancies = await gateway.occupancies()
    return Response(
        exposition(snapshots, backend_up, conflicts, occupancies), media_type=CONTENT_TYPE
    )
