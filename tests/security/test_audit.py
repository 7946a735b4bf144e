"""The audit log, written by real processes.

* ``Cache.clear`` and ``Cache.destroy`` in a client process (and
  ``metis restore`` / ``metis snapshot``) append JSON lines to
  ``$METIS_AUDIT_FILE``: who (uid, user, pid, process), when (UTC), what,
  which cache, the outcome; the file is created 0600;
* a real metisd: SIGHUP (reload and the config change it applied, a
  refused reload), SIGUSR1 (snapshot on demand), the warm-up restore and
  ``metisd --destroy``;
* concurrent writers never interleave lines;
* the ``metis_shm.audit`` logger gets the same events.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import pwd
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from _metisd import ROOT, python_env, write_config

from metis_shm import Cache
from metis_shm.daemon import audit

TIMEOUT = 60


def _events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _wait_events(path: Path, check: Any, what: str, timeout: float = 20.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        events = _events(path)
        if check(events):
            return events
        if time.monotonic() > deadline:
            raise AssertionError(f"the audit file never showed {what}: {events}")
        time.sleep(0.05)


def _python(code: str, audit_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=python_env({"METIS_AUDIT_FILE": str(audit_file)}),
        cwd=ROOT,
        check=True,
    )


def _check_who(event: dict[str, Any], pid: int | None = None) -> None:
    assert event["uid"] == os.getuid() and event["euid"] == os.geteuid()
    assert event["user"] == pwd.getpwuid(os.getuid()).pw_name
    if pid is not None:
        assert event["pid"] == pid
    assert event["process"]
    when = datetime.datetime.strptime(event["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    assert abs((now - when).total_seconds()) < 120


def test_client_clear_and_destroy(tmp_path: Path, names: Any) -> None:
    name = names()
    log = tmp_path / "audit" / "audit.jsonl"
    log.parent.mkdir()
    code = (
        "import os\n"
        "from metis_shm import Cache\n"
        f"c = Cache({name!r}, capacity='1MiB')\n"
        "c.set_many({str(i): i for i in range(10)})\n"
        "c.clear(); c.close()\n"
        f"print(os.getpid(), Cache.destroy({name!r}), Cache.destroy({name!r}))\n"
    )
    out = _python(code, log).stdout.split()
    pid = int(out[0])
    assert out[1:] == ["True", "False"]
    assert os.stat(log).st_mode & 0o777 == 0o600
    clear, destroyed, absent = _events(log)
    assert (clear["operation"], clear["cache"], clear["outcome"]) == ("clear", name, "ok")
    assert clear["details"] == {"items_before": 10}
    assert (destroyed["operation"], destroyed["outcome"]) == ("destroy", "ok")
    assert (absent["operation"], absent["outcome"]) == ("destroy", "absent")
    for event in (clear, destroyed, absent):
        _check_who(event, pid)
        assert event["process"].startswith("python")


def test_cli_snapshot_and_restore_are_audited(tmp_path: Path, names: Any) -> None:
    name = names()
    log = tmp_path / "audit.jsonl"
    with Cache(name, capacity="1MiB") as cache:
        cache.set("k", "v")
        env = python_env({"METIS_AUDIT_FILE": str(log)})
        for args in (
            ["snapshot", name, "--dir", str(tmp_path / "s"), "-q"],
            ["restore", name, "--dir", str(tmp_path / "s"), "-q"],
            ["restore", name, "--dir", str(tmp_path / "empty"), "-q"],
        ):
            subprocess.run(
                [sys.executable, "-m", "metis_shm", *args],
                capture_output=True, timeout=TIMEOUT, env=env, cwd=ROOT,
            )  # fmt: skip
    snap, restored, nothing = _events(log)
    assert (snap["operation"], snap["outcome"], snap["details"]["items"]) == ("snapshot", "ok", 1)
    assert snap["details"]["trigger"] == "metis snapshot"
    assert (restored["operation"], restored["outcome"]) == ("restore", "ok")
    assert (
        restored["details"]["restored"] == 1
        and restored["details"]["path"] == (snap["details"]["path"])
    )
    assert (nothing["operation"], nothing["outcome"]) == ("restore", "nothing_to_restore")


def test_metisd_reload_snapshot_restore_and_destroy(
    tmp_path: Path, daemons: Any, names: Any
) -> None:
    name = names()
    log = tmp_path / "audit.jsonl"
    snaps = tmp_path / "snaps"

    def config(**sweep: Any) -> Path:
        return write_config(
            tmp_path / "metisd.toml",
            [{"name": name, "capacity": "1MiB"}],
            sweep=sweep or None,
            snapshot={"enabled": True, "path": str(snaps), "interval": 0},
            audit_file=str(log),
        )

    d = daemons(config()).wait_ready()
    events = _wait_events(log, lambda e: len(e) >= 1, "the warm-up restore")
    assert (events[0]["operation"], events[0]["outcome"]) == ("restore", "nothing_to_restore")
    assert events[0]["pid"] == d.pid

    # SIGHUP with a changed live setting: reload + config_change.
    config(interval="2s")
    d.signal(signal.SIGHUP)
    events = _wait_events(
        log, lambda e: any(x["operation"] == "config_change" for x in e), "a reload"
    )
    reload = next(x for x in events if x["operation"] == "reload")
    change = next(x for x in events if x["operation"] == "config_change")
    assert reload["outcome"] == "ok" and reload["details"]["live"] == ["sweep.interval"]
    assert change["details"] == {"sweep.interval": {"old": 1.0, "new": 2.0}}
    _check_who(reload, d.pid)

    # A broken file: the reload is refused, and recorded as such.
    (tmp_path / "metisd.toml").write_text("log_level = 'LOUD'\n[[caches]]\nname = 'x'\n")
    d.signal(signal.SIGHUP)
    events = _wait_events(
        log, lambda e: any(x["outcome"] == "refused" for x in e), "a refused reload"
    )
    refused = next(x for x in events if x["outcome"] == "refused")
    assert refused["operation"] == "reload" and "LOUD" in refused["details"]["error"]

    # SIGUSR1: a snapshot on demand.
    with Cache(name, create=False) as cache:
        cache.set("k", "v")
    d.signal(signal.SIGUSR1)
    events = _wait_events(log, lambda e: any(x["operation"] == "snapshot" for x in e), "SIGUSR1")
    snap = next(x for x in events if x["operation"] == "snapshot")
    assert (snap["cache"], snap["outcome"], snap["details"]["trigger"]) == (name, "ok", "SIGUSR1")
    assert snap["details"]["items"] == 1 and snap["pid"] == d.pid
    assert d.stop() == 0

    # metisd --destroy.
    before = len(_events(log))
    subprocess.run(
        [sys.executable, "-m", "metis_shm.daemon", "--destroy", name],
        capture_output=True, timeout=TIMEOUT, env=python_env({"METIS_AUDIT_FILE": str(log)}),
        cwd=ROOT, check=True,
    )  # fmt: skip
    last = _events(log)[before:]
    assert [(x["operation"], x["cache"], x["outcome"]) for x in last] == [(
        "destroy", name, "ok")]  # fmt: skip
    assert last[0]["details"]["via"] == "metisd --destroy"


def _append_many(path: str, n: int) -> None:
    audit.set_audit_file(path)
    for i in range(n):
        audit.record("clear", "c", details={"i": i, "pad": "x" * 3000})


def test_concurrent_writers_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    writers, per_writer = 4, 200
    pids = []
    for _ in range(writers):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _append_many(str(path), per_writer)
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    events = _events(path)  # every line parses
    assert len(events) == writers * per_writer
    for pid in pids:
        mine = [e["details"]["i"] for e in events if e["pid"] == pid]
        assert mine == list(range(per_writer))


def test_logger_gets_the_event(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    audit.set_audit_file(tmp_path / "a.jsonl")
    try:
        with caplog.at_level(logging.INFO, logger="metis_shm.audit"):
            event = audit.record("destroy", "x", outcome="absent")
    finally:
        audit.reset_audit_file()
    [rec] = [r for r in caplog.records if r.name == "metis_shm.audit"]
    assert rec.audit == event  # type: ignore[attr-defined]
    assert "destroy of cache 'x'" in rec.getMessage() and "absent" in rec.getMessage()
    assert _events(tmp_path / "a.jsonl") == [event]
