"""The audit log: who did which admin operation to which cache, and how it ended.

Operations recorded: ``clear`` and ``destroy`` (``Cache.clear``,
``Cache.destroy``, ``metisd --destroy``, a segment metisd replaces),
``restore`` (``metis_shm.daemon.snapshots.restore``: ``metis
restore`` and metisd's warm-up), ``snapshot`` on demand (``metis snapshot``,
metisd's ``SIGUSR1``), ``reload`` (metisd's ``SIGHUP``) and
``config_change`` (the settings a reload changed).

Every event goes to the logger ``metis_shm.audit`` (level INFO, the event
dict in ``record.audit``) and, when an audit file is configured, as one JSON
line to that file: ``set_audit_file(path)`` (metisd: ``audit_file``), else
the ``METIS_AUDIT_FILE`` environment variable of the process. The file is
created mode 0600 and opened ``O_APPEND`` for every event; each line is one
``write(2)``, so lines of concurrent processes never interleave (a local
file system appends each write whole at the end).

An event::

    {"time": "2026-01-01T12:00:00.123456Z", "operation": "clear",
     "cache": "app", "outcome": "ok", "details": {},
     "uid": 1000, "euid": 1000, "user": "www-data", "pid": 4242,
     "process": "gunicorn"}

Auditing never makes the operation fail: an audit file that cannot be
written is reported on the ``metis_shm.audit`` logger (once a minute at
most) and the operation goes on.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import pwd
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("metis_shm.audit")

AUDIT_FILE_ENV = "METIS_AUDIT_FILE"
FILE_MODE = 0o600
_ERROR_EVERY = 60.0

_UNSET: Any = object()
_state: dict[str, Any] = {"path": _UNSET, "last_error": -1e9}
_lock = threading.Lock()


def set_audit_file(path: str | os.PathLike[str] | None) -> None:
    """Write audit events of this process to ``path`` (None: to no file, even
    if ``METIS_AUDIT_FILE`` is set)."""
    _state["path"] = None if path is None else os.fspath(path)


def reset_audit_file() -> None:
    """Back to the default: the file named by ``METIS_AUDIT_FILE``, if any."""
    _state["path"] = _UNSET


def audit_file() -> str | None:
    """The file events go to now (None: only the logger)."""
    path = _state["path"]
    if path is _UNSET:
        return os.environ.get(AUDIT_FILE_ENV, "").strip() or None
    return str(path) if path is not None else None


def _process_name() -> str:
    try:
        import psutil

        return str(psutil.Process().name())
    except Exception:
        return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def record(
    operation: str,
    cache: str | None = None,
    *,
    outcome: str = "ok",
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Record one admin operation; the event written (see the module docstring).

    ``outcome`` is ``"ok"``, ``"failed"`` (``details["error"]`` says why) or an
    operation's own word (``"absent"``: destroy found no segment; ``"refused"``:
    a reload kept the running configuration).
    """
    now = datetime.datetime.now(datetime.UTC)
    uid = os.getuid()
    event: dict[str, Any] = {
        "time": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "operation": operation,
        "cache": cache,
        "outcome": outcome,
        "details": dict(details or {}),
        "uid": uid,
        "euid": os.geteuid(),
        "user": _user(uid),
        "pid": os.getpid(),
        "process": _process_name(),
    }
    log.info(
        "%s%s by %s (uid %d, pid %d, %s): %s%s",
        operation,
        f" of cache {cache!r}" if cache else "",
        event["user"],
        uid,
        event["pid"],
        event["process"],
        outcome,
        f" {json.dumps(event['details'], default=str)}" if event["details"] else "",
        extra={"audit": event},
    )
    path = audit_file()
    if path:
        _append(path, event)
    return event


@contextlib.contextmanager
def operation(name: str, cache: str | None = None, **details: Any) -> Iterator[dict[str, Any]]:
    """Record ``name`` when the block ends: ``ok``, or ``failed`` with the error
    (and re-raise). The block may add to the yielded details dict, or set
    ``details["outcome"]`` to another word."""
    info: dict[str, Any] = dict(details)
    try:
        yield info
    except BaseException as exc:
        info.pop("outcome", None)
        info["error"] = f"{type(exc).__name__}: {exc}"
        record(name, cache, outcome="failed", details=info)
        raise
    outcome = str(info.pop("outcome", "ok"))
    record(name, cache, outcome=outcome, details=info)


def _append(path: str, event: dict[str, Any]) -> None:
    line = (json.dumps(event, default=str, separators=(",", ":")) + "\n").encode()
    try:
        with _lock:
            fd = _open(path)
            try:
                written = os.write(fd, line)
            finally:
                os.close(fd)
        if written != len(line):
            raise OSError(f"short write: {written} of {len(line)} bytes")
    except OSError as exc:
        now = time.monotonic()
        if now - _state["last_error"] >= _ERROR_EVERY:
            _state["last_error"] = now
            log.error("cannot write the audit file %s: %s", path, exc)


def _open(path: str) -> int:
    flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return os.open(path, flags)
    try:
        os.fchmod(fd, FILE_MODE)  # whatever the umask
    except OSError:
        os.close(fd)
        raise
    return fd


__all__ = [
    "AUDIT_FILE_ENV",
    "audit_file",
    "operation",
    "record",
    "reset_audit_file",
    "set_audit_file",
]
