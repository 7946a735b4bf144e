"""Helpers for the tests that start a real ``metisd`` process.

* ``write_config(path, ...)``: a TOML config file.
* ``Metisd``: one ``sys.executable -m metis_shm.daemon --config FILE``
  process: its log (stderr) collected by a thread, ``wait_for(regex)``,
  ``wait_ready()``, HTTP ``get(path)`` on the health address it logged (the
  tests ask for port 0, so no port is ever raced for), ``stop()`` (SIGTERM),
  ``kill()`` (SIGKILL).
* (conftest.py: the ``daemons`` and ``names`` fixtures.)
* ``NotifyListener``: a unix datagram socket playing systemd's NOTIFY_SOCKET.
* ``python_env()``: the environment for child processes (the repository on
  PYTHONPATH, no NOTIFY_SOCKET/WATCHDOG_* inherited).

Every wait is bounded; a failing wait raises with the daemon's log.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _workers import new_name

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


def python_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NOTIFY_SOCKET", "WATCHDOG_", "METIS_", "JOURNAL_STREAM"))
    }
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def _toml_value(value: Any) -> str:
    if isinstance(value, dict):  # an inline table (a cache's far table)
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def config_text(
    caches: Sequence[dict[str, Any]],
    *,
    sweep: dict[str, Any] | None = None,
    snapshot: dict[str, Any] | None = None,
    health: dict[str, Any] | None = None,
    **top: Any,
) -> str:
    lines = [f"{k} = {_toml_value(v)}" for k, v in top.items()]
    health = {"address": "127.0.0.1:0", **(health or {})}
    snapshot = {"enabled": False, **(snapshot or {})}
    for section, values in (("sweep", sweep), ("snapshot", snapshot), ("health", health)):
        if values:
            lines.append(f"[{section}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in values.items())
    for cache in caches:
        lines.append("[[caches]]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in cache.items())
    return "\n".join(lines) + "\n"


def write_config(path: Path, caches: Sequence[dict[str, Any]], **kwargs: Any) -> Path:
    path.write_text(config_text(caches, **kwargs))
    return path


class Metisd:
    """A metisd process started by a test."""

    def __init__(
        self, config: Path, args: Sequence[str] = (), env: dict[str, str] | None = None
    ) -> None:
        self.config = config
        self.args = list(args)
        self.env = python_env(env)
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self.url: str | None = None

    # ---- process ---------------------------------------------------------------

    def start(self) -> Metisd:
        cmd = [sys.executable, "-m", "metis_shm.daemon", "--config", str(self.config)]
        self.proc = subprocess.Popen(
            cmd + self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            cwd=ROOT,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(
        self, pattern: str, timeout: float = START_TIMEOUT, start: int = 0
    ) -> re.Match[str]:
        """The first log line from index ``start`` on that matches ``pattern``."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    m = rx.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                exited = self.proc is not None and self.proc.poll() is not None
                if left <= 0 or (exited and (self._reader is None or not self._reader.is_alive())):
                    break
                self._cond.wait(min(left, 0.2))
        raise AssertionError(
            f"metisd log never matched {pattern!r} within {timeout} s "
            f"(exit status {self.proc.poll() if self.proc else None}); log:\n{self.log()}"
        )

    def mark(self) -> int:
        """The index of the next log line (``wait_for(..., start=mark)``)."""
        with self._cond:
            return len(self.lines)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> Metisd:
        m = self.wait_for(r"health endpoints on (http://[0-9.:\[\]]+)", timeout)
        self.url = m.group(1)
        self.wait_for(r"metis_shm\.daemon: ready \(pid", timeout)
        return self

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"metisd did not exit within {timeout} s; log:\n{self.log()}"
            ) from None
        if self._reader is not None:
            self._reader.join(timeout=5)
        return code

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM and wait: the exit status."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        if self.proc is not None and self.proc.stdout is not None:
            if self._reader is not None:
                self._reader.join(timeout=5)
            self.proc.stdout.close()

    # ---- HTTP --------------------------------------------------------------------

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, str, str]:
        """(status, content type, body) of a GET on the health address."""
        assert self.url, "wait_ready() first"
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
                return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()

    def get_json(self, path: str) -> Any:
        status, _, body = self.get(path)
        assert status == 200, (status, body)
        return json.loads(body)

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = self.get_json("/stats?shards=0")
        return data

    def wait_stats(self, check: Any, timeout: float = 20.0, what: str = "") -> dict[str, Any]:
        """Poll /stats until ``check(stats)`` is true; the stats that passed."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = self.stats()
            if check(last):
                return last
            time.sleep(0.05)
        raise AssertionError(f"/stats never showed {what or check} within {timeout} s: {last}")


class NotifyListener:
    """A unix datagram socket standing in for systemd's ``NOTIFY_SOCKET``;
    ``address`` is what to put in the variable (``@...`` = abstract)."""

    def __init__(self, path: str | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if path is None:
            abstract = f"metis-test-notify-{os.getpid()}-{new_name()}"
            self.sock.bind("\0" + abstract)
            self.address = "@" + abstract
        else:
            self.sock.bind(path)
            self.address = path
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append(data.decode())

    def fields(self) -> list[str]:
        with self._lock:
            return [f for m in self.messages for f in m.split("\n")]

    def wait_field(self, prefix: str, timeout: float = 20.0, count: int = 1) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [f for f in self.fields() if f.startswith(prefix)]
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(
            f"{count} x {prefix!r} never arrived on NOTIFY_SOCKET; got {self.fields()}"
        )

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=2)
        self.sock.close()
