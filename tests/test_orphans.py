"""Nothing of a ``serve`` killed outright (SIGKILL) goes on running: its workers stop
within 5 s, and the next start removes the temporary folder it left. Real processes,
killed for real; ``tests/test_fleet_command.py`` does the same to a fleet."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from app.localfleet.services import http_ok
from tests.support.gateway_process import GatewayProcess

pytestmark = pytest.mark.slow

_STOP_WITHIN = 5.0


def children(pid: int) -> list[int]:
    """The live processes whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie, waiting for whoever inherited it, does not."""
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_the_workers_of_a_killed_serve_stop_and_its_folder_goes_at_the_next_start(
    tmp_path: Path,
) -> None:
    environ = {"TMPDIR": str(tmp_path)}  # its metrics folder, where this test looks
    gateway = GatewayProcess(tmp_path, environ, workers=2)
    gateway.start()
    try:
        assert gateway.process is not None
        parent = gateway.process.pid
        workers = children(parent)  # uvicorn's workers, and multiprocessing's tracker
        assert len(workers) >= 2
        [folder] = tmp_path.glob(f"fleetbreaker-metrics-{parent}-*")

        gateway.process.kill()
        gateway.process.wait()
        deadline = time.monotonic() + _STOP_WITHIN
        while any(running(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [pid for pid in workers if running(pid)] == []
        assert not http_ok(f"{gateway.url}/healthz")
        assert folder.is_dir()  # nothing could remove it
    finally:
        gateway.stop()  # any straggler of its process group

    following = GatewayProcess(tmp_path, environ, workers=1)
    following.start()
    following.stop()
    assert not folder.exists()
