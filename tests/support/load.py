"""Steady GET load from a few threads, bounded in count and in time, that records
every answer: when it started, how long it took, and its status and error code."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from app.server.main import INSTANCE_HEADER
from tests.support import web
from tests.support.reliability import answer_label


@dataclass(frozen=True)
class Answer:
    started: float  # time.monotonic()
    took: float
    label: str  # "200", "503 circuit_open", or "connection error: <kind>"
    status: int | None  # None: no answer came
    instance: str | None  # X-Fleetbreaker-Instance: which worker answered

    @property
    def ended(self) -> float:
        return self.started + self.took


class Load:
    """``clients`` threads, each sending GETs to ``urls`` in turn, until ``stop()``,
    ``max_requests`` in all, or ``max_seconds``. Each request goes on a fresh
    connection (so the kernel spreads them over a replica's workers), or with
    ``keep_alive`` each thread keeps one client (as behind a load balancer). With
    ``rate``, each thread sends at most that many requests a second: steady traffic
    through a fault, without taking the cores its gateways need."""

    def __init__(
        self,
        urls: list[str],
        *,
        clients: int = 4,
        max_requests: int = 5000,
        max_seconds: float = 30.0,
        timeout: float = 10.0,
        keep_alive: bool = False,
        rate: float | None = None,
    ) -> None:
        self.urls = urls
        self._interval = 0.0 if rate is None else 1.0 / rate
        self._keep_alive = keep_alive
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

    def wait_for(self, count: int, *, after: float | None = None, within: float = 15.0) -> None:
        """Returns once ``count`` more answers came than had when called (or, with
        ``after``, ``count`` answers to requests started after that monotonic time): a
        window of load measured in requests, not in seconds a loaded machine may not
        keep."""

        def counted() -> int:
            if after is None:
                return len(self.answers)
            return sum(1 for answer in self.answers if answer.started > after)

        with self._lock:
            target = count + (counted() if after is None else 0)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            with self._lock:
                if counted() >= target:
                    return
            time.sleep(0.01)
        raise AssertionError(f"the load got fewer than {count} answers in {within:g} s")

    def stop(self) -> list[Answer]:
        self._stopped.set()
        for thread in self._threads:
            thread.join()
        return sorted(self.answers, key=lambda answer: answer.started)

    def _run(self, number: int) -> None:
        # Each thread's own clients: one keeps its connection, one opens a new one
        # per request (web.fresh_client; httpx.get() would build an SSL context each
        # time, most of a core at this pace).
        with (
            httpx.Client(timeout=self._timeout) as kept,
            web.fresh_client(self._timeout) as fresh,
        ):
            sent = 0
            while not self._stopped.is_set() and time.monotonic() < self._ends:
                with self._lock:
                    if len(self.answers) >= self._max_requests:
                        return
                url = self.urls[(number + sent) % len(self.urls)]
                sent += 1
                started = time.monotonic()
                self._send(kept.get if self._keep_alive else fresh.get, url)
                pause = started + self._interval - time.monotonic()
                if pause > 0:
                    self._stopped.wait(pause)

    def _send(self, get: Callable[[str], httpx.Response], url: str) -> None:
        started = time.monotonic()
        status = instance = None
        try:
            response = get(url)
            status, instance = response.status_code, response.headers.get(INSTANCE_HEADER)
            label = answer_label(response.status_code, response.content)
        except httpx.TransportError as exc:
            label = f"connection error: {type(exc).__name__}"
        answer = Answer(started, time.monotonic() - started, label, status, instance)
        with self._lock:
            self.answers.append(answer)


def burst(urls: list[str], count: int, *, timeout: float = 30.0) -> list[int | None]:
    """``count`` GETs sent at once, each on a connection of its own, spread over
    ``urls`` in turn: their statuses (None: no answer came)."""

    async def send_all() -> list[int | None]:
        limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:

            async def one(number: int) -> int | None:
                try:
                    return (await client.get(urls[number % len(urls)])).status_code
                except httpx.TransportError:
                    return None

            return list(await asyncio.gather(*(one(n) for n in range(count))))

    return asyncio.run(send_all())
