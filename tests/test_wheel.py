"""The built wheel carries the Lua scripts and runs them from an installed copy."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parent.parent
PROBE = """
from breaker import CircuitBreaker
import breaker, importlib.resources
cb = CircuitBreaker("wheel-check", failure_threshold=1)
try:
    with cb:
        raise ConnectionError
except ConnectionError:
    pass
print(cb.snapshot().state, breaker.__file__, importlib.resources.files("breaker._lua"))
"""
CHECKOUT_PROBE = """
import breaker
from breaker import CircuitBreaker
cb = CircuitBreaker("checkout-check", failure_threshold=1)
try:
    with cb:
        raise ConnectionError
except ConnectionError:
    pass
print(cb.snapshot().state, breaker.__file__)
"""


def test_wheel_contains_the_scripts_and_runs_them_when_installed(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "dist"), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("fleetbreaker-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    lua = sorted(
        Path(n).name for n in names if n.startswith("breaker/_lua/") and n.endswith(".lua")
    )
    assert lua == sorted(path.name for path in (ROOT / "lua").glob("*.lua"))
    assert "breaker/py.typed" in names
    static = sorted(Path(n).name for n in names if n.startswith("app/static/"))
    assert static == sorted(path.name for path in (ROOT / "app" / "static").iterdir())

    venv.create(tmp_path / "venv", with_pip=True)
    python = tmp_path / "venv" / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(wheel)], check=True, capture_output=True
    )
    # Run from an empty folder, so that only the installed copy can be imported.
    result = subprocess.run(
        [str(python), "-c", PROBE], check=True, capture_output=True, text=True, cwd=tmp_path
    )
    state, module, scripts = result.stdout.split()
    assert state == "open"
    assert module.startswith(str(tmp_path / "venv"))
    assert scripts.startswith(str(tmp_path / "venv"))

    # From the repository's root the source tree comes first on sys.path and shadows
    # the installed copy: it must import and run all the same (its Lua is in lua/).
    result = subprocess.run(
        [str(python), "-c", CHECKOUT_PROBE], check=True, capture_output=True, text=True, cwd=ROOT
    )
    assert result.stdout.split() == ["open", str(ROOT / "breaker" / "__init__.py")]


def test_the_source_tree_imports_with_the_editable_install() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHECKOUT_PROBE], check=True, capture_output=True, text=True, cwd=ROOT
    )
    assert result.stdout.split() == ["open", str(ROOT / "breaker" / "__init__.py")]
