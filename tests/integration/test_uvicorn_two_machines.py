"""examples/fastapi_app as two machines in front of one Redis: two uvicorn
servers (4 workers each), each with its own near cache name and its own
metisd, both configured by METIS_CACHE_FAR (README.md). Driven over
loopback HTTP:

* a value written through server A is read through server B, which had the
  old value in its near tier, within the staleness bound;
* B's workers share one near copy (B's far counters: one Redis read for
  the reads of several workers);
* a page CacheMiddleware stored on A is a hit on B, rendered once in all.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from _far_machines import (
    BOUND,
    Machine,
    environment,
    fetches,
    read_from_workers,
    start_machine,
    wait_for,
)
from _far_machines import redis_server as redis_server  # the fixture
from _workers import new_name
from test_uvicorn import Uvicorn

from metis_shm import Cache

pytestmark = pytest.mark.integration


class FarUvicorn(Uvicorn):
    """The example under uvicorn, in the environment of one machine."""

    def __init__(self, machine: Machine, log_path: Path) -> None:
        super().__init__(machine.name, log_path)
        self.machine = machine

    def start(self) -> None:
        with environment(self.machine.env):
            super().start()

    def body(self, path: str) -> tuple[dict[str, Any], dict[str, str]]:
        status, body, headers = self.get(path)
        assert status == 200, (path, body, self.log()[-3000:])
        return body, {k.lower(): v for k, v in headers.items()}


def _serve(machine: Machine, tmp_path: Path) -> FarUvicorn:
    srv = FarUvicorn(machine, tmp_path / f"uvicorn-{machine.name}.log")
    for _ in range(3):
        srv.start()
        if srv.wait_ready():
            return srv
        srv.stop()
    pytest.fail("uvicorn found no free port in 3 attempts")


def _far(srv: FarUvicorn) -> dict[str, Any]:
    far: dict[str, Any] = srv.body("/info")[0]["far"]
    return far


def _reads(srv: FarUvicorn, key: str, want: Any, pids: int) -> list[dict[str, Any]]:
    return read_from_workers(lambda path: srv.body(path)[0], key, want, pids)


def test_two_uvicorn_machines_share_through_redis(
    tmp_path: Path, redis_server: Any, daemons: Any
) -> None:
    prefix = f"{new_name()}:"
    far = {"url": redis_server.url, "prefix": prefix}
    a = start_machine(tmp_path, daemons, new_name(), far)
    b = start_machine(tmp_path, daemons, new_name(), far)
    servers: list[FarUvicorn] = []
    try:
        servers += [_serve(a, tmp_path), _serve(b, tmp_path)]
        sa, sb = servers
        for srv in servers:
            wait_for(lambda s=srv: _far(s)["gate_open"], 10.0, "metisd vouches")

        sa.body("/set?key=greeting&value=old")
        before = fetches(_far(sb))
        answers = _reads(sb, "greeting", "old", pids=3)
        assert all(ans["near"] for ans in answers[1:]), answers
        assert fetches(_far(sb)) - before == 1

        sa.body("/set?key=greeting&value=new")
        written = time.monotonic()
        seen_new = wait_for(
            lambda: sb.body("/get?key=greeting")[0]["value"] == "new", BOUND, "B reads A's write"
        )
        print(f"B read A's write {seen_new * 1e3:.1f} ms after A answered")
        assert time.monotonic() - written <= BOUND + 0.2
        after_write = fetches(_far(sb))
        answers = _reads(sb, "greeting", "new", pids=3)
        assert all(ans["near"] for ans in answers), answers
        assert fetches(_far(sb)) == after_write, "B's workers share one copy"
        assert fetches(_far(sb)) - before == 2

        # A whole page stored by A's middleware is served by B's workers.
        first, headers = sa.body("/report?n=7")
        assert headers["x-metis-cache"] == "miss"
        pids = set()
        for _ in range(40):
            page, headers = sb.body("/report?n=7")
            assert headers["x-metis-cache"] == "hit", headers
            assert page["rendered_by"] == first["rendered_by"] == first["pid"]
            pids.add(int(headers["x-worker-pid"]))
            if len(pids) >= 3:
                break
        assert len(pids) >= 3, pids
        assert redis_server.client().get(f"{prefix}report-renders".encode()) == b"1"
    finally:
        for srv in servers:
            srv.stop()
        for m in (a, b):
            Cache.destroy(m.name)
