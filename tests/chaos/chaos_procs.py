"""The processes of the chaos run: the ``metisd`` daemon and the workers.

Both are started with ``sys.executable`` and the caller's environment, so a
run under another build of the extension (an AddressSanitizer build on
``PYTHONPATH`` with ``LD_PRELOAD`` and ``ASAN_OPTIONS``) reaches every child
unchanged. Only the variables a child would mistake for its configuration
are left out: ``METIS_*`` (metisd reads them as settings) and systemd's
``NOTIFY_SOCKET``/``WATCHDOG_*``/``JOURNAL_STREAM``. Children run in the
run's own directory, never in the repository, so ``python -m`` cannot pick up
a ``metis_shm`` from the working directory instead of the one on the path.

* ``DaemonProcess``: one ``python -m metis_shm.daemon --config FILE``,
  its log in a file, read incrementally.
* ``WorkerProcess``: one ``python chaos_worker.py ...``, its JSON report
  lines read by a thread; the last counts survive a SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

WORKER_SCRIPT = Path(__file__).resolve().with_name("chaos_worker.py")
_DROPPED_PREFIXES = ("METIS_", "NOTIFY_SOCKET", "WATCHDOG_", "JOURNAL_STREAM")
STDERR_TAIL = 4000  # characters of a child's stderr kept in a failure message


def child_env() -> dict[str, str]:
    """The environment of every child: the caller's, less the variables above."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_DROPPED_PREFIXES)}


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def write_daemon_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """A metisd TOML file: ``sections[""]`` holds the top-level keys,
    ``sections["caches"]`` the one cache, the others are tables."""
    lines = [f"{k} = {_toml(v)}" for k, v in sections.get("", {}).items()]
    for name, values in sections.items():
        if name in ("", "caches"):
            continue
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {_toml(v)}" for k, v in values.items())
    lines.append("[[caches]]")
    lines.extend(f"{k} = {_toml(v)}" for k, v in sections["caches"].items())
    path.write_text("\n".join(lines) + "\n")
    return path


def tail(path: Path, limit: int = STDERR_TAIL) -> str:
    """The end of a text file (for failure messages)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return data[-limit:].decode(errors="replace")


def describe_status(returncode: int | None) -> str:
    """'running', 'exit 1' or 'SIGKILL' for a Popen return code."""
    if returncode is None:
        return "running"
    if returncode < 0:
        return signal.Signals(-returncode).name
    return f"exit {returncode}"


class LogFile:
    """A growing text file read line by line from where the last read stopped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.lines: list[str] = []

    def read_new(self) -> list[str]:
        """The whole lines written since the last call (also kept in ``lines``)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        data = self._partial + data
        *whole, self._partial = data.split(b"\n")
        new = [line.decode(errors="replace") for line in whole]
        self.lines.extend(new)
        return new


class DaemonProcess:
    """One metisd started by the chaos run (the ``index``-th of the run)."""

    def __init__(self, index: int, config: Path, run_dir: Path) -> None:
        self.index = index
        self.log = LogFile(run_dir / f"metisd-{index}.log")
        self.started_at = time.monotonic()
        self.ready_at: float | None = None
        self.attached = False  # its log said it re-attached to the existing segment
        self.created = False  # its log said it created the segment
        self.killed = False
        self.stopped_until: float | None = None  # SIGSTOPped: when to SIGCONT
        with open(self.log.path, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "metis_shm.daemon", "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env(),
                cwd=run_dir,
            )

    @property
    def pid(self) -> int:
        """The process id."""
        return self.proc.pid

    def alive(self) -> bool:
        """Is the process still running?"""
        return self.proc.poll() is None

    def signal(self, signum: int) -> None:
        """Send ``signum`` if the process still runs."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signum)

    def kill(self, timeout: float = 30.0) -> None:
        """SIGKILL and reap (a reaped pid is what tells the next metisd the
        old owner of the heartbeat is gone)."""
        self.killed = True
        self.signal(signal.SIGKILL)
        self.stopped_until = None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout)

    def stop(self, timeout: float) -> int | None:
        """SIGTERM (metisd's graceful stop: a last snapshot) and wait; the
        return code, or None if it did not exit in time (then it is killed)."""
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None


@dataclass
class WorkerState:
    """What one worker process reported: its last counts and its bad lines."""

    counts: dict[str, int] = field(default_factory=dict)
    bad: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    garbage: list[str] = field(default_factory=list)  # lines that were not JSON


class WorkerProcess:
    """One worker: ``slot`` is its place in the pool, ``generation`` counts the
    processes that held that place."""

    def __init__(
        self,
        slot: int,
        generation: int,
        *,
        name: str,
        seed: int,
        n_keys: int,
        run_dir: Path,
        profile: str = "mixed",
    ) -> None:
        self.slot = slot
        self.generation = generation
        self.worker_id = f"{slot}.{generation}"
        self.profile = profile
        self.state = WorkerState()
        self.stopped_until: float | None = None  # SIGSTOPped: when to SIGCONT
        self.killed = False
        self.terminated = False
        self.stderr_path = run_dir / f"worker-{self.worker_id}.stderr"
        self._lock = threading.Lock()
        options = {
            "--name": name,
            "--worker-id": self.worker_id,
            "--seed": str(seed),
            "--keys": str(n_keys),
            "--profile": profile,
        }
        argv = [sys.executable, str(WORKER_SCRIPT)]
        for option, value in options.items():
            argv += [option, value]
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                env=child_env(),
                cwd=run_dir,
            )
        self._reader = threading.Thread(
            target=self._read, name=f"chaos-worker-{self.worker_id}", daemon=True
        )
        self._reader.start()

    @property
    def pid(self) -> int:
        """The process id."""
        return self.proc.pid

    def _read(self) -> None:
        stream: IO[bytes] | None = self.proc.stdout
        if stream is None:
            return
        for raw in stream:
            try:
                message = json.loads(raw)
                kind = message.get("type")
            except (ValueError, AttributeError):
                with self._lock:
                    self.state.garbage.append(raw[:200].decode(errors="replace"))
                continue
            with self._lock:
                if kind == "counts":
                    self.state.counts = dict(message.get("counts", {}))
                elif kind == "bad":
                    self.state.bad.append(message)
                elif kind == "error":
                    self.state.errors.append(message)
                else:
                    self.state.garbage.append(raw[:200].decode(errors="replace"))

    def snapshot_state(self) -> WorkerState:
        """A copy of what the worker reported so far."""
        with self._lock:
            return WorkerState(
                dict(self.state.counts),
                list(self.state.bad),
                list(self.state.errors),
                list(self.state.garbage),
            )

    def alive(self) -> bool:
        """Is the process still running?"""
        return self.proc.poll() is None

    def signal(self, signum: int) -> bool:
        """Send ``signum``; False if the process is gone."""
        if self.proc.poll() is not None:
            return False
        try:
            os.kill(self.proc.pid, signum)
        except ProcessLookupError:
            return False
        return True

    def sigstop(self, until: float) -> bool:
        """SIGSTOP; ``until`` is when the driver means to continue it."""
        if self.signal(signal.SIGSTOP):
            self.stopped_until = until
            return True
        return False

    def sigcont(self) -> None:
        """SIGCONT."""
        self.signal(signal.SIGCONT)
        self.stopped_until = None

    def kill(self) -> None:
        """SIGKILL (a stopped process dies too) and reap."""
        self.killed = True
        self.signal(signal.SIGKILL)
        self.stopped_until = None
        self.finish(timeout=30.0)

    def finish(self, timeout: float) -> int | None:
        """Wait for the exit and for the last report lines; the return code."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self._reader.join(timeout=10.0)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code
