"""examples/flask_app (Flask-Caching on the Metis backend) under real
gunicorn with 4 workers, with and without --preload, over loopback: values,
counters, ``cache.memoize`` and ``cache.cached`` are shared by every worker pid.

gunicorn listens on a free port of 127.0.0.1; every wait is bounded; the
server is always stopped (SIGTERM, then SIGKILL of it and its workers) and
the segment destroyed in teardown.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from _servers import children, free_port, get_json, stop_tree
from _workers import new_name  # tests/ is on sys.path (conftest.py)

from metis_shm import Cache

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
APP_DIR = ROOT / "examples" / "flask_app"
WORKERS = 4
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
REQUEST_TIMEOUT = 5.0


class Gunicorn:
    def __init__(self, cache_name: str, log_path: Path, preload: bool) -> None:
        self.preload = preload
        self.cache_name = cache_name
        self.log_path = log_path
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.worker_pids: list[int] = []

    def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        env["METIS_CACHE_NAME"] = self.cache_name
        env["METIS_CACHE_CAPACITY"] = "8MiB"
        env["PYTHONWARNINGS"] = "ignore"
        self.port = free_port()
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
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
            "app:app",
        ]
        if self.preload:
            cmd.insert(-1, "--preload")
        env["METIS_DESTROY_ON_EXIT"] = "1"
        self.proc = subprocess.Popen(
            cmd, cwd=APP_DIR, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_ready(self) -> bool:
        """False when the port was taken meanwhile (retry with another)."""
        deadline = time.monotonic() + START_TIMEOUT
        assert self.proc is not None
        while time.monotonic() < deadline:
            text = self.log()
            if "Connection in use" in text:
                return False
            if self.proc.poll() is not None:
                pytest.fail(f"gunicorn exited with {self.proc.returncode}\n{text[-6000:]}")
            if text.count("metis: worker ") >= WORKERS:
                with contextlib.suppress(OSError):
                    if self.get("/info", timeout=1.0)[0] == 200:
                        found = re.findall(r"metis: worker (\d+) uses", text)
                        self.worker_pids = [int(pid) for pid in found]
                        return True
            time.sleep(0.1)
        pytest.fail(f"gunicorn not ready within {START_TIMEOUT}s\n{self.log()[-6000:]}")

    def get(
        self, path: str, timeout: float = REQUEST_TIMEOUT, headers: dict[str, str] | None = None
    ) -> tuple[int, dict, dict]:
        return get_json(self.port, path, timeout, headers)

    def stop(self) -> int | None:
        code = stop_tree(self.proc, STOP_TIMEOUT)
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None
        return code


@pytest.fixture(params=[False, True], ids=["no-preload", "preload"])
def server(request: pytest.FixtureRequest, tmp_path: Path):
    name = new_name()
    srv = Gunicorn(name, tmp_path / "gunicorn.log", request.param)
    try:
        for _ in range(3):
            srv.start()
            if srv.wait_ready():
                break
            srv.stop()
        else:
            pytest.fail("no free port after 3 attempts")
        yield srv
    finally:
        srv.stop()
        Cache.destroy(name)


def until_pids(srv: Gunicorn, path: str, check, want: int, max_requests: int = 2000) -> set[int]:
    """GETs, 8 at a time, each on a new connection, until ``want`` worker pids answered."""
    pids: set[int] = set()
    sent = 0
    deadline = time.monotonic() + 30.0
    with ThreadPoolExecutor(max_workers=8) as pool:
        while len(pids) < want and sent < max_requests and time.monotonic() < deadline:
            for status, body, headers in pool.map(lambda _: srv.get(path), range(16)):
                check(status, body, headers)
                pids.add(int(headers.get("x-worker-pid") or body["pid"]))
            sent += 16
    return pids


def test_workers_share_values_and_counters(server: Gunicorn) -> None:
    assert len(set(server.worker_pids)) == WORKERS, server.log()[-3000:]
    status, _, _ = server.get("/set?key=greeting&value=hello%20flask")
    assert status == 200

    def check(status: int, body: dict, headers: dict) -> None:
        assert (status, body["found"], body["value"]) == (200, True, "hello flask"), body

    pids = until_pids(server, "/get?key=greeting", check, want=3)
    assert len(pids) >= 3 and pids <= set(children(server.proc.pid)), pids

    with Cache(server.cache_name, create=False) as cache:  # the Flask-Caching key, prefixed
        assert cache.get("demo:greeting") is not None

    n = 200
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: server.get("/incr?key=views"), range(n)))
    assert sorted(body["value"] for _, body, _ in answers) == list(range(1, n + 1))
    assert len({body["pid"] for _, body, _ in answers}) >= 2


def test_memoize_and_cached_are_shared(server: Gunicorn) -> None:
    status, first, _ = server.get("/square?x=12")
    assert (status, first["square"]) == (200, 144)

    def check(status: int, body: dict, headers: dict) -> None:
        assert status == 200
        assert (body["square"], body["computed_by"]) == (144, first["computed_by"]), body

    pids = until_pids(server, "/square?x=12", check, want=3)
    assert len(pids) >= 3 and pids - {first["computed_by"]}, pids
    status, body, _ = server.get("/incr?key=square-computations&delta=0")
    assert body["value"] == 1, "memoized function ran more than once"

    _, page, _ = server.get("/time")
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(20):
            for status, body, _ in pool.map(lambda _: server.get("/time"), range(16)):
                assert status == 200 and body == page  # the whole cached response
    assert page["rendered_by"] in set(children(server.proc.pid))


def test_preload_opens_once_in_the_master(server: Gunicorn) -> None:
    master = server.proc.pid

    def check(status: int, body: dict, headers: dict) -> None:
        assert status == 200 and body["ppid"] == master
        assert body["opened_in_pid"] == (master if server.preload else body["pid"]), body

    assert len(until_pids(server, "/info", check, want=2, max_requests=400)) >= 2


def test_graceful_stop_destroys_segment_when_asked(server: Gunicorn) -> None:
    server.get("/set?key=k&value=v")
    assert Cache.exists(server.cache_name)
    assert server.stop() == 0, server.log()[-3000:]
    assert not Cache.exists(server.cache_name), server.log()[-3000:]
