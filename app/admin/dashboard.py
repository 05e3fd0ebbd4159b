"""``/dashboard``: every breaker of the fleet at a glance, live, in one page.

The page is static (``app/admin/static/``: HTML, CSS and plain JavaScript, shipped in the
wheel, nothing from a CDN) and every URL it uses is relative, so it works behind a
load balancer, under any prefix. It reads two routes here, which need no token:

- ``GET /dashboard/fleet``: each configured upstream's breaker, read from its backend
  (with Redis, the fleet's one window: every replica answers the same figures);
- ``GET /dashboard/events``: the fleet's transitions, as Server-Sent Events.

They carry what ``/metrics`` already publishes without a token (names, states and
counts), never an upstream's URL or settings, and change nothing. Acting (reset,
open, disable) goes through ``/admin`` with the admin token, which the page asks for
and keeps in its memory only (no storage: gone with the page), sent only in the
``Authorization`` header. The page is served on the admin listener, whose origin no
upstream content shares.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import cache
from importlib.resources import files
from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from breaker import BreakerSnapshot

from ..proxy.errors import ErrorBody, TooManyStreams, UnknownAsset
from ..proxy.runtime import Gateway, gateway_of
from ..telemetry.events import stream
from .api import HEARTBEAT

router = APIRouter(tags=["dashboard"])

#: Event streams the dashboard's readers may hold open at once, per worker: they
#: need no token, so their number is bounded.
MAX_STREAMS = 64

_ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


def security_headers(
    *,
    scripts: str = "'self'",
    styles: str = "'self'",
    images: str = "'self'",
    workers: str = "'none'",
) -> dict[str, str]:
    """The headers of a page of the admin listener, and of its files: it runs only its
    own script and style (``scripts``, ``styles``, ...: their sources), talks only to
    its own origin, and cannot be framed (clickjacking its admin buttons) or submit
    anywhere."""
    return {
        "Content-Security-Policy": (
            f"default-src 'none'; script-src {scripts}; style-src {styles}; "
            f"worker-src {workers}; connect-src 'self'; img-src {images}; base-uri 'none'; "
            "form-action 'none'; frame-ancestors 'none'"
        ),
        "X-Frame-Options": "DENY",  # frame-ancestors, for browsers before CSP 2
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


_HEADERS = security_headers()


@cache
def asset(name: str) -> bytes:
    """One file of the page, read once from the package (the wheel or the checkout)."""
    # This package: app in a checkout, fleetbreaker when installed.
    return files(__name__.rpartition(".")[0]).joinpath("static", name).read_bytes()


class BreakerFigures(BaseModel):
    """One upstream as the page shows it. ``state`` is None when the backend could not
    be read, and for an upstream without a breaker (``guarded`` false). Counts are
    fleet-wide, over the breaker's sliding window of ``window`` seconds."""

    name: str
    guarded: bool
    state: Literal["closed", "open", "half_open", "forced_open", "disabled"] | None = None
    retry_after: float = 0.0
    failures: int = 0
    window: float = 0.0
    window_calls: int = 0
    window_failures: int = 0
    window_slow_calls: int = 0
    window_rejections: int = 0
    backend: Literal["redis", "embedded", "fallback"] | None = None
    #: Calls in flight fleet-wide, and the most let through (``max_concurrent``; the
    #: learnt limit for an adaptive one); None without a bulkhead, or unread.
    in_flight: int | None = None
    max_concurrent: int | None = None


class Fleet(BaseModel):
    upstreams: list[BreakerFigures]


def _figures(gateway: Gateway, name: str, snapshot: BreakerSnapshot | None) -> BreakerFigures:
    breaker = gateway.breakers[name]
    if snapshot is None:
        return BreakerFigures(name=name, guarded=True, window=breaker.config.window)
    return BreakerFigures(
        name=name,
        guarded=True,
        state=snapshot.state,
        retry_after=snapshot.retry_after,
        failures=snapshot.failures,
        window=breaker.config.window,
        window_calls=snapshot.window_calls,
        window_failures=snapshot.window_failures,
        window_slow_calls=snapshot.window_slow_calls,
        window_rejections=snapshot.window_rejections,
        backend=snapshot.backend,
    )


@router.get("/dashboard", include_in_schema=False)
async def page() -> Response:
    return Response(asset("index.html"), media_type="text/html; charset=utf-8", headers=_HEADERS)


@router.get(
    "/dashboard/static/{name}",
    include_in_schema=False,
    responses={404: {"model": ErrorBody}},
)
async def static(name: str) -> Response:
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise UnknownAsset(f"the dashboard has no file named {name!r}")
    return Response(asset(name), media_type=media_type, headers=_HEADERS)


@router.get("/dashboard/fleet", summary="Every upstream's breaker, read-only, for the dashboard")
async def fleet(request: Request, response: Response) -> Fleet:
    gateway = gateway_of(request)
    snapshots = await gateway.snapshots()
    occupancies = await gateway.occupancies()
    upstreams = [
        _figures(gateway, name, snapshots[name])
        if name in snapshots
        else BreakerFigures(name=name, guarded=False)
        for name in gateway.routes
    ]
    for figures in upstreams:
        occupancy = occupancies.get(figures.name)
        if occupancy is not None:
            figures.in_flight, figures.max_concurrent = occupancy.in_use, occupancy.limit
    response.headers["Cache-Control"] = "no-store"
    return Fleet(upstreams=upstreams)


@router.get(
    "/dashboard/events",
    summary="Server-Sent Events: the fleet's transitions, read-only, for the dashboard",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}},
        503: {"model": ErrorBody, "description": "Too many dashboard streams are open."},
    },
)
async def events(request: Request) -> StreamingResponse:
    feed = gateway_of(request).feed
    if feed.subscribers >= MAX_STREAMS:
        raise TooManyStreams(f"this worker already serves {MAX_STREAMS} event streams")
    body: AsyncIterator[str] = stream(feed, HEARTBEAT)
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
