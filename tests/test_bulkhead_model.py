"""The bulkhead's Lua (take, give, renew, occupancy), held against a pure-Python model.

Hypothesis runs random sequences of leases taken (with and without a waiter, at
limits that change), given back (also twice, also after they expired), renewed
(some already lost), and clock advances past lease and process expiries; every reply
must equal the model's, field by field. Time is injected, so leases expire by their
score; the machine never lets the store sit idle for the keys' own TTL (four lease
TTLs), which Redis would count on its real clock and the fallback lane on the
injected one.

Every lane runs it: Redis, Redis Cluster, the embedded backend and the fallback lane;
the fallback lane runs a copy of the library instrumented at every function and arm
of every ``if`` and fails naming each point of the bulkhead's functions never reached
(tests/test_model.py does the same for the breaker's).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from breaker import AdaptiveLimit
from breaker._bulkhead.wire import give_args, occupancy_args, renew_args, take_args, tune_args
from breaker._keys import BulkheadKeys, slots_channel
from breaker._store.backend import Backend, embedded_backend, open_backend, release
from breaker._store.local import LocalEngine
from breaker._store.scripts import library_source
from tests.support.luacover import instrument

#: The bulkhead's functions, whose every point the fallback lane must reach.
BULKHEAD_FUNCTIONS = ("slots_begin", "slots_end", "take", "give", "renew", "tune", "occupancy")
#: Small limits, so that the leases the machine holds cross half of them both ways.
ADAPTIVE = [
    AdaptiveLimit(min=1, max=6, initial=3, tolerance=1.1, smoothing=0.5, queue=1.0),
    AdaptiveLimit(min=2, max=4, initial=2, tolerance=1.5, smoothing=0.2, queue=0.5),
]
TTL_MS = 1000
START = 1_700_000_000_000

Run = Callable[[str, list[str], list[Any]], list[Any]]


@dataclass
class Slots:
    """What the Lua keeps for one bulkhead: leases, processes and waiters by expiry."""

    leases: dict[str, int] = field(default_factory=dict)
    processes: dict[str, int] = field(default_factory=dict)
    waiters: dict[str, int] = field(default_factory=dict)
    limit: int | None = None
    hold: float | None = None
    # An adaptive limit's state (tune): the limit, the least latency, when tuned.
    alimit: float | None = None
    base: float | None = None
    tuned_at: int = 0

    def _begin(self, now: int, process: str) -> None:
        for members in (self.leases, self.processes, self.waiters):
            for member in [m for m, expiry in members.items() if expiry <= now]:
                del members[member]
        self.processes[process] = now + 3 * TTL_MS

    def _reply(self, verdict: str, retry_after: float, count: int) -> list[Any]:
        return [
            verdict,
            len(self.leases),
            self.limit or 0,
            math.floor(retry_after),
            len(self.processes),
            count,
        ]

    def take(
        self, now: int, process: str, limit: int, lease: str, waiter: str, wait: int, adaptive: bool
    ) -> list[Any]:
        self._begin(now, process)
        if adaptive:
            limit = math.floor(self.alimit if self.alimit is not None else limit)
        self.limit = limit
        if len(self.leases) < limit:
            self.leases[lease] = now + TTL_MS
            self.waiters.pop(waiter, None)
            return self._reply("granted", 0, 1)
        if waiter:
            self.waiters[waiter] = now + wait
        retry_after = TTL_MS / 4 if self.hold is None else max(1, self.hold / max(1, limit))
        return self._reply("full", retry_after, 0)

    def give(self, now: int, process: str, leases: list[tuple[str, int]]) -> list[Any]:
        self._begin(now, process)
        given = 0
        for lease, held in leases:
            if self.leases.pop(lease, None) is not None:
                given += 1
                self.hold = held if self.hold is None else 0.8 * self.hold + 0.2 * held
        return self._reply("given", 0, given)

    def renew(self, now: int, process: str, leases: list[str]) -> list[Any]:
        self._begin(now, process)
        renewed = 0
        for lease in leases:
            if lease in self.leases:
                self.leases[lease] = now + TTL_MS
                renewed += 1
        return self._reply("renewed", 0, renewed)

    def tune(
        self, now: int, process: str, adaptive: AdaptiveLimit, mean: float, least: float
    ) -> list[Any]:
        self._begin(now, process)
        limit = self.alimit if self.alimit is not None else float(adaptive.initial)
        base = least
        if self.base is not None:
            drift = 1 + 0.01 * max(0, now - self.tuned_at) / 1000
            base = min(self.base * drift, least)
        gradient = max(0.5, min(1, adaptive.tolerance * base / mean))
        target = limit * gradient + adaptive.queue
        if len(self.leases) < limit / 2:
            target = min(target, limit)
        limit = limit * (1 - adaptive.smoothing) + target * adaptive.smoothing
        limit = max(adaptive.min, min(adaptive.max, limit))
        self.alimit, self.base, self.tuned_at = limit, base, now
        self.limit = math.floor(limit)
        return self._reply("tuned", 0, math.floor(limit))

    def occupancy(self, now: int) -> list[Any]:
        live = sum(expiry > now for expiry in self.leases.values())
        processes = sum(expiry > now for expiry in self.processes.values())
        return ["occupancy", live, self.limit or 0, 0, processes, 0]

    def horizon(self, now: int) -> int:
        """When the keys expire: one TTL past three TTLs or the last wait's end."""
        last = max(self.waiters.values(), default=0)
        return now + max(3 * TTL_MS, last - now) + TTL_MS


def text(reply: list[Any]) -> list[Any]:
    return [item.decode() if isinstance(item, bytes) else item for item in reply]


class SlotsMachine(RuleBasedStateMachine):
    run: Run
    visited: set[str]

    def __init__(self) -> None:
        super().__init__()
        self.name = f"model-{uuid.uuid4().hex[:8]}"
        self.keys = BulkheadKeys.of("breaker", self.name).as_list()
        self.model = Slots()
        self.now = START
        self.expires = START + 4 * TTL_MS
        self.taken: list[str] = []
        self.serial = 0

    def _call(self, script: str, args: list[Any], expected: list[Any]) -> None:
        got = text(self.run(script, self.keys, args))
        assert got == expected, (script, args)
        self.visited.add(f"{script}:{expected[0]}")
        if script != "occupancy":
            self.expires = self.model.horizon(self.now)

    @rule(
        process=st.sampled_from(["p1", "p2", "p3"]),
        limit=st.integers(0, 4),  # 0: a share all taken by calls let through before
        waits=st.sampled_from([0, 500, 5000]),
        adaptive=st.booleans(),
    )
    def take(self, process: str, limit: int, waits: int, adaptive: bool) -> None:
        self.serial += 1
        lease = f"{process}:{self.serial}"
        waiter = f"w:{process}:{self.serial}" if waits else ""
        expected = self.model.take(self.now, process, limit, lease, waiter, waits, adaptive)
        args = take_args(
            self.now,
            process,
            TTL_MS / 1000,
            limit=limit,
            lease=lease,
            waiter=waiter,
            wait=waits / 1000,
            adaptive=adaptive,
        )
        self._call("take", args, expected)
        if expected[0] == "granted":
            self.taken.append(lease)

    @rule(
        process=st.sampled_from(["p1", "p2", "p3"]),
        picks=st.lists(st.integers(0, 30), max_size=3),
        held=st.integers(0, 900),
        sharded=st.booleans(),
    )
    def give(self, process: str, picks: list[int], held: int, sharded: bool) -> None:
        leases = [(self.taken[i % len(self.taken)], held) for i in picks if self.taken]
        expected = self.model.give(self.now, process, leases)
        # A Cluster's channel is in the bulkhead's slot: its own name's.
        channel = slots_channel("breaker", self.name, cluster=sharded)
        args = give_args(
            self.now,
            process,
            TTL_MS / 1000,
            channel=channel,
            name=self.name,
            leases=[(lease, ms / 1000) for lease, ms in leases],
        )
        self._call("give", args, expected)

    @rule(process=st.sampled_from(["p1", "p2"]), picks=st.lists(st.integers(0, 30), max_size=4))
    def renew(self, process: str, picks: list[int]) -> None:
        leases = [self.taken[i % len(self.taken)] for i in picks if self.taken]
        expected = self.model.renew(self.now, process, leases)
        self._call("renew", renew_args(self.now, process, TTL_MS / 1000, leases), expected)

    @rule(
        process=st.sampled_from(["p1", "p2"]),
        least=st.sampled_from([50.0, 80.5, 120.25]),
        ratio=st.sampled_from([1.0, 1.05, 1.3, 3.0]),
        adaptive=st.sampled_from(ADAPTIVE),
    )
    def tune(self, process: str, least: float, ratio: float, adaptive: AdaptiveLimit) -> None:
        mean = least * ratio
        expected = self.model.tune(self.now, process, adaptive, mean, least)
        args = tune_args(
            self.now, process, TTL_MS / 1000, adaptive, mean=mean / 1000, least=least / 1000
        )
        self._call("tune", args, expected)

    @rule(ms=st.sampled_from([1, 250, 999, 1000, 1500, 3000]))
    def advance(self, ms: int) -> None:
        # Never as far as the keys' TTL: Redis counts it on its own clock (see above).
        self.now = min(self.now + ms, self.expires - 1)

    @invariant()
    def agrees_with_the_model(self) -> None:
        self._call("occupancy", occupancy_args(self.now), self.model.occupancy(self.now))


MUST_VISIT = {"take:granted", "take:full", "give:given", "renew:renewed", "tune:tuned"}


def run_model(run: Run, examples: int) -> None:
    visited: set[str] = set()
    machine = type("BulkheadModel", (SlotsMachine,), {"run": staticmethod(run), "visited": visited})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=examples,
            derandomize=True,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    assert MUST_VISIT - visited == set()


def on_backend(backend: Backend) -> Run:
    def run(script: str, keys: list[str], args: list[Any]) -> list[Any]:
        return backend.run("model", script, keys, args, 0.0)  # type: ignore[arg-type]

    return run


@pytest.mark.slow
def test_redis_bulkhead_lua_agrees_with_the_model(sync_redis: redis.Redis) -> None:
    backend = open_backend(sync_redis, 5.0, "functions")
    try:
        run_model(on_backend(backend), examples=40)
    finally:
        release(backend)


@pytest.mark.slow
def test_cluster_bulkhead_lua_agrees_with_the_model(local_cluster: Any) -> None:
    client = local_cluster.client()
    backend = open_backend(client, 5.0, "functions")
    try:
        run_model(on_backend(backend), examples=25)
    finally:
        if release(backend):
            backend.close()
        client.close()


def test_embedded_bulkhead_lua_agrees_with_the_model() -> None:
    run_model(on_backend(embedded_backend()), examples=40)


def test_fallback_bulkhead_lua_agrees_with_the_model_and_reaches_every_branch() -> None:
    source, points = instrument(library_source())
    engine = LocalEngine(source)
    run_model(lambda script, keys, args: engine.run(script, keys, args), examples=80)  # type: ignore[arg-type]
    reached = set(engine.lua_global("COVERED").keys())
    never = [
        f"{name} (line {line})"
        for name, line in points.unreached(reached).items()
        if name.split(":")[0].removeprefix("function ") in BULKHEAD_FUNCTIONS
    ]
    assert not never, "never reached by the bulkhead's model test:\n" + "\n".join(never)
