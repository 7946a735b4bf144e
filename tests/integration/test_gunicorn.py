"""The gunicorn example under real gunicorn: 4 workers share one cache.

Starts ``examples/gunicorn_app`` with ``sys.executable -m gunicorn`` on
127.0.0.1 (a free port picked first: gunicorn cannot bind port 0), with and
without ``--preload``, and checks that

* a value written through one request is read back by at least 3 distinct
  worker processes, and by this test process attached to the same segment;
* ``/incr`` from many concurrent requests hands out every value exactly once
  and sums correctly;
* with ``--preload`` the workers use the Cache the master opened before fork;
* a graceful stop with ``METIS_DESTROY_ON_EXIT=1`` unlinks the segment.

Every request uses a new connection (urllib). Request counts and waits are
bounded; gunicorn is always stopped (SIGTERM, then SIGKILL) and the segment
destroyed in teardown.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from _servers import children as _children
from _servers import free_port, get_json, kill_tree, stop_tree
from _workers import new_name  # tests/ is on sys.path (conftest.py)

from metis_shm import Cache

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
APP_DIR = ROOT / "examples" / "gunicorn_app"
WORKERS = 4
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
REQUEST_TIMEOUT = 5.0


class Server:
    """One gunicorn process tree running the example app."""

    def __init__(self, preload: bool, cache_name: str, log_path: Path) -> None:
        self.preload = preload
        self.cache_name = cache_name
        self.log_path = log_path
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        env["METIS_CACHE_NAME"] = self.cache_name
        env["METIS_CACHE_CAPACITY"] = "8MiB"
        env["METIS_DESTROY_ON_EXIT"] = "1"
        env.pop("METIS_BIND", None)
        env.pop("METIS_WORKERS", None)
        self.port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "gunicorn.conf.py",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--workers",
            str(WORKERS),
            "--log-level",
            "info",
            "app:application",
        ]
        if self.preload:
            cmd.insert(-1, "--preload")
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._log = log
        self.proc = subprocess.Popen(
            cmd,
            cwd=APP_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def wait_ready(self, port_race_ok: bool = False) -> bool:
        """Poll until a request is answered; fail with the log after the timeout.

        Returns False (instead of failing) when ``port_race_ok`` and gunicorn
        reports that another process took the port first.
        """
        deadline = time.monotonic() + START_TIMEOUT
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if port_race_ok and "Connection in use" in self.log_text():
                return False
            if self.proc.poll() is not None:
                pytest.fail(
                    f"gunicorn exited with {self.proc.returncode} before answering\n"
                    + self.log_text()
                )
            try:
                # every worker past post_fork: one still booting when SIGTERM comes
                # has the master's signal handlers and lingers until SIGKILL
                if self.booted() >= WORKERS:
                    status, _ = self.get("/info", timeout=1.0)
                    if status == 200:
                        return True
            except (OSError, urllib.error.URLError) as exc:
                last_error = exc
            time.sleep(0.1)
        pytest.fail(
            f"gunicorn did not answer within {START_TIMEOUT}s ({last_error!r})\n" + self.log_text()
        )
        return False  # not reached

    def booted(self) -> int:
        """How many workers have opened the cache (logged by the post_fork hook)."""
        return self.log_text_all().count("metis: worker ")

    def worker_deaths(self) -> list[str]:
        """Log lines of workers that died unasked (crash, timeout, signal)."""
        marks = ("exited with code", "was sent SIG", "WORKER TIMEOUT", "Traceback")
        return [ln for ln in self.log_text_all().splitlines() if any(m in ln for m in marks)]

    def log_text_all(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def get(self, path: str, timeout: float = REQUEST_TIMEOUT) -> tuple[int, dict]:
        """One GET on a new connection; returns (status, decoded JSON body)."""
        status, body, _ = get_json(self.port, path, timeout)
        return status, body

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; returns the exit code."""
        code = stop_tree(self.proc, STOP_TIMEOUT)
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None
        return code

    def kill(self) -> None:
        """SIGKILL the master and whatever workers it left behind."""
        kill_tree(self.proc, STOP_TIMEOUT)


@pytest.fixture(params=[False, True], ids=["no-preload", "preload"])
def server(request, tmp_path):
    name = new_name()  # the session fixture unlinks it too if all else fails
    srv = Server(preload=request.param, cache_name=name, log_path=tmp_path / "gunicorn.log")
    try:
        for attempt in range(3):
            srv.start()
            if srv.wait_ready(port_race_ok=attempt < 2):
                break
            srv.stop()  # the free port was taken meanwhile: try another one
        yield srv
        assert not srv.worker_deaths(), srv.log_text()
    finally:
        srv.stop()
        srv.kill()
        Cache.destroy(name)


def _until_pids(srv: Server, path: str, check, want_pids: int, max_requests: int = 2000):
    """Send GETs (8 at a time, new connection each) until ``want_pids`` workers answered.

    ``check(status, body)`` asserts on every answer. Returns the set of pids.
    """
    pids: set[int] = set()
    sent = 0
    deadline = time.monotonic() + 30.0
    with ThreadPoolExecutor(max_workers=8) as pool:
        while len(pids) < want_pids and sent < max_requests and time.monotonic() < deadline:
            batch = list(pool.map(lambda _: srv.get(path), range(16)))
            sent += len(batch)
            for status, body in batch:
                check(status, body)
                pids.add(body["pid"])
    return pids, sent


def test_value_written_once_is_seen_by_every_worker(server: Server) -> None:
    status, body = server.get("/set?key=greeting&value=hello%20metis")
    assert status == 200, body
    writer_pid = body["pid"]

    def check(status: int, body: dict) -> None:
        assert status == 200, body
        assert body["found"] is True, body
        assert body["value"] == "hello metis", body

    pids, sent = _until_pids(server, "/get?key=greeting", check, want_pids=3)
    assert len(pids) >= 3, (
        f"only {len(pids)} distinct workers answered {sent} requests: {pids}\n" + server.log_text()
    )
    assert pids <= set(_children(server.proc.pid)) | {writer_pid}

    # this process, attached to the same segment, sees it too
    with Cache(server.cache_name, create=False) as cache:
        assert cache.get("greeting") == "hello metis"
        cache.set("from-test", "written outside gunicorn")
    status, body = server.get("/get?key=from-test")
    assert (status, body["value"]) == (200, "written outside gunicorn")


def test_incr_from_many_requests_sums(server: Server) -> None:
    n = 200
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: server.get("/incr?key=views"), range(n)))
    assert all(status == 200 for status, _ in answers), answers
    values = sorted(body["value"] for _, body in answers)
    assert values == list(range(1, n + 1)), "each increment must hand out a distinct value"
    pids = {body["pid"] for _, body in answers}
    assert len(pids) >= 2, f"all {n} increments went to one worker: {pids}"

    status, body = server.get("/incr?key=views&delta=-50")
    assert (status, body["value"]) == (200, n - 50)
    status, body = server.get("/get?key=views")
    assert (status, body["value"]) == (200, n - 50)

    status, body = server.get("/incr?key=greeting-not-counter")
    assert status == 200 and body["value"] == 1
    server.get("/set?key=text&value=abc")
    status, body = server.get("/incr?key=text")
    assert status == 409, body


def test_preload_workers_use_the_masters_cache(server: Server) -> None:
    master = server.proc.pid

    def check(status: int, body: dict) -> None:
        assert status == 200, body
        assert body["ppid"] == master, body
        if server.preload:
            assert body["opened_in_pid"] == master, body
        else:
            assert body["opened_in_pid"] == body["pid"], body

    pids, _ = _until_pids(server, "/info", check, want_pids=2, max_requests=400)
    assert len(pids) >= 2


def test_graceful_stop_destroys_segment_when_asked(server: Server) -> None:
    server.get("/set?key=k&value=v")
    assert Cache.exists(server.cache_name)
    code = server.stop()
    assert code == 0, server.log_text()
    assert not Cache.exists(server.cache_name), server.log_text()
