"""examples/fastapi_app under real uvicorn with 4 worker processes, over
loopback: the cache given by the FastAPI dependency and the responses stored
by CacheMiddleware are shared by every worker pid.

uvicorn listens on a free port of 127.0.0.1; every wait is bounded; the
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

import fastapi  # noqa: F401 - a test dependency (the test extra)
import pytest
import uvicorn  # noqa: F401 - a test dependency (the test extra)
from _servers import children, free_port, get_json, stop_tree
from _workers import new_name  # tests/ is on sys.path (conftest.py)

from metis_shm import Cache

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
APP_DIR = ROOT / "examples" / "fastapi_app"
WORKERS = 4
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
REQUEST_TIMEOUT = 5.0


class Uvicorn:
    def __init__(self, cache_name: str, log_path: Path) -> None:
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
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "uvicorn", "app:app",
                "--host", "127.0.0.1", "--port", str(self.port),
                "--workers", str(WORKERS), "--log-level", "info",
                "--timeout-graceful-shutdown", "5",
            ],
            cwd=APP_DIR, env=env, stdout=self._log, stderr=subprocess.STDOUT,
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
            if "address already in use" in text.lower():
                return False
            if self.proc.poll() is not None:
                pytest.fail(f"uvicorn exited with {self.proc.returncode}\n{text[-6000:]}")
            if text.count("metis: worker ") >= WORKERS:
                with contextlib.suppress(OSError):
                    if self.get("/info", timeout=1.0)[0] == 200:
                        found = re.findall(r"metis: worker (\d+) uses", text)
                        self.worker_pids = [int(pid) for pid in found]
                        return True
            time.sleep(0.1)
        pytest.fail(f"uvicorn not ready within {START_TIMEOUT}s\n{self.log()[-6000:]}")

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


@pytest.fixture
def server(tmp_path: Path):
    name = new_name()
    srv = Uvicorn(name, tmp_path / "uvicorn.log")
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


def until_pids(srv: Uvicorn, path: str, check, want: int, max_requests: int = 2000) -> set[int]:
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


def test_workers_are_separate_processes(server: Uvicorn) -> None:
    assert len(set(server.worker_pids)) == WORKERS, server.log()[-3000:]
    assert set(server.worker_pids) <= set(children(server.proc.pid))

    def check(status: int, body: dict, headers: dict) -> None:
        assert status == 200, body
        assert body["opened_in_pid"] == body["pid"]  # lifespan opened it in the worker
        assert body["ppid"] == server.proc.pid

    assert len(until_pids(server, "/info", check, want=3)) >= 3


def test_dependency_cache_is_shared_across_workers(server: Uvicorn) -> None:
    status, _, _ = server.get("/set?key=greeting&value=hello%20uvicorn")
    assert status == 200

    def check(status: int, body: dict, headers: dict) -> None:
        assert (status, body["found"], body["value"]) == (200, True, "hello uvicorn"), body
        assert headers.get("x-metis-cache") == "miss"  # no-store routes are never served stored

    pids = until_pids(server, "/get?key=greeting", check, want=3)
    assert len(pids) >= 3 and pids <= set(server.worker_pids), pids

    with Cache(server.cache_name, create=False) as cache:
        assert cache.get("greeting") == "hello uvicorn"

    n = 200
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: server.get("/incr?key=views"), range(n)))
    assert sorted(body["value"] for _, body, _ in answers) == list(range(1, n + 1))
    assert len({body["pid"] for _, body, _ in answers}) >= 2


def test_middleware_hit_across_workers(server: Uvicorn) -> None:
    status, first, headers = server.get("/report?n=100")
    assert status == 200 and headers["x-metis-cache"] == "miss", headers
    etag = headers["etag"]

    def check(status: int, body: dict, headers: dict) -> None:
        assert status == 200
        assert headers["x-metis-cache"] == "hit", headers
        assert body["rendered_by"] == first["rendered_by"], body
        assert body["rendered_at"] == first["rendered_at"], body
        assert headers["etag"] == etag

    pids = until_pids(server, "/report?n=100", check, want=3)
    assert len(pids) >= 3, pids
    assert pids - {first["rendered_by"]}, "no worker other than the renderer answered"
    with Cache(server.cache_name, create=False) as cache:
        assert cache.get("report-renders") == 1  # rendered once for every worker

    # conditional requests get a 304 from whichever worker answers
    for _ in range(8):
        status, _, headers = server.get("/report?n=100", headers={"If-None-Match": etag})
        assert status == 304 and headers["x-metis-cache"] == "hit"


def test_sigterm_stops_every_worker(server: Uvicorn) -> None:
    workers = list(server.worker_pids)
    code = server.stop()
    assert code == 0, server.log()[-3000:]
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in workers):
        time.sleep(0.1)
    assert Cache.exists(server.cache_name)  # the data outlives the server
