"""A worker process voting in one breaker's quorum, on a real clock: the test sends it
commands on a pipe ("succeed", "fail", "snapshot", "stop") and may kill it outright."""

from __future__ import annotations

import contextlib
import multiprocessing
from multiprocessing.connection import Connection
from typing import Any

from breaker import CircuitBreaker, CircuitOpenError, redis_from_url

NAME = "quorum-kill"
_ANSWER = 30.0


def serve(conn: Connection, url: str, voter: str, settings: dict[str, Any]) -> None:
    cb = CircuitBreaker(NAME, redis=redis_from_url(url), voter=voter, **settings)
    cb.follow_events(timeout=10.0)
    while True:
        command, *_ = conn.recv()
        if command == "stop":
            cb.close()
            conn.send("bye")
            return
        if command == "succeed":
            try:
                with cb:
                    pass
                conn.send("ok")
            except CircuitOpenError as refused:
                conn.send(refused.reason or refused.state)
        elif command == "fail":
            try:
                with contextlib.suppress(RuntimeError), cb:
                    raise RuntimeError("upstream down")
                conn.send("failed")
            except CircuitOpenError as refused:
                conn.send(refused.reason or refused.state)
        elif command == "snapshot":
            conn.send(cb.snapshot())


class Voter:
    """One worker process, voting as ``voter``."""

    def __init__(self, url: str, voter: str, **settings: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipe, theirs = context.Pipe()
        self.process = context.Process(target=serve, args=(theirs, url, voter, settings))
        self.process.start()

    def ask(self, *command: Any) -> Any:
        self.pipe.send(command)
        if not self.pipe.poll(_ANSWER):
            raise TimeoutError(f"the worker did not answer {command[0]!r}")
        return self.pipe.recv()

    def kill(self) -> None:
        """kill -9: nothing of it runs again, its votes and liveness stay in Redis."""
        self.process.kill()
        self.process.join()

    def close(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(OSError, TimeoutError):
                self.ask("stop")
            self.process.join(timeout=10)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
