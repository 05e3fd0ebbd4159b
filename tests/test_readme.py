"""Every Python block of the README runs as written, saved as a file: only the Redis
URL (to the test db, never db 0) and the demo upstream's address are rewritten."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
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
README = (ROOT / "README.md").read_text()
BENCHMARKS = (ROOT / "BENCHMARKS.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.DOTALL)
DEMO_UPSTREAM = "http://127.0.0.1:9000"
_TIMEOUT = 60


TOMLS = re.findall(r"```toml\n(.*?)```", README, re.DOTALL)


def block_of(words: str) -> int:
    """The index of the one Python block that holds ``words``."""
    [index] = [index for index, block in enumerate(BLOCKS) if words in block]
    return index


def save_block(tmp_path: Path, index: int, redis_url: str, upstream: Upstream, name: str) -> Path:
    source = BLOCKS[index].replace("redis://127.0.0.1:6379/0", redis_url)
    source = source.replace(DEMO_UPSTREAM, upstream.url)
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    return path


def run_block(
    tmp_path: Path, index: int, redis_url: str, upstream: Upstream
) -> subprocess.CompletedProcess[str]:
    path = save_block(tmp_path, index, redis_url, upstream, f"block_{index}")
    return subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=_TIMEOUT, cwd=tmp_path
    )


def test_the_readme_has_the_blocks_these_tests_expect() -> None:
    assert len(BLOCKS) == 8
    assert all('"redis://127.0.0.1:6379/0"' in block for block in BLOCKS)
    assert len(TOMLS) == 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_every_python_block_runs_as_a_file(
    tmp_path: Path, index: int, redis_url: str, sync_redis: redis.Redis, upstream: Upstream
) -> None:
    upstream.plan("/stock/42", Reply(503), Reply(200, body=b"7"))
    result = run_block(tmp_path, index, redis_url, upstream)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_the_first_block_trips_payments_as_the_redis_data_section_shows(
    tmp_path: Path, redis_url: str, sync_redis: redis.Redis, upstream: Upstream
) -> None:
    result = run_block(tmp_path, 0, redis_url, upstream)
    assert result.stdout.splitlines()[0] == "charged order 42"
    assert result.stdout.splitlines()[1].startswith("payments is open; retry after")
    stored: dict[bytes, bytes] = sync_redis.hgetall("breaker:{payments}")  # type: ignore[assignment]
    state = {key.decode(): value.decode() for key, value in stored.items()}
    assert (state["state"], state["failures"]) == ("open", "5")
    shown = re.search(r"HGETALL 'breaker:\{payments\}'\n(.*?)\$", README, re.DOTALL)
    assert shown is not None
    fields = re.findall(r'^\s*\d+\) "(.*)"$', shown.group(1), re.MULTILINE)[::2]
    assert set(fields) == set(state)


def test_the_retry_blocks_retry_through_the_breaker(
    tmp_path: Path, redis_url: str, sync_redis: redis.Redis, upstream: Upstream
) -> None:
    upstream.plan("/stock/42", Reply(503), Reply(200, body=b"7"))
    result = run_block(tmp_path, 3, redis_url, upstream)
    assert result.stdout.strip() == "200"
    upstream.plan("/stock/42", Reply(502), Reply(200))
    result = run_block(tmp_path, 4, redis_url, upstream)
    assert result.stdout.strip() == "200 after 2 attempt(s)"


def test_the_fallbacks_block_prints_what_the_readme_shows(
    tmp_path: Path, redis_url: str, sync_redis: redis.Redis, upstream: Upstream
) -> None:
    index = block_of("with_fallback(last_known)")
    result = run_block(tmp_path, index, redis_url, upstream)
    shown = re.search(r"```console\n(prices: .*?)```", README, re.DOTALL)
    assert shown is not None
    assert result.stdout == shown.group(1)


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


def test_the_gateway_toml_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "fleetbreaker.toml"
    path.write_text(TOMLS[0])
    config = load_config({"BREAKER_CONFIG": str(path)})
    payments = config.upstreams["payments"]
    assert str(payments.url) == "http://payments.internal:8080/api"
    assert payments.breaker is not None
    assert payments.breaker.on_backend_error == "fail_closed"
    assert payments.retry.deadline == 5.0
    assert config.retry_buffer_bytes == 65536


def test_the_static_fallback_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "fleetbreaker.toml"
    path.write_text(TOMLS[1])
    fallback = load_config({"BREAKER_CONFIG": str(path)}).upstreams["catalog"].fallback
    assert fallback is not None
    assert (fallback.status, fallback.body) == (200, b'{"items": [], "stale": true}')


def test_the_gateways_throughput_figures_are_benchmarks_md_s() -> None:
    """One figure, from the last full run: the README quoted 1.00 x while BENCHMARKS.md
    said 0.79 x."""
    said = re.search(
        r"measured ([\d.]+) \u00d7 its breaker-off\s+throughput batched, "
        r"against ([\d.]+) \u00d7 exact",
        README,
    )
    assert said is not None
    rows = dict(
        re.findall(r"^\| (exact|batched) \|(?: [^|]+ \|){4} ([\d.]+) \|$", BENCHMARKS, re.M)
    )
    assert (said[1], said[2]) == (rows["batched"], rows["exact"])
