"""Liveness, readiness and metrics."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from .metrics import CONTENT_TYPE, exposition
from .redisclient import see
from .runtime import gateway_of

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    """``degraded``: some or all breakers' Redis does not answer, and their in-process
    fallback breakers serve (fail_open upstreams); ``unavailable``: none of it
    answers and every upstream is fail_closed. ``topology`` and ``redis`` say what the
    gateway sees: the server; the master the sentinels name; or the Cluster's
    primaries, the slots of each and whether each answers. ``breakers_unserved``: on
    a Cluster, the breakers whose slot's primary does not answer, when not all are."""

    status: Literal["ready", "degraded", "unavailable"]
    backend: Literal["redis", "embedded", "fallback"]
    topology: Literal["standalone", "sentinel", "cluster"] | None = None
    redis: dict[str, Any] | None = None
    breakers_unserved: list[str] | None = None
    detail: str | None = None


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    summary="Readiness: whether Redis answers, and what the gateway sees of it",
    responses={503: {"model": Readiness, "description": "Every upstream is fail_closed."}},
)
async def readyz(request: Request) -> JSONResponse:
    gateway = gateway_of(request)
    breakers = gateway.breakers
    if gateway.redis is None or not breakers:
        return _ready(Readiness(status="ready", backend="embedded"))
    timeout = max(breaker.config.backend_timeout for breaker in breakers.values())
    view = await see(gateway.redis, timeout)
    without = sorted(
        name for name, breaker in breakers.items() if not view.serves(breaker.config.prefix, name)
    )
    readiness = Readiness(
        status="ready",
        backend="redis",
        topology=view.topology,
        redis=view.seen,
        # Only a part of a Cluster can fail some breakers and not the others.
        breakers_unserved=without if 0 < len(without) < len(breakers) else None,
        detail=view.problem,
    )
    if not without:  # all of it answers, or the part that does not holds none of them
        return _ready(readiness)
    policies = {breakers[name].config.on_backend_error for name in without}
    if len(without) == len(breakers) and policies == {"fail_closed"}:
        return _ready(readiness.model_copy(update={"status": "unavailable"}), 503)
    return _ready(readiness.model_copy(update={"status": "degraded", "backend": "fallback"}))


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
    return Response(exposition(snapshots, backend_up, conflicts), media_type=CONTENT_TYPE)
