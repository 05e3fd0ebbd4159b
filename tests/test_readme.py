"""Every Python block of the README runs as written, saved as a file: only the Redis
URL (to the test db, never db 0) and the demo upstream's address are rewritten."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from app import load_config
from tests.support.upstream import Reply, Upstream

pytestmark = pytest.mark.slow  # it runs processes

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.DOTALL)
DEMO_UPSTREAM = "http://127.0.0.1:9000"
_TIMEOUT = 60


def run_block(
    tmp_path: Path, index: int, redis_url: str, upstream: Upstream
) -> subprocess.CompletedProcess[str]:
    source = BLOCKS[index].replace("redis://127.0.0.1:6379/0", redis_url)
    source = source.replace(DEMO_UPSTREAM, upstream.url)
    path = tmp_path / f"block_{index}.py"
    path.write_text(source)
    return subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=_TIMEOUT, cwd=tmp_path
    )


def test_the_readme_has_the_blocks_these_tests_expect() -> None:
    assert len(BLOCKS) == 6
    assert all('"redis://127.0.0.1:6379/0"' in block for block in BLOCKS)


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


def test_the_gateway_toml_example_loads(tmp_path: Path) -> None:
    [toml] = re.findall(r"```toml\n(.*?)```", README, re.DOTALL)
    path = tmp_path / "fleetbreaker.toml"
    path.write_text(toml)
    config = load_config({"BREAKER_CONFIG": str(path)})
    payments = config.upstreams["payments"]
    assert str(payments.url) == "http://payments.internal:8080/api"
    assert payments.breaker is not None
    assert payments.breaker.on_backend_error == "fail_closed"
    assert payments.retry.deadline == 5.0
    assert config.retry_buffer_bytes == 65536
