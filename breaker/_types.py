"""The vocabulary every layer of the library shares, typed once. A leaf: it imports
nothing of the library."""

from __future__ import annotations

from typing import Literal

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

ScriptName = Literal["acquire", "budget", "control", "record", "snapshot"]
SCRIPT_NAMES: tuple[ScriptName, ...] = ("acquire", "budget", "control", "record", "snapshot")

#: How a server runs the library: as FUNCTIONs (Redis 7), as EVALSHA scripts, or
#: functions unless the server refuses them.
ScriptMode = Literal["auto", "functions", "eval"]
