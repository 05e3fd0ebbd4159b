"""``fleetbreaker serve`` as a real OS process (uvicorn, several workers) for tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from app.localfleet.services import http_ok, serve_command
from tests.support.gateway import TOKEN
from tests.support.ports import free_port
from tests.support.servers import RedisServer

_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 15.0


class GatewayProcess:
    """``fleetbreaker serve --workers N`` on a free port, its admin listener on
    another; its stderr goes to a file."""

    def __init__(
        self,
        workdir: Path,
        environ: dict[str, str],
        workers: int = 2,
        *,
        prefix: tuple[str, ...] = (),
        extra_args: tuple[str, ...] = (),
    ) -> None:
        """``prefix``: a command to run the gateway under (``faketime -f +1h``);
        ``extra_args``: more arguments to ``serve``."""
        self.port = free_port()
        self.admin_port = free_port()
        self.workers = workers
        self.prefix = prefix
        self.extra_args = extra_args
        self.log_path = workdir / f"gateway-{self.port}.log"
        self.environ = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/tmp"),
            **environ,
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The proxy's listener."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        """The admin listener: the admin API, the dashboard, /metrics, /docs."""
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    *self.prefix,
                    *serve_command(self.port, self.admin_port, workers=self.workers),
                    *self.extra_args,
                ],
                env=self.environ,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its workers are stopped with it, as a group
            )
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the gateway exited at start:\n{self.log()}")
            if http_ok(f"{self.url}/healthz") and http_ok(f"{self.admin_url}/healthz"):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the gateway did not answer in {_START_TIMEOUT} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int | None:
        """SIGTERM to the whole group, SIGKILL if it lingers; the exit code."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(_STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError):  # no worker may outlive the test
            os.killpg(process.pid, signal.SIGKILL)
        return process.returncode


@contextlib.contextmanager
def replicas_of(
    workdir: Path,
    redis_server: RedisServer,
    config: str,
    *,
    workers: int = 1,
    prefixes: list[tuple[str, ...]] | None = None,
) -> Iterator[list[GatewayProcess]]:
    """Gateway replicas sharing ``redis_server``, with ``config`` (TOML text) and the
    test admin token: one per entry of ``prefixes`` (a command to run it under, or
    ``()``), one by default. All are stopped on exit."""
    path = workdir / "fleetbreaker.toml"
    path.write_text(config)
    environ = {
        "BREAKER_REDIS_URL": redis_server.url,
        "BREAKER_CONFIG": str(path),
        "BREAKER_ADMIN_TOKEN": TOKEN,
    }
    replicas = [
        GatewayProcess(workdir, environ, workers=workers, prefix=prefix)
        for prefix in (prefixes or [()])
    ]
    try:
        for replica in replicas:
            replica.start()
        yield replicas
    finally:
        for replica in replicas:
            replica.stop()


@contextlib.contextmanager
def gateway_with_redis(workdir: Path, config: str, *, workers: int = 1) -> Iterator[GatewayProcess]:
    """One ``replicas_of`` on a redis-server of its own; both are stopped on exit."""
    redis_server = RedisServer(workdir)
    redis_server.start()
    try:
        with replicas_of(workdir, redis_server, config, workers=workers) as (process,):
            yield process
    finally:
        redis_server.stop()
