"""Everything a breaker decides without I/O, as operations that yield what to run.

Each operation (admission, recording, control, snapshot, flush) is a generator: it
yields a ``Call`` (which lane, which script, which arguments) whenever it needs a
script run, and receives the raw reply, or has ``BackendUnavailableError`` thrown in
when the shared lane failed. ``_drive`` runs them with blocking calls or with awaits:
that is the only difference between the sync and the async API, and no blocking
call can reach the event loop from here.

The lanes: ``shared`` is where the fleet's state lives (Redis, or the embedded
backend); ``local`` is this process's fallback (``_local.LocalEngine``), which takes
over while the shared lane cannot be reached and the policy is ``fail_open``.

The engine also keeps what replies and events tell (the local views in ``_core``) and
tells it on: transitions to transition listeners, and how each call counted to
outcome listeners. It is the one place that emits outcome events.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from .._clock import Clock
from .._config import BreakerConfig
from .._exceptions import BackendUnavailableError, CircuitOpenError
from .._keys import BreakerKeys
from .._listeners import BreakerListener, overrides
from .._models import BreakerSnapshot, OutcomeEvent, SettingsConflict, TransitionEvent
from .._outage import OutageLog
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
    reply_text,
    snapshot_args,
)
from .._types import BackendKind, CallOutcome, ControlAction, Outcome, ScriptName
from .core import BreakerCore, Ticket

logger = logging.getLogger("breaker")

T = TypeVar("T")
Lane = Literal["shared", "local"]


@dataclass(frozen=True, slots=True)
class Call:
    """One script to run, on one lane."""

    lane: Lane
    script: ScriptName
    args: list[Any]


#: An operation: yields the calls it needs, receives each raw reply, returns T.
Steps = Generator[Call, list[Any], T]


class Health(Protocol):
    """What the engine needs to know of the shared lane's health (``BackendHealth``)."""

    last_error: str
    epoch: int

    def is_down(self, now: float) -> bool: ...

    def is_suspect(self) -> bool: ...


class Engine:
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
        # Whether this breaker's settings are known stored on each lane: its first call
        # there sends them (and the newest process's settings win).
        self._offered: dict[Lane, bool] = {"shared": False, "local": False}
        # The digest of the settings the store last said it holds, and how they differ
        # from this process's (None: they are this process's, or not known yet).
        self._stored_digest = ""
        self.conflict: SettingsConflict | None = None
        self.health = health
        self.shared = BreakerCore(name, config, clock, fallback=False)
        self.local = BreakerCore(name, config, clock, fallback=True)
        self._hubs = {False: hub, True: local_hub}
        # Each listener, under every method it overrides: a call pays only for what
        # someone hears.
        self._hearing: dict[str, list[BreakerListener]] = {
            method: []
            for method in ("transition", "made_here", "outcome", "backend_call", "settings")
        }
        self._abandoned: list[Ticket] = []
        self._lock = threading.Lock()
        self._outage = OutageLog(
            f"breaker {name}: Redis",
            lost="is unreachable",
            still="still unreachable",
            back="answers again",
        )
        # Transitions the channel told of that no reply has confirmed yet, numbered
        # as they came; ``confirm_due`` asks the follower for one read of the breaker.
        self._hints: list[tuple[int, TransitionEvent]] = []
        self._hint_seq = 0
        self.confirm_due = False
        # Round trips of this breaker under way: a hint heard meanwhile is most often
        # this call's own transition, published before its reply came back. The reply
        # confirms it; the follower reads only if a hint is left once none is.
        self._in_flight = 0
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
            self._tell_outcome("rejected", None, rejection.state, backend)
            raise
        except BackendUnavailableError:
            self._tell_outcome("rejected", None, "backend_unavailable", self.kind)
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
        try:
            ticket = self.shared.admit_locally(self._epoch) if trusted else None
        except CircuitOpenError:
            yield from self._count_rejection(self.shared)
            raise
        if ticket is not None:
            return ticket
        lease_id = uuid.uuid4().hex
        try:
            args = self._acquire_args(self.shared, lease_id)
            raw = yield from self.ask("shared", "acquire", args)
        except BackendUnavailableError as exc:
            return (yield from self._admit_locally(exc))
        return (yield from self._admitted(self.shared, raw, lease_id))

    def _admit_locally(self, error: BackendUnavailableError | None) -> Steps[Ticket]:
        """Admit through the fallback: the same scripts and settings, local state."""
        reason = error.reason if error is not None else f"backing off: {self.health.last_error}"
        self._tell_unreachable(reason)
        if self.config.on_backend_error == "fail_closed":
            cause = error.__cause__ if error is not None else None  # redis-py's, if any
            raise BackendUnavailableError(self.name, reason, refused_call=True) from cause
        ticket = self.local.admit_locally()
        if ticket is not None:
            return ticket
        lease_id = uuid.uuid4().hex
        raw = yield from self.ask("local", "acquire", self._acquire_args(self.local, lease_id))
        return (yield from self._admitted(self.local, raw, lease_id))

    def _acquire_args(self, core: BreakerCore, lease_id: str) -> Callable[[bool], list[Any]]:
        now = self.clock.epoch_ms()
        seen = core.view.version if core.view is not None else None
        return lambda offer: acquire_args(self.wired, lease_id, now, seen=seen, offer=offer)

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
            raw = yield from self.ask("shared", "record", args)
        except BackendUnavailableError:
            return  # counts, not decisions: lost with the outage
        self._heard(core, decode_reply(raw))

    # -- the settings, stored with the breaker ------------------------------------------

    def ask(
        self, lane: Lane, script: ScriptName, args_for: Callable[[bool], list[Any]]
    ) -> Steps[list[Any]]:
        """Run ``script`` on ``lane``, sending this breaker's settings with its first
        call there, and again if the breaker holds none (a flushed or new Redis)."""
        raw = yield Call(lane, script, args_for(not self._offered[lane]))
        if reply_text(raw, "verdict") == "unconfigured":
            raw = yield Call(lane, script, args_for(True))
        self._offered[lane] = True
        stored = reply_text(raw, "digest")
        if lane == "shared" and stored and stored != self._stored_digest:
            self._stored_digest = stored
            yield from self._compare_settings(stored)
        return raw

    def _compare_settings(
        self, stored: str, snapshot: BreakerSnapshot | None = None
    ) -> Steps[None]:
        """The store holds settings of another digest than it did: when they are not
        this process's, read them (one snapshot, unless one is at hand) and say loudly
        how they differ, once per digest. Two apps that share a Redis and a prefix
        rewrite each other's breakers this way; a rolling deploy that changes settings
        does it on purpose."""
        if stored == self.wired.digest:
            if self.conflict is not None:
                self.conflict = None
                logger.info("breaker %s: runs with this process's own settings again", self.name)
                self._tell_settings(None)
            return
        if snapshot is None:
            try:
                raw = yield Call("shared", "snapshot", snapshot_args(self.clock.epoch_ms()))
            except BackendUnavailableError:
                self._stored_digest = ""  # ask again with the next reply
                return
            snapshot = decode_snapshot(self.name, raw, self.kind)
        self.conflict = self.conflict_in(snapshot)
        if self.conflict is None:  # the same settings (another topology's channel, say)
            return
        logger.error(
            "breaker %s: another process stored other settings for it, and every call "
            "runs with them: %s. Two apps on one Redis must not share a prefix (give "
            "each its own); a reset through this process stores its settings again",
            self.name,
            self.conflict.describe(),
        )
        self._tell_settings(self.conflict)

    def conflict_in(self, snapshot: BreakerSnapshot) -> SettingsConflict | None:
        """How the settings ``snapshot`` read differ from this process's, or None."""
        if not snapshot.digest or snapshot.digest == self.wired.digest:
            return None
        differences = self.wired.differences(snapshot.settings)
        if not differences:
            return None
        return SettingsConflict(self.name, snapshot.digest, self.wired.digest, differences)

    def _tell_settings(self, conflict: SettingsConflict | None) -> None:
        for listener in self._hearing["settings"]:
            _tell(listener.settings, self.name, conflict)

    def would_reject(self) -> CircuitOpenError | None:
        """The ``CircuitOpenError`` a call would get now, by this process's view alone
        (no round trip)."""
        # Only a hint to stop retrying early: the view is used even while the channel
        # is not followed (the next call's admission asks Redis then).
        core = self.local if self.health.is_down(self.clock.monotonic()) else self.shared
        try:
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
        self._tell_outcome(outcome, duration, reason, backend)
        args = self._record_args(core, ticket, outcome, slow, duration)
        if args is None:
            return
        if ticket.via_fallback:
            self._heard(self.local, decode_reply((yield from self.ask("local", "record", args))))
            return
        try:
            raw = yield from self.ask("shared", "record", args)
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
        args = self._record_call(ticket.version, ticket.lease_id, outcome, duration, None)
        self._heard(self.local, decode_reply((yield from self.ask("local", "record", args))))

    def _record_args(
        self, core: BreakerCore, ticket: Ticket, outcome: Outcome, slow: bool, duration: float
    ) -> Callable[[bool], list[Any]] | None:
        """The ``record`` arguments for this outcome, or None when no round trip is due."""
        absorbed = outcome == "success" and not slow and core.absorb_success(ticket)
        if absorbed and not core.flush_due():
            return None
        batch = core.take_batch(ticket.version)
        sent: Outcome | None = None if absorbed else outcome
        if sent in (None, "ignored") and not ticket.lease_id and batch.empty:
            return None
        return self._record_call(ticket.version, ticket.lease_id, sent, duration, batch)

    def _record_call(
        self,
        version: Version,
        lease_id: str,
        outcome: Outcome | None,
        duration: float,
        batch: Batch | None,
    ) -> Callable[[bool], list[Any]]:
        now = self.clock.epoch_ms()
        duration_ms = round(duration * 1000)
        return lambda offer: record_args(
            self.wired,
            version=version,
            lease_id=lease_id,
            outcome=outcome,
            duration_ms=duration_ms,
            batch=batch,
            now_ms=now,
            offer=offer,
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
            raw = yield from self.ask("shared", "record", args)
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
            and self._in_flight == 0
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
        raw = yield from self.ask("shared", "control", args)
        self._heard(self.shared, decode_reply(raw))

    def snapshot(self) -> Steps[BreakerSnapshot]:
        raw = yield Call("shared", "snapshot", snapshot_args(self.clock.epoch_ms()))
        return decode_snapshot(self.name, raw, self.kind)

    # -- listeners -------------------------------------------------------------------

    def add_listener(self, listener: BreakerListener, *, made_here_only: bool) -> None:
        if overrides(listener, "transition"):
            self._hearing["made_here" if made_here_only else "transition"].append(listener)
        for method in ("outcome", "backend_call", "settings"):
            if overrides(listener, method):
                self._hearing[method].append(listener)

    def tell_backend_call(self, script: str, seconds: float) -> None:
        for listener in self._hearing["backend_call"]:
            _tell(listener.backend_call, script, seconds)

    # -- what replies and events tell ------------------------------------------------

    @property
    def _epoch(self) -> int:
        return self.health.epoch

    def _epoch_of(self, core: BreakerCore) -> int:
        """The epoch a view of ``core`` is taken in: the fallback's never changes."""
        return 0 if core.fallback else self.health.epoch

    def _tell_unreachable(self, reason: str) -> None:
        """One WARNING when this breaker's calls start being decided without Redis
        (then at most one a minute while it lasts), naming what happens instead."""
        line = self._outage.failed(reason, self.clock.monotonic())
        if line is not None:
            instead = (
                "refusing its calls (on_backend_error=fail_closed)"
                if self.config.on_backend_error == "fail_closed"
                else "deciding its calls in this process alone, not with the fleet "
                "(on_backend_error=fail_open)"
            )
            logger.warning("%s; %s until Redis answers", line, instead)

    def _heard(self, core: BreakerCore, reply: Reply) -> None:
        """A reply to this breaker's own call: refresh the view, tell the transitions
        it made to the made-here listeners (once in the fleet) and to this process's
        other breakers of the same name, and confirm the hints it covers."""
        if not core.fallback and self._outage.ongoing:
            back = self._outage.recovered(self.clock.monotonic())
            if back is not None:
                logger.info("%s; deciding with the fleet again", back)
        core.apply(reply, self._epoch_of(core))
        if not core.fallback and self._hints:
            # Before this call's own transitions: the hints told of earlier ones.
            self._confirm_hints(reply.version, self._hint_seq)
        for event in reply.events:
            if event.is_resync:
                continue
            for listener in self._hearing["made_here"]:
                _tell(listener.transition, event)
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
        if not core.fallback and self._hints:
            self._confirm_hints(event.version, self._hint_seq)
        self._tell_transition(core, event)

    # -- hints: what the channel says, confirmed with Redis before it counts -----------

    def _hint(self, event: TransitionEvent) -> None:
        """A message on the channel says the breaker moved on. Anyone who may PUBLISH
        can write one, and it never moves the view, its version or its open time:
        the view stops deciding alone, and the follower reads the breaker (one round
        trip per transition per process) or the next call's reply confirms it."""
        view = self.shared.view
        if view is not None and event.version <= view.version:
            self._tell_transition(self.shared, event)  # Redis had told of it already
            return
        with self._lock:
            self._hint_seq += 1
            self._hints.append((self._hint_seq, event))
            del self._hints[:-_HINTS_KEPT]
            self.confirm_due = True
        self.shared.distrust()

    def calling(self, started: bool) -> None:
        """The driver starts (``started``) or has finished a round trip of this breaker."""
        with self._lock:
            self._in_flight += 1 if started else -1

    @property
    def confirm_pending(self) -> bool:
        """A hint waits for a read: none of this breaker's own round trips is under way
        (its reply would tell)."""
        return self.confirm_due and self._in_flight == 0

    def confirming(self) -> Steps[None]:
        """Read the breaker once for the hints heard so far: the view becomes what
        Redis holds, and the listeners hear the hinted transitions it confirms."""
        with self._lock:
            if not self._hints:
                self.confirm_due = False
                return
            self.confirm_due = False
            asked = self._hint_seq
        epoch = self._epoch
        raw = yield Call("shared", "snapshot", snapshot_args(self.clock.epoch_ms()))
        reply = decode_reply(raw)
        self.shared.apply(reply, epoch)
        self._confirm_hints(reply.version, asked)
        if reply.digest and reply.digest != self._stored_digest:
            self._stored_digest = reply.digest
            snapshot = decode_snapshot(self.name, raw, self.kind)
            yield from self._compare_settings(reply.digest, snapshot)

    def _confirm_hints(self, stored: Version, asked: int) -> None:
        """Tell the hints Redis holds (their version is not past ``stored``); drop
        those it does not, if they came before the read was asked (``asked``)."""
        with self._lock:
            held = [event for _, event in self._hints if event.version <= stored]
            refused = [
                event for seq, event in self._hints if event.version > stored and seq <= asked
            ]
            self._hints = [
                (seq, event) for seq, event in self._hints if event.version > stored and seq > asked
            ]
            if not self._hints:
                self.confirm_due = False
        for event in held:
            self._tell_transition(self.shared, event)
        for event in refused:
            logger.warning(
                "breaker %s: ignored a message on its events channel that Redis does not "
                "hold (%s -> %s, version %d:%d; Redis is at %d:%d)",
                self.name,
                event.from_state,
                event.to_state,
                *event.version,
                *stored,
            )

    def _tell_transition(self, core: BreakerCore, event: TransitionEvent) -> None:
        """Log a transition and tell the listeners, once per version."""
        for fresh in core.unseen((event,)):
            if fresh.is_resync:
                logger.warning(
                    "breaker %s: the store held an older version than this fleet had "
                    "seen (a failover lost writes); it moved on to generation %d, %s",
                    fresh.name,
                    fresh.generation,
                    fresh.to_state,
                )
                continue
            logger.info(
                "breaker %s: %s -> %s (%s)%s",
                fresh.name,
                fresh.from_state,
                fresh.to_state,
                fresh.reason,
                " [fallback]" if core.fallback else "",
            )
            for listener in self._hearing["transition"]:
                _tell(listener.transition, fresh)

    def _tell_outcome(
        self, outcome: CallOutcome, duration: float | None, reason: str, backend: BackendKind
    ) -> None:
        if self._hearing["outcome"]:
            event = OutcomeEvent(self.name, outcome, duration, reason, backend)
            for listener in self._hearing["outcome"]:
                _tell(listener.outcome, event)


def _tell(method: Callable[..., None], *arguments: Any) -> None:
    """Call one listener's method; one that fails is logged and skipped."""
    try:
        method(*arguments)
    except Exception:
        logger.exception("breaker listener %r failed", method)


def describe(error: BaseException | None, result: object = None) -> str:
    """The ``reason`` of an outcome event: the exception's type, or the status of a
    result that has one (``status 503``)."""
    if error is not None:
        return type(error).__name__
    status = getattr(result, "status_code", None)
    if isinstance(status, int) and not isinstance(status, bool):
        return f"status {status}"
    return ""


#: The version of a breaker no process has heard of yet: no store holds it.
_NO_VERSION: Version = (0, 0)
#: Hints kept while unconfirmed: a flood of messages on the channel costs no memory.
_HINTS_KEPT = 64
