"""A worker process making guarded calls on a real clock while the test fails Redis
over, driven over a pipe; it reports what each call was decided by.

Each call is classified by the outcome event it produced: ``redis`` (decided with the
fleet's state), ``fallback`` (Redis could not answer: decided by this process alone,
``fail_open``), ``rejected`` (the breaker rejected it), or ``error`` (anything else
escaped the breaker: never expected). The versions the process's view held after each
call are kept, to check they never went backwards.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from breaker import BreakerListener, CircuitBreaker, CircuitOpenError, OutcomeEvent, redis_from_url

NAME = "failover"
_ANSWER = 60.0  # bound on waiting for a worker's answer, never a delay


@dataclass
class Log:
    """What one worker saw during a load run."""

    calls: int = 0
    by: dict[str, int] = field(default_factory=dict)
    # Monotonic times (the machine's one CLOCK_MONOTONIC) of the first and last call
    # not decided with Redis.
    first_alone: float | None = None
    last_alone: float | None = None
    versions_monotone: bool = True
    last: str = ""  # how the last call was decided
    errors: list[str] = field(default_factory=list)


class _Decided(BreakerListener):
    def __init__(self) -> None:
        self.last = ""

    def outcome(self, event: OutcomeEvent) -> None:
        self.last = "rejected" if event.outcome == "rejected" else event.backend


def serve(conn: Connection, url: str, settings: dict[str, Any]) -> None:
    client = redis_from_url(url)
    cb = CircuitBreaker(NAME, redis=client, **settings)
    decided = _Decided()
    cb.add_listener(decided)
    cb.follow_events(timeout=10.0)
    held: list[Any] = []
    while True:
        command, *args = conn.recv()
        if command == "stop":
            cb.close()
            conn.send("bye")
            return
        if command == "load":
            conn.send(_load(cb, decided, *args, stop=conn))
        elif command == "calls":  # answers how each was decided: {"redis": n, ...}
            by: dict[str, int] = {}
            for _ in range(args[0]):
                with cb:
                    pass
                by[decided.last] = by.get(decided.last, 0) + 1
            conn.send(by)
        elif command == "server":  # the port of the server this process's client reaches
            try:
                conn.send(int(client.config_get("port")["port"]))
            except Exception as exc:  # a diagnosis: whatever it is, said
                conn.send(f"{type(exc).__name__}: {exc}")
        elif command == "view":
            view = cb._engine.shared.view  # the process's local view: what it decides by
            conn.send(None if view is None else (view.state, view.version))
        elif command == "fail":
            with contextlib.suppress(RuntimeError), cb:
                raise RuntimeError("upstream down")
            conn.send("ok")
        elif command == "trials":
            conn.send(_trials(cb, args[0], held))
        elif command == "release":
            for permit in held:
                permit.ignore()
            held.clear()
            conn.send("ok")


def _load(
    cb: CircuitBreaker, decided: _Decided, seconds: float, rate: float, *, stop: Connection
) -> Log:
    """Calls at ``rate`` per second for at most ``seconds`` (bounded in count and
    time), or until a ``("stop_load",)`` arrives on ``stop``."""
    log = Log()
    interval = 1.0 / rate
    started = time.monotonic()
    last_version: tuple[int, int] = (-1, -1)
    for index in range(int(seconds * rate)):
        due = started + index * interval
        if stop.poll(max(0.0, due - time.monotonic())):
            command = stop.recv()
            assert command == ("stop_load",), command
            break
        if time.monotonic() - started > seconds + 5.0:
            break  # a slow machine: bounded in time too
        try:
            with cb:
                pass
        except CircuitOpenError:
            pass
        except Exception as exc:  # anything else is a defect: kept and reported
            log.errors.append(f"{type(exc).__name__}: {exc}")
            decided.last = "error"
        log.calls += 1
        log.by[decided.last] = log.by.get(decided.last, 0) + 1
        log.last = decided.last
        if decided.last != "redis":
            now = time.monotonic()
            log.first_alone = log.first_alone or now
            log.last_alone = now
        view = cb._engine.shared.view
        if view is not None and decided.last == "redis":
            if view.version < last_version:
                log.versions_monotone = False
            last_version = max(last_version, view.version)
    return log


def _trials(cb: CircuitBreaker, threads: int, held: list[Any]) -> int:
    """``threads`` threads ask for a permit at once; half-open trials are held."""
    granted = 0
    lock = threading.Lock()
    start = threading.Barrier(threads, timeout=_ANSWER)

    def work() -> None:
        nonlocal granted
        start.wait()
        try:
            permit = cb.acquire()
        except CircuitOpenError:
            return
        with lock:
            if permit.trial:
                granted += 1
                held.append(permit)
            else:
                permit.success()

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return granted


class Workers:
    """N worker processes on breaker ``NAME``; ``ask_all`` sends each a command at once."""

    def __init__(self, n: int, url: str, **settings: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes = []
        for _ in range(n):
            mine, theirs = context.Pipe()
            process = context.Process(target=serve, args=(theirs, url, settings))
            process.start()
            self.pipes.append(mine)
            self.processes.append(process)

    def send_all(self, *command: Any) -> None:
        for pipe in self.pipes:
            pipe.send(command)

    def receive_all(self, timeout: float = _ANSWER) -> list[Any]:
        answers = []
        for index, pipe in enumerate(self.pipes):
            if not pipe.poll(timeout):
                raise TimeoutError(f"worker {index} did not answer")
            answers.append(pipe.recv())
        return answers

    def ask_all(self, *command: Any) -> list[Any]:
        self.send_all(*command)
        return self.receive_all()

    def ask(self, index: int, *command: Any) -> Any:
        self.pipes[index].send(command)
        if not self.pipes[index].poll(_ANSWER):
            raise TimeoutError(f"worker {index} did not answer {command[0]!r}")
        return self.pipes[index].recv()

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(("stop",))
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
