"""The shape of a decision: an operation is a generator that yields ``Call``s (which
lane, which script, which arguments) and receives each raw reply. The drivers
(``drive``) are the only code that runs them.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from .._types import ScriptName

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
