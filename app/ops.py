"""Liveness, readiness and metrics."""

from __future__ import annotations

import asyncio
from typing import Literal

import redis
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from .metrics import CONTENT_TYPE, exposition
from .runtime import gateway_of

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    """``degraded``: Redis is unreachable and the in-process fallback breakers serve
    (fail_open upstreams); ``unavailable``: every upstream is fail_closed."""

    status: Literal["ready", "degraded", "unavailable"]
    backend: Literal["redis", "embedded", "fallback"]
    detail: str | None = None


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    summary="Readiness: whether Redis answers",
    responses={503: {"model": Readiness, "description": "Every upstream is fail_closed."}},
)
async def readyz(request: Request) -> JSONResponse:
    gateway = gateway_of(request)
    configs = [breaker.config for breaker in gateway.breakers.values()]
    if gateway.redis is None or not configs:
        return _ready(Readiness(status="ready", backend="embedded"))
    timeout = max(config.backend_timeout for config in configs)
    try:
        async with asyncio.timeout(timeout):
            await gateway.redis.ping()
    except (TimeoutError, redis.RedisError, OSError) as exc:
        reason = f"Redis unreachable: {type(exc).__name__}"
        policies = {config.on_backend_error for config in configs}
        if policies == {"fail_closed"}:
            return _ready(Readiness(status="unavailable", backend="redis", detail=reason), 503)
        return _ready(Readiness(status="degraded", backend="fallback", detail=reason))
    return _ready(Readiness(status="ready", backend="redis"))


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
    return Response(exposition(snapshots, backend_up), media_type=CONTENT_TYPE)
