"""The Lua files: header contracts, loading on every backend, and the NOSCRIPT path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from breaker._scripts import script_source
from breaker._types import SCRIPT_NAMES
from tests.conftest import Harness

LUA = Path(__file__).parent.parent / "lua"


def test_every_lua_file_is_a_registered_script_or_the_prelude() -> None:
    on_disk = {path.stem for path in LUA.glob("*.lua")}
    assert on_disk == {*SCRIPT_NAMES, "_prelude"}


@pytest.mark.parametrize("script", SCRIPT_NAMES)
def test_every_script_opens_with_its_contract(script: str) -> None:
    header = (LUA / f"{script}.lua").read_text().split("\n\n")[0:3]
    text = "\n".join(header)
    assert re.search(r"^-- KEYS", text, re.MULTILINE), "KEYS contract missing"
    assert re.search(r"^--.*ARGV\[", text, re.MULTILINE), "ARGV contract missing"
    assert re.search(r"^-- returns:", text, re.MULTILINE), "returns contract missing"


@pytest.mark.parametrize("script", SCRIPT_NAMES)
def test_every_script_loads_on_every_backend(harness: Harness, script: str) -> None:
    sha = harness.raw.script_load(script_source(script))
    assert harness.raw.script_exists(sha) == [True]


def test_a_flushed_script_cache_costs_a_reload_not_an_error(harness: Harness) -> None:
    cb = harness.breaker(failure_threshold=2)
    with cb:
        pass
    harness.raw.script_flush()
    with pytest.raises(RuntimeError), cb:
        raise RuntimeError
    assert cb.snapshot().failures == 1
