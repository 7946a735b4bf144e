"""The gunicorn example with metisd owning the segment: the daemon creates
the cache, the 4 workers attach to it and see one another's writes; when
metisd stops, the segment and its data stay for the workers."""

from __future__ import annotations

import sys
from pathlib import Path

from _workers import new_name
from test_gunicorn import WORKERS, Server, _until_pids

from metis_shm import Cache

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))
from _metisd import Metisd, write_config


def test_workers_share_the_cache_metisd_created(tmp_path: Path) -> None:
    name = new_name()
    config = write_config(
        tmp_path / "metisd.toml",
        [{"name": name, "capacity": "8MiB"}],
        sweep={"interval": "100ms"},
        heartbeat_interval="200ms",
    )
    daemon = Metisd(config).start()
    srv = Server(preload=False, cache_name=name, log_path=tmp_path / "gunicorn.log")
    try:
        daemon.wait_ready()
        with Cache(name, create=False) as probe:
            assert probe.daemon_alive
            daemon_pid = probe.settings["daemon_pid"]
            assert probe.settings["creator_pid"] == daemon_pid  # metisd made it
        for attempt in range(3):
            srv.start()
            if srv.wait_ready(port_race_ok=attempt < 2):
                break
            srv.stop()
        status, body = srv.get("/set?key=owner&value=metisd")
        assert status == 200, body

        def check(status: int, body: dict) -> None:  # type: ignore[type-arg]
            assert status == 200, body
            assert body["found"] is True and body["value"] == "metisd", body

        pids, _ = _until_pids(srv, "/get?key=owner", check, want_pids=3)
        assert 3 <= len(pids) <= WORKERS
        # metisd stops first: the segment and the workers' data stay.
        assert daemon.stop() == 0, daemon.log()
        with Cache(name, create=False) as after:
            assert after.get("owner") == "metisd"
            assert not after.daemon_alive
    finally:
        daemon.kill()
        srv.stop()  # the helper's gunicorn destroys the segment on exit
        srv.kill()
        Cache.destroy(name)
