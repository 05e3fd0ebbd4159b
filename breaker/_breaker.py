"""``CircuitBreaker``: one breaker per name, shared through Redis by every process.

A guarded call costs, in Redis round trips:

- closed, success: 1 (``record``), or about 0 with ``batch_interval`` set;
- closed, failure: 1 (``record``);
- open: 0 while this process knows ``open_until`` (from a reply or an event);
- half-open trial: 1 to take a lease (``acquire``) and 1 to record it.

The process asks ``acquire`` only when its local view cannot decide: on first use, once
``open_until`` has passed, in half-open, and when a closed view is older than
``reset_timeout``. Sync and async paths differ only by ``await``; every decision is in
``_core`` (local) or in the Lua scripts (shared).
"""

from __future__ import annotations

import functools
import inspect
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable
from contextvars import ContextVar
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, Unpack, overload

from ._backend import Backend, embedded_backend, fallback_backend, redis_backend
from ._clock import Clock, SystemClock
from ._config import BreakerConfig, BreakerSettings, make_config
from ._core import BreakerCore, Flush, Ticket
from ._decorating import decorate
from ._events import EventHub
from ._exceptions import BackendUnavailableError, CircuitOpenError, ConfigurationError
from ._keys import BreakerKeys, events_channel
from ._policy import RetryBudget
from ._protocol import (
    BreakerSnapshot,
    BudgetVerdict,
    ControlAction,
    Outcome,
    TransitionEvent,
    acquire_args,
    budget_args,
    control_args,
    decode_budget,
    decode_reply,
    decode_snapshot,
    record_args,
    snapshot_args,
)

logger = logging.getLogger("breaker")

P = ParamSpec("P")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
# An operation's steps: yields (script, args), receives the raw reply, returns T.
Steps = Generator[tuple[str, list[Any]], list[Any], T]
Listener = Callable[[TransitionEvent], None]
#: Takes a result that counts as a success, and the function that records its final
#: outcome (to be called once, later); returns what the caller gets instead.
Hold = Callable[[Any, Callable[[Outcome], None]], Any]
AsyncHold = Callable[[Any, Callable[[Outcome], Awaitable[None]]], Any]

# The tickets of the calls under way in this thread or task, as (breaker id, ticket):
# ``with cb:`` may be entered concurrently by many threads and tasks, and nested.
_ACTIVE: ContextVar[tuple[tuple[int, Ticket], ...]] = ContextVar("fleetbreaker_active", default=())


class CircuitBreaker:
    """A circuit breaker whose state lives in Redis, shared by every worker and replica.

    >>> cb = CircuitBreaker("payments", failure_threshold=3)   # embedded backend
    >>> with cb:
    ...     pass
    >>> cb.snapshot().state
    'closed'

    ``redis`` is a ``redis.Redis`` (sync use: ``with``, ``call``, decorator) or a
    ``redis.asyncio.Redis`` (``async with``, ``await call``); ``None`` uses the
    embedded in-process backend, which serves both. Settings are ``BreakerConfig``'s
    fields as keywords, or a whole ``config``. ``clock`` is for tests (``ManualClock``).
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
        self._key_list = self.keys.as_list()
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._backend: Backend = (
            embedded_backend()
            if redis is None
            else redis_backend(redis, self.config.backend_timeout)
        )
        self._core = BreakerCore(name, self.config, self._clock, fallback=False)
        self._fallback_core = BreakerCore(name, self.config, self._clock, fallback=True)
        self._listeners: list[Listener] = list(listeners)
        self._made_here_listeners: list[Listener] = []
        channel = events_channel(self.config.prefix)
        self._hub = self._backend.hub(channel)
        self._hub.register(name, self._receive)
        self._fallback_hub = fallback_backend().hub(channel)
        self._fallback_hub.register(name, self._receive_fallback)

    def __repr__(self) -> str:
        view = self._core.view
        state = view.state if view else "unknown"
        return f"<CircuitBreaker {self.name!r} {state} on {self._backend.kind}>"

    @property
    def clock(self) -> Clock:
        """The clock this breaker measures calls with (a retrier bound to it shares it)."""
        return self._clock

    def add_listener(self, listener: Listener, *, made_here_only: bool = False) -> None:
        """Call ``listener(event)`` for every transition of this breaker, in any process.

        Events from other processes arrive on the events thread (sync client) or in the
        event loop (asyncio client); a listener must not block. With
        ``made_here_only``, only the transitions that this breaker object's own calls
        made are heard: each transition is then heard by exactly one process of the
        fleet, which is what a counter summed over the fleet needs.
        """
        if made_here_only:
            self._made_here_listeners.append(listener)
        else:
            self._listeners.append(listener)

    def add_backend_error_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(reason)`` each time a Redis command of this breaker fails.

        The backend is shared by every breaker on the same client: a listener added
        through several of them is still called once per failure.
        """
        self._backend.health.add_listener(listener)

    def follow_events(self) -> None:
        """Start following the fleet's transitions now, rather than on the first call.

        With an asyncio client, call it from the event loop that will run the calls.
        """
        if self._backend.is_async:
            self._hub.start_task()
        else:
            self._hub.start_thread()

    # -- guarding calls: sync ------------------------------------------------------

    def __enter__(self) -> CircuitBreaker:
        _push(self, self._admit())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        ticket = _pop(self)
        self._record(ticket, self.config.classify(exc))

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
        ticket = self._admit()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._record(ticket, self.config.classify(exc))
            raise
        self._record(ticket, self.config.classify(None, result))
        return result

    def __call__(self, fn: F) -> F:
        """Use the breaker as a decorator, on a sync or an async function."""
        return decorate(fn, self.call)

    def _call_settled_later(self, fn: Callable[[], Any], hold: Hold) -> Any:
        """``call``, except that a result that counts as a success is handed to
        ``hold`` with a ``settle`` function, and its outcome is recorded when that is
        called: a response whose body is still to come is judged when its body ends
        (and a half-open lease is held until then)."""
        ticket = self._admit()
        try:
            result = fn()
        except BaseException as exc:
            self._record(ticket, self.config.classify(exc))
            raise
        outcome = self.config.classify(None, result)
        if outcome != "success":
            self._record(ticket, outcome)
            return result
        return hold(result, functools.partial(self._record, ticket))

    def _admit(self) -> Ticket:
        self._require(sync=True)
        self._hub.start_thread()
        return self._run(self._admission())

    def _record(self, ticket: Ticket, outcome: Outcome) -> None:
        self._run(self._recording(ticket, outcome))

    # -- guarding calls: async -----------------------------------------------------

    async def __aenter__(self) -> CircuitBreaker:
        _push(self, await self._aadmit())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        ticket = _pop(self)
        await self._arecord(ticket, self.config.classify(exc))

    async def _acall(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        ticket = await self._aadmit()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            await self._arecord(ticket, self.config.classify(exc))
            raise
        await self._arecord(ticket, self.config.classify(None, result))
        return result

    async def _acall_settled_later(self, fn: Callable[[], Awaitable[Any]], hold: AsyncHold) -> Any:
        """The async twin of ``_call_settled_later``: ``settle`` is awaited."""
        ticket = await self._aadmit()
        try:
            result = await fn()
        except BaseException as exc:
            await self._arecord(ticket, self.config.classify(exc))
            raise
        outcome = self.config.classify(None, result)
        if outcome != "success":
            await self._arecord(ticket, outcome)
            return result
        return hold(result, functools.partial(self._arecord, ticket))

    async def _aadmit(self) -> Ticket:
        self._require(sync=False)
        self._hub.start_task()
        return await self._arun(self._admission())

    async def _arecord(self, ticket: Ticket, outcome: Outcome) -> None:
        await self._arun(self._recording(ticket, outcome))

    # -- operator control and inspection ------------------------------------------

    def reset(self) -> None:
        """Close the breaker and clear its counters and operator state, fleet-wide."""
        self._require(sync=True)
        self._run(self._control("reset"))

    def force_open(self) -> None:
        """Reject every call, fleet-wide, until ``reset``."""
        self._require(sync=True)
        self._run(self._control("force_open"))

    def disable(self) -> None:
        """Let every call through, fleet-wide, still counting outcomes, until ``reset``."""
        self._require(sync=True)
        self._run(self._control("disable"))

    def snapshot(self) -> BreakerSnapshot:
        """The breaker's state and counters, read atomically from its backend."""
        self._require(sync=True)
        return self._run(self._snapshot())

    def flush(self) -> None:
        """Record the successes counted locally in batched mode, now."""
        self._require(sync=True)
        self._run(self._flush())

    def spend_retry(self, budget: RetryBudget) -> BudgetVerdict:
        """Take one retry from the fleet's budget of this breaker (1 round trip).

        Granted while the retries in the window stay under ``budget.ratio`` of the
        fleet's first attempts there, or under the floor. A granted retry is counted
        at once; a refused one is counted too (``snapshot().window_retries_refused``).
        """
        self._require(sync=True)
        return self._run(self._spend_retry(budget))

    async def aspend_retry(self, budget: RetryBudget) -> BudgetVerdict:
        """``spend_retry`` for a breaker on an asyncio client."""
        self._require(sync=False)
        return await self._arun(self._spend_retry(budget))

    async def areset(self) -> None:
        """``reset`` for a breaker on an asyncio client."""
        self._require(sync=False)
        await self._arun(self._control("reset"))

    async def aforce_open(self) -> None:
        """``force_open`` for a breaker on an asyncio client."""
        self._require(sync=False)
        await self._arun(self._control("force_open"))

    async def adisable(self) -> None:
        """``disable`` for a breaker on an asyncio client."""
        self._require(sync=False)
        await self._arun(self._control("disable"))

    async def asnapshot(self) -> BreakerSnapshot:
        """``snapshot`` for a breaker on an asyncio client."""
        self._require(sync=False)
        return await self._arun(self._snapshot())

    async def aflush(self) -> None:
        """``flush`` for a breaker on an asyncio client."""
        self._require(sync=False)
        await self._arun(self._flush())

    # -- the steps of every operation, written once --------------------------------
    #
    # Each operation is a generator that yields (script, args) whenever it needs
    # Redis and gets the raw reply back (or the BackendUnavailableError thrown in).
    # ``_run`` drives it with blocking calls, ``_arun`` with awaits: that is the only
    # difference between the sync and the async API.

    def _run(self, steps: Steps[T]) -> T:
        try:
            request = next(steps)
            while True:
                try:
                    raw = self._backend.run(self.name, request[0], self._key_list, request[1])
                except BackendUnavailableError as exc:
                    request = steps.throw(exc)
                else:
                    request = steps.send(raw)
        except StopIteration as done:
            result: T = done.value
            return result

    async def _arun(self, steps: Steps[T]) -> T:
        try:
            request = next(steps)
            while True:
                try:
                    raw = await self._backend.arun(
                        self.name, request[0], self._key_list, request[1]
                    )
                except BackendUnavailableError as exc:
                    request = steps.throw(exc)
                else:
                    request = steps.send(raw)
        except StopIteration as done:
            result: T = done.value
            return result

    def _admission(self) -> Steps[Ticket]:
        step = self._plan()
        if isinstance(step, Ticket):
            return step
        try:
            raw = yield "acquire", self._acquire(step)
        except BackendUnavailableError as exc:
            return self._admit_fallback(exc)
        return self._admitted(self._core, raw, step)

    def _recording(self, ticket: Ticket, outcome: Outcome) -> Steps[None]:
        core = self._core_of(ticket)
        # Measured once: a failed Redis call must not make the call itself look slow.
        slow = core.is_slow(ticket)
        args = self._record_args(core, ticket, outcome, slow)
        if args is None:
            return
        if ticket.via_fallback:
            self._record_in_fallback_now(args)
            return
        try:
            raw = yield "record", args
        except BackendUnavailableError:
            self._record_in_fallback(outcome, slow)
            return
        self._apply(core, raw)

    def _control(self, action: ControlAction) -> Steps[None]:
        raw = yield "control", control_args(self.config, self.name, action, self._clock.epoch_ms())
        self._apply(self._core, raw)

    def _snapshot(self) -> Steps[BreakerSnapshot]:
        raw = yield "snapshot", snapshot_args(self.config, self.name, self._clock.epoch_ms())
        return decode_snapshot(self.name, raw, self._backend.kind)

    def _spend_retry(self, budget: RetryBudget) -> Steps[BudgetVerdict]:
        args = budget_args(
            self.config,
            self.name,
            ratio=budget.ratio,
            min_retries_per_second=budget.min_retries_per_second,
            now_ms=self._clock.epoch_ms(),
        )
        try:
            raw = yield "budget", args
        except BackendUnavailableError:
            if self.config.on_backend_error == "fail_closed":
                return BudgetVerdict(granted=False, retries=0, requests=0, limit=0.0, tokens=0.0)
            # The fallback breaker counts this process's calls: budget against those.
            raw = fallback_backend().run(self.name, "budget", self._key_list, args)
        return decode_budget(raw)

    def _flush(self) -> Steps[None]:
        args = self._flush_args()
        if args is None:
            return
        try:
            raw = yield "record", args
        except BackendUnavailableError as exc:
            logger.warning("breaker %s: batched successes lost: %s", self.name, exc.reason)
            return
        self._apply(self._core, raw)

    # -- shared steps (no I/O on the Redis backend) --------------------------------

    def _require(self, *, sync: bool) -> None:
        if sync and not self._backend.serves_sync:
            raise TypeError(
                f"breaker {self.name!r} uses an asyncio Redis client: "
                "use 'async with', 'await cb.call(async_fn)' and the a-prefixed methods"
            )
        if not sync and not self._backend.serves_async:
            raise TypeError(
                f"breaker {self.name!r} uses a sync Redis client: use 'with' and 'cb.call(fn)'"
            )

    def _rejection_now(self) -> CircuitOpenError | None:
        """The ``CircuitOpenError`` a call would get now, from the local view alone (no
        round trip): lets a retrier stop before it waits, not after."""
        core = self._fallback_core if self._backend.health.is_down() else self._core
        try:
            core.admit_locally()
        except CircuitOpenError as rejection:
            return rejection
        return None

    def _plan(self) -> Ticket | str:
        """A ticket when no round trip is needed, else a fresh lease id to acquire with."""
        health = self._backend.health
        if health.is_down():
            return self._admit_fallback(None)
        # After a failure, the local view is not trusted: the call's own acquire
        # probes Redis first, so that fail_closed never lets a call through unasked.
        ticket = None if health.is_suspect() else self._core.admit_locally()
        return ticket if ticket is not None else uuid.uuid4().hex

    def _acquire(self, lease_id: str) -> list[str | int]:
        return acquire_args(self.config, self.name, lease_id, self._clock.epoch_ms())

    def _admitted(self, core: BreakerCore, raw: list[Any], lease_id: str) -> Ticket:
        reply = decode_reply(raw)
        try:
            return core.admit_from(reply, lease_id)
        finally:
            self._made_here(reply.events)
            self._hub_of(core).relay(reply.events)

    def _apply(self, core: BreakerCore, raw: list[Any]) -> None:
        reply = decode_reply(raw)
        core.apply(reply)
        self._made_here(reply.events)
        self._hub_of(core).relay(reply.events)

    def _hub_of(self, core: BreakerCore) -> EventHub:
        return self._fallback_hub if core.fallback else self._hub

    def _core_of(self, ticket: Ticket) -> BreakerCore:
        return self._fallback_core if ticket.via_fallback else self._core

    def _record_args(
        self, core: BreakerCore, ticket: Ticket, outcome: Outcome, slow: bool
    ) -> list[str | int | float] | None:
        """The ``record`` arguments for this outcome, or None when no round trip is due."""
        absorbed = outcome == "success" and not slow and core.absorb_success(ticket)
        if absorbed and not core.flush_due():
            return None
        flush = core.take_flush(ticket.generation)
        sent: Outcome = "none" if absorbed else outcome
        if sent in ("none", "release") and not ticket.lease_id and flush.count == 0:
            return None
        return self._record_request(ticket.generation, ticket.lease_id, sent, slow, flush)

    def _flush_args(self) -> list[str | int | float] | None:
        view = self._core.view
        if view is None:
            return None
        flush = self._core.take_flush(view.generation)
        if flush.count == 0:
            return None
        return self._record_request(flush.generation, "", "none", False, flush)

    def _record_request(
        self, generation: int, lease_id: str, outcome: Outcome, slow: bool, flush: Flush | None
    ) -> list[str | int | float]:
        return record_args(
            self.config,
            self.name,
            generation=generation,
            lease_id=lease_id,
            outcome=outcome,
            slow=slow,
            batched=flush.count if flush else 0,
            seen_last_failure_at=flush.seen_last_failure_at if flush else 0,
            jitter_sample=random.random(),
            now_ms=self._clock.epoch_ms(),
        )

    # -- the in-process fallback, while Redis is unreachable -----------------------

    def _admit_fallback(self, error: BackendUnavailableError | None) -> Ticket:
        """Admit through the in-process breaker: same scripts, same config, local state."""
        if self.config.on_backend_error == "fail_closed":
            if error is not None:
                raise error
            raise BackendUnavailableError(
                self.name, f"backing off: {self._backend.health.last_error}"
            )
        core = self._fallback_core
        ticket = core.admit_locally()
        if ticket is not None:
            return ticket
        lease_id = uuid.uuid4().hex
        raw = fallback_backend().run(self.name, "acquire", self._key_list, self._acquire(lease_id))
        return self._admitted(core, raw, lease_id)

    def _record_in_fallback_now(self, args: list[str | int | float]) -> None:
        self._apply(
            self._fallback_core,
            fallback_backend().run(self.name, "record", self._key_list, args),
        )

    def _record_in_fallback(self, outcome: Outcome, slow: bool) -> None:
        """Redis failed while recording a call it admitted: let the fallback count it."""
        if outcome not in ("success", "failure") or self.config.on_backend_error != "fail_open":
            return
        try:
            ticket = self._admit_fallback(None)
        except CircuitOpenError:
            return
        self._record_in_fallback_now(
            self._record_request(ticket.generation, ticket.lease_id, outcome, slow, None)
        )

    # -- events --------------------------------------------------------------------

    def _receive(self, event: TransitionEvent) -> None:
        """A transition of this breaker, made by this process or any other."""
        self._core.apply_event(event)
        self._deliver(self._core, (event,))

    def _receive_fallback(self, event: TransitionEvent) -> None:
        self._fallback_core.apply_event(event)
        self._deliver(self._fallback_core, (event,))

    def _made_here(self, events: tuple[TransitionEvent, ...]) -> None:
        """Transitions in a reply to this object's own script call: made here, once."""
        for event in events:
            _tell(self._made_here_listeners, event)

    def _deliver(self, core: BreakerCore, events: tuple[TransitionEvent, ...]) -> None:
        for event in core.unseen(events):
            logger.info(
                "breaker %s: %s -> %s (%s)%s",
                event.name,
                event.from_state,
                event.to_state,
                event.reason,
                " [fallback]" if core.fallback else "",
            )
            _tell(self._listeners, event)


def _tell(listeners: list[Listener], event: TransitionEvent) -> None:
    """Hand ``event`` to each listener; one that fails is logged and skipped."""
    for listener in listeners:
        try:
            listener(event)
        except Exception:
            logger.exception("breaker listener %r failed", listener)


def _push(breaker: CircuitBreaker, ticket: Ticket) -> None:
    _ACTIVE.set((*_ACTIVE.get(), (id(breaker), ticket)))


def _pop(breaker: CircuitBreaker) -> Ticket:
    active = _ACTIVE.get()
    for index in range(len(active) - 1, -1, -1):
        if active[index][0] == id(breaker):
            _ACTIVE.set(active[:index] + active[index + 1 :])
            return active[index][1]
    raise RuntimeError(f"breaker {breaker.name!r} exited without being entered")
