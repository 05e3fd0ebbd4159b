"""Structured logs: one JSON object per line.

A record's ``extra={"fields": {...}}`` becomes top-level keys of its line. The admin
token never reaches a log: nothing logs a request's headers.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any


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
        from .errors import BodyBrokenOff

        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, BodyBrokenOff)


def log_config(level: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn: every logger as JSON on stderr."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "filters": {"broken_bodies": {"()": DropBrokenBodies}},
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
            "uvicorn.access": {"handlers": [], "level": level.upper(), "propagate": True},
            # One line per upstream request, and the library's own transition lines,
            # would repeat the gateway's structured ones.
            "httpx": {"level": "WARNING"},
            "breaker": {"level": "WARNING"},
        },
    }
