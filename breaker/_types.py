"""The vocabulary every layer of the library shares, typed once. A leaf: it imports
nothing of the library."""

from __future__ import annotations

from typing import Literal, get_args

State = Literal["closed", "open", "half_open", "forced_open", "disabled"]
#: Every state a breaker can be in, in the order they are listed to operators.
STATES: tuple[State, ...] = ("closed", "open", "half_open", "forced_open", "disabled")

#: How a finished call counts: a success, a failure, or nothing at all (ignored).
Outcome = Literal["success", "failure", "ignored"]
#: What an outcome event tells: how a call counted, or that it was never made.
CallOutcome = Literal["success", "failure", "ignored", "rejected"]

ControlAction = Literal["reset", "force_open", "disable"]
BackendErrorPolicy = Literal["fail_open", "fail_closed"]

#: Where a breaker's state lives: a Redis server, the in-process embedded Redis
#: (fakeredis), or the per-process fallback used while Redis cannot be reached.
BackendKind = Literal["redis", "embedded", "fallback"]

#: The library's operations: a breaker's five, then a bulkhead's five.
ScriptName = Literal[
    "acquire",
    "budget",
    "control",
    "record",
    "snapshot",
    "take",
    "give",
    "renew",
    "tune",
    "occupancy",
]
SCRIPT_NAMES: tuple[ScriptName, ...] = get_args(ScriptName)
#: The operations that only read: FCALL_RO (a replica may answer them, in a cluster).
READ_ONLY_SCRIPTS: frozenset[ScriptName] = frozenset({"snapshot", "occupancy"})

#: How a server runs the library: as FUNCTIONs (Redis 7), as EVALSHA scripts, or
#: functions unless the server refuses them.
ScriptMode = Literal["auto", "functions", "eval"]
