"""The benchmark's own ``redis-server``, on a free port: nothing else sends it commands,
so ``INFO commandstats`` deltas and ``MEMORY USAGE`` belong to the breaker under test."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import redis

from app.localfleet.nodes import redis_server_command
from app.localfleet.ports import free_port
from app.localfleet.services import FleetError, Service, redis_answers, wait_ready

# What the benchmark itself sends to read and reset the counters, and what a client
# sends once per connection (the handshake, an events subscription): a follower that
# connects while a case is counted must not look like a cost of its calls.
_OWN_COMMANDS = frozenset(
    {"info", "config", "ping", "flushall", "memory", "scan", "ttl", "echo", "monitor"}
    | {"hello", "client", "subscribe"}
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
        self._output = io.StringIO()  # shown only if it fails to start
        self._service = Service(
            name="redis",
            argv=redis_server_command(self.port, self._dir),
            environ=dict(os.environ),
            ready=lambda: redis_answers(self.url),
        )
        self._service.start(self._output, threading.Lock())
        try:
            wait_ready([self._service])
        except FleetError as exc:
            self._service.stop()
            raise SystemExit(f"bench: {exc}:\n{self._output.getvalue()}") from None
        self.client = redis.Redis(port=self.port)

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
        self._service.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
