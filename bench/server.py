"""The benchmark's own ``redis-server``, on a free port: nothing else sends it commands,
so ``INFO commandstats`` deltas and ``MEMORY USAGE`` belong to the breaker under test."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import redis

from app.fleet import free_port, redis_server_command

_START_TIMEOUT = 10.0
# What the benchmark itself sends to read and reset the counters.
_OWN_COMMANDS = frozenset(
    {"info", "config", "ping", "flushall", "memory", "scan", "ttl", "echo", "monitor"}
)


@dataclass
class Counted:
    """What Redis saw during a ``counting()`` block, the benchmark's own commands left
    out: ``round_trips`` sent by clients, ``commands`` run in all (inside scripts too)."""

    round_trips: int = 0
    commands: int = 0


class BenchRedis:
    def __init__(self) -> None:
        if shutil.which("redis-server") is None:
            raise SystemExit("bench: redis-server not found (apt-get install -y redis-server)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = Path(tempfile.mkdtemp(prefix="fleetbreaker-bench-"))
        self._process = subprocess.Popen(  # noqa: S603 - a fixed program and our port
            redis_server_command(self.port, self._dir),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.client = redis.Redis(port=self.port)
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def version(self) -> str:
        info = self.client.info("server")
        return str(info["redis_version"])

    @contextlib.contextmanager
    def counting(self) -> Iterator[Counted]:
        """Count round trips (MONITOR: commands whose client is not a script) and all
        commands run (``INFO commandstats`` deltas) while the block runs."""
        counted = Counted()
        stop = f"bench-stop-{uuid.uuid4().hex}"
        watcher = redis.Redis(port=self.port)
        listening = threading.Event()

        def watch() -> None:
            with watcher.monitor() as monitor:  # type: ignore[no-untyped-call]
                listening.set()
                for command in monitor.listen():
                    text = str(command["command"])
                    if text == f"ECHO {stop}":
                        return
                    name = text.split(" ", 1)[0].lower()
                    if command["client_type"] != "lua" and name not in _OWN_COMMANDS:
                        counted.round_trips += 1

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        listening.wait(5)
        self.client.config_resetstat()
        try:
            yield counted
        finally:
            stats = self.client.info("commandstats")
            counted.commands = sum(
                int(entry["calls"])
                for key, entry in stats.items()
                if key.removeprefix("cmdstat_").split("|")[0] not in _OWN_COMMANDS
            )
            self.client.echo(stop)
            thread.join(30)
            watcher.close()

    def flush(self) -> None:
        self.client.flushall()

    def __enter__(self) -> BenchRedis:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.client.close()
        self._process.terminate()
        self._process.wait(10)
        shutil.rmtree(self._dir, ignore_errors=True)
