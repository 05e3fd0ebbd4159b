"""Ports for the servers a test starts: its own Redis, upstreams, gateways, nginx.

Drawn by the product's protocol, on its ledger (``app.localfleet.ports``), so that a
port handed to a test's server is never handed to a fleet's, in this process or
another (xdist's workers, a fleet a test starts), and the other way round.
``test_topology_support`` checks it across processes.
"""

from __future__ import annotations

from app.localfleet.ports import HOST, free_port, free_ports, held_ports

__all__ = ["HOST", "free_port", "free_ports", "held_ports"]
