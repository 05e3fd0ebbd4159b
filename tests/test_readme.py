"""Every Python block of the README and of the docs site (docs/**/*.md) runs as
written, saved as a file: only the Redis URL (the examples' db 1, rewritten to the
test db) and the demo upstream's address are rewritten. A block that two pages show
alike (the README's quickstarts are the docs' too) runs once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from app import load_config
from app.localfleet.services import http_ok
from tests.support.ports import free_port
from tests.support.upstream import Reply, Upstream

pytestmark = pytest.mark.slow  # it runs processes

ROOT = Path(__file__).parent.parent
#: The pages whose blocks are examples: the README, then the docs site's own pages
#: (the hook's folder is code, not a page).
PAGES = [
    ROOT / "README.md",
    *sorted(path for path in (ROOT / "docs").rglob("*.md") if "hooks" not in path.parts),
]
TEXTS = {path.relative_to(ROOT).as_posix(): path.read_text() for path in PAGES}
BENCHMARKS = (ROOT / "BENCHMARKS.md").read_text()
#: Where every example keeps its breakers: db 1 of the default Redis, never db 0.
EXAMPLE_REDIS_URL = "redis://127.0.0.1:6379/1"
DEMO_UPSTREAM = "http://127.0.0.1:9000"
_TIMEOUT = 60


@dataclass(frozen=True)
class Block:
    """One fenced block: the page it is first shown on, its number there, its source."""

    page: str
    number: int
    source: str

    @property
    def name(self) -> str:
        return f"{self.page}:{self.number}"


def blocks_of(language: str) -> list[Block]:
    """Every ``language`` block of every page, each source once (its first page)."""
    found: dict[str, Block] = {}
    for page, text in TEXTS.items():
        pattern = rf"```{language}\n(.*?)```"
        for number, source in enumerate(re.findall(pattern, text, re.DOTALL), start=1):
            found.setdefault(source, Block(page, number, source))
    return list(found.values())


BLOCKS = blocks_of("python")
TOMLS = blocks_of("toml")


def block_of(words: str) -> Block:
    """The one Python block that holds ``words``."""
    [block] = [block for block in BLOCKS if words in block.source]
    return block


def shown(pattern: str) -> re.Match[str]:
    """The one match of ``pattern`` on any page."""
    [match] = [m for text in TEXTS.values() for m in re.finditer(pattern, text, re.DOTALL)]
    return match


def save_block(tmp_path: Path, block: Block, redis_url: str, upstream: Upstream, name: str) -> Path:
    source = block.source.replace(EXAMPLE_REDIS_URL, redis_url)
    source = source.replace(DEMO_UPSTREAM, upstream.url)
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    return path


def run_block(
    tmp_path: Path, block: Block, redis_url: str, upstream: Upstream
) -> subprocess.CompletedProcess[str]:
    path = save_block(tmp_path, block, redis_url, upstream, "block")
    return subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=_TIMEOUT, cwd=tmp_path
    )


def test_the_pages_have_the_blocks_these_tests_expect() -> None:
    assert len(BLOCKS) == 11
    assert len(TOMLS) == 3


def test_every_python_block_keeps_its_breakers_on_db_1() -> None:
    assert all(f'"{EXAMPLE_REDIS_URL}"' in block.source for block in BLOCKS)


#: The one db 0 a block may name: the redis-server that ``fleetbreaker fleet`` starts
#: for itself (the line it prints), which holds nothing but the fleet's breakers.
_OWN_SERVER = "redis://127.0.0.1:<port>/0"


def test_no_block_of_any_page_names_db_0_of_a_redis() -> None:
    on_db_0 = re.compile(r"rediss?(\+\w+)?://[^\s'\"`]*/0\b")
    for page, text in TEXTS.items():
        for block in re.findall(r"```\w*\n(.*?)```", text, re.DOTALL):
            found = on_db_0.search(block.replace(_OWN_SERVER, ""))
            assert found is None, f"{page}: {found}"


def test_the_readme_shows_only_blocks_the_docs_show_too() -> None:
    """The README's quickstarts are the docs', word for word: one text to keep."""
    docs = "\n".join(text for page, text in TEXTS.items() if page != "README.md")
    readme = re.findall(r"```python\n(.*?)```", TEXTS["README.md"], re.DOTALL)
    assert readme
    assert all(f"```python\n{source}```" in docs for source in readme)


@pytest.mark.parametrize("block", BLOCKS, ids=lambda block: block.name)
def test_every_python_block_runs_as_a_file(
    tmp_path: Path, block: Block, redis_url: str, sync_redis: redis.Redis, upstream: Upstream
) -> None:
    upstream.plan("/stock/42", Reply(503), Reply(200, body=b"7"))
    result = run_block(tmp_path, block, redis_url, upstream)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_the_first_block_trips_payments_as_the_redis_data_section_shows(
    tmp_path: Path, redis_url: str, sync_redis: redis.Redis, upstream: Upstream
) -> None:
    result = run_block(tmp_path, block_of('CircuitBreaker("payments"'), redis_url, upstream)
    assert result.stdout.splitlines()[0] == "charged order 42"
    assert result.stdout.splitlines()[1].startswith("payments is open; retry after")
    stored: dict[bytes, bytes] = sync_redis.hgetall("breaker:{payments}")  # type: ignore[assignment]
    state = {key.decode(): value.decode() for key, value in stored.items()}
    assert (state["state"], state["failures"]) == ("open", "5")
    fields = re.findall(
        r'^\s*\d+\) "(.*)"$', shown(r"HGETALL 'breaker:\{payments\}'\n(.*?)\$")[1], re.MULTILINE
    )[::2]
    assert set(fields) == set(state)


def test_the_retry_blocks_retry_through_the_breaker(
    tmp_path: Path, redis_url: str, sync_redis: redis.Redis, upstream: Upstream
) -> None:
    upstream.plan("/stock/42", Reply(503), Reply(200, body=b"7"))
    result = run_block(tmp_path, block_of("@retry.bind(inventory)"), redis_url, upstream)
    assert result.stdout.strip() == "200"
    upstream.plan("/stock/42", Reply(502), Reply(200))
    result = run_block(tmp_path, block_of("ResilientTransport(redis="), redis_url, upstream)
    assert result.stdout.strip() == "200 after 2 attempt(s)"


def test_the_fallbacks_block_prints_what_its_page_shows(
    tmp_path: Path, redis_url: str, sync_redis: redis.Redis, upstream: Upstream
) -> None:
    result = run_block(tmp_path, block_of("with_fallback(last_known)"), redis_url, upstream)
    assert result.stdout == shown(r"```console\n(prices: .*?)```")[1]


def test_the_fastapi_block_serves_as_uvicorn_runs_it(
    tmp_path: Path, redis_url: str, sync_redis: redis.Redis, upstream: Upstream
) -> None:
    save_block(tmp_path, block_of("breaker.fastapi"), redis_url, upstream, "shop")
    port = free_port()
    log = tmp_path / "shop.log"
    environ = {**os.environ, "PYTHONWARNINGS": "always::ResourceWarning"}
    with log.open("wb") as written:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "shop:app", "--port", str(port)],
            cwd=tmp_path,
            env=environ,
            stdout=written,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + _TIMEOUT
        while not http_ok(f"{url}/health/inventory"):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        upstream.plan("/stock/42", Reply(200, body=b"7"))
        upstream.plan("/stock/13", Reply(503))
        with httpx.Client(base_url=url, timeout=10.0) as client:
            assert client.get("/stock/42").text == "7"
            last = client.get("/stock/13")  # 3 attempts, 3 failures: the last one passed on
            refused = client.get("/stock/13")  # the 5th failure opens the breaker
            health = client.get("/health/inventory").json()
    finally:
        process.send_signal(signal.SIGTERM)  # uvicorn shuts down, then re-raises it
        process.wait(_TIMEOUT)
    assert last.status_code == 503
    assert (refused.status_code, refused.json()["error"]) == (503, "circuit_open")
    assert refused.headers["retry-after"] == "10"
    assert health == {"inventory": "open"}
    assert len(upstream.hits_on("/stock/13")) == 5
    output = log.read_text()
    assert "Application shutdown complete." in output
    for trouble in ("ResourceWarning", "Unclosed", "Traceback", "Task was destroyed"):
        assert trouble not in output, output


def toml_of(words: str) -> str:
    [block] = [block.source for block in TOMLS if words in block.source]
    return block


def test_the_gateway_toml_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "fleetbreaker.toml"
    path.write_text(toml_of("[upstreams.payments]"))
    config = load_config({"BREAKER_CONFIG": str(path)})
    payments = config.upstreams["payments"]
    assert str(payments.url) == "http://payments.internal:8080/api"
    assert payments.breaker is not None
    assert payments.breaker.on_backend_error == "fail_closed"
    assert payments.retry.deadline == 5.0
    assert config.retry_buffer_bytes == 65536


def test_the_static_fallback_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "fleetbreaker.toml"
    path.write_text(toml_of("[upstreams.catalog.fallback]"))
    fallback = load_config({"BREAKER_CONFIG": str(path)}).upstreams["catalog"].fallback
    assert fallback is not None
    assert (fallback.status, fallback.body) == (200, b'{"items": [], "stale": true}')


def test_the_quorum_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "fleetbreaker.toml"
    path.write_text(toml_of("quorum = 2") + '[upstreams.api]\nurl = "http://api.internal"\n')
    config = load_config({"BREAKER_CONFIG": str(path), "BREAKER_INSTANCE_NAME": "gateway-1"})
    breaker = config.upstreams["api"].breaker
    assert breaker is not None
    assert (breaker.quorum, breaker.voter, breaker.failure_threshold) == (2, "gateway-1", 5)


def test_the_gateways_throughput_figures_are_benchmarks_md_s() -> None:
    """One figure, from the last full run: the README quoted 1.00 x while BENCHMARKS.md
    said 0.79 x."""
    said = shown(
        r"measured ([\d.]+) \u00d7 its breaker-off\s+throughput batched, "
        r"against ([\d.]+) \u00d7 exact"
    )
    rows = dict(
        re.findall(r"^\| (exact|batched) \|(?: [^|]+ \|){4} ([\d.]+) \|$", BENCHMARKS, re.M)
    )
    assert (said[1], said[2]) == (rows["batched"], rows["exact"])
