"""The demo upstream: a flaky HTTP service to put the gateway in front of.

Mounted at ``/demo`` of a gateway started with no upstream configured, and proxied
as the upstream ``demo``; or a service of its own (``fleetbreaker demo-upstream``),
as in the fleet. Paths below are relative to where it is served. Its behaviour
changes at runtime:

- ``GET /mode`` shows it; ``PUT /mode`` with ``{"mode": "healthy" | "failing" |
  "slow", "failure_rate": 0.0..1.0, "delay": seconds}`` changes it.
- ``GET /hits`` counts the requests it has answered other than these two: watch it
  stop rising while the breaker is open.
- ``/status/<code>`` answers with that status, whatever the mode.
- Any other path answers by the mode: ``healthy`` 200, except a ``failure_rate``
  share of 503s; ``failing`` 503; ``slow`` 200 after ``delay`` seconds, or as soon
  as the mode is changed: calls held by ``slow`` are let go by the next ``PUT /mode``,
  so a demo (or a test) can hold the breaker's trial calls out as long as it needs.

The mode and the count are per process: serve it from one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from typing import Literal

from fastapi import FastAPI, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

Mode = Literal["healthy", "failing", "slow"]


class DemoMode(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Mode = "healthy"
    failure_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    delay: float = Field(default=2.0, ge=0.0, le=60.0)


def create_demo_upstream(failure_rate: float = 0.0) -> FastAPI:
    demo = FastAPI(title="fleetbreaker demo upstream", openapi_url=None)
    demo.state.mode = DemoMode(failure_rate=failure_rate)
    demo.state.hits = 0
    demo.state.changed = asyncio.Event()  # set, and replaced, by every PUT /mode

    @demo.get("/mode")
    async def get_mode(request: Request) -> DemoMode:
        mode: DemoMode = request.app.state.mode
        return mode

    @demo.put("/mode")
    async def put_mode(request: Request, mode: DemoMode) -> DemoMode:
        request.app.state.mode = mode
        request.app.state.changed.set()
        request.app.state.changed = asyncio.Event()
        return mode

    @demo.get("/hits")
    async def get_hits(request: Request) -> dict[str, int]:
        return {"hits": request.app.state.hits}

    @demo.api_route("/status/{code}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def status(request: Request, code: int = Path(ge=200, le=599)) -> JSONResponse:
        request.app.state.hits += 1
        return JSONResponse({"demo": "status", "status": code}, status_code=code)

    @demo.api_route("/{path:path}", methods=["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"])
    async def serve(request: Request, path: str) -> JSONResponse:
        request.app.state.hits += 1
        mode: DemoMode = request.app.state.mode
        if mode.mode == "failing" or (
            mode.mode == "healthy" and random.random() < mode.failure_rate
        ):
            return JSONResponse({"demo": "failing", "path": path}, status_code=503)
        if mode.mode == "slow":
            changed: asyncio.Event = request.app.state.changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), mode.delay)
        return JSONResponse({"demo": "ok", "path": path, "pid": os.getpid()})

    return demo
