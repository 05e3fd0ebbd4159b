"""One name for the Redis URL, ``BREAKER_REDIS_URL``: the gateway and the CLI read it,
and so do the example app, the tests' conftest and scripts/test. ``REDIS_URL``, the old
name of the last three, still works and says it is deprecated."""

from __future__ import annotations

import os
import subprocess
import warnings
from pathlib import Path

import pytest

from examples.fastapi_app import redis_url_of
from tests.conftest import redis_url_for_tests

ROOT = Path(__file__).parent.parent


def test_the_example_reads_its_redis_from_breaker_redis_url() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        url = redis_url_of({"BREAKER_REDIS_URL": "redis://r:6379/4", "REDIS_URL": "redis://x/5"})
    assert url == "redis://r:6379/4"


def test_the_example_still_reads_redis_url_with_a_deprecation_warning() -> None:
    with pytest.warns(DeprecationWarning, match="REDIS_URL is deprecated: set BREAKER_REDIS_URL"):
        url = redis_url_of({"REDIS_URL": "redis://r:6379/4"})
    assert url == "redis://r:6379/4"


def test_the_example_keeps_off_db_0_by_default() -> None:
    assert redis_url_of({}) == "redis://127.0.0.1:6379/1"


def test_the_tests_redis_is_named_by_breaker_redis_url() -> None:
    url, notice = redis_url_for_tests(
        {"BREAKER_REDIS_URL": "redis://r:1", "REDIS_URL": "redis://x:2"}
    )
    assert (url, notice) == ("redis://r:1", None)


def test_the_tests_still_read_redis_url_and_say_it_is_deprecated() -> None:
    url, notice = redis_url_for_tests({"REDIS_URL": "redis://x:2"})
    assert url == "redis://x:2"
    assert notice == "REDIS_URL is deprecated for the tests' Redis: set BREAKER_REDIS_URL"


def test_no_test_inherits_the_redis_url_for_tests() -> None:
    """A gateway or CLI a test starts with the test's environment must not reach db 0
    of the tests' server."""
    assert "BREAKER_REDIS_URL" not in os.environ


@pytest.mark.slow  # it runs scripts/test, which stops at its bad lane before any setup
def test_scripts_test_still_reads_redis_url_and_says_so_in_one_line() -> None:
    environ = {k: v for k, v in os.environ.items() if k != "BREAKER_REDIS_URL"}
    result = subprocess.run(
        [str(ROOT / "scripts" / "test"), "--lane", "none"],
        env={**environ, "REDIS_URL": "redis://127.0.0.1:6390"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "scripts/test: REDIS_URL is deprecated: set BREAKER_REDIS_URL "
        "(using redis://127.0.0.1:6390)",
        "scripts/test: --lane takes fast, default, e2e or faults",
    ]
