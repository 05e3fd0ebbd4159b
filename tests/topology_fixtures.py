"""Fixtures for real local topologies and the fault proxy.

- ``fault_proxy``: a ``FaultProxy`` in front of the test's own ``redis_server``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.proxy import FaultProxy
from tests.support.servers import RedisServer


@pytest.fixture
def fault_proxy(redis_server: RedisServer) -> Iterator[FaultProxy]:
    """A ``FaultProxy`` in front of the test's own ``redis_server``."""
    with FaultProxy(redis_server.port) as proxy:
        yield proxy
