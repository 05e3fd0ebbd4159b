"""Structured logs: one JSON object per line.

A record's ``extra={"fields": {...}}`` becomes top-level keys of its line. The admin
token never reaches a log: nothing logs a request's headers.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any
from urllib.parse import unquote_plus


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class DropBrokenBodies(logging.Filter):
    """Drops uvicorn's traceback for a response the gateway cut on purpose
    (``BodyBrokenOff``): the gateway logged that already, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        from ..proxy.errors import BodyBrokenOff

        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, BodyBrokenOff)


class RedactTokens(logging.Filter):
    """Blanks an admin token given in the query string (which the admin API refuses)
    in uvicorn's access lines: a refused request must not leak it into the logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact_query(args[2]), *args[3:])
        return True


def redact_query(target: str) -> str:
    """``target`` (a path and query) with the values of token parameters blanked.

    >>> redact_query("/admin/breakers?token=s3cret&x=1")
    '/admin/breakers?token=[redacted]&x=1'
    """
    from ..admin.api import TOKEN_PARAMETERS

    path, mark, query = target.partition("?")
    if not mark:
        return target
    parts = []
    for part in query.split("&"):
        name, equals, _ = part.partition("=")
        if unquote_plus(name).lower() in TOKEN_PARAMETERS and equals:
            part = f"{name}=[redacted]"
        parts.append(part)
    return f"{path}?{'&'.join(parts)}"


def log_config(level: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn: every logger as JSON on stderr."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "filters": {
            "broken_bodies": {"()": DropBrokenBodies},
            "tokens": {"()": RedactTokens},
        },
        "handlers": {"default": handler},
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"handlers": [], "level": level.upper(), "propagate": True},
            "uvicorn.error": {
                "handlers": [],
                "level": level.upper(),
                "propagate": True,
                "filters": ["broken_bodies"],
            },
            "uvicorn.access": {
                "handlers": [],
                "level": level.upper(),
                "propagate": True,
                "filters": ["tokens"],
            },
            # One line per upstream request, and the library's own transition lines,
            # would repeat the gateway's structured ones.
            "httpx": {"level": "WARNING"},
            "breaker": {"level": "WARNING"},
        },
    }
