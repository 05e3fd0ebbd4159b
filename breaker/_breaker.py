"""``CircuitBreaker``: one breaker per name, shared through Redis by every process.

A short facade over the permit (``_decisions.permit``): every way of guarding code here takes a
permit and settles it. What the breaker decides lives in ``_decisions.engine`` (no I/O) and in
the Lua scripts; ``_decisions.drive`` runs it, blocking or awaited.

A guarded call costs, in Redis round trips:

- closed, success: 1 (``record``), or about 0 with ``batch_interval`` set;
- closed, failure: 1 (``record``);
- open: 0 while this process knows ``open_until`` (from a reply or an event);
- half-open trial: 1 to take a lease (``acquire``) and 1 to record it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Iterable
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar, Unpack, overload

from ._clock import Clock, SystemClock
from ._config import BreakerConfig, BreakerSettings, make_config
from ._decisions.drive import Driver
from ._decisions.engine import Engine
from ._decisions.permit import AsyncPermit, Permit
from ._decisions.steps import Steps
from ._decorating import decorate
from ._exceptions import CircuitOpenError, ConfigurationError
from ._fallback import FallbackGuard
from ._keys import BreakerKeys
from ._listeners import Listener, as_listener, overrides
from ._models import BreakerSnapshot, BudgetVerdict, SettingsConflict
from ._retry.budget import RetryBudget, spending
from ._store.backend import open_backend, release
from ._store.local import fallback_engine, fallback_hub

P = ParamSpec("P")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

# The permits of the ``with`` blocks under way in this thread or task, as (breaker
# id, permit): ``with cb:`` may be entered concurrently by many threads and tasks.
_HELD: ContextVar[tuple[tuple[int, Permit | AsyncPermit], ...]] = ContextVar(
    "fleetbreaker_held", default=()
)


class CircuitBreaker:
    """A circuit breaker whose state lives in Redis, shared by every worker and replica.

    >>> cb = CircuitBreaker("payments", failure_threshold=3)   # embedded backend
    >>> with cb:
    ...     pass
    >>> cb.snapshot().state
    'closed'

    ``redis``: a ``redis.Redis`` (``acquire``, ``with``, ``call``, decorator), a
    ``redis.asyncio.Redis`` (``aacquire``, ``async with``, ``await call``), or None
    for the embedded backend, which serves both. Settings: ``BreakerConfig``'s fields
    as keywords, or a ``config``. ``clock``: for tests (``ManualClock``). ``close()``
    (``aclose()``) lets go of what it shares with the breakers on the same client.
    """

    def __init__(
        self,
        name: str,
        *,
        redis: Any = None,
        config: BreakerConfig | None = None,
        listeners: Iterable[Listener] = (),
        clock: Clock | None = None,
        **settings: Unpack[BreakerSettings],
    ) -> None:
        if config is not None and settings:
            raise ConfigurationError("config", "give either config or keyword settings, not both")
        self.config = config if config is not None else make_config(settings)
        self.name = name
        self.keys = BreakerKeys.of(self.config.prefix, name)
        self.clock: Clock = clock if clock is not None else SystemClock()
        backend = open_backend(redis, self.config.backend_timeout, self.config.script_mode)
        channel = backend.channel_of(self.config.prefix, name)
        self._backend = backend
        self._hub = backend.hub(channel)
        self._engine = Engine(
            name,
            self.config,
            self.clock,
            kind=backend.kind,
            health=backend.health_of(self.keys.state),
            hub=self._hub,
            local_hub=fallback_hub(channel),
            channel=channel,
        )
        for listener in listeners:
            self.add_listener(listener)
        self._driver = Driver(self._engine, backend, self._hub, fallback_engine())
        self._closed = False

    def __repr__(self) -> str:
        view = self._engine.shared.view
        state = view.state if view else "unknown"
        return f"<CircuitBreaker {self.name!r} {state} on {self._backend.kind}>"

    # -- listeners -------------------------------------------------------------------

    def add_listener(self, listener: Listener, *, made_here_only: bool = False) -> None:
        """Hear this breaker: a ``BreakerListener`` hears every method it overrides
        (transitions, outcomes, Redis errors and round trips, resubscriptions); a plain
        function hears transitions. ``made_here_only``: only the transitions this
        object's own calls made, each heard once in the fleet (for fleet-wide sums)."""
        heard = as_listener(listener)
        self._engine.add_listener(heard, made_here_only=made_here_only)
        if overrides(heard, "backend_error"):
            self._backend.health_of(self.keys.state).add_listener(heard.backend_error)
        if overrides(heard, "subscribed"):
            self._hub.add_subscribed_listener(heard.subscribed)

    def follow_events(self, *, timeout: float | None = None) -> bool:
        """Follow the fleet's transitions from now on, not from the first call (with an
        asyncio client, call it in the loop that will run the calls). With ``timeout``
        (sync), wait that long for the subscription. Returns ``following``."""
        self._driver.follow(timeout)
        return self.following

    @property
    def following(self) -> bool:
        """Whether this process hears the fleet's transitions now (always embedded)."""
        return self._hub.following

    @property
    def idle(self) -> bool:
        """Closing it now loses nothing: closed, every permit settled, no counts due."""
        return self._engine.idle

    # -- the permit, and the guards built on it --------------------------------------

    def acquire(self) -> Permit:
        """A permit for one call, or ``CircuitOpenError``; settle it once."""
        self._check(sync=True)
        return Permit(self._engine, self._driver, self._driver.run(self._engine.admission()))

    async def aacquire(self) -> AsyncPermit:
        """``acquire`` for a breaker on an asyncio client."""
        self._check(sync=False)
        ticket = await self._driver.arun(self._engine.admission())
        return AsyncPermit(self._engine, self._driver, ticket)

    def __enter__(self) -> CircuitBreaker:
        _HELD.set((*_HELD.get(), (id(self), self.acquire())))
        return self

    def __exit__(self, *exc_info: Any) -> None:
        permit = _pop(self)
        assert isinstance(permit, Permit)
        permit.settle(exc_info[1])

    async def __aenter__(self) -> CircuitBreaker:
        _HELD.set((*_HELD.get(), (id(self), await self.aacquire())))
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        permit = _pop(self)
        assert isinstance(permit, AsyncPermit)
        await permit.settle(exc_info[1])

    @overload
    def call(
        self, fn: Callable[P, Coroutine[Any, Any, T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, T]: ...

    @overload
    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T: ...

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` through the breaker; await it if ``fn`` is async."""
        if inspect.iscoroutinefunction(fn):
            return self._acall(fn, *args, **kwargs)
        permit = self.acquire()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            permit.settle(exc)
            raise
        permit.settle(result=result)
        return result

    async def _acall(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        permit = await self.aacquire()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            await permit.settle(exc)
            raise
        await permit.settle(result=result)
        return result

    def __call__(self, fn: F) -> F:
        """Use the breaker as a decorator, on a sync or an async function."""
        return decorate(fn, self.call)

    def with_fallback(self, fallback: object, /) -> FallbackGuard:
        """``call`` and the decorator, answered by ``fallback`` (a value, a function of
        the ``FallbackReason``, or a ``Fallback``) when the breaker refuses a call."""
        return FallbackGuard(self, fallback)

    def settings_conflict(self, snapshot: BreakerSnapshot) -> SettingsConflict | None:
        """How the settings ``snapshot`` read differ from this object's, or None."""
        return self._engine.settings.conflict_in(snapshot)

    def would_reject(self) -> CircuitOpenError | None:
        """The ``CircuitOpenError`` a call would get now, by this process's view alone."""
        return self._engine.would_reject()

    # -- operators, budget, batching: sync, then their asyncio twins -----------------

    def reset(self) -> None:
        """Close the breaker and clear its counters and operator state, fleet-wide."""
        self._run(self._engine.control("reset"))

    def force_open(self) -> None:
        """Reject every call, fleet-wide, until ``reset``."""
        self._run(self._engine.control("force_open"))

    def disable(self) -> None:
        """Let every call through, fleet-wide, still counting outcomes, until ``reset``."""
        self._run(self._engine.control("disable"))

    def snapshot(self) -> BreakerSnapshot:
        """The breaker's state and counters, read atomically from its backend."""
        return self._run(self._engine.snapshot())

    def flush(self) -> None:
        """Record the successes counted locally in batched mode, now."""
        self._run(self._engine.flushing())

    def spend_retry(self, budget: RetryBudget) -> BudgetVerdict:
        """Take one retry from the fleet's budget of this breaker (1 round trip)."""
        return self._run(spending(self._engine, budget))

    async def areset(self) -> None:
        """``reset``, awaited."""
        await self._arun(self._engine.control("reset"))

    async def aforce_open(self) -> None:
        """``force_open``, awaited."""
        await self._arun(self._engine.control("force_open"))

    async def adisable(self) -> None:
        """``disable``, awaited."""
        await self._arun(self._engine.control("disable"))

    async def asnapshot(self) -> BreakerSnapshot:
        """``snapshot``, awaited."""
        return await self._arun(self._engine.snapshot())

    async def aflush(self) -> None:
        """``flush``, awaited."""
        await self._arun(self._engine.flushing())

    async def aspend_retry(self, budget: RetryBudget) -> BudgetVerdict:
        """``spend_retry``, awaited."""
        return await self._arun(spending(self._engine, budget))

    def _run(self, steps: Steps[T]) -> T:
        self._check(sync=True)
        return self._driver.run(steps)

    async def _arun(self, steps: Steps[T]) -> T:
        self._check(sync=False)
        return await self._driver.arun(steps)

    def close(self) -> None:
        """Give back dropped permits' leases, record batched counts, and let go of
        what no breaker on the same client needs any more. Idempotent."""
        if self._closed:
            return
        if not self._backend.serves_sync:
            raise TypeError(f"breaker {self.name!r} uses an asyncio Redis client: use aclose()")
        self._closed = True
        self._driver.release()
        if release(self._backend):
            self._backend.close()

    async def aclose(self) -> None:
        """``close`` for a breaker on an asyncio client (or the embedded backend)."""
        if self._closed:
            return
        self._closed = True
        await self._driver.arelease()
        if release(self._backend):
            await self._backend.aclose()

    def _check(self, *, sync: bool) -> None:
        if self._closed:
            raise RuntimeError(f"breaker {self.name!r} is closed")
        self._driver.ready(sync=sync)


def _pop(breaker: CircuitBreaker) -> Permit | AsyncPermit:
    held = _HELD.get()
    for index in range(len(held) - 1, -1, -1):
        if held[index][0] == id(breaker):
            _HELD.set(held[:index] + held[index + 1 :])
            return held[index][1]
    raise RuntimeError(f"breaker {breaker.name!r} exited without being entered")
