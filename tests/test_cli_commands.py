"""The CLI's commands in this process (the fast lane): what they print and return.
``tests/test_cli.py`` runs the same console script as a user would."""

from __future__ import annotations

import json

import pytest
import redis

from app.cli import EXIT_OK, EXIT_USAGE, main
from tests.conftest import Breakers


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
