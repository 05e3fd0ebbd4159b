"""The built wheel carries the Lua scripts and runs them from an installed copy, and
its gateway is the package ``fleetbreaker``: a user's own ``app`` package, next to it,
is never imported in its place. Installed without the ``gateway`` extra, it is the
library: the embedded backend and the CLI's Redis commands work, FastAPI is not there,
and ``serve`` says in one line what to install."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.localfleet.services import http_ok
from tests.conftest import Breakers
from tests.support.ports import free_port
from tests.support.servers import RedisServer
from tests.test_cli import tripped

# It builds in the checkout's build/, as scripts/setup --run (test_examples) does.
pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.xdist_group("build")]

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
# The library alone, without Redis: the embedded backend (fakeredis and lupa).
LIBRARY_PROBE = """
import importlib.util
from breaker import CircuitBreaker
cb = CircuitBreaker("library-only", failure_threshold=1)
try:
    with cb:
        raise ConnectionError
except ConnectionError:
    pass
print(cb.snapshot().state, importlib.util.find_spec("fastapi") is None)
"""
GATEWAY_HINT = (
    "fleetbreaker: fleetbreaker serve needs the gateway extra: "
    "pip install 'fleetbreaker[gateway]' (from a clone, as it is on no package index: "
    "pip install '.[gateway]')\n"
)
# A user's project with a package of its own named app, as many have.
USERS_APP = 'raise SystemExit("the user\'s own app was imported")\n'
_TIMEOUT = 60


@dataclass
class Installed:
    wheel: Path
    venv: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def fleetbreaker(self) -> Path:
        return self.venv / "bin" / "fleetbreaker"


def _uv(*arguments: str) -> None:
    """Run the checkout's pinned uv (``./scripts/setup`` installs it in ``.tools/``).

    uv, not pip, builds and installs here: the same wheel and the same resolution of
    its metadata, from uv's cache, in a second or two where ``python -m build`` and
    pip took a minute; what is checked is the wheel, not the installer."""
    uv = ROOT / ".tools" / "bin" / "uv"
    if not uv.is_file():
        pytest.fail("no .tools/bin/uv: run ./scripts/setup first")
    environ = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}
    result = subprocess.run(
        [str(uv), *arguments], capture_output=True, text=True, env=environ, timeout=300
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from this checkout."""
    where = tmp_path_factory.mktemp("dist")
    # setuptools builds in ./build and would ship what an older build left there (a
    # module since moved, say), as scripts/setup --run knows too.
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    _uv("build", "--quiet", "--wheel", "--out-dir", str(where), str(ROOT))
    (built,) = where.glob("fleetbreaker-*.whl")
    return built


def _install(wheel: Path, where: Path, requirement: str) -> Installed:
    """``requirement`` (the wheel, with or without extras) in a venv of its own."""
    _uv("venv", "--quiet", "--python", sys.executable, str(where))
    installed = Installed(wheel, where)
    _uv("pip", "install", "--quiet", "--python", str(installed.python), requirement)
    return installed


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel with the gateway extra, as ``./scripts/run`` and the image install it."""
    return _install(wheel, tmp_path_factory.mktemp("venv"), f"{wheel}[gateway]")


@pytest.fixture(scope="module")
def library_only(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel alone: ``pip install fleetbreaker``, no extra."""
    return _install(wheel, tmp_path_factory.mktemp("venv"), str(wheel))


@pytest.fixture
def users_project(tmp_path: Path) -> Path:
    """A folder holding a package ``app`` of the user's own that fails on import."""
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__init__.py").write_text(USERS_APP)
    (tmp_path / "app" / "main.py").write_text(USERS_APP)
    (tmp_path / "app" / "cli.py").write_text(USERS_APP)
    return tmp_path


def test_wheel_contains_the_scripts_and_runs_them_when_installed(
    installed: Installed, tmp_path: Path
) -> None:
    names = zipfile.ZipFile(installed.wheel).namelist()
    lua = sorted(
        Path(n).name for n in names if n.startswith("breaker/_lua/") and n.endswith(".lua")
    )
    assert lua == sorted(path.name for path in (ROOT / "lua").glob("*.lua"))
    assert "breaker/py.typed" in names
    static = sorted(Path(n).name for n in names if n.startswith("fleetbreaker/admin/static/"))
    assert static == sorted(path.name for path in (ROOT / "app" / "admin" / "static").iterdir())

    # Run from an empty folder, so that only the installed copy can be imported.
    result = subprocess.run(
        [str(installed.python), "-c", PROBE],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    state, module, scripts = result.stdout.split()
    assert state == "open"
    assert module.startswith(str(installed.venv))
    assert scripts.startswith(str(installed.venv))

    # From the repository's root the source tree comes first on sys.path and shadows
    # the installed copy: it must import and run all the same (its Lua is in lua/).
    result = subprocess.run(
        [str(installed.python), "-c", CHECKOUT_PROBE],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.stdout.split() == ["open", str(ROOT / "breaker" / "__init__.py")]


def test_the_wheel_installs_the_gateway_as_fleetbreaker_and_no_top_level_app(
    installed: Installed,
) -> None:
    names = zipfile.ZipFile(installed.wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"breaker", "fleetbreaker"}
    # Every module of every part of app/ (a subpackage missing from pyproject.toml's
    # list would be left out).
    gateway = {n for n in names if n.startswith("fleetbreaker/") and n.endswith(".py")}
    source = ROOT / "app"
    assert gateway == {f"fleetbreaker/{path.relative_to(source)}" for path in source.rglob("*.py")}
    library = {
        n for n in names if n.startswith("breaker/") and n.endswith(".py") and "/_lua/" not in n
    }
    source = ROOT / "breaker"
    assert library == {f"breaker/{path.relative_to(source)}" for path in source.rglob("*.py")}


@pytest.mark.parametrize("how", ["script", "module"])
def test_the_installed_cli_ignores_a_users_own_app_package(
    installed: Installed, users_project: Path, how: str
) -> None:
    command = (
        [str(installed.fleetbreaker)]
        if how == "script"
        else [str(installed.python), "-m", "fleetbreaker"]
    )
    result = subprocess.run(
        [*command, "serve", "--help"],
        capture_output=True,
        text=True,
        cwd=users_project,
        timeout=_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert "--workers" in result.stdout


@pytest.fixture
def served(installed: Installed, users_project: Path) -> Iterator[tuple[str, str]]:
    """``fleetbreaker serve --workers 2`` from the wheel, started in the user's project:
    each spawned worker imports the gateway by uvicorn's import string. Its proxy
    listener's URL and its admin listener's."""
    port, admin_port = free_port(), free_port()
    process = subprocess.Popen(
        [
            str(installed.fleetbreaker),
            "serve",
            "--port",
            str(port),
            "--admin-port",
            str(admin_port),
            "--workers",
            "2",
        ],
        cwd=users_project,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(users_project)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    admin = f"http://127.0.0.1:{admin_port}"
    deadline = time.monotonic() + _TIMEOUT
    try:
        while not (http_ok(f"{url}/healthz") and http_ok(f"{admin}/healthz")):
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        yield url, admin
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.communicate(timeout=_TIMEOUT)


def test_the_installed_gateway_serves_from_a_folder_with_a_users_app(
    served: tuple[str, str],
) -> None:
    proxy, admin = served
    assert http_ok(f"{proxy}/proxy/demo/hello")
    assert http_ok(f"{admin}/dashboard")  # its page, read from the installed package


def test_the_source_tree_imports_with_the_editable_install() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHECKOUT_PROBE], check=True, capture_output=True, text=True, cwd=ROOT
    )
    assert result.stdout.split() == ["open", str(ROOT / "breaker" / "__init__.py")]


def test_the_wheel_without_extras_runs_the_library_without_fastapi(
    library_only: Installed, tmp_path: Path
) -> None:
    result = subprocess.run(
        [str(library_only.python), "-c", LIBRARY_PROBE],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.stdout.split() == ["open", "True"]


def test_serve_without_the_gateway_extra_is_exit_2_naming_it_in_one_line(
    library_only: Installed, tmp_path: Path
) -> None:
    result = subprocess.run(
        [str(library_only.fleetbreaker), "serve"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=_TIMEOUT,
    )
    assert (result.returncode, result.stdout, result.stderr) == (2, "", GATEWAY_HINT)


def test_the_redis_commands_work_without_the_gateway_extra(
    library_only: Installed, breakers: Breakers, redis_server: RedisServer, tmp_path: Path
) -> None:
    cb = tripped(breakers, redis_server, "payments")
    environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    for command, shown in ((["status"], "payments  open"), (["reset", "payments"], "closed")):
        result = subprocess.run(
            [str(library_only.fleetbreaker), *command],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={**environ, "BREAKER_REDIS_URL": redis_server.url},
            timeout=_TIMEOUT,
        )
        assert result.returncode == 0, result.stderr
        assert shown in result.stdout
    assert cb.snapshot().state == "closed"
