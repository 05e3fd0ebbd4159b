"""A breaker's whole life in a few seconds: it trips, rejects, probes and closes.

Run it from the checkout's root, with the user install that ``./scripts/run`` uses::

    ./scripts/setup --run && .venv-run/bin/python examples/trip_and_recover.py

or with any Python that has fleetbreaker installed. It needs no Redis: the breaker
lives in this process. With ``BREAKER_REDIS_URL`` set, it lives in that Redis: run the
example in two terminals and watch the second one reject calls the first one tripped,
or inspect it with ``redis-cli HGETALL 'breaker:{demo-upstream}'``.
"""

from __future__ import annotations

import os
import time

import redis

from breaker import CircuitBreaker, CircuitOpenError, TransitionEvent

RESET_TIMEOUT = 2.0


def announce(event: TransitionEvent) -> None:
    print(f"  event: {event.from_state} -> {event.to_state} ({event.reason})")


def main() -> None:
    url = os.environ.get("BREAKER_REDIS_URL")
    client = redis.Redis.from_url(url) if url else None
    print(f"backend: {url or 'embedded (in this process only)'}")
    cb = CircuitBreaker(
        "demo-upstream", redis=client, failure_threshold=3, reset_timeout=RESET_TIMEOUT
    )
    cb.reset()
    cb.add_listener(announce)
    upstream_up = False

    def upstream() -> str:
        if not upstream_up:
            raise ConnectionError("upstream refused the connection")
        return "200 OK"

    print("the upstream is down; calling it 5 times:")
    for attempt in range(1, 6):
        try:
            print(f"  call {attempt}: {cb.call(upstream)}")
        except ConnectionError as exc:
            print(f"  call {attempt}: failed ({exc})")
        except CircuitOpenError as exc:
            wait = f"retry in {exc.retry_after:.1f}s"
            print(f"  call {attempt}: rejected, upstream not called ({wait})")
    snapshot = cb.snapshot()
    print(f"state: {snapshot.state}, consecutive failures: {snapshot.failures}")

    print(f"the upstream recovers; waiting {RESET_TIMEOUT:.0f}s for the reset timeout")
    upstream_up = True
    time.sleep(RESET_TIMEOUT)
    print(f"  trial call: {cb.call(upstream)}")
    print(f"state: {cb.snapshot().state}")


if __name__ == "__main__":
    main()
