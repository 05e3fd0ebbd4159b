"""The library's arguments and replies, as pure functions, without Redis."""

from __future__ import annotations

import json
import re
from pathlib import Path

from breaker import BreakerConfig, TransitionEvent
from breaker._store.wire import (
    OPERATOR,
    Batch,
    Wired,
    acquire_args,
    budget_args,
    control_args,
    decode_reply,
    record_args,
    snapshot_args,
)

LIBRARY = (Path(__file__).parent.parent / "lua" / "fleetbreaker.lua").read_text()


def _declared(operation: str) -> int:
    """The highest ARGV an operation's header (after the shared ARGV[1..3]) declares."""
    header = LIBRARY.split(f"local function {operation}(keys, args)")[0]
    own = header.rsplit("\n\n", 1)[-1]
    numbers = [int(n) for n in re.findall(r"^-- ARGV\[(\d+)\]", own, re.MULTILINE)]
    return max(numbers, default=3)


def test_record_takes_eight_arguments_without_a_quorum_and_matches_its_contract() -> None:
    args = record_args(
        Wired.of(BreakerConfig(), "payments"),
        version=(1700000000000, 3),
        lease_id="",
        outcome="failure",
        duration_ms=12,
        batch=None,
        now_ms=None,
    )
    assert len(args) == 8
    assert args[3:] == ["1700000000000:3", "", "failure", 12, ""]
    # Under a quorum, a vote and an isolation ride along: the two optional ones.
    voting = record_args(
        Wired.of(BreakerConfig(quorum=2), "payments"),
        version=(1700000000000, 3),
        lease_id="",
        outcome="failure",
        duration_ms=12,
        batch=None,
        now_ms=None,
        voter="node-a",
        isolation="node-a/7=10000",
    )
    assert len(voting) == _declared("record") == 10
    assert voting[8:] == ["node-a", "node-a/7=10000"]


def test_every_operation_matches_its_contract() -> None:
    wired = Wired.of(BreakerConfig(), "p")
    assert len(acquire_args(wired, "lease", 5)) == _declared("acquire")
    assert acquire_args(wired, "lease", 5, seen=(7, 2))[3:] == ["lease", "7:2"]
    assert len(control_args(wired, "reset", None)) == _declared("control")
    assert len(snapshot_args(None)) == _declared("snapshot")
    args = budget_args(wired, ratio=0.2, min_retries_per_second=10, now_ms=None)
    assert len(args) == _declared("budget")


def test_settings_travel_only_when_offered_and_are_digested() -> None:
    wired = Wired.of(BreakerConfig(failure_rate_threshold=0.25), "p")
    assert acquire_args(wired, "l", None)[1:3] == [wired.digest, ""]
    offered = acquire_args(wired, "l", None, offer=True)
    settings = json.loads(str(offered[2]))
    assert (settings["failure_rate_threshold"], settings["slow_call_rate_threshold"]) == (0.25, -1)
    assert settings["name"] == "p"
    assert Wired.of(BreakerConfig(failure_rate_threshold=0.25), "p").digest == wired.digest
    assert Wired.of(BreakerConfig(failure_rate_threshold=0.5), "p").digest != wired.digest


def test_an_operator_tool_sends_no_settings_and_the_library_takes_the_stored_ones() -> None:
    assert control_args(OPERATOR, "reset", None)[:3] == ["", "", ""]


def test_a_batch_travels_as_one_argument() -> None:
    assert Batch(12, 3, 1000).encoded() == "12:3:1000"
    assert Batch().encoded() == ""


def test_decode_reply_reads_the_view_the_digest_and_the_events() -> None:
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
            b"d1g35t",
            json.dumps(event).encode(),
        ]
    )
    assert (reply.state, reply.version, reply.retry_after) == ("open", (500, 4), 10.0)
    assert reply.digest == "d1g35t"
    assert reply.events == (
        TransitionEvent("p", "closed", "open", 1000, "failure_threshold", 500, 4, 11000),
    )


def test_malformed_events_are_dropped_not_raised() -> None:
    assert TransitionEvent.from_json(b"not json") is None
    assert TransitionEvent.from_json(b'{"name": "p"}') is None
