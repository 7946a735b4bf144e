"""The Django example site under real gunicorn: 4 workers, one Metis cache.

Starts ``examples/django_site`` (``CACHES`` pointing at
``metis_shm.contrib.django.MetisCache``) with ``sys.executable -m gunicorn`` on
127.0.0.1 and a free port, and checks that

* a value set through one request is read back by at least 3 distinct worker
  pids, and by this process through the same backend;
* ``cache.incr`` from 200 concurrent requests hands out each value once;
* a ``cache_page`` view rendered by one worker is served, unchanged, by the
  others (the per-view cache is shared);
* a graceful stop with ``METIS_DESTROY_ON_EXIT=1`` unlinks the segment.

Waits and request counts are bounded; gunicorn is always stopped (SIGTERM,
then SIGKILL of the master and its workers) and the segment destroyed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from _servers import children as _children
from _servers import free_port, get_json, kill_tree, stop_tree
from _workers import new_name  # tests/ is on sys.path (conftest.py)

from metis_shm import Cache

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "examples" / "django_site"
WORKERS = 4
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
REQUEST_TIMEOUT = 5.0


class Site:
    """gunicorn running the Django example."""

    def __init__(self, cache_name: str, log_path: Path) -> None:
        self.cache_name = cache_name
        self.log_path = log_path
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        env.update(
            METIS_CACHE_NAME=self.cache_name,
            METIS_CACHE_CAPACITY="8MiB",
            METIS_DESTROY_ON_EXIT="1",
            DJANGO_SETTINGS_MODULE="settings",
        )
        env.pop("METIS_BIND", None)
        env.pop("METIS_WORKERS", None)
        self.port = free_port()
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
                "--bind", f"127.0.0.1:{self.port}", "--workers", str(WORKERS),
                "--log-level", "info", "wsgi:application",
            ],
            cwd=SITE, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def get(self, path: str, timeout: float = REQUEST_TIMEOUT) -> tuple[int, dict, int]:
        """One GET on a new connection: (status, JSON body, X-Worker-Pid)."""
        status, body, headers = get_json(self.port, path, timeout)
        return status, body, int(headers["X-Worker-Pid"])

    def wait_ready(self, port_race_ok: bool) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if port_race_ok and "Connection in use" in self.log_text():
                return False
            if self.proc.poll() is not None:
                pytest.fail(f"gunicorn exited with {self.proc.returncode}\n" + self.log_text())
            booted = self.log_text().count("Booting worker")
            if booted >= WORKERS:
                try:
                    if self.get("/info", timeout=1.0)[0] == 200:
                        return True
                except (OSError, urllib.error.URLError) as exc:
                    last = exc
            time.sleep(0.1)
        pytest.fail(f"gunicorn did not answer in {START_TIMEOUT}s ({last!r})\n" + self.log_text())
        return False

    def stop(self) -> int | None:
        code = stop_tree(self.proc, STOP_TIMEOUT)
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def kill(self) -> None:
        kill_tree(self.proc, STOP_TIMEOUT)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    name = new_name()
    srv = Site(name, tmp_path / "gunicorn.log")
    try:
        for attempt in range(3):
            srv.start()
            if srv.wait_ready(port_race_ok=attempt < 2):
                break
            srv.stop()  # the free port was taken meanwhile: try another
        yield srv
        assert "Traceback" not in srv.log_text(), srv.log_text()
    finally:
        srv.stop()
        srv.kill()
        Cache.destroy(name)


def _until_pids(
    srv: Site, path: str, check: Callable[[int, dict], None], want: int
) -> tuple[set[int], int]:
    """GET ``path`` (8 at a time) until ``want`` worker pids answered, bounded."""
    pids: set[int] = set()
    sent = 0
    deadline = time.monotonic() + 30.0
    with ThreadPoolExecutor(max_workers=8) as pool:
        while len(pids) < want and sent < 2000 and time.monotonic() < deadline:
            for status, body, pid in pool.map(lambda _: srv.get(path), range(16)):
                check(status, body)
                pids.add(pid)
            sent += 16
    return pids, sent


def test_value_set_through_one_worker_is_read_by_all(site: Site) -> None:
    status, body, writer = site.get("/set?key=greeting&value=hello%20django")
    assert status == 200, body

    def check(status: int, body: dict) -> None:
        assert status == 200, body
        assert (body["found"], body["value"]) == (True, "hello django"), body

    pids, sent = _until_pids(site, "/get?key=greeting", check, want=3)
    assert len(pids) >= 3, f"{len(pids)} workers answered {sent} requests\n" + site.log_text()
    assert site.proc is not None
    assert pids <= set(_children(site.proc.pid)) | {writer}

    # this process, through the same backend and settings, sees it too
    from metis_shm.contrib.django import MetisCache

    backend = MetisCache(site.cache_name, {"KEY_PREFIX": "demo", "OPTIONS": {"create": False}})
    try:
        assert backend.get("greeting") == "hello django"
        backend.set("from-test", "written outside gunicorn")
    finally:
        backend.detach()
    status, body, _ = site.get("/get?key=from-test")
    assert (status, body["value"]) == (200, "written outside gunicorn")


def test_incr_from_many_requests(site: Site) -> None:
    n = 200
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: site.get("/incr?key=views"), range(n)))
    assert all(status == 200 for status, _, _ in answers), answers
    assert sorted(body["value"] for _, body, _ in answers) == list(range(1, n + 1))
    assert len({pid for _, _, pid in answers}) >= 2
    status, body, _ = site.get("/incr?key=views&delta=-50")
    assert (status, body["value"]) == (200, n - 50)


def test_cache_page_is_shared_by_workers(site: Site) -> None:
    status, first, _ = site.get("/page")
    assert status == 200, first

    def check(status: int, body: dict) -> None:
        assert status == 200, body
        assert body == first, "every worker serves the response the first one cached"

    pids, _ = _until_pids(site, "/page", check, want=3)
    assert len(pids) >= 3
    assert first["rendered_by"] == first["pid"]


def test_graceful_stop_destroys_segment(site: Site) -> None:
    site.get("/set?key=k&value=v")
    assert Cache.exists(site.cache_name)
    assert site.stop() == 0, site.log_text()
    assert not Cache.exists(site.cache_name), site.log_text()
