"""The FastAPI example under uvicorn with metisd owning the segment: the
daemon creates the cache, the 4 workers attach to it in their lifespan and
share it; when metisd stops, the data stays for the workers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from _workers import new_name
from test_uvicorn import Uvicorn, until_pids

from metis_shm import Cache

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))
from _metisd import Metisd, write_config


def test_workers_share_the_cache_metisd_created(tmp_path: Path) -> None:
    name = new_name()
    config = write_config(
        tmp_path / "metisd.toml", [{"name": name, "capacity": "8MiB"}], heartbeat_interval="200ms"
    )
    daemon = Metisd(config).start()
    srv = Uvicorn(name, tmp_path / "uvicorn.log")
    try:
        daemon.wait_ready()
        with Cache(name, create=False) as probe:
            assert probe.daemon_alive
            assert probe.settings["creator_pid"] == probe.settings["daemon_pid"]
        for _ in range(3):
            srv.start()
            if srv.wait_ready():
                break
            srv.stop()
        else:
            pytest.fail("no free port after 3 attempts")
        status, _, _ = srv.get("/set?key=owner&value=metisd")
        assert status == 200

        def check(status: int, body: dict, headers: dict) -> None:  # type: ignore[type-arg]
            assert (status, body["found"], body["value"]) == (200, True, "metisd"), body

        pids = until_pids(srv, "/get?key=owner", check, want=3)
        assert len(pids) >= 3, pids
        assert daemon.stop() == 0, daemon.log()
        with Cache(name, create=False) as after:
            assert after.get("owner") == "metisd"
    finally:
        daemon.kill()
        srv.stop()
        Cache.destroy(name)
