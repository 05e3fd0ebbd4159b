"""The OpenAPI pages, ``/docs`` (Swagger UI) and ``/redoc``, whole without a network.

FastAPI's own pages load their script, style and icon from a CDN, so they were blank
on a machine that reaches nothing but the gateway. Here the gateway serves those
files itself, from the ``fastapi-offline`` package, under ``/docs/``; the pages name
no other host. Swagger UI's online validator (a badge fetched from swagger.io) and
ReDoc's Google fonts are turned off for the same reason; ReDoc's script still asks its
vendor's CDN for a logo, which the pages' policy (below) blocks.

Like the dashboard, they live on the admin listener and carry its security headers:
they cannot be framed, and run no script but their own files and the one inline
script Swagger UI's page starts with (allowed by its hash). Their libraries style
their elements inline, draw icons as ``data:`` images, and ReDoc searches in a worker
it makes from a ``blob:``: the policy allows those.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from .dashboard import security_headers

ASSETS = Path(fastapi_offline.__file__).parent / "static"
#: The files the pages load, by name, with their media type.
MEDIA_TYPES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}

router = APIRouter(include_in_schema=False)
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)


def _secured(page: HTMLResponse) -> HTMLResponse:
    """``page`` with the admin listener's headers, its inline scripts allowed by hash."""
    hashes = [
        "'sha256-" + base64.b64encode(hashlib.sha256(script).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(bytes(page.body))
    ]
    page.headers.update(
        security_headers(
            scripts=" ".join(["'self'", *hashes]),
            styles="'self' 'unsafe-inline'",
            images="'self' data:",
            workers="blob:",
        )
    )
    return page


def _asset_url(request: Request, name: str) -> str:
    return f"{request.scope.get('root_path', '')}/docs/{name}"


def _openapi_url(request: Request) -> str:
    return f"{request.scope.get('root_path', '')}{request.app.openapi_url}"


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    page = get_swagger_ui_html(
        openapi_url=_openapi_url(request),
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=_asset_url(request, "swagger-ui-bundle.js"),
        swagger_css_url=_asset_url(request, "swagger-ui.css"),
        swagger_favicon_url=_asset_url(request, "favicon.png"),
        swagger_ui_parameters={"validatorUrl": None},
    )
    return _secured(page)


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    page = get_redoc_html(
        openapi_url=_openapi_url(request),
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=_asset_url(request, "redoc.standalone.js"),
        redoc_favicon_url=_asset_url(request, "favicon.png"),
        with_google_fonts=False,
    )
    return _secured(page)


def _serve(name: str, media_type: str) -> Callable[[], Awaitable[FileResponse]]:
    async def asset() -> FileResponse:
        return FileResponse(ASSETS / name, media_type=media_type, headers=security_headers())

    return asset


for _name, _media_type in MEDIA_TYPES.items():
    router.add_api_route(f"/docs/{_name}", _serve(_name, _media_type), methods=["GET"])
