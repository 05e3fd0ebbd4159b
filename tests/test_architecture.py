"""The shape of the library, held: no import cycles, a short facade, httpx in one
module, none of the gateway's dependencies, nothing of the test helpers in production
code, and every thread and task stopped by ``close``."""

from __future__ import annotations

import ast
import asyncio
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


def _imports(path: Path) -> set[str]:
    """The library modules ``path`` imports at run time, wherever the import stands
    (a function-level import is a run-time edge too); TYPE_CHECKING blocks excluded."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and ast.unparse(block.test).endswith("TYPE_CHECKING")
        for statement in block.body
        for node in ast.walk(statement)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            found.add(node.module.split(".")[0])
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("breaker."):
            found.add(node.module.split(".")[1])
    return found


def test_no_import_cycle_among_the_library_modules() -> None:
    graph = {path.stem: _imports(path) for path in LIBRARY.glob("*.py")}
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


def test_circuit_breaker_is_a_short_facade() -> None:
    tree = ast.parse((LIBRARY / "_breaker.py").read_text())
    [facade] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "CircuitBreaker"]
    assert facade.end_lineno is not None
    assert facade.end_lineno - facade.lineno + 1 <= 250


def test_only_the_http_integrations_import_httpx() -> None:
    importers = {
        path.name
        for path in LIBRARY.glob("*.py")
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
        for path in LIBRARY.glob("*.py")
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
