"""examples/gunicorn_app as two machines in front of one Redis: two gunicorn
servers (4 workers each), each with its own near cache name and its own
metisd, both configured by METIS_CACHE_FAR (README.md, "Two machines in
front of one Redis"). Driven over loopback HTTP:

* a value written through server A is read through server B, which had the
  old value in its near tier, within the staleness bound;
* B's workers share one near copy: several of B's workers read the new
  value, and B's far counters show one Redis read for all of them;
* a counter incremented through both servers is one counter (Redis INCRBY).
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
from test_gunicorn import Server

from metis_shm import Cache

pytestmark = pytest.mark.integration


class FarServer(Server):
    """The example under gunicorn, in the environment of one machine."""

    def __init__(self, machine: Machine, log_path: Path) -> None:
        super().__init__(preload=False, cache_name=machine.name, log_path=log_path)
        self.machine = machine

    def start(self) -> None:
        with environment(self.machine.env):
            super().start()

    def body(self, path: str) -> dict[str, Any]:
        status, body = self.get(path)
        assert status == 200, (path, body, self.log_text())
        return body


def _serve(machine: Machine, tmp_path: Path) -> FarServer:
    srv = FarServer(machine, tmp_path / f"gunicorn-{machine.name}.log")
    for attempt in range(3):
        srv.start()
        if srv.wait_ready(port_race_ok=attempt < 2):
            return srv
        srv.stop()
    pytest.fail("gunicorn found no free port in 3 attempts")


def _reads(srv: FarServer, key: str, want: Any, pids: int) -> list[dict[str, Any]]:
    return read_from_workers(srv.body, key, want, pids)


def test_two_gunicorn_machines_share_through_redis(
    tmp_path: Path, redis_server: Any, daemons: Any
) -> None:
    prefix = f"{new_name()}:"
    far = {"url": redis_server.url, "prefix": prefix}
    a = start_machine(tmp_path, daemons, new_name(), far)
    b = start_machine(tmp_path, daemons, new_name(), far)
    servers: list[FarServer] = []
    try:
        servers += [_serve(a, tmp_path), _serve(b, tmp_path)]
        sa, sb = servers
        for srv in servers:
            wait_for(lambda s=srv: s.body("/info")["far"]["gate_open"], 10.0, "metisd vouches")

        # B reads the old value: one Redis read, then B's near copy for every worker.
        assert sa.body("/set?key=greeting&value=old")["value"] == "old"
        before = fetches(sb.body("/info")["far"])
        answers = _reads(sb, "greeting", "old", pids=3)
        assert all(ans["near"] for ans in answers[1:]), answers
        assert fetches(sb.body("/info")["far"]) - before == 1

        # A writes; B's copy dies (Redis's invalidation, through B's metisd).
        sa.body("/set?key=greeting&value=new")
        written = time.monotonic()
        seen_new = wait_for(
            lambda: sb.body("/get?key=greeting")["value"] == "new", BOUND, "B reads A's write"
        )
        print(f"B read A's write {seen_new * 1e3:.1f} ms after A answered")
        assert time.monotonic() - written <= BOUND + 0.2
        after_write = fetches(sb.body("/info")["far"])
        answers = _reads(sb, "greeting", "new", pids=3)
        assert all(ans["near"] for ans in answers), answers  # served by B's one copy
        pids = {ans["pid"] for ans in answers}
        assert fetches(sb.body("/info")["far"]) == after_write, "B's workers share one copy"
        assert fetches(sb.body("/info")["far"]) - before == 2  # old once, new once
        print(f"B: {len(pids)} workers read the new value from one Redis read")

        # A counter through both machines is Redis's.
        for i in range(10):
            (sa if i % 2 else sb).body("/incr?key=hits")
        assert sa.body("/incr?key=hits&delta=0")["value"] == 10
        assert redis_server.client().get(f"{prefix}hits".encode()) == b"10"
        for srv in servers:
            assert not srv.worker_deaths(), srv.log_text()
    finally:
        for srv in servers:
            srv.stop()
            srv.kill()
        for m in (a, b):
            Cache.destroy(m.name)
