"""The processes of a local fleet: each a ``Service`` in a session of its own, its output
shown prefixed with its name, waited for until it answers, stopped by its process
group; and the programs they run."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import httpx

from ..config.preflight import redis_problem
from .nodes import orphan_guard

_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 15.0
_POLL = 0.05


class FleetError(Exception):
    """The fleet cannot start; the message says what is missing or what failed."""


def fleetbreaker_command() -> list[str]:
    """The ``fleetbreaker`` console script next to this Python, else the module."""
    script = Path(sys.executable).parent / "fleetbreaker"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", __name__.partition(".")[0]]


def serve_command(
    port: int, admin_port: int, *, workers: int = 1, log_level: str | None = None
) -> list[str]:
    """``fleetbreaker serve`` with its proxy on ``port`` and its admin API on
    ``admin_port``: how the native fleet, the benches and the tests start a gateway."""
    argv = [*fleetbreaker_command(), "serve", "--port", str(port)]
    argv += ["--admin-port", str(admin_port), "--workers", str(workers)]
    return argv if log_level is None else [*argv, "--log-level", log_level]


def find_program(name: str, hint: str, search_path: str | None = None) -> str:
    """The executable ``name`` on ``search_path``, or a ``FleetError`` saying how to get it."""
    found = shutil.which(name, path=search_path)
    if found is None:
        raise FleetError(f"{name} not found: {hint}")
    return found


@dataclass
class Service:
    """One process of the fleet, in a session of its own, its output prefixed."""

    name: str
    argv: list[str]
    environ: dict[str, str]
    ready: Callable[[], bool]
    process: subprocess.Popen[bytes] | None = None
    answered: bool = False
    reported_exit: bool = False
    _pump: threading.Thread | None = field(default=None, repr=False)

    def start(self, output: TextIO, lock: threading.Lock) -> None:
        self.process = subprocess.Popen(  # noqa: S603 - argv is ours: fixed programs, our ports  # nosec B603
            [*orphan_guard(), *self.argv],
            env=self.environ,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C is ours to relay, in order
        )
        self._pump = threading.Thread(
            target=_pump, args=(self.name, self.process, output, lock), daemon=True
        )
        self._pump.start()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group at once: a crash, as tests need one."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(_STOP_TIMEOUT)

    def stop(self) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
        # The leader is gone; no worker of its group may outlive it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        if self._pump is not None:
            self._pump.join(_STOP_TIMEOUT)


def wait_ready(
    services: list[Service], cancelled: threading.Event | None = None, where_output: str = ""
) -> None:
    """Wait until each service answers; ``FleetError`` if one exits (``where_output``
    says where its output went), if they take over ``_START_TIMEOUT``, or if
    ``cancelled`` is set meanwhile."""
    deadline = time.monotonic() + _START_TIMEOUT
    waiting = list(services)
    while waiting:
        if cancelled is not None and cancelled.is_set():
            raise FleetError("stopped while starting")
        for service in list(waiting):
            if not service.alive:
                code = service.process.returncode if service.process else None
                raise FleetError(
                    f"{service.name} exited while starting (code {code}){where_output}"
                )
            if service.ready():
                service.answered = True
                waiting.remove(service)
        if waiting and time.monotonic() > deadline:
            names = ", ".join(s.name for s in waiting)
            raise FleetError(f"{names} did not answer within {_START_TIMEOUT:.0f} s")
        if waiting:
            time.sleep(_POLL)


def one_shot_client(timeout: float) -> httpx.Client:
    """A client to keep, whose every request still opens a connection of its own (no
    keep-alive), so that no request lands on a worker because an earlier one did.
    ``httpx.get()`` builds a client, and an SSL context that loads the CA bundle, per
    call: about 29 ms of CPU on a 2-core machine, against 1.5 ms on a kept client. For
    local processes only: no proxy from the environment."""
    return httpx.Client(
        timeout=timeout, limits=httpx.Limits(max_keepalive_connections=0), trust_env=False
    )


@functools.cache
def _prober() -> httpx.Client:
    """The readiness probes' one client, kept for the process."""
    return one_shot_client(1.0)


def http_ok(url: str) -> bool:
    """Whether ``url`` answers 200 within a second."""
    try:
        return _prober().get(url).status_code == 200
    except httpx.HTTPError:
        return False


def _pump(
    name: str, process: subprocess.Popen[bytes], output: TextIO, lock: threading.Lock
) -> None:
    assert process.stdout is not None
    with process.stdout:
        for raw in process.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            with lock:
                output.write(f"{name:<10} | {line}\n")
                output.flush()


def redis_answers(url: str) -> bool:
    """Whether the Redis at ``url`` answers PING within a second."""
    return redis_problem(url, timeout=1.0) is None


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
