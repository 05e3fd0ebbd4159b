"""schemathesis against the gateway's own OpenAPI schema: every operation, the admin API
included (with a valid token), on a real ``fleetbreaker serve`` process with a real
Redis and a real upstream, each on the listener that serves it (``/proxy`` on the
proxy's, the rest on the admin listener). The gateway must never answer 500, every
error it makes must be a JSON body, and its log must hold no unhandled exception.

The generated Authorization header is replaced by the valid one, so that the admin
routes are fuzzed past the token check (which has its own tests).
``/admin/events`` and ``/dashboard/events`` are left out: they are event streams that
stay open by design (their own tests are in ``test_gateway_events`` and
``test_dashboard``). Bounded by ``MAX_EXAMPLES`` per operation.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from app import create_app, load_config
from tests.support.gateway import AUTH
from tests.support.gateway_process import GatewayProcess, gateway_with_redis
from tests.support.reliability import Reliability
from tests.support.upstream import Upstream

pytestmark = [
    pytest.mark.slow,
    pytest.mark.faults,
    pytest.mark.e2e,
    pytest.mark.xdist_group("fuzz"),  # one fuzzed gateway (a module fixture)
]

MAX_EXAMPLES = 150
NAMES = ("api", "plain", "missing")  # a breaker, a proxy without one, and no upstream
_SEEN: Counter[str] = Counter()


@pytest.fixture(scope="module")
def fuzzed_gateway(
    tmp_path_factory: pytest.TempPathFactory, _upstream_server: Upstream
) -> Iterator[GatewayProcess]:
    config = f"""
        [gateway]
        max_body_bytes = 65536
        [upstreams.api]
        url = "{_upstream_server.url}/base"
        [upstreams.plain]
        url = "{_upstream_server.url}"
        breaker = false
        """
    with gateway_with_redis(tmp_path_factory.mktemp("fuzz"), config) as process:
        yield process


def _gateway_schema() -> schemathesis.BaseSchema:
    """The gateway's OpenAPI document as it serves it (it depends on no setting), with
    the upstream and breaker names drawn from the configured ones and one unknown: a
    random name only ever meets the 404, and the fuzzing is for what lies past it.
    Every other parameter, the proxied path, query, headers and bodies, is free (and
    schemathesis's negative cases still send names outside the list)."""
    config = load_config({"BREAKER_UPSTREAMS": "api=http://127.0.0.1:9"})
    document = create_app(config).state.admin_app.openapi()  # both listeners' routes
    for operation in (op for item in document["paths"].values() for op in item.values()):
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "path" and parameter["name"] in ("upstream", "name"):
                parameter["schema"] = {"type": "string", "enum": list(NAMES)}
    return schemathesis.openapi.from_dict(document).exclude(
        path=["/admin/events", "/dashboard/events"]
    )


schema = _gateway_schema()


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_no_fuzzed_request_gets_a_500_or_an_error_without_a_json_body(
    fuzzed_gateway: GatewayProcess, case: schemathesis.Case[Any]
) -> None:
    listener = fuzzed_gateway.url if case.path.startswith("/proxy") else fuzzed_gateway.admin_url
    response = case.call(
        base_url=listener, headers={**dict(case.headers or {}), **AUTH}, timeout=10
    )
    _SEEN[str(response.status_code)] += 1
    assert response.status_code != 500, response.text
    if response.status_code >= 400:
        assert response.headers["content-type"] == ["application/json"]
        if case.method != "HEAD":  # a HEAD answer has no body, by HTTP's rules
            body = json.loads(response.content)  # never plain text, never a traceback
            assert isinstance(body["error"], str)


def test_the_fuzzed_gateway_logged_no_unhandled_exception(
    fuzzed_gateway: GatewayProcess, reliability: Reliability
) -> None:
    log = fuzzed_gateway.log()
    assert "unhandled error" not in log
    assert "Traceback" not in log
    assert sum(_SEEN.values()) > 0, "the fuzzer ran"
    reliability.record(
        "test_fuzz::schemathesis",
        f"schemathesis over the OpenAPI schema, admin included (at most {MAX_EXAMPLES} "
        "cases per operation)",
        answers=[status for status, count in _SEEN.items() for _ in range(count)],
        lost="nothing: no 500, every error a JSON body, no unhandled exception logged",
    )
