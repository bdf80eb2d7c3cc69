"""Ports for the ``mooncake_master`` a MooncakeStore bootstrap starts.

The master listens on two ports (its RPC server and its HTTP metadata server) and exits at start if
either is taken. A fixed port inside the kernel's ephemeral range can be taken at any moment by any
outgoing connection on the host (Ray and ZMQ open many), and a port the OS hands out as free is
ephemeral too. So the ports come from below the ephemeral range and above Ray's worker ports
(10002-19999), and each is checked free on the master's address by binding it without
``SO_REUSEADDR`` (so a port still in ``TIME_WAIT`` counts as taken). Where none is free there (or
the host's ephemeral range covers them all), the OS picks.

Examples:
    >>> ports = unused_ports("127.0.0.1", 2)
    >>> len(set(ports)) == 2 and all(p not in ephemeral_range() for p in ports)
    True
"""

from __future__ import annotations

import logging
import random
import socket
from collections.abc import Sequence
from pathlib import Path

from kvplane._errors import DataPlaneUnavailable

__all__ = ["ephemeral_range", "unused_ports"]

logger = logging.getLogger(__name__)

#: Above Ray's default worker ports, below Linux's default ephemeral range.
CANDIDATES = range(20000, 32768)
_EPHEMERAL_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_TRIES = 200


def ephemeral_range() -> range:
    """The kernel's ephemeral port range (Linux's default where the kernel does not say)."""
    try:
        low, high = (int(p) for p in _EPHEMERAL_FILE.read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def unused_ports(host: str, count: int, candidates: Sequence[int] = CANDIDATES) -> list[int]:
    """``count`` distinct ports nothing on ``host`` holds: from ``candidates`` outside the ephemeral
    range while some are free, else ports the OS picks (a host whose ephemeral range covers them all).

    Raises:
        DataPlaneUnavailable: Not even the OS found ``count`` free ports on ``host``.
    """
    ephemeral = ephemeral_range()
    pool = [p for p in candidates if p not in ephemeral]
    found: list[int] = []
    for port in random.sample(pool, min(len(pool), _TRIES)):
        if len(found) == count:
            break
        if _bind(host, port) is not None:
            found.append(port)
    for _ in range(_TRIES):  # the OS's picks, bounded (it may hand out one port again)
        if len(found) == count:
            break
        port = _bind(host, 0)
        if port is not None and port not in found:
            logger.debug("no free port on %s outside the ephemeral range: using %d", host, port)
            found.append(port)
    if len(found) < count:
        raise DataPlaneUnavailable(
            f"found {len(found)} of the {count} free ports mooncake_master needs on {host}"
        )
    return found


def _bind(host: str, port: int) -> int | None:
    """The port a bind to ``port`` on ``host`` got (``0``: one the OS picks), released again;
    ``None`` if the bind failed (the port is held, or ``host`` has none free)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return None
        return int(sock.getsockname()[1])
