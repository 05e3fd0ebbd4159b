"""How a bulkhead's leases go back to Redis: the give (the gives owed riding along),
the gives owed sent again, and for an adaptive limit the latencies told to the fleet.
Steps (``lanes.Steps``) for the bulkhead's drivers to run; what is kept between
calls is under locks of its own, never held across a Redis call."""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import threading
from collections.abc import Iterable
from typing import Any

from .._clock import Clock
from .._decisions.steps import Call
from .._exceptions import BackendUnavailableError
from .config import AdaptiveLimit
from .lanes import Steps
from .lease import Lease
from .wire import decode_slots, give_args, tune_args

#: A give owed: the lease's id, seconds held, when its give failed (monotonic).
Owed = tuple[str, float, float]
#: The most owed gives sent in one call (the rest go with the next).
BATCH = 256


class OwedGives:
    """Gives that got no reply (Redis away, or a reply slower than
    ``backend_timeout``: it may even have been done), and takes whose reply was lost
    (Redis may have granted them). Each goes again inside the next give of the
    process, or with the next renewal; a give is idempotent, so one that was in fact
    done costs nothing. Without this a lease kept a place of the fleet's limit until
    ``lease_ttl``."""

    def __init__(self, lease_ttl: float) -> None:
        self._lease_ttl = lease_ttl
        self._lock = threading.Lock()
        self._owed: dict[str, tuple[float, float]] = {}  # id -> (held, since)

    def owe(self, gives: Iterable[Owed]) -> None:
        with self._lock:
            for lease_id, held, since in gives:
                self._owed.setdefault(lease_id, (held, since))

    def due(self, now: float) -> list[Owed]:
        """The gives owed, taken to be sent (at most ``BATCH``); those owed
        ``lease_ttl`` or longer are dropped: their leases have expired in Redis since."""
        with self._lock:
            if not self._owed:
                return []
            self._owed = {
                lease_id: (held, since)
                for lease_id, (held, since) in self._owed.items()
                if now - since < self._lease_ttl
            }
            owed = [
                (lease_id, held, since)
                for lease_id, (held, since) in itertools.islice(self._owed.items(), BATCH)
            ]
            for lease_id, _, _ in owed:
                del self._owed[lease_id]
        return owed


class Latencies:
    """The latencies of this process's calls since it last told the fleet, for an
    adaptive limit: counted as leases go back, told once every ``interval`` (with
    jitter: processes that started together must not measure in step)."""

    def __init__(self, interval: float, now: float) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        self._samples = (0, 0.0, math.inf)  # count, sum, least
        self._due = now

    def add(self, held: float, now: float) -> tuple[float, float] | None:
        """Count ``held``; the mean and least to tell the fleet, once the interval is up."""
        with self._lock:
            count, total, least = self._samples
            count, total, least = self._samples = (count + 1, total + held, min(least, held))
            if now < self._due:
                return None
            self._samples = (0, 0.0, math.inf)
            self._due = now + self._interval * random.uniform(0.75, 1.25)
        return total / count, least


class Giving:
    """The give-side steps of one bulkhead (``name``, of ``process``)."""

    def __init__(
        self,
        name: str,
        process: str,
        lease_ttl: float,
        channel: str,
        clock: Clock,
        adaptive: AdaptiveLimit | None,
    ) -> None:
        self._name = name
        self._process = process
        self._lease_ttl = lease_ttl
        self._channel = channel
        self._clock = clock
        self._adaptive = adaptive
        self.owed = OwedGives(lease_ttl)
        # Lease ids whose shared take lost its reply while the call went on with a
        # local lease of the same id: their shared give is owed when that one goes back.
        self._unsure: set[str] = set()
        self._lock = threading.Lock()
        self._latencies = (
            None if adaptive is None else Latencies(adaptive.interval, clock.monotonic())
        )

    def give(self, lease: Lease) -> Steps:
        """``lease`` back, in its lane; the seconds it was held."""
        now = self._clock.monotonic()
        held = now - lease.taken_at
        if lease.lane == "shared":
            # Gives that failed earlier ride along: one call for all of them.
            yield from self._sending([(lease.id, held, now), *self.owed.due(now)])
        else:  # the fallback lane is this process's: it does not fail
            yield Call("local", "give", self._args("", [(lease.id, held, now)]))
            with self._lock:
                unsure = lease.id in self._unsure
                self._unsure.discard(lease.id)
            if unsure:
                self.owed.owe([(lease.id, held, now)])
        return held

    def lost_take(self, lease_id: str, started: float, *, going_on: bool) -> None:
        """A shared take whose reply was lost (Redis may have granted ``lease_id``),
        the call then decided on the fallback lane. Its give is owed now if the call
        does not go on; else once its local lease goes back: until then Redis counting
        it keeps the fleet's count on the safe side."""
        if going_on:
            with self._lock:
                self._unsure.add(lease_id)
            return
        now = self._clock.monotonic()
        self.owed.owe([(lease_id, now - started, now)])

    def pay(self) -> Steps:
        """The gives owed, sent again (at each renewal, and at close), a batch at a
        time until none is due or one fails."""
        while owed := self.owed.due(self._clock.monotonic()):
            if not (yield from self._sending(owed)):
                return

    def tune(self, held: float) -> Steps:
        """Count ``held`` (a shared lease's); once this process's interval is up, tell
        the fleet the mean and least of its latest latencies: the limit it learnt
        (one call), else None."""
        if self._adaptive is None or self._latencies is None:
            return None
        told = self._latencies.add(held, self._clock.monotonic())
        if told is None:
            return None
        mean, least = told
        args = tune_args(
            self._clock.epoch_ms(),
            self._process,
            self._lease_ttl,
            self._adaptive,
            mean=mean,
            least=least,
        )
        with contextlib.suppress(BackendUnavailableError):
            return max(1, decode_slots((yield Call("shared", "tune", args))).count)
        return None

    def _sending(self, gives: list[Owed]) -> Steps:
        """Give ``gives`` back in Redis: whether it was done. One that fails is owed
        (``OwedGives``), and so is one whose driver was cancelled or torn down."""
        try:
            yield Call("shared", "give", self._args(self._channel, gives))
        except BackendUnavailableError:
            self.owed.owe(gives)
            return False
        except BaseException:  # GeneratorExit, when the driver's task was cancelled
            self.owed.owe(gives)
            raise
        return True

    def _args(self, channel: str, gives: list[Owed]) -> list[Any]:
        return give_args(
            self._clock.epoch_ms(),
            self._process,
            self._lease_ttl,
            channel=channel,
            name=self._name,
            leases=[(lease_id, held) for lease_id, held, _ in gives],
        )
