"""What the tests that start real web servers share: a free loopback port,
the children of a process (the server's workers), one GET of a JSON page,
and stopping a server's whole process tree."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from typing import Any

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


def get_json(
    port: int, path: str, timeout: float, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """One GET on a new connection to 127.0.0.1:port (so the server's
    scheduler may pick any worker): (status, decoded JSON body, headers)."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Connection": "close", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
            return resp.status, json.loads(body) if body else {}, dict(resp.headers.items())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        return exc.code, json.loads(body) if body else {}, dict(exc.headers.items())


def stop_tree(proc: subprocess.Popen[bytes] | None, timeout: float) -> int | None:
    """SIGTERM a server's master and wait up to ``timeout``; if it is still
    running, kill_tree it. Returns the exit code (None when it was killed)."""
    if proc is None:
        return None
    code = proc.poll()
    if code is None:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc, timeout)
    return code


def kill_tree(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGKILL a server's master and every worker it has or left behind."""
    if proc is None:
        return
    workers = children(proc.pid)
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=timeout)
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
