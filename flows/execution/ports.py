"""Picking a free port on 127.0.0.1 for a rendezvous or a server that binds it later.

The port comes from below the kernel's ephemeral range. gloo's listeners, torch's TCPStore clients and every outgoing
connection take their ports from that range; a port chosen there can be a rank's listener by the time anything
connects to it (accelerate's "port in use" probe, machine 1's rendezvous, a server's health check), and the bytes sent
reach the rank's socket: a hung rendezvous, or a rank aborted by gloo.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST_PORT = 20000  # above the registered services a host commonly runs


def ephemeral_ports_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default range starts here


def free_port() -> int:
    """A port nothing on 127.0.0.1 holds now, below the ephemeral range, drawn at random (two callers at once rarely
    draw the same one)."""
    for port in random.Random().sample(range(LOWEST_PORT, ephemeral_ports_start()), 500):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on 127.0.0.1 between {LOWEST_PORT} and the ephemeral range")
