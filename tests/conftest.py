"""Shared fixtures: every behaviour runs over every backend.

- ``redis``: the real Redis at ``BREAKER_REDIS_URL`` (default ``redis://127.0.0.1:6379``;
  ``REDIS_URL``, its old name, still works and says so), on a dedicated db
  (``FLEETBREAKER_TEST_DB``, default 13), flushed before each test. Db 0 is never
  touched. Outside CI these cases skip when no Redis answers; with ``CI=true`` they
  fail instead.
- ``embedded``: fakeredis with lupa, running the same Lua, flushed before each test.
- ``fallback``: the in-process fallback's engine (``LocalEngine``: the same Lua on lupa,
  over the fallback's own store), a fresh one per test, standing in for the embedded
  backend (tests/support/lanes.py).

Time is a ``ManualClock``: tests advance it instead of sleeping.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import SentinelConnectionPool

from breaker import CircuitBreaker, redis_from_url
from breaker._store import backend as backends
from breaker._store.backend import embedded_backend
from breaker._store.local import LocalEngine, fallback_engine
from breaker._store.topology import is_async_client
from breaker.testing import ManualClock
from tests.support.faulty import FaultyUpstream
from tests.support.lanes import HARNESS_BACKEND_TIMEOUT, EngineClient, fallback_backend
from tests.support.reliability import Reliability, audit_dependencies, render
from tests.support.servers import RedisServer, text_hash
from tests.support.topology import aclose_sentinel_client, close_sentinel_client
from tests.support.upstream import Upstream


def redis_url_for_tests(environ: Mapping[str, str]) -> tuple[str, str | None]:
    """The Redis the tests use, and a notice when it was named the old way.

    ``BREAKER_REDIS_URL``, the name the gateway, the CLI and the examples read; then
    ``REDIS_URL``, which the suite read before (kept: scripts and shells still set it).
    Only its server is used: the db is the test db, below."""
    if url := environ.get("BREAKER_REDIS_URL"):
        return url, None
    if url := environ.get("REDIS_URL"):
        return url, "REDIS_URL is deprecated for the tests' Redis: set BREAKER_REDIS_URL"
    return "redis://127.0.0.1:6379", None


REDIS_URL, _REDIS_URL_NOTICE = redis_url_for_tests(os.environ)
# Each pytest-xdist worker takes a db of its own below the base (gw0 the base, gw1 one
# below, ...): its keys, and since the events channel names its db, its events too.
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
TEST_DB = int(os.environ.get("FLEETBREAKER_TEST_DB", "13")) - _WORKER
IN_CI = os.environ.get("CI", "").lower() == "true"

# Real Redis Clusters, Sentinel sets and the fault proxy, for the tests that need them.
pytest_plugins = ["tests.topology_fixtures"]


_RELIABILITY = Reliability()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--reliability-report",
        metavar="PATH",
        help="write what the fault tests saw to PATH (RELIABILITY.md) if every test passed",
    )


@pytest.fixture(scope="session")
def reliability() -> Reliability:
    """The fault tests' rows, for ``--reliability-report``."""
    return _RELIABILITY


def _weight(item: pytest.Item) -> int:
    marks = {mark.name for mark in item.iter_markers()}
    return 0 if marks & {"e2e", "faults"} else 1 if "slow" in marks else 2


def _by_weight(items: list[pytest.Item]) -> list[pytest.Item]:
    """Modules by their heaviest test, each module whole: a module fixture (a fleet, a
    gateway) is set up once per worker only while its tests run back to back."""
    weights: dict[str, int] = {}
    for item in items:
        weights[item.nodeid.split("::")[0]] = min(
            weights.get(item.nodeid.split("::")[0], 2), _weight(item)
        )
    return sorted(items, key=lambda item: weights[item.nodeid.split("::")[0]])


def _outside_its_lanes(item: pytest.Item) -> bool:
    """A test marked ``lanes(...)`` runs on the harness lanes named there only."""
    marked = item.get_closest_marker("lanes")
    params = getattr(getattr(item, "callspec", None), "params", {})
    if marked is None:
        return False
    return any(
        params[name] not in marked.args for name in ("harness", "async_harness") if name in params
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Drops the lanes a module does not need (see the ``lanes`` marker), then puts
    the long tests first (compose, browsers, failovers, then the other processes), so
    that xdist's workers start them at once and the short ones fill in around them,
    rather than one long test starting last and running alone. Stable: each weight
    keeps its modules' order (and so their module fixtures) together."""
    dropped = [item for item in items if _outside_its_lanes(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not _outside_its_lanes(item)]
    items[:] = _by_weight(items)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = session.config.getoption("--reliability-report")
    if not path:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if session.testsfailed or exitstatus != 0:
        if reporter is not None:
            reporter.write_line(f"not writing {path}: the run failed")
        return
    passed = len(reporter.stats.get("passed", [])) if reporter is not None else 0
    _RELIABILITY.checks.append(audit_dependencies())
    with open(path, "w") as out:
        out.write(render(_RELIABILITY, tests_run=f"{passed} tests passed"))
    if reporter is not None:
        reporter.write_line(f"wrote {path} ({len(_RELIABILITY.rows)} faults)")


def pytest_report_header() -> str | None:
    return f"fleetbreaker: {_REDIS_URL_NOTICE}" if _REDIS_URL_NOTICE else None


@pytest.fixture(scope="session", autouse=True)
def _no_inherited_redis_url() -> Iterator[None]:
    """BREAKER_REDIS_URL names the tests' server, not a Redis for what they start: a
    gateway, CLI or example a test runs is given its Redis (its db) by the test, and
    must never inherit the server's bare URL, which is db 0."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("BREAKER_REDIS_URL", raising=False)
        yield


def _test_url() -> str:
    """The tests' server with its db replaced by the dedicated test db."""
    parts = urlsplit(REDIS_URL)
    return urlunsplit((parts.scheme, parts.netloc, f"/{TEST_DB}", parts.query, ""))


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The URL of the dedicated test db; skips (or fails in CI) when Redis is down."""
    url = _test_url()
    if TEST_DB < 1:
        pytest.fail(f"refusing to run the tests on db {TEST_DB} of the shared Redis")
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        if IN_CI:
            pytest.fail(f"CI=true but no Redis at {url}: {exc}")
        pytest.skip(f"no Redis reachable at {url} ({exc}); set BREAKER_REDIS_URL to run these")
    finally:
        client.close()
    return url


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@dataclass
class Harness:
    """One backend of the matrix: builds breakers on it and reads its raw keys."""

    kind: str
    clock: ManualClock
    raw: Any
    client: Any
    url: str | None = None  # of the Redis, for the asyncio clients a test makes
    script_mode: str = "auto"  # how Redis runs the library: FUNCTIONs, or EVALSHA
    lane: str = ""  # the matrix's id of it: redis, redis-eval, cluster, sentinel, ...
    breakers: list[CircuitBreaker] = field(default_factory=list)

    def breaker(self, name: str = "payments", **settings: Any) -> CircuitBreaker:
        """A breaker on this backend, following the fleet's events already: as in a
        process that has run a while, its views decide alone (until it follows, every
        call asks Redis, which a loaded machine could stretch over a whole test)."""
        settings.setdefault("script_mode", self.script_mode)
        settings.setdefault("backend_timeout", HARNESS_BACKEND_TIMEOUT)
        cb = CircuitBreaker(name, redis=self.client, clock=self.clock, **settings)
        self.breakers.append(cb)
        return following(cb, self.client)

    def hash(self, key: str) -> dict[str, str]:
        return text_hash(self.raw, key)

    def keys(self, pattern: str = "*") -> set[str]:
        """The keys matching ``pattern``, as text (on a Cluster, on every primary)."""
        found = self.raw.scan_iter(match=pattern)
        return {key.decode() if isinstance(key, bytes) else key for key in found}


class Breakers:
    """Makes breakers (``CircuitBreaker``'s arguments) and closes them after the test:
    no events thread of one test follows a server of the next."""

    def __init__(self) -> None:
        self.made: list[CircuitBreaker] = []

    def __call__(self, name: str = "p", *, follow: bool = True, **arguments: Any) -> CircuitBreaker:
        """``CircuitBreaker(name, **arguments)``, following the fleet's events already
        (sync clients; ``follow=False`` leaves it to its first call)."""
        cb = CircuitBreaker(name, **arguments)
        self.made.append(cb)
        return following(cb, arguments.get("redis")) if follow else cb

    def close(self) -> None:
        for cb in self.made:
            cb.close()


_FOLLOW_WITHIN = 10.0  # a bound on a subscription, never a delay


def following(cb: CircuitBreaker, client: Any) -> CircuitBreaker:
    """``cb`` (on ``client``) once its events follower has subscribed: a breaker on a
    sync client, or the embedded backend; an asyncio one follows from its own loop
    (``afollowing``)."""
    if not is_async_client(client):
        assert cb.follow_events(timeout=_FOLLOW_WITHIN), f"{cb!r} never subscribed"
    return cb


async def afollowing(cb: CircuitBreaker) -> CircuitBreaker:
    """``following`` for a breaker on an asyncio client, in the loop that runs it."""
    cb.follow_events()
    deadline = asyncio.get_running_loop().time() + _FOLLOW_WITHIN
    while not cb.following:
        assert asyncio.get_running_loop().time() < deadline, f"{cb!r} never subscribed"
        await asyncio.sleep(0.005)
    return cb


@pytest.fixture
def breakers() -> Iterator[Breakers]:
    made = Breakers()
    yield made
    made.close()


@pytest.fixture(autouse=True)
def _no_follower_outlives_its_test() -> Iterator[None]:
    """Every breaker a test made is closed by its end: its events thread is gone."""
    before = {thread for thread in threading.enumerate() if _follows(thread)}
    yield
    left = [t.name for t in threading.enumerate() if _follows(t) and t not in before]
    assert left == [], f"threads left running by this test: {left}"


def _follows(thread: threading.Thread) -> bool:
    return thread.name.startswith("fleetbreaker-")


@pytest.fixture(autouse=True)
def _fresh_in_process_backends() -> None:
    """The embedded and fallback backends are process-wide: empty them for each test."""
    embedded_backend().client.flushall()
    fallback_engine().clear()


# Every behaviour on Redis as a FUNCTION library, as EVALSHA scripts (for servers that
# refuse FUNCTION), on a Redis Cluster and through Sentinel (the full lane for these
# three), and on the embedded backend.
_EVAL = pytest.param("redis-eval", marks=pytest.mark.slow)
_CLUSTER = pytest.param("cluster", marks=pytest.mark.slow)
_SENTINEL = pytest.param("sentinel", marks=pytest.mark.slow)


def use_fallback_lane(
    monkeypatch: pytest.MonkeyPatch, engine: LocalEngine | None = None
) -> LocalEngine:
    """Breakers made without a client (``redis=None``) run on ``engine`` (a fresh
    ``LocalEngine`` unless given) until the test ends, instead of the embedded backend."""
    engine = LocalEngine() if engine is None else engine
    monkeypatch.setattr(backends, "_EMBEDDED", fallback_backend(engine))
    return engine


@pytest.fixture(params=["redis", _EVAL, _CLUSTER, _SENTINEL, "embedded", "fallback"])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    closing: Callable[[], None] = lambda: None  # noqa: E731
    if request.param.startswith("redis"):
        client = request.getfixturevalue("sync_redis")
        url = request.getfixturevalue("redis_url")
        mode = "eval" if request.param == "redis-eval" else "functions"
        made = Harness("redis", ManualClock(), client, client, url, mode)
    elif request.param == "cluster":
        cluster = request.getfixturevalue("local_cluster")
        client = cluster.client()
        closing = client.close
        made = Harness("redis", ManualClock(), client, client, cluster.url, "functions")
    elif request.param == "sentinel":
        sentinels = request.getfixturevalue("sentinel_set")
        client = sentinels.client()
        closing = functools.partial(close_sentinel_client, client)
        made = Harness("redis", ManualClock(), client, client, sentinels.url, "functions")
    elif request.param == "fallback":
        engine = use_fallback_lane(request.getfixturevalue("monkeypatch"))
        made = Harness("fallback", ManualClock(), EngineClient(engine), None)
    else:
        made = Harness("embedded", ManualClock(), embedded_backend().client, None)
    made.lane = request.param
    yield made
    for breaker in made.breakers:
        breaker.close()
    closing()


@dataclass
class AsyncHarness:
    """The async side of the matrix: an asyncio client made inside the test's loop."""

    kind: str
    clock: ManualClock
    url: str | None
    script_mode: str = "auto"
    clients: list[aioredis.Redis] = field(default_factory=list)
    breakers: list[CircuitBreaker] = field(default_factory=list)

    def breaker(self, name: str = "payments", **settings: Any) -> CircuitBreaker:
        client = None
        if self.url is not None:
            client = redis_from_url(self.url, asyncio=True)
            self.clients.append(client)
        settings.setdefault("script_mode", self.script_mode)
        settings.setdefault("backend_timeout", HARNESS_BACKEND_TIMEOUT)
        cb = CircuitBreaker(name, redis=client, clock=self.clock, **settings)
        self.breakers.append(cb)
        return cb

    async def aclose(self) -> None:
        for breaker in self.breakers:
            await breaker.aclose()
        for client in self.clients:
            if isinstance(getattr(client, "connection_pool", None), SentinelConnectionPool):
                await aclose_sentinel_client(client)
            else:
                await client.aclose()

    def run(self, scenario: Callable[[], Awaitable[None]]) -> None:
        """Run ``scenario`` in a fresh event loop, closing the clients it made."""

        async def main() -> None:
            try:
                await scenario()
            finally:
                await self.aclose()

        asyncio.run(main())


@pytest.fixture(
    params=[
        "redis-async",
        pytest.param("redis-async-eval", marks=pytest.mark.slow),
        pytest.param("cluster-async", marks=pytest.mark.slow),
        pytest.param("sentinel-async", marks=pytest.mark.slow),
        "embedded",
    ]
)
def async_harness(request: pytest.FixtureRequest) -> Iterator[AsyncHarness]:
    if request.param.startswith("redis-async"):
        request.getfixturevalue("sync_redis")  # flushes the db around the test
        mode = "eval" if request.param.endswith("eval") else "functions"
        url = request.getfixturevalue("redis_url")
        yield AsyncHarness("redis-async", ManualClock(), url, mode)
    elif request.param == "cluster-async":
        url = request.getfixturevalue("local_cluster").url
        yield AsyncHarness("redis-async", ManualClock(), url, "functions")
    elif request.param == "sentinel-async":
        url = request.getfixturevalue("sentinel_set").url
        yield AsyncHarness("redis-async", ManualClock(), url, "functions")
    else:
        yield AsyncHarness("embedded", ManualClock(), None)


@pytest.fixture
def redis_server(tmp_path: Any) -> Iterator[RedisServer]:
    """A redis-server of the test's own, on a free port: free to kill, pause, count."""
    if shutil.which("redis-server") is None:
        if IN_CI:
            pytest.fail("CI=true but redis-server is not installed")
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["redis", "embedded"])
def backend(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """For the gateway: the Redis URL of the test db (flushed around the test), or
    None, the embedded backend."""
    if request.param == "redis":
        request.getfixturevalue("sync_redis")
        yield request.getfixturevalue("redis_url")
    else:
        yield None


@pytest.fixture(scope="session")
def _upstream_server() -> Iterator[Upstream]:
    server = Upstream()
    server.start()
    yield server
    server.close_port()


@pytest.fixture(scope="session")
def faulty() -> Iterator[FaultyUpstream]:
    """A broken upstream on raw sockets (tests/support/faulty.py), one per session."""
    server = FaultyUpstream()
    server.start()
    yield server
    server.close()


@pytest.fixture
def upstream(_upstream_server: Upstream) -> Upstream:
    """A real HTTP upstream (uvicorn, in a thread) that answers as the test plans;
    shared by the session, with no plan and no hit at the start of each test."""
    _upstream_server.reset()
    return _upstream_server
