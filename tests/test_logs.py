"""The gateway's log lines: one JSON object each, fields on top, no token in them."""

from __future__ import annotations

import json
import logging
import sys

from app.proxy.errors import BodyBrokenOff
from app.server.logs import DropBrokenBodies, JsonFormatter, RedactTokens, log_config, redact_query


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("fleetbreaker.gateway", logging.INFO, __file__, 1, message, args, None)
    for name, value in extra.items():
        setattr(made, name, value)
    return made


def test_a_line_is_one_json_object_with_its_fields_on_top() -> None:
    line = JsonFormatter().format(record("breaker %s", "api", fields={"event": "transition"}))
    parsed = json.loads(line)
    assert (parsed["msg"], parsed["event"], parsed["level"]) == (
        "breaker api",
        "transition",
        "info",
    )
    assert parsed["ts"].endswith("Z")


def test_a_token_in_the_query_string_is_blanked_in_access_lines() -> None:
    assert redact_query("/admin/breakers?x=1&Access_Token=s3cret") == (
        "/admin/breakers?x=1&Access_Token=[redacted]"
    )
    access = record('%s - "%s %s HTTP/%s" %d', "1.2.3.4", "GET", "/admin?token=s3cret", "1.1", 401)
    assert RedactTokens().filter(access)
    assert "s3cret" not in access.getMessage()


def test_a_response_cut_on_purpose_logs_no_traceback() -> None:
    try:
        raise BodyBrokenOff("cut")
    except BodyBrokenOff:
        cut = logging.LogRecord(
            "uvicorn.error", logging.ERROR, __file__, 1, "x", (), sys.exc_info()
        )
    assert not DropBrokenBodies().filter(cut)
    assert DropBrokenBodies().filter(record("anything else"))


def test_uvicorn_logs_through_the_json_formatter_at_the_chosen_level() -> None:
    config = log_config("warning")
    assert config["root"]["level"] == "WARNING"
    assert config["formatters"]["json"]["()"] is JsonFormatter
    assert "tokens" in config["loggers"]["uvicorn.access"]["filters"]
