"""The CLI's commands in this process (the fast lane): what they print and return.
``tests/test_cli.py`` runs the same console script as a user would."""

from __future__ import annotations

import argparse
import datetime
import json
from importlib import metadata

import pytest
import redis

import breaker
from app.cli import main
from app.cli.command import build_parser
from app.cli.exits import EXIT_OK, EXIT_USAGE
from app.cli.terminal import local_time, shown
from tests.conftest import Breakers

UTC_PLUS_2 = datetime.timezone(datetime.timedelta(hours=2))


def test_status_lists_the_breakers_in_redis_as_json(
    breakers: Breakers, sync_redis: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    breakers("orders", redis=sync_redis, failure_threshold=1).acquire().failure()
    assert main(["status", "--json", "--redis-url", redis_url]) == EXIT_OK
    [line] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (line["name"], line["state"], line["failures"]) == ("orders", "open", 1)


def test_reset_closes_the_breaker_with_its_stored_settings(
    breakers: Breakers, sync_redis: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cb = breakers("orders", redis=sync_redis, failure_threshold=1, key_ttl=90.0)
    cb.acquire().failure()
    assert main(["reset", "orders", "--redis-url", redis_url]) == EXIT_OK
    assert capsys.readouterr().out == "orders: closed\n"
    assert 0 < sync_redis.pttl("breaker:{orders}") <= 90_000


def test_an_unknown_name_is_a_usage_error(
    sync_redis: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["open", "nobody", "--redis-url", redis_url]) == EXIT_USAGE
    assert "no breaker named 'nobody'" in capsys.readouterr().err


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"fleetbreaker {metadata.version('fleetbreaker')}\n"
    assert breaker.__version__ == metadata.version("fleetbreaker")


def _commands() -> dict[str, argparse.ArgumentParser]:
    [commands] = [
        action
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    ]
    return dict(commands.choices)


@pytest.mark.parametrize("command", sorted(_commands()))
def test_every_option_of_every_command_has_help_and_shows_its_default(command: str) -> None:
    parser = _commands()[command]
    text = " ".join(parser.format_help().split())
    assert parser.description
    for action in parser._actions:
        assert action.help, f"{command} {action.dest}: no help text"
        if action.default not in (None, False, argparse.SUPPRESS):
            assert f"(default: {action.default})" in text, f"{command} {action.dest}"


def test_a_redis_command_without_redis_says_where_the_demos_breakers_are(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("BREAKER_REDIS_URL", raising=False)
    assert main(["status"]) == EXIT_USAGE
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("fleetbreaker: no Redis to talk to: pass --redis-url")
    assert "inside its own process" in line
    assert "BREAKER_REDIS_URL=redis://127.0.0.1:6379/1" in line


def test_watch_times_are_iso_8601_in_the_local_zone() -> None:
    assert local_time(1795962693548, UTC_PLUS_2) == "2026-11-29T16:31:33.548+02:00"
    assert datetime.datetime.fromisoformat(local_time(0)).tzinfo is not None


@pytest.mark.parametrize(
    ("raw", "printed"),
    [
        ("payments", "payments"),
        ("café ünïcode", "café ünïcode"),  # printable: as it is
        ("a\x1b[2Jb", r"a\x1b[2Jb"),  # ESC: a CSI that clears the screen
        ("a\x1b]0;t\x07", r"a\x1b]0;t\x07"),  # an OSC that retitles the window
        ("a\nb\r\t", r"a\nb\r\t"),
        ("a\x9bb\x7f", r"a\x9bb\x7f"),  # a C1 control (CSI in one byte), DEL
        ("a\u202eb\u2066\u200b", r"a\u202eb\u2066\u200b"),  # bidi, zero-width
        ("a\u2028b\xa0", r"a\u2028b\xa0"),  # a line separator, a no-break space
        ("a\U000e0041", r"a\U000e0041"),  # a tag character
        ("a\\x1b", r"a\\x1b"),  # a backslash: never mistaken for an escape
    ],
)
def test_shown_escapes_what_a_terminal_would_act_on(raw: str, printed: str) -> None:
    assert shown(raw) == printed
