"""The wire between Python and the Lua library: ARGV building and reply decoding only.

Pure functions, tested without Redis. The argument order is the library's header
contracts (``lua/fleetbreaker.lua``). What is constant for a breaker, its settings, is
encoded once (``Wired``) and stored in Redis by its first call: a call then carries
only what varies (the outcome, the duration, the lease, the test clock).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from .._config import BreakerConfig
from .._keys import events_channel
from .._models import BreakerSnapshot, BudgetVerdict, TransitionEvent
from .._types import STATES, BackendKind, ControlAction, Outcome, State


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _rate(value: float | None) -> float:
    return -1 if value is None else float(value)


@dataclass(frozen=True, slots=True)
class Wired:
    """A breaker's settings as the library stores them, and their digest."""

    name: str
    digest: str
    payload: str  # the JSON the library stores

    @classmethod
    def of(cls, config: BreakerConfig, name: str, channel: str | None = None) -> Wired:
        """``channel``: where the library publishes the breaker's transitions
        (``events_channel`` unless given: a Cluster's is the breaker's own)."""
        settings = {
            "name": name,
            "channel": events_channel(config.prefix) if channel is None else channel,
            "key_ttl": _ms(config.key_ttl),
            "window_bucket": _ms(config.window_bucket),
            "buckets": config.buckets,
            "failure_threshold": config.failure_threshold,
            "success_threshold": config.success_threshold,
            "failure_rate_threshold": _rate(config.failure_rate_threshold),
            "slow_call_rate_threshold": _rate(config.slow_call_rate_threshold),
            "slow_call_duration": _ms(config.slow_call_duration or 0.0),
            "minimum_calls": config.minimum_calls,
            "reset_timeout": _ms(config.reset_timeout),
            "reset_timeout_max": _ms(config.reset_timeout_max or 0.0),
            "reset_timeout_multiplier": float(config.reset_timeout_multiplier),
            "reset_timeout_jitter": float(config.reset_timeout_jitter),
            "half_open_max_calls": config.half_open_max_calls,
            "half_open_lease": _ms(config.half_open_lease),
        }
        if config.quorum != 1:
            # Left out at its default, so that a breaker without a quorum keeps the
            # digest of the versions before quorums (no settings conflict while a
            # rolling upgrade runs both); the library stores the default for it.
            settings["quorum"] = float(config.quorum)
        payload = json.dumps(settings, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha1(payload.encode(), usedforsecurity=False).hexdigest()[:16]
        return cls(name, digest, payload)

    def differences(self, stored: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """The settings ``stored`` with the breaker (a snapshot's) that differ from
        these, as (stored, these); the channel is where each process publishes, and
        differs by topology, not by choice."""
        own = json.loads(self.payload) if self.payload else {}
        return {
            field: (stored.get(field), value)
            for field, value in own.items()
            if field not in ("name", "channel") and not _same(stored.get(field), value)
        }


def _same(stored: Any, own: Any) -> bool:
    """Equal as the library stores them: numbers by value (2 == 2.0), others as text."""
    if isinstance(stored, int | float) and isinstance(own, int | float):
        return float(stored) == float(own)
    return bool(stored == own)


#: An operator tool's settings: none, so that the library acts with the stored ones.
OPERATOR = Wired("", "", "")


@dataclass(frozen=True, slots=True)
class Reply:
    """The reply every operation shares: a verdict, the breaker's view, the digest of
    the settings the call ran with, and the transitions it made."""

    verdict: str
    state: State
    created_at: int
    generation: int
    open_until: int
    now: int
    failures: int
    last_failure_at: int
    extra: str
    digest: str
    events: tuple[TransitionEvent, ...]

    @property
    def version(self) -> tuple[int, int]:
        return (self.created_at, self.generation)

    @property
    def retry_after(self) -> float:
        """Seconds until ``open_until`` on the Redis clock (0 when it has passed)."""
        return max(0.0, (self.open_until - self.now) / 1000)

    @property
    def unconfigured(self) -> bool:
        """The breaker held no settings: nothing was done, send them."""
        return self.verdict == "unconfigured"


#: The layout of every reply, read by name from here on: ``REPLY`` in the library
#: (``lua/fleetbreaker.lua``), which builds every reply from it; the JSON of the call's
#: transitions follows. ``Reply`` holds these fields, in this order, then ``events``.
REPLY_FIELDS: tuple[str, ...] = (
    "verdict",
    "state",
    "created_at",
    "generation",
    "open_until",
    "now",
    "failures",
    "last_failure_at",
    "extra",
    "digest",
)
_AT = {field: index for index, field in enumerate(REPLY_FIELDS)}


def reply_text(raw: list[Any], field: str) -> str:
    """One field of a raw reply, as text, before (or without) decoding the whole."""
    return _text(raw[_AT[field]])


def decode_reply(raw: list[Any]) -> Reply:
    """A reply as redis-py gives it: bytes, and integers where the library answers
    with numbers."""
    if len(raw) < len(REPLY_FIELDS):
        raise ValueError(f"a reply holds {len(REPLY_FIELDS)} fields at least, got {len(raw)}")
    named = dict(zip(REPLY_FIELDS, raw, strict=False))
    state = _text(named["state"])
    if state not in STATES:
        raise ValueError(f"unknown breaker state in reply: {state!r}")
    events = tuple(
        event
        for event in (TransitionEvent.from_json(item) for item in raw[len(REPLY_FIELDS) :])
        if event
    )
    return Reply(
        verdict=_text(named["verdict"]),
        state=state,  # checked above
        created_at=int(named["created_at"]),
        generation=int(named["generation"]),
        open_until=int(named["open_until"]),
        now=int(named["now"]),
        failures=int(named["failures"]),
        last_failure_at=int(named["last_failure_at"]),
        extra=_text(named["extra"]),
        digest=_text(named["digest"]),
        events=events,
    )


def _common(wired: Wired, now_ms: int | None, offer: bool) -> list[str | int]:
    """ARGV[1..3]: the clock, the settings' digest, and the settings themselves when
    offered (a process's first call of a breaker, or after ``unconfigured``)."""
    return ["" if now_ms is None else now_ms, wired.digest, wired.payload if offer else ""]


#: A version of a breaker: (created_at, generation). Versions only grow: a hash made
#: again (lost to a restart, or to its TTL) has a later created_at.
Version = tuple[int, int]


def version_arg(version: Version | None) -> str:
    """A version as the library takes it: "<created_at>:<generation>" ("" for none)."""
    return "" if version is None else f"{version[0]}:{version[1]}"


def acquire_args(
    wired: Wired,
    lease_id: str,
    now_ms: int | None,
    *,
    seen: Version | None = None,
    offer: bool = False,
) -> list[str | int]:
    """``seen``: the latest version the caller knows of, so that a store that lost
    writes moves past it (``advance`` in the library)."""
    return [*_common(wired, now_ms, offer), lease_id, version_arg(seen)]


#: What the library is told of an outcome: "none" when a record call only carries a
#: batch; an ignored outcome travels as "release" (a trial lease given back unused).
_WIRE_OUTCOMES: dict[Outcome | None, str] = {
    "success": "success",
    "failure": "failure",
    "ignored": "release",
    None: "none",
}


@dataclass(frozen=True, slots=True)
class Batch:
    """What a process counted by itself since it last wrote: closed-state successes,
    calls it rejected, and the last failure it had seen."""

    successes: int = 0
    rejections: int = 0
    seen_last_failure_at: int = 0

    @property
    def empty(self) -> bool:
        return self.successes == 0 and self.rejections == 0

    def encoded(self) -> str:
        if self.empty:
            return ""
        return f"{self.successes}:{self.rejections}:{self.seen_last_failure_at}"


def record_args(
    wired: Wired,
    *,
    version: Version,
    lease_id: str,
    outcome: Outcome | None,
    duration_ms: int,
    batch: Batch | None,
    now_ms: int | None,
    offer: bool = False,
    voter: str = "",
    isolation: str = "",
) -> list[str | int]:
    """``voter``: the caller's, with a vote or a heartbeat ("" for none);
    ``isolation``: ``isolation_arg``'s, or "". Both travel only when one is given: a
    call without a quorum sends what it always did."""
    args: list[str | int] = [
        *_common(wired, now_ms, offer),
        version_arg(version),
        lease_id,
        _WIRE_OUTCOMES[outcome],
        duration_ms,
        batch.encoded() if batch is not None else "",
    ]
    if voter or isolation:
        args += [voter, isolation]
    return args


def isolation_arg(process: str, for_ms: int) -> str:
    """A process isolated for ``for_ms`` from now (on the store's clock), or no
    longer (0)."""
    return f"{process}={for_ms}"


def control_args(
    wired: Wired,
    action: ControlAction,
    now_ms: int | None,
    *,
    seen: Version | None = None,
    offer: bool = False,
) -> list[str | int]:
    return [*_common(wired, now_ms, offer), action, version_arg(seen)]


def snapshot_args(now_ms: int | None) -> list[str | int]:
    return [*_common(OPERATOR, now_ms, False)]


def budget_args(
    wired: Wired,
    *,
    ratio: float,
    min_retries_per_second: float,
    now_ms: int | None,
    offer: bool = False,
) -> list[str | int]:
    """Ask ``budget`` for one retry: the ratio's room, else a token of the floor."""
    return [
        *_common(wired, now_ms, offer),
        repr(float(ratio)),
        repr(float(min_retries_per_second)),
    ]


def decode_budget(raw: list[Any]) -> BudgetVerdict:
    reply = decode_reply(raw)
    detail = json.loads(reply.extra)
    return BudgetVerdict(
        granted=reply.verdict == "granted",
        retries=int(detail["retries"]),
        requests=int(detail["requests"]),
        limit=float(detail["limit"]),
        tokens=float(detail["tokens"]),
    )


def decode_snapshot(name: str, raw: list[Any], backend: BackendKind) -> BreakerSnapshot:
    reply = decode_reply(raw)
    detail = json.loads(reply.extra)
    return BreakerSnapshot(
        name=name,
        state=reply.state,
        failures=reply.failures,
        last_failure_at=reply.last_failure_at,
        opened_at=int(detail["opened_at"]),
        created_at=reply.created_at,
        open_until=reply.open_until,
        retry_after=reply.retry_after if reply.state == "open" else 0.0,
        generation=reply.generation,
        reopens=int(detail["reopens"]),
        trial_successes=int(detail["trial_successes"]),
        half_open_leases=int(detail["leases"]),
        window_calls=int(detail["calls"]),
        window_failures=int(detail["failed"]),
        window_slow_calls=int(detail["slow"]),
        window_retries=int(detail["retries"]),
        window_retries_refused=int(detail["refused"]),
        window_rejections=int(detail["rejected"]),
        backend=backend,
        settings=dict(detail.get("settings") or {}),
        digest=reply.digest,
        streak_voters=tuple(voter for voter in str(detail.get("voters", "")).split(",") if voter),
        live_voters=int(detail.get("live", 0)),
        isolated={process: int(until) for process, until in (detail.get("isolated") or {}).items()},
    )
