"""The wire between Python and the Lua scripts: ARGV building and reply decoding only.

Pure functions, tested without Redis. The argument order is the scripts' header
contracts (``lua/*.lua``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ._config import BreakerConfig
from ._keys import events_channel
from ._models import BreakerSnapshot, BudgetVerdict, TransitionEvent
from ._types import STATES, BackendKind, ControlAction, Outcome, State


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class Reply:
    """The reply every script shares: a verdict, the breaker's view, and its events."""

    verdict: str
    state: State
    created_at: int
    generation: int
    open_until: int
    now: int
    failures: int
    last_failure_at: int
    extra: str
    events: tuple[TransitionEvent, ...]

    @property
    def version(self) -> tuple[int, int]:
        return (self.created_at, self.generation)

    @property
    def retry_after(self) -> float:
        """Seconds until ``open_until`` on the Redis clock (0 when it has passed)."""
        return max(0.0, (self.open_until - self.now) / 1000)


def decode_reply(raw: list[Any]) -> Reply:
    state = _text(raw[1])
    if state not in STATES:
        raise ValueError(f"unknown breaker state in reply: {state!r}")
    events = tuple(
        event for event in (TransitionEvent.from_json(item) for item in raw[9:]) if event
    )
    return Reply(
        verdict=_text(raw[0]),
        state=state,
        created_at=int(raw[2]),
        generation=int(raw[3]),
        open_until=int(raw[4]),
        now=int(raw[5]),
        failures=int(raw[6]),
        last_failure_at=int(raw[7]),
        extra=_text(raw[8]),
        events=events,
    )


def _common(
    config: BreakerConfig, name: str, now_ms: int | None, *, stored: bool = False
) -> list[str | int]:
    """ARGV[1..6] of every script. ``stored``: an operator tool that does not know the
    breaker's settings sends none, and the script takes the ones the breaker stored."""
    settings: list[str | int] = (
        ["", "", ""] if stored else [_ms(config.key_ttl), _ms(config.window_bucket), config.buckets]
    )
    return ["" if now_ms is None else now_ms, name, events_channel(config.prefix), *settings]


def acquire_args(
    config: BreakerConfig, name: str, lease_id: str, now_ms: int | None
) -> list[str | int]:
    return [
        *_common(config, name, now_ms),
        config.half_open_max_calls,
        _ms(config.half_open_lease),
        lease_id,
    ]


#: What ``record.lua`` is told: an outcome, or "none" when it only carries batched
#: successes (ignored outcomes travel as "release": a trial lease given back unused).
_WIRE_OUTCOMES: dict[Outcome | None, str] = {
    "success": "success",
    "failure": "failure",
    "ignored": "release",
    None: "none",
}


def record_args(
    config: BreakerConfig,
    name: str,
    *,
    generation: int,
    lease_id: str,
    outcome: Outcome | None,
    slow: bool,
    batched: int,
    seen_last_failure_at: int,
    jitter_sample: float,
    now_ms: int | None,
) -> list[str | int | float]:
    return [
        *_common(config, name, now_ms),
        generation,
        lease_id,
        _WIRE_OUTCOMES[outcome],
        1 if slow else 0,
        batched,
        seen_last_failure_at,
        config.failure_threshold,
        config.success_threshold,
        _rate(config.failure_rate_threshold),
        _rate(config.slow_call_rate_threshold),
        config.minimum_calls,
        _ms(config.reset_timeout),
        0 if config.reset_timeout_max is None else _ms(config.reset_timeout_max),
        repr(float(config.reset_timeout_multiplier)),
        repr(float(config.reset_timeout_jitter)),
        repr(float(jitter_sample)),
    ]


def _rate(value: float | None) -> str:
    return "-1" if value is None else repr(float(value))


def control_args(
    config: BreakerConfig,
    name: str,
    action: ControlAction,
    now_ms: int | None,
    *,
    stored: bool = False,
) -> list[str | int]:
    return [*_common(config, name, now_ms, stored=stored), action]


def snapshot_args(
    config: BreakerConfig, name: str, now_ms: int | None, *, stored: bool = False
) -> list[str | int]:
    return _common(config, name, now_ms, stored=stored)


def budget_args(
    config: BreakerConfig,
    name: str,
    *,
    ratio: float,
    min_retries_per_second: float,
    now_ms: int | None,
) -> list[str | int]:
    """Ask ``budget.lua`` for one retry: the ratio's room, else a token of the floor."""
    return [
        *_common(config, name, now_ms),
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
    )
