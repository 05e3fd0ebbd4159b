"""Everything a breaker decides without I/O, as operations that yield what to run.

Each operation (admission, recording, control, snapshot, flush) is a generator: it
yields a ``Call`` (which lane, which script, which arguments) whenever it needs a
script run, and receives the raw reply, or has ``BackendUnavailableError`` thrown in
when the shared lane failed. ``drive`` runs them with blocking calls or with awaits:
that is the only difference between the sync and the async API, and no blocking
call can reach the event loop from here.

The lanes: ``shared`` is where the fleet's state lives (Redis, or the embedded
backend); ``local`` is this process's fallback (``_store.local.LocalEngine``), which takes
over while the shared lane cannot be reached and the policy is ``fail_open``.

The engine keeps what replies and events tell (the views in ``core``; the channel's
hints in ``hints``), and has ``telling`` tell listeners; ``settings`` keeps the stored
settings apart.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

from .._clock import Clock
from .._config import BreakerConfig
from .._exceptions import BackendUnavailableError, CircuitOpenError
from .._keys import BreakerKeys
from .._listeners import BreakerListener
from .._models import BreakerSnapshot, TransitionEvent
from .._store.events import EventHub
from .._store.wire import (
    Batch,
    Reply,
    Version,
    Wired,
    acquire_args,
    control_args,
    decode_reply,
    decode_snapshot,
    record_args,
    snapshot_args,
)
from .._types import BackendKind, ControlAction, Outcome
from .confirming import Confirming
from .core import BreakerCore, Ticket
from .hints import Hints
from .isolation import Isolation
from .settings import StoredSettings
from .steps import Call, Health, Steps
from .telling import Hearing, Unreachable

logger = logging.getLogger("breaker")


class Engine(Confirming):
    """One breaker's decisions: its local views on both lanes, the steps of each
    operation, the fallback policy, and its listeners."""

    def __init__(
        self,
        name: str,
        config: BreakerConfig,
        clock: Clock,
        *,
        kind: BackendKind,
        health: Health,
        hub: EventHub,
        local_hub: EventHub,
        channel: str | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.clock = clock
        self.kind = kind
        self.keys = BreakerKeys.of(config.prefix, name)
        self.wired = Wired.of(config, name, channel)
        # The fallback decides alone: no quorum, it trips on this process's failures.
        self._wired_alone = Wired.of(dataclasses.replace(config, quorum=1), name, channel)
        self.health = health
        self.shared = BreakerCore(name, config, clock, fallback=False)
        self.local = BreakerCore(name, config, clock, fallback=True)
        self._hubs = {False: hub, True: local_hub}
        self.hearing = Hearing()
        self.isolation = Isolation(name, config, clock)
        if self.isolation.enabled:
            self.hearing.add(self.isolation, made_here_only=False)  # it hears resets
        self.settings = StoredSettings(name, self.wired, clock, kind, self.hearing)
        self._abandoned: list[Ticket] = []
        self._lock = threading.Lock()
        self.unreachable = Unreachable(name, config.on_backend_error)
        self.hints = Hints(name)
        # One token per permit handed out and not settled yet. ``list.append`` and
        # ``list.pop`` are atomic: a dropped permit's finalizer gives its token back
        # without taking a lock that its own thread may hold.
        self._unsettled: list[None] = []
        hub.register(name, self.receive)
        local_hub.register(name, self.receive_local)

    # -- admission -------------------------------------------------------------------

    def admission(self) -> Steps[Ticket]:
        """Admit a call, or raise ``CircuitOpenError`` (``BackendUnavailableError``
        when Redis is away and the policy is ``fail_closed``)."""
        yield from self._release_abandoned()
        try:
            ticket = yield from self._admission()
        except CircuitOpenError as rejection:
            down = self.health.is_down(self.clock.monotonic())
            backend: BackendKind = "fallback" if down else self.kind
            self.hearing.outcome(
                self.name, "rejected", None, rejection.reason or rejection.state, backend
            )
            raise
        except BackendUnavailableError:
            self.hearing.outcome(self.name, "rejected", None, "backend_unavailable", self.kind)
            raise
        self._unsettled.append(None)  # until ``settling`` ends, or ``abandon``
        return ticket

    def _admission(self) -> Steps[Ticket]:
        if self.health.is_down(self.clock.monotonic()):
            return (yield from self._admit_locally(None))
        # After a failure the local view is not trusted: the call's own acquire asks
        # Redis first, so that fail_closed never lets a call through unasked. Nor is it
        # while the events channel is not followed: a transition made elsewhere would
        # go unheard, so the view could be wrong without knowing it.
        trusted = not self.health.is_suspect() and self._hubs[False].following
        trial, ticket = False, None
        try:
            try:
                trial = self.isolation.admit()  # this process may have isolated itself
                ticket = self.shared.admit_locally(self._epoch) if trusted else None
            except CircuitOpenError:
                yield from self._count_rejection(self.shared)
                raise
            if ticket is None:
                ticket = yield from self._acquire()
        finally:
            if trial and (ticket is None or ticket.via_fallback):  # no trial went out
                self.isolation.withdraw_trial()
        return dataclasses.replace(ticket, isolation_trial=True) if trial else ticket

    def _acquire(self) -> Steps[Ticket]:
        """Ask Redis (its view could not decide), or the fallback if it is away."""
        lease_id = uuid.uuid4().hex
        try:
            args = self._acquire_args(self.shared, lease_id)
            raw = yield from self.settings.ask("shared", "acquire", args)
        except BackendUnavailableError as exc:
            return (yield from self._admit_locally(exc))
        return (yield from self._admitted(self.shared, raw, lease_id))

    def _admit_locally(self, error: BackendUnavailableError | None) -> Steps[Ticket]:
        """Admit through the fallback: the same scripts and settings, local state."""
        reason = error.reason if error is not None else f"backing off: {self.health.last_error}"
        self.unreachable.failed(reason, self.clock.monotonic())
        if self.config.on_backend_error == "fail_closed":
            cause = error.__cause__ if error is not None else None  # redis-py's, if any
            raise BackendUnavailableError(self.name, reason, refused_call=True) from cause
        ticket = self.local.admit_locally()
        if ticket is not None:
            return ticket
        lease_id = uuid.uuid4().hex
        raw = yield from self.settings.ask(
            "local", "acquire", self._acquire_args(self.local, lease_id)
        )
        return (yield from self._admitted(self.local, raw, lease_id))

    def _acquire_args(self, core: BreakerCore, lease_id: str) -> Callable[[bool], list[Any]]:
        now = self.clock.epoch_ms()
        seen = core.view.version if core.view is not None else None
        wired = self._wired_alone if core.fallback else self.wired
        return lambda offer: acquire_args(wired, lease_id, now, seen=seen, offer=offer)

    def _admitted(self, core: BreakerCore, raw: list[Any], lease_id: str) -> Steps[Ticket]:
        reply = decode_reply(raw)
        try:
            return core.admit_from(reply, lease_id, self._epoch_of(core))
        except CircuitOpenError:
            yield from self._count_rejection(core)
            raise
        finally:
            self._heard(core, reply)

    def _count_rejection(self, core: BreakerCore) -> Steps[None]:
        """Count a rejection; report this process's rejections to the fleet's window
        when due (at most once a second: an open breaker sends nothing else)."""
        if core.fallback or not core.count_rejection():
            return
        view = core.view
        version = view.version if view else _NO_VERSION
        args = self._record_call(version, "", None, 0, core.take_batch(version))
        try:
            raw = yield from self.settings.ask("shared", "record", args)
        except BackendUnavailableError:
            return  # counts, not decisions: lost with the outage
        self._heard(core, decode_reply(raw))

    def would_reject(self) -> CircuitOpenError | None:
        """The ``CircuitOpenError`` a call would get now, by this process's view alone
        (no round trip; reason "isolated" while it refuses its own calls, a quorum)."""
        # Only a hint to stop retrying early: the view is used even while the channel
        # is not followed (the next call's admission asks Redis then).
        core = self.local if self.health.is_down(self.clock.monotonic()) else self.shared
        try:
            if core is self.shared:
                self.isolation.refusal()
            core.admit_locally(self._epoch_of(core))
        except CircuitOpenError as rejection:
            return rejection
        return None

    # -- outcomes --------------------------------------------------------------------

    def settling(self, ticket: Ticket, outcome: Outcome, reason: str = "") -> Steps[None]:
        """Settle a permit: count how its call ended. The breaker is busy (not
        ``idle``) until the count is recorded, or batched."""
        try:
            yield from self.recording(ticket, outcome, reason)
        finally:
            self._unsettled.pop()

    def recording(self, ticket: Ticket, outcome: Outcome, reason: str = "") -> Steps[None]:
        """Count how an admitted call ended."""
        core = self.local if ticket.via_fallback else self.shared
        # Measured once: a failed Redis call must not make the call itself look slow.
        duration = self.clock.monotonic() - ticket.started
        slow = core.is_slow(ticket)
        backend: BackendKind = "fallback" if ticket.via_fallback else self.kind
        self.hearing.outcome(self.name, outcome, duration, reason, backend)
        fallback, trial = ticket.via_fallback, ticket.isolation_trial
        extras = ("", "") if fallback else self.isolation.record_extras(outcome, slow, trial=trial)
        args = self._record_args(core, ticket, outcome, slow, duration, extras)
        if args is None:
            return
        if ticket.via_fallback:
            self._heard(
                self.local, decode_reply((yield from self.settings.ask("local", "record", args)))
            )
            return
        try:
            raw = yield from self.settings.ask("shared", "record", args)
        except BackendUnavailableError:
            yield from self._record_locally(outcome, duration)
            return
        self._heard(self.shared, decode_reply(raw))

    def _record_locally(self, outcome: Outcome, duration: float) -> Steps[None]:
        """Redis failed while recording a call it admitted: let the fallback count it."""
        if outcome == "ignored" or self.config.on_backend_error != "fail_open":
            return
        try:
            ticket = yield from self._admit_locally(None)
        except CircuitOpenError:
            return
        args = self._record_call(
            ticket.version, ticket.lease_id, outcome, duration, None, fallback=True
        )
        self._heard(
            self.local, decode_reply((yield from self.settings.ask("local", "record", args)))
        )

    def _record_args(
        self,
        core: BreakerCore,
        ticket: Ticket,
        outcome: Outcome,
        slow: bool,
        duration: float,
        extras: tuple[str, str],
    ) -> Callable[[bool], list[Any]] | None:
        """The ``record`` arguments for this outcome, or None when no round trip is due.
        ``extras``: the voter and the isolation the record carries (quorum), if any."""
        told = extras != ("", "")
        absorbed = outcome == "success" and not slow and core.absorb_success(ticket)
        if absorbed and not core.flush_due() and not told:
            return None
        batch = core.take_batch(ticket.version)
        sent: Outcome | None = None if absorbed else outcome
        if sent in (None, "ignored") and not ticket.lease_id and batch.empty and not told:
            return None
        return self._record_call(
            ticket.version, ticket.lease_id, sent, duration, batch, core.fallback, extras
        )

    def _record_call(
        self,
        version: Version,
        lease_id: str,
        outcome: Outcome | None,
        duration: float,
        batch: Batch | None,
        fallback: bool = False,
        extras: tuple[str, str] = ("", ""),
    ) -> Callable[[bool], list[Any]]:
        now = self.clock.epoch_ms()
        duration_ms = round(duration * 1000)
        voter, isolation = extras
        return lambda offer: record_args(
            self._wired_alone if fallback else self.wired,
            version=version,
            lease_id=lease_id,
            outcome=outcome,
            duration_ms=duration_ms,
            batch=batch,
            now_ms=now,
            offer=offer,
            voter=voter,
            isolation=isolation,
        )

    def flushing(self) -> Steps[None]:
        """Record what was counted locally (batched successes, rejections), now."""
        view = self.shared.view
        if view is None:
            return
        batch = self.shared.take_batch(view.version)
        if batch.empty:
            return
        args = self._record_call(view.version, "", None, 0.0, batch)
        try:
            raw = yield from self.settings.ask("shared", "record", args)
        except BackendUnavailableError as exc:
            logger.warning("breaker %s: batched counts lost: %s", self.name, exc.reason)
            return
        self._heard(self.shared, decode_reply(raw))

    # -- abandoned permits -----------------------------------------------------------

    def abandon(self, ticket: Ticket) -> None:
        """A permit was dropped unsettled: give its trial lease back on the next call
        (safe from a finalizer: no I/O here)."""
        self._unsettled.pop()
        if ticket.lease_id:
            with self._lock:
                self._abandoned.append(ticket)

    def _release_abandoned(self) -> Steps[None]:
        if not self._abandoned:
            return
        with self._lock:
            abandoned, self._abandoned = self._abandoned, []
        for ticket in abandoned:
            yield from self.recording(ticket, "ignored", "abandoned")

    @property
    def idle(self) -> bool:
        """Closing this breaker now would lose nothing and cost no round trip: every
        permit is settled, no round trip is under way, no dropped permit's lease waits
        to be given back, and both views are closed with no counts waiting."""
        return (
            not self._unsettled
            and self.hints.idle
            and not self._abandoned
            and self.shared.idle
            and self.local.idle
        )

    def releasing(self) -> Steps[None]:
        """When closing: give back the leases of dropped permits, and record what was
        counted locally (batched successes, rejections), which would be lost."""
        yield from self._release_abandoned()
        if not self.health.is_down(self.clock.monotonic()):
            yield from self.flushing()

    def detach(self) -> None:
        """When closing, after ``releasing``: no event of this breaker reaches it now."""
        for hub in self._hubs.values():
            hub.unregister(self.name, self)

    # -- operators -------------------------------------------------------------------

    def control(self, action: ControlAction) -> Steps[None]:
        now = self.clock.epoch_ms()
        view = self.shared.view
        seen = view.version if view is not None else None
        # A reset through this process stores its settings too: whoever rewrote them,
        # the breaker comes back under the settings of the one who reset it.
        reassert = action == "reset"
        args = lambda offer: control_args(  # noqa: E731
            self.wired, action, now, seen=seen, offer=offer or reassert
        )
        raw = yield from self.settings.ask("shared", "control", args)
        self._heard(self.shared, decode_reply(raw))

    def snapshot(self) -> Steps[BreakerSnapshot]:
        raw = yield Call("shared", "snapshot", snapshot_args(self.clock.epoch_ms()))
        return decode_snapshot(self.name, raw, self.kind)

    # -- listeners -------------------------------------------------------------------

    def add_listener(self, listener: BreakerListener, *, made_here_only: bool) -> None:
        self.hearing.add(listener, made_here_only=made_here_only)

    def tell_backend_call(self, script: str, seconds: float) -> None:
        self.hearing.backend_call(script, seconds)

    # -- what replies and events tell ------------------------------------------------

    @property
    def _epoch(self) -> int:
        return self.health.epoch

    def _epoch_of(self, core: BreakerCore) -> int:
        """The epoch a view of ``core`` is taken in: the fallback's never changes."""
        return 0 if core.fallback else self.health.epoch

    def _heard(self, core: BreakerCore, reply: Reply) -> None:
        """A reply to this breaker's own call: refresh the view, tell the transitions
        it made to the made-here listeners (once in the fleet) and to this process's
        other breakers of the same name, and confirm the hints it covers."""
        if not core.fallback and self.unreachable.ongoing:
            self.unreachable.recovered(self.clock.monotonic())
        core.apply(reply, self._epoch_of(core))
        if not core.fallback and self.hints:
            # Before this call's own transitions: the hints told of earlier ones.
            self._confirm_hints(reply.version, self.hints.latest)
        for event in reply.events:
            if event.is_resync:
                continue
            self.hearing.made_here(event)
        self._hubs[core.fallback].relay(reply.events)

    def receive(self, event: TransitionEvent, confirmed: bool = True) -> None:
        """A transition of this breaker, made by this process (``confirmed``: from a
        reply) or any other (a hint, from the channel)."""
        if confirmed:
            self._deliver(self.shared, event)
        else:
            self._hint(event)

    def receive_local(self, event: TransitionEvent, confirmed: bool = True) -> None:
        self._deliver(self.local, event)

    def _deliver(self, core: BreakerCore, event: TransitionEvent) -> None:
        core.apply_event(event, self._epoch_of(core))
        if not core.fallback and self.hints:
            self._confirm_hints(event.version, self.hints.latest)
        self.hearing.transition(core, event)


_NO_VERSION: Version = (0, 0)  # of a breaker no process has heard of yet: no store holds it
