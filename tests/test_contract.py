"""The lists of names that Python and Lua each keep, tied: a setting, a default or a
reply field added in one place fails here until it is added everywhere.

The settings are named in ``BreakerConfig`` (with their defaults), ``BreakerSettings``
(the keywords), ``Wired.of`` (what is stored with the breaker) and the library's
``SETTINGS`` and ``DEFAULTS``; the reply layout in the library's ``REPLY`` and in
``REPLY_FIELDS``, which ``decode_reply`` reads by name into ``Reply``.
"""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path
from typing import Any, get_type_hints

from breaker import BreakerConfig, BreakerSettings
from breaker._bulkhead.wire import SLOTS_REPLY, BulkheadSnapshot
from breaker._store.local import LocalEngine
from breaker._store.wire import REPLY_FIELDS, Reply, Wired, decode_reply, snapshot_args

LIBRARY = (Path(__file__).parent.parent / "lua" / "fleetbreaker.lua").read_text()

#: What the library stores that no ``BreakerConfig`` field is by that name: the
#: breaker's name, its channel, and the window as a number of buckets.
STORED_ONLY = {"name", "channel", "buckets"}
#: The settings that stay in the process: how it classifies outcomes and talks to
#: Redis, and ``window`` (stored as ``buckets``). Every other field is stored.
PROCESS_ONLY = {
    "window",
    "record_exceptions",
    "ignore_exceptions",
    "failure_predicate",
    "on_backend_error",
    "backend_timeout",
    "script_mode",
    "batch_interval",
    "voter",
    "prefix",
}


def lua_table(name: str) -> str:
    """The body of ``local NAME = { ... }`` in the library."""
    found = re.search(rf"^local {name} = \{{(.*?)^\}}", LIBRARY, re.MULTILINE | re.DOTALL)
    assert found, f"the library declares no table {name}"
    return found.group(1)


def lua_list(name: str) -> list[str]:
    return re.findall(r"'(\w+)'", lua_table(name))


def lua_defaults() -> dict[str, Any]:
    pairs = re.findall(r"(\w+) = ('[^']*'|[-\d.]+)", lua_table("DEFAULTS"))
    return {key: text.strip("'") if text.startswith("'") else float(text) for key, text in pairs}


def test_every_breaker_config_field_is_a_keyword_setting() -> None:
    assert list(get_type_hints(BreakerSettings)) == [f.name for f in fields(BreakerConfig)]


#: Settings left out of the payload at their default (the library stores the default
#: for them), so that a breaker without them keeps the digest it had before them.
LEFT_OUT_AT_DEFAULT = {"quorum": 1.0}


def test_python_and_lua_name_the_same_stored_settings() -> None:
    stored = list(json.loads(Wired.of(BreakerConfig(quorum=2), "p").payload))
    assert set(stored) - set(json.loads(Wired.of(BreakerConfig(), "p").payload)) == set(
        LEFT_OUT_AT_DEFAULT
    )
    config = {f.name for f in fields(BreakerConfig)}
    assert sorted(lua_list("SETTINGS")) == sorted(stored)
    assert sorted(lua_defaults()) == sorted(stored)
    # A new field of BreakerConfig is stored, or named here as the process's own.
    assert config - PROCESS_ONLY == set(stored) - STORED_ONLY
    assert config >= PROCESS_ONLY


def test_the_library_defaults_are_breaker_configs() -> None:
    """A breaker whose hash lost its settings runs with the library's defaults: they
    are the ones a process with a default ``BreakerConfig`` would store."""
    stored = json.loads(Wired.of(BreakerConfig(), "", channel="").payload)
    stored.update(LEFT_OUT_AT_DEFAULT)
    texts = ("name", "channel")
    assert {key: v if key in texts else float(v) for key, v in stored.items()} == lua_defaults()


def test_lua_and_python_lay_replies_out_alike() -> None:
    assert lua_list("REPLY") == list(REPLY_FIELDS)
    assert [f.name for f in fields(Reply)] == [*REPLY_FIELDS, "events"]


def test_every_reply_is_built_from_the_one_layout() -> None:
    """No operation lists a reply's fields itself: each answers through ``as_reply``."""
    builders = re.findall(r"as_reply\(\{", LIBRARY)
    # reply, unconfigured, record_fast; the bulkhead's slots_end and occupancy
    assert len(builders) == 5
    assert not re.search(r"return \{\s*'", LIBRARY), "a reply built by position"


def test_lua_and_python_lay_bulkhead_replies_out_alike() -> None:
    assert lua_list("SLOTS_REPLY") == list(SLOTS_REPLY)
    assert [f.name for f in fields(BulkheadSnapshot)] == list(SLOTS_REPLY)
    assert LIBRARY.count("}, {}, SLOTS_REPLY)") == 2  # slots_end, occupancy


def test_a_reply_decodes_field_by_field() -> None:
    keys = ["b:{x}", "b:{x}:window", "b:{x}:leases"]
    raw = LocalEngine().run("snapshot", keys, snapshot_args(1_000))
    reply = decode_reply(raw)
    assert len(raw) == len(REPLY_FIELDS)
    assert (reply.verdict, reply.state, reply.now, reply.digest) == ("snapshot", "closed", 1000, "")
