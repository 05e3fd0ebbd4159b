"""The Lua library: its contracts, loading as a FUNCTION library and as EVALSHA scripts
on every backend, versioning, and recovery from a flushed server."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import redis

from breaker import CircuitBreaker
from breaker._store.scripts import function_name, library_name, library_source, script_source
from breaker._types import SCRIPT_NAMES
from breaker.testing import ManualClock
from tests.conftest import Breakers, Harness
from tests.support.servers import RedisServer

LUA = Path(__file__).parent.parent / "lua"
SOURCE = (LUA / "fleetbreaker.lua").read_text()


def test_the_library_is_the_one_lua_file() -> None:
    assert {path.name for path in LUA.glob("*.lua")} == {"fleetbreaker.lua"}


@pytest.mark.parametrize("operation", SCRIPT_NAMES)
def test_every_operation_opens_with_its_contract_and_is_registered(operation: str) -> None:
    before, found, _ = SOURCE.partition(f"local function {operation}(keys, args)")
    assert found, f"no function {operation}"
    header = before.rstrip("\n").rsplit("\n\n", 1)[-1]
    assert all(line.startswith("--") for line in header.splitlines()), "contract missing"
    assert re.search(r"verdict", header), "the contract names no verdict"
    assert f"fb_VERSION_{operation}" in SOURCE


def test_the_library_loads_as_functions_on_every_backend(harness: Harness) -> None:
    loaded = harness.raw.function_load(library_source(), replace=True)
    names = set(loaded.values()) if isinstance(loaded, dict) else {loaded}  # a Cluster's nodes
    assert names <= {library_name(), library_name().encode()}


@pytest.mark.parametrize("operation", SCRIPT_NAMES)
def test_every_operation_loads_as_a_script_on_every_backend(
    harness: Harness, operation: str
) -> None:
    sha = harness.raw.script_load(script_source(operation))
    assert harness.raw.script_exists(sha) == [True]


def test_a_flushed_server_costs_a_reload_not_an_error(
    breakers: Breakers, redis_server: RedisServer
) -> None:
    """On a server of the test's own: FUNCTION FLUSH empties every db's libraries."""
    client = redis_server.client()
    cb = breakers("p", redis=client, failure_threshold=2)
    with cb:
        pass
    client.function_flush()
    client.flushall()  # the settings too: the next call must send them again
    with pytest.raises(RuntimeError), cb:
        raise RuntimeError
    assert cb.snapshot().failures == 1


def test_each_version_runs_under_names_of_its_own(sync_redis: redis.Redis) -> None:
    """Two versions of fleetbreaker in one fleet (a rolling deploy) never run each
    other's code: a library of another version is loaded beside this one."""
    other = (
        library_source()
        .replace(library_name(), "fleetbreaker_0ther0ne")
        .replace(function_name("record").removesuffix("_record"), "fb_0ther0ne")
    )
    sync_redis.function_load(library_source(), replace=True)
    sync_redis.function_load(other, replace=True)
    try:
        names = {
            dict(zip(entry[::2], entry[1::2], strict=True))[b"library_name"]
            for entry in sync_redis.function_list()
        }
        assert {library_name().encode(), b"fleetbreaker_0ther0ne"} <= names
    finally:
        sync_redis.function_delete("fleetbreaker_0ther0ne")


def test_auto_runs_scripts_where_an_acl_refuses_functions(
    breakers: Breakers, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    admin = redis_server.client()
    admin.acl_setuser(
        "nofunctions",
        enabled=True,
        nopass=True,
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-fcall", "-function"],
    )
    client = redis.Redis(port=redis_server.port, username="nofunctions")
    cb = breakers("p", redis=client, clock=ManualClock(), failure_threshold=1)
    with pytest.raises(ConnectionError), cb:
        raise ConnectionError
    assert cb.snapshot().state == "open"
    assert redis_server.command_calls().get("evalsha", 0) > 0
    assert [r.message for r in caplog.records if "refuses FUNCTION" in r.message] != []
    admin.close()


def test_functions_mode_refuses_nothing_it_can_run(
    breakers: Breakers, sync_redis: redis.Redis
) -> None:
    cb = breakers("p", redis=sync_redis, script_mode="functions")
    with cb:
        pass
    assert cb.snapshot().window_calls == 1
    assert isinstance(cb, CircuitBreaker)
