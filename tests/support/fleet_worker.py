"""A worker process holding one breaker on a shared Redis, driven over a pipe.

Each worker is a real OS process with its own client, backend, events subscriber and
``ManualClock``; the test advances every worker's clock together, so the fleet agrees
on time without anyone sleeping.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from breaker import CircuitBreaker, CircuitOpenError, Permit, redis_from_url
from breaker.testing import ManualClock

_WAIT = 10.0  # bound on waiting for an event to arrive, never a delay


class UpstreamDown(Exception):
    pass


def _fail() -> None:
    raise UpstreamDown


def serve(
    conn: Connection, url: str, settings: dict[str, Any], start: float, fleet_barrier: Any
) -> None:
    clock = ManualClock(start)
    cb = CircuitBreaker("fleet", redis=redis_from_url(url), clock=clock, **settings)
    states: dict[str, threading.Event] = {}
    heard_at: dict[str, float] = {}

    def heard(event: Any) -> None:
        heard_at.setdefault(event.to_state, time.monotonic())  # one clock for every process
        states.setdefault(event.to_state, threading.Event()).set()

    cb.add_listener(heard)
    held: list[Permit] = []
    while True:
        command, *args = conn.recv()
        if command == "stop":
            cb.close()
            conn.send("bye")
            return
        if command == "advance":
            clock.advance(args[0])
            conn.send("ok")
        elif command == "call":
            conn.send(_call(cb, args[0]))
        elif command == "burst":
            threads, per_thread, failures = args
            conn.send(_burst(cb, threads, per_thread, failures))
        elif command == "take_trials":
            conn.send(_take_trials(cb, args[0], fleet_barrier, held))
        elif command == "wait_for":
            conn.send(states.setdefault(args[0], threading.Event()).wait(_WAIT))
        elif command == "heard_at":
            states.setdefault(args[0], threading.Event()).wait(_WAIT)
            conn.send(heard_at.get(args[0]))
        elif command == "forget":
            heard_at.pop(args[0], None)
            states.pop(args[0], None)
            conn.send("ok")
        elif command == "reset":
            cb.reset()
            conn.send("ok")
        elif command == "subscribed":
            conn.send(cb.follow_events(timeout=_WAIT))


def _call(cb: CircuitBreaker, outcome: str) -> str:
    try:
        cb.call(_fail if outcome == "failure" else (lambda: None))
    except CircuitOpenError:
        return "rejected"
    except UpstreamDown:
        return "failed"
    return "ok"


def _burst(cb: CircuitBreaker, threads: int, per_thread: int, failures: int) -> dict[str, int]:
    """``threads`` threads at once, each recording ``per_thread`` outcomes, ``failures``
    of them failures."""
    counts = {"ok": 0, "failed": 0, "rejected": 0}
    lock = threading.Lock()
    start = threading.Barrier(threads, timeout=_WAIT)

    def work() -> None:
        start.wait()
        for i in range(per_thread):
            result = _call(cb, "failure" if i < failures else "success")
            with lock:
                counts[result] += 1

    _in_threads(threads, work)
    return counts


def _take_trials(cb: CircuitBreaker, threads: int, fleet_barrier: Any, held: list[Permit]) -> int:
    """``threads`` threads ask for a half-open trial at the same moment across the fleet
    (``fleet_barrier`` lines the processes up); trials are held, not released."""
    granted = 0
    lock = threading.Lock()
    local = threading.Barrier(threads, timeout=_WAIT)

    def work() -> None:
        nonlocal granted
        if local.wait() == 0:
            fleet_barrier.wait(_WAIT)
        local.wait()
        try:
            permit = cb.acquire()
        except CircuitOpenError:
            return
        with lock:
            held.append(permit)
            if permit.trial:
                granted += 1

    _in_threads(threads, work)
    return granted


def _in_threads(threads: int, work: Callable[[], None]) -> None:
    pool = [threading.Thread(target=work) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()


class Fleet:
    """N worker processes on one breaker; ``ask`` sends a command to each."""

    def __init__(self, n: int, url: str, **settings: Any) -> None:
        self.context = multiprocessing.get_context("spawn")
        start = 1_700_000_000.0
        self.barrier = self.context.Barrier(n)
        self.pipes: list[Connection] = []
        self.processes = []
        for _ in range(n):
            mine, theirs = self.context.Pipe()
            process = self.context.Process(
                target=serve, args=(theirs, url, settings, start, self.barrier)
            )
            process.start()
            self.pipes.append(mine)
            self.processes.append(process)

    def ask(self, index: int, *command: Any) -> Any:
        self.pipes[index].send(command)
        if not self.pipes[index].poll(60):
            raise TimeoutError(f"worker {index} did not answer {command[0]!r}")
        return self.pipes[index].recv()

    def ask_all(self, *command: Any) -> list[Any]:
        for pipe in self.pipes:
            pipe.send(command)
        answers = []
        for index, pipe in enumerate(self.pipes):
            if not pipe.poll(60):
                raise TimeoutError(f"worker {index} did not answer {command[0]!r}")
            answers.append(pipe.recv())
        return answers

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(("stop",))
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
