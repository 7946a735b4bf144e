"""What the tests that start real web servers share: a free loopback port
and the children of a process (the server's workers)."""

from __future__ import annotations

import socket

import psutil


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (servers that
    cannot bind port 0 need one; callers retry if it was taken meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def children(pid: int) -> list[int]:
    """Pids of the direct children of ``pid`` (empty if it is gone)."""
    try:
        return [p.pid for p in psutil.Process(pid).children()]
    except psutil.NoSuchProcess:
        return []
