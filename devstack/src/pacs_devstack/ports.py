"""Free TCP ports for the local stack's servers.

Every server of the local stack gets an explicit port chosen here, so a developer's
``make run`` and a test run on the same machine never collide on a default port.
A port is only known to be free at the moment it is probed; the server binds it a
little later, so callers keep the window short and fail loudly on a clash.
"""

from __future__ import annotations

import contextlib
import socket

DEFAULT_HOST = "127.0.0.1"


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = DEFAULT_HOST) -> list[int]:
    """``n`` distinct TCP ports on ``host`` that nothing listens on right now.

    All sockets stay bound until every port is chosen: probing one at a time could
    hand out the same port twice, because the kernel reuses a just-released port.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(n):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            # No SO_REUSEADDR: a port with connections in TIME_WAIT then counts as
            # busy, which is the conservative answer for a server about to bind it.
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports
