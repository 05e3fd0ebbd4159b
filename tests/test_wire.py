"""Script arguments and replies, as pure functions, without Redis."""

from __future__ import annotations

import json
import re
from pathlib import Path

from breaker import BreakerConfig, TransitionEvent
from breaker._wire import acquire_args, control_args, decode_reply, record_args, snapshot_args

LUA = Path(__file__).parent.parent / "lua"


def _declared_argv(script: str) -> int:
    """The highest ARGV the script's header (or the prelude's) declares."""
    declared = []
    for name in (script, "_prelude"):
        header = (LUA / f"{name}.lua").read_text()
        declared += [int(n) for n in re.findall(r"^--\s+ARGV\[(\d+)\]", header, re.MULTILINE)]
    return max(declared)


def test_record_args_match_the_scripts_argv_contract() -> None:
    args = record_args(
        BreakerConfig(),
        "payments",
        generation=3,
        lease_id="",
        outcome="failure",
        slow=False,
        batched=0,
        seen_last_failure_at=0,
        jitter_sample=0.5,
        now_ms=None,
    )
    assert len(args) == _declared_argv("record")
    assert args[:6] == ["", "payments", "breaker:events", 604_800_000, 1000, 10]


def test_acquire_control_and_snapshot_args_match_their_contracts() -> None:
    assert len(acquire_args(BreakerConfig(), "p", "lease", 5)) == _declared_argv("acquire")
    assert len(control_args(BreakerConfig(), "p", "reset", None)) == _declared_argv("control")
    assert len(snapshot_args(BreakerConfig(), "p", None)) == _declared_argv("snapshot")


def test_an_operator_tool_sends_no_settings_and_the_script_takes_the_stored_ones() -> None:
    args = control_args(BreakerConfig(key_ttl=60.0), "p", "reset", None, stored=True)
    assert args[3:6] == ["", "", ""]


def test_rates_are_sent_as_minus_one_when_off() -> None:
    args = record_args(
        BreakerConfig(failure_rate_threshold=0.25),
        "p",
        generation=0,
        lease_id="",
        outcome="success",
        slow=False,
        batched=0,
        seen_last_failure_at=0,
        jitter_sample=0.0,
        now_ms=1,
    )
    assert args[14:16] == ["0.25", "-1"]


def test_decode_reply_reads_the_view_and_the_events() -> None:
    event = {
        "name": "p",
        "from": "closed",
        "to": "open",
        "at": 1000,
        "reason": "failure_threshold",
        "created_at": 500,
        "generation": 4,
        "open_until": 11000,
    }
    reply = decode_reply(
        [
            b"counted",
            b"open",
            b"500",
            b"4",
            b"11000",
            b"1000",
            b"5",
            b"1000",
            b"",
            json.dumps(event).encode(),
        ]
    )
    assert (reply.state, reply.version, reply.retry_after) == ("open", (500, 4), 10.0)
    assert reply.events == (
        TransitionEvent("p", "closed", "open", 1000, "failure_threshold", 500, 4, 11000),
    )


def test_malformed_events_are_dropped_not_raised() -> None:
    assert TransitionEvent.from_json(b"not json") is None
    assert TransitionEvent.from_json(b'{"name": "p"}') is None
