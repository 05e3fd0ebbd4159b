"""Every series the dashboards and alerts read exists at 0 from a gateway's start, for
every configured upstream: a counter first seen at 3 is never counted by rate() or
increase() (they need two samples), and the incident it recorded is lost."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

from app.telemetry.metrics import TRANSITION_PAIRS
from breaker.testing import ManualClock
from tests.support.gateway import ADMIN, AUTH, gateway_client, gateway_config


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for name, labels, value in re.findall(r"^(\w+)\{([^}]*)\} (\S+)$", text, re.MULTILINE):
        pairs = frozenset(re.findall(r'(\w+)="([^"]*)"', labels))
        found[(name, pairs)] = float(value)
    return found


def test_a_fresh_gateway_exports_every_counter_at_zero(tmp_path: Path) -> None:
    # Names no other test uses: the counters are this process's, shared by its tests.
    api, static = (f"{kind}-{uuid.uuid4().hex[:8]}" for kind in ("api", "static"))
    config = gateway_config(
        tmp_path,
        f"""
        [upstreams.{api}]
        url = "http://127.0.0.1:9"
        [upstreams.{static}]
        url = "http://127.0.0.1:9"
        breaker = false
        """,
    )
    texts: list[str] = []

    async def scenario() -> None:
        async with gateway_client(config, ManualClock()) as client:
            texts.append((await client.get(f"{ADMIN}/metrics", headers=AUTH)).text)

    asyncio.run(scenario())
    samples = _samples(texts[0])

    def at_zero(name: str, **labels: str) -> bool:
        return samples.get((name, frozenset(labels.items()))) == 0.0

    for upstream in (api, static):
        for result in ("2xx", "5xx", "circuit_open", "upstream_unavailable"):
            assert at_zero("fleetbreaker_requests_total", upstream=upstream, result=result)
    for outcome in ("success", "failure", "ignored", "rejected"):
        assert at_zero("fleetbreaker_calls_total", upstream=api, outcome=outcome)
        assert at_zero("fleetbreaker_fallback_decisions_total", upstream=api, outcome=outcome)
    for source, target in TRANSITION_PAIRS:
        assert at_zero(
            "fleetbreaker_transitions_total", upstream=api, from_state=source, to_state=target
        )
    for reason in ("attempts", "deadline", "budget"):
        assert at_zero("fleetbreaker_retries_refused_total", upstream=api, reason=reason)
    for name in ("retries_total", "retry_successes_total", "local_origin_failures_total"):
        assert at_zero(f"fleetbreaker_{name}", upstream=api)
    assert at_zero("fleetbreaker_call_duration_seconds_count", upstream=api, outcome="failure")
    # An upstream without a breaker makes no calls of one: no such series for it.
    assert not [
        key
        for key in samples
        if key[0] == "fleetbreaker_calls_total" and ("upstream", static) in key[1]
    ]
    assert ("closed", "open") in TRANSITION_PAIRS
    assert len(set(TRANSITION_PAIRS)) == len(TRANSITION_PAIRS)
