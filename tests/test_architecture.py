"""The shape of the library, held: no import cycles, a short facade, httpx in one
module, none of the gateway's dependencies, nothing of the test helpers in production
code, and every thread and task stopped by ``close``."""

from __future__ import annotations

import ast
import asyncio
import functools
import re
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import httpx
import redis
import redis.asyncio as aioredis

from breaker import CircuitBreaker, ResilientTransport, SyncResilientTransport

ROOT = Path(__file__).parent.parent
LIBRARY = ROOT / "breaker"


ARCHITECTURE = ROOT / "docs" / "architecture.md"
#: The largest a module may grow, and how many modules breaker/'s top may hold.
MAX_LINES = 450
MAX_TOP_MODULES = 20


def _module_name(path: Path, root: Path) -> str:
    """``_store.backend`` for breaker/_store/backend.py; a package by its own name,
    the root's ``__init__`` as ``__init__``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


@functools.cache
def _modules(root: Path) -> dict[str, Path]:
    """Every module under ``root`` by its dotted name (read once: each file's imports
    are matched against it)."""
    return {_module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def _imports(path: Path, root: Path) -> set[str]:
    """The modules of ``root``'s package that ``path`` imports at run time, wherever
    the import stands (a function-level import is a run-time edge too); TYPE_CHECKING
    blocks excluded."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and ast.unparse(block.test).endswith("TYPE_CHECKING")
        for statement in block.body
        for node in ast.walk(statement)
    }
    package = list(path.relative_to(root).parent.parts)
    top = root.name if root.name != "app" else "fleetbreaker"
    known = _modules(root)
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped or not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package[: len(package) - (node.level - 1)]
            target = [*base, *(node.module.split(".") if node.module else [])]
            names = [".".join([*target, alias.name]) for alias in node.names]
        elif node.module and node.module.split(".")[0] in (root.name, top):
            target = node.module.split(".")[1:]
            names = [".".join([*target, alias.name]) for alias in node.names]
        else:
            continue
        # ``from . import demo`` names a module; ``from .x import y`` names y of x.
        found |= {name for name in names if name in known}
        if ".".join(target) in known:
            found.add(".".join(target))
    return found


def _drawing(name: str) -> list[tuple[str, list[str]]]:
    """The layers of the ``layers <name>`` block of docs/architecture.md, lowest
    first: (layer, the modules it names; ``pkg.*`` is every module of pkg)."""
    text = ARCHITECTURE.read_text()
    found = re.search(rf"```layers {name}\n(.*?)```", text, re.DOTALL)
    assert found is not None, f"docs/architecture.md draws no layers for {name}"
    layers = []
    for line in found[1].strip().splitlines():
        layer, _, members = line.partition(":")
        layers.append((layer.strip(), members.split()))
    return layers[::-1]


def _layer_of(name: str, root: Path) -> dict[str, int]:
    """Every module of ``root`` by the number of its layer (0 the lowest); each in
    exactly one, and every name drawn is a module."""
    modules = _modules(root)
    layer_of: dict[str, int] = {}
    for number, (layer, members) in enumerate(_drawing(name)):
        for member in members:
            if member.endswith(".*"):
                package = member[:-2]
                matched = [m for m in modules if m == package or m.startswith(package + ".")]
            else:
                matched = [member] if member in modules else []
            assert matched, f"the {name} drawing's layer {layer!r} names {member}: no module"
            for module in matched:
                assert module not in layer_of, f"{module} is drawn in two layers"
                layer_of[module] = number
    assert set(modules) - set(layer_of) == set(), "modules the drawing leaves out"
    return layer_of


def _package_of(module: str) -> str:
    return module.split(".")[0]


def test_every_library_module_imports_only_its_layer_and_those_below() -> None:
    layer_of = _layer_of("breaker", LIBRARY)
    upward = [
        f"{module} -> {imported}"
        for module, path in _modules(LIBRARY).items()
        for imported in sorted(_imports(path, LIBRARY))
        if layer_of[imported] > layer_of[module]
    ]
    assert upward == []


def test_every_gateway_package_imports_only_the_packages_drawn_below_it() -> None:
    gateway = ROOT / "app"
    drawn = {
        member: number for number, (_, members) in enumerate(_drawing("app")) for member in members
    }
    modules = _modules(gateway)
    assert {_package_of(module) for module in modules} == set(drawn)
    upward = sorted(
        {
            f"{_package_of(module)} -> {_package_of(imported)}"
            for module, path in modules.items()
            for imported in _imports(path, gateway)
            if drawn[_package_of(imported)] > drawn[_package_of(module)]
        }
    )
    assert upward == []


def test_no_module_is_over_450_lines_and_the_librarys_top_holds_at_most_20() -> None:
    long = {
        str(path.relative_to(ROOT)): lines
        for folder in ("breaker", "app")
        for path in (ROOT / folder).rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
    assert len(list(LIBRARY.glob("*.py"))) <= MAX_TOP_MODULES


def test_no_import_cycle_among_the_library_modules() -> None:
    graph = {module: _imports(path, LIBRARY) for module, path in _modules(LIBRARY).items()}
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(graph.get(module, ())):
            assert state.get(imported) != "open", f"import cycle: {[*trail, imported]}"
            if imported not in state:
                visit(imported, [*trail, imported])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_importing_the_library_loads_no_embedded_backend_until_one_is_used() -> None:
    probe = "import sys, breaker; print('fakeredis' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, cwd=ROOT
    )
    assert result.stdout.split() == ["False"]


def test_circuit_breaker_is_a_short_facade() -> None:
    tree = ast.parse((LIBRARY / "_breaker.py").read_text())
    [facade] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "CircuitBreaker"]
    assert facade.end_lineno is not None
    assert facade.end_lineno - facade.lineno + 1 <= 250


def test_only_the_http_integrations_import_httpx() -> None:
    importers = {
        path.name
        for path in LIBRARY.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if (isinstance(node, ast.Import) and any(a.name == "httpx" for a in node.names))
        or (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("httpx"))
    }
    # The transports and their response bodies; the one builder of an upstream's client
    # (the gateway's and the FastAPI lifespan's); fastapi.py, whose dependencies hand
    # those clients out.
    assert importers == {"_transport.py", "_bodies.py", "_upstreams.py", "fastapi.py"}


def _gateway_modules() -> set[str]:
    """What the gateway extra installs, as import names, and what FastAPI and
    pydantic-settings are built on."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {
        re.split(r"[\[<>=!~;\s]", requirement, maxsplit=1)[0].replace("-", "_")
        for requirement in extras["optional-dependencies"]["gateway"]
    }
    return names | {"pydantic", "starlette"}


def _imported_packages(path: Path) -> set[str]:
    """The top-level packages ``path`` imports, wherever the import stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_the_library_imports_no_gateway_dependency_but_its_fastapi_integration() -> None:
    # breaker.fastapi is the fastapi extra's, and imports FastAPI and its Starlette only.
    allowed = {"fastapi.py": {"fastapi", "starlette"}}
    gateway = _gateway_modules()
    assert {"fastapi", "pydantic_settings", "prometheus_client", "uvicorn"} <= gateway
    found = {
        path.name: used
        for path in LIBRARY.rglob("*.py")
        if (used := (_imported_packages(path) & gateway) - allowed.get(path.name, set()))
    }
    assert found == {}


def test_the_library_and_the_clis_redis_commands_load_no_gateway_dependency() -> None:
    # A fresh interpreter: this one has imported the gateway for other tests.
    probe = (
        "import sys, breaker, breaker.testing, app.cli\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, cwd=ROOT
    )
    assert set(result.stdout.split()) & _gateway_modules() == set()


def test_production_code_imports_nothing_of_the_test_helpers() -> None:
    def from_testing(node: ast.AST) -> bool:
        if not isinstance(node, ast.ImportFrom):
            return False
        return node.module == "breaker.testing" or (node.level == 1 and node.module == "testing")

    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("breaker", "app")
        for path in (ROOT / folder).rglob("*.py")
        if path.name != "testing.py"
        and any(from_testing(node) for node in ast.walk(ast.parse(path.read_text())))
    ]
    assert offenders == []


def _ours() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("fleetbreaker-")}


def test_close_stops_the_events_thread_once_no_breaker_needs_it(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    before = _ours()
    first = CircuitBreaker("lifetime-a", redis=client)
    second = CircuitBreaker("lifetime-b", redis=client)
    assert first.follow_events(timeout=5.0)
    second.follow_events(timeout=5.0)
    assert len(_ours() - before) == 1  # one follower per client, shared
    first.close()
    assert len(_ours() - before) == 1  # the other breaker still hears events
    second.close()
    assert _ours() - before == set()
    first.close()  # idempotent
    client.close()


def test_a_closed_breaker_leaves_nothing_in_the_hubs_it_heard(redis_url: str) -> None:
    """Names come and go (a transport's origins): a hub that kept each closed
    breaker's name and ticks would grow for as long as the process lives."""
    client = redis.Redis.from_url(redis_url)
    staying = CircuitBreaker("staying", redis=client, batch_interval=1.0)
    hub, local_hub = staying._engine._hubs.values()
    ticks = len(hub._ticks)
    for number in range(20):
        CircuitBreaker(f"passing-{number}", redis=client, batch_interval=1.0).close()
    heard = {*hub._receivers, *local_hub._receivers}  # the fallback's hub is process-wide
    assert "staying" in heard
    assert [name for name in heard if name.startswith("passing-")] == []
    assert len(hub._ticks) == ticks
    staying.close()
    client.close()


def test_aclose_ends_the_events_task(redis_url: str) -> None:
    async def scenario() -> set[asyncio.Task[object]]:
        client = aioredis.Redis.from_url(redis_url)
        cb = CircuitBreaker("lifetime-async", redis=client)
        cb.follow_events()
        await asyncio.sleep(0.05)
        assert any("events" in task.get_name() for task in asyncio.all_tasks())
        await cb.aclose()
        await client.aclose()
        return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}

    assert asyncio.run(scenario()) == set()


def test_a_transport_closes_the_breakers_it_made(redis_url: str) -> None:
    before = _ours()
    client = redis.Redis.from_url(redis_url)
    transport = SyncResilientTransport(
        httpx.MockTransport(lambda request: httpx.Response(200)), redis=client
    )
    with httpx.Client(transport=transport) as http:
        assert http.get("http://one.test/").status_code == 200
        assert http.get("http://two.test/").status_code == 200
        assert _ours() - before
    assert _ours() - before == set()
    client.close()

    async def scenario() -> None:
        aclient = aioredis.Redis.from_url(redis_url)
        inner = httpx.MockTransport(lambda request: httpx.Response(200))
        async with httpx.AsyncClient(transport=ResilientTransport(inner, redis=aclient)) as http:
            assert (await http.get("http://one.test/")).status_code == 200
        await aclient.aclose()
        assert {t for t in asyncio.all_tasks() if t is not asyncio.current_task()} == set()

    asyncio.run(scenario())
