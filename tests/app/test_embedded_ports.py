"""Ports for the embedded servers are picked before the servers bind them, so they must stay free meanwhile."""

from __future__ import annotations

import socket
from pathlib import Path

from app.embedded import GRPC_PORT_OFFSET, free_port_pairs


def test_picked_ports_and_their_grpc_ports_lie_outside_the_kernels_ephemeral_range() -> None:
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = free_port_pairs(200)
    assert len(set(ports)) == 200
    for port in ports:
        for bound in (port, port + GRPC_PORT_OFFSET):
            assert not low <= bound <= high, f"{bound} is in the ephemeral range {low}-{high}"
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", bound))
