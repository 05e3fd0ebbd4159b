"""A bulkhead's calls as the Lua library takes them, and its replies as one value.

Pure: no I/O. The layout of every reply is ``SLOTS_REPLY`` (the Lua's own list, tied
to this one by tests/test_contract.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import AdaptiveLimit

#: The fields of every bulkhead reply, in order (Lua's SLOTS_REPLY).
SLOTS_REPLY = ("verdict", "in_use", "limit", "retry_after", "processes", "count")


@dataclass(frozen=True, slots=True)
class BulkheadSnapshot:
    """What a bulkhead operation saw: leases held after it, the limit, processes seen.

    ``retry_after`` (seconds) is set on a refusal: when a lease is likely to come back.
    ``count`` is the operation's own: 1 for a lease granted, the leases given back or
    renewed."""

    verdict: str
    in_use: int
    limit: int
    retry_after: float
    processes: int
    count: int

    @property
    def granted(self) -> bool:
        return self.verdict == "granted"


def decode_slots(raw: list[Any]) -> BulkheadSnapshot:
    """One bulkhead reply, read by name once."""
    if len(raw) != len(SLOTS_REPLY):
        raise ValueError(f"a bulkhead reply has {len(SLOTS_REPLY)} fields, got {raw!r}")
    verdict, in_use, limit, retry_after, processes, count = raw
    return BulkheadSnapshot(
        verdict=verdict.decode() if isinstance(verdict, bytes) else str(verdict),
        in_use=int(in_use),
        limit=int(limit),
        retry_after=int(retry_after) / 1000,
        processes=int(processes),
        count=int(count),
    )


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _head(now_ms: int | None, process: str, lease_ttl: float) -> list[Any]:
    return ["" if now_ms is None else now_ms, process, _ms(lease_ttl)]


def take_args(
    now_ms: int | None,
    process: str,
    lease_ttl: float,
    *,
    limit: int,
    lease: str,
    waiter: str = "",
    wait: float = 0.0,
    adaptive: bool = False,
) -> list[Any]:
    """``take``: a lease ``lease`` if fewer than ``limit`` are held (``adaptive``: than
    the fleet's learnt limit, ``limit`` until there is one); a refused ``waiter`` is
    registered for ``wait`` seconds (a lease given back is published)."""
    return [
        *_head(now_ms, process, lease_ttl),
        limit,
        lease,
        waiter,
        _ms(wait) if waiter else 0,
        "1" if adaptive else "",
    ]


def tune_args(
    now_ms: int | None,
    process: str,
    lease_ttl: float,
    adaptive: AdaptiveLimit,
    *,
    mean: float,
    least: float,
) -> list[Any]:
    """``tune``: the mean and least latency (seconds) of this process's latest calls."""
    return [
        *_head(now_ms, process, lease_ttl),
        adaptive.min,
        adaptive.max,
        adaptive.initial,
        adaptive.tolerance,
        adaptive.smoothing,
        adaptive.queue,
        mean * 1000,
        least * 1000,
    ]


def give_args(
    now_ms: int | None,
    process: str,
    lease_ttl: float,
    *,
    channel: str,
    name: str,
    leases: list[tuple[str, float]],
) -> list[Any]:
    """``give``: each ``(lease id, seconds held)`` back; waiters hear of it on ``channel``."""
    pairs = [item for lease, held in leases for item in (lease, round(held * 1000))]
    return [*_head(now_ms, process, lease_ttl), channel, name, *pairs]


def renew_args(now_ms: int | None, process: str, lease_ttl: float, leases: list[str]) -> list[Any]:
    """``renew``: every one of ``leases``, ``lease_ttl`` from now."""
    return [*_head(now_ms, process, lease_ttl), *leases]


def occupancy_args(now_ms: int | None) -> list[Any]:
    return ["" if now_ms is None else now_ms]
