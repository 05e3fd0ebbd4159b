"""Steady GET load from a few threads, bounded in count and in time, that records
every answer: when it started, how long it took, and its status and error code."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import httpx

from tests.support.reliability import answer_label


@dataclass(frozen=True)
class Answer:
    started: float  # time.monotonic()
    took: float
    label: str  # "200", "503 circuit_open", or "connection error: <kind>"

    @property
    def is_500(self) -> bool:
        return self.label.startswith("500")


class Load:
    """``clients`` threads, each sending GETs to ``urls`` in turn, each on a fresh
    connection (so the kernel spreads them over a replica's workers), until
    ``stop()``, ``max_requests`` in all, or ``max_seconds``."""

    def __init__(
        self,
        urls: list[str],
        *,
        clients: int = 4,
        max_requests: int = 5000,
        max_seconds: float = 30.0,
        timeout: float = 10.0,
    ) -> None:
        self.urls = urls
        self.answers: list[Answer] = []
        self._clients = clients
        self._max_requests = max_requests
        self._timeout = timeout
        self._ends = time.monotonic() + max_seconds
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,)) for n in range(clients)]

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> list[Answer]:
        self._stopped.set()
        for thread in self._threads:
            thread.join()
        return sorted(self.answers, key=lambda answer: answer.started)

    def _run(self, number: int) -> None:
        sent = 0
        while not self._stopped.is_set() and time.monotonic() < self._ends:
            with self._lock:
                if len(self.answers) >= self._max_requests:
                    return
            url = self.urls[(number + sent) % len(self.urls)]
            sent += 1
            started = time.monotonic()
            try:
                response = httpx.get(url, timeout=self._timeout)
                label = answer_label(response.status_code, response.content)
            except httpx.TransportError as exc:
                label = f"connection error: {type(exc).__name__}"
            with self._lock:
                self.answers.append(Answer(started, time.monotonic() - started, label))
