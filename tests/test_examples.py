"""``examples/`` runs as its docstring says, with the command it gives, from the root."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import redis

# It sets up .venv-run (building in the checkout's build/, as test_wheel does), then
# waits out a 2 s reset timeout.
pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.xdist_group("build")]

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "examples" / "trip_and_recover.py"
_TIMEOUT = 300  # the first run installs .venv-run


def documented_command() -> str:
    [command] = re.findall(r"^    (\./scripts/.*)$", EXAMPLE.read_text(), re.MULTILINE)
    return str(command)


def run_as_documented(**environ: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BREAKER_")}
    result = subprocess.run(
        ["bash", "-c", documented_command()],
        cwd=ROOT,
        env={**env, **environ},
        capture_output=True,
        text=True,
        timeout=_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_the_example_trips_rejects_probes_and_closes_as_documented() -> None:
    lines = run_as_documented()
    assert lines[0] == "backend: embedded (in this process only)"
    assert "  call 4: rejected, upstream not called (retry in 2.0s)" in lines
    assert "state: open, consecutive failures: 3" in lines
    assert lines[-2:] == ["  trial call: 200 OK", "state: closed"]


def test_the_example_keeps_its_breaker_in_the_redis_it_is_given(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    lines = run_as_documented(BREAKER_REDIS_URL=redis_url)
    assert lines[0] == f"backend: {redis_url}"
    assert lines[-1] == "state: closed"
    assert sync_redis.hget("breaker:{demo-upstream}", "state") == b"closed"
