"""Snapshots through metisd: written at SIGTERM, restored at the next start of a
destroyed cache (expired items left out), a damaged newest snapshot
reported and the older one used; periodic snapshots and SIGUSR1."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from _metisd import write_config

from metis_shm import Cache
from metis_shm.daemon.snapshots.format import list_snapshots

LIVE = {f"live:{i}": {"n": i, "tag": "x" * (i % 17)} for i in range(2000)}
SHORT_TTL = 1.5


def _cycle_config(tmp_path: Path, name: str) -> Path:
    return write_config(
        tmp_path / "metisd.toml",
        [{"name": name, "capacity": "8MiB"}],
        snapshot={
            "enabled": True,
            "path": str(tmp_path / "snaps"),
            "interval": 0,
            "retention": 5,
            "on_shutdown": True,
        },
    )


def _stop_and_destroy(d: Any, name: str) -> None:
    assert d.stop() == 0
    assert Cache.destroy(name)


def test_snapshot_restore_and_damaged_snapshots(tmp_path: Path, daemons: Any, names: Any) -> None:
    name = names()
    config = _cycle_config(tmp_path, name)
    snaps = tmp_path / "snaps"

    # 1. Items in, SIGTERM: a snapshot is written at shutdown.
    first = daemons(config).wait_ready()
    with Cache(name, create=False) as cache:
        cache.set_many(LIVE)
        cache.set_many({f"short:{i}": i for i in range(500)}, ttl=SHORT_TTL)
        cache.set("counter", 41)
    written_at = time.monotonic()
    _stop_and_destroy(first, name)
    assert "snapshot" in first.log() and "written: 2,501 items" in first.log()
    assert len(list_snapshots(snaps, name)) == 1
    time.sleep(max(0.0, SHORT_TTL + 0.2 - (time.monotonic() - written_at)))

    # 2. Start on no segment: warm-up from the snapshot, the expired items left out.
    second = daemons(config).wait_ready()
    log = second.log()
    assert "warming up cache" in log or "warmed up from" in log
    assert "2,001 items restored, 500 expired (not restored)" in log
    counters = second.stats()["daemon"]["caches"][name]
    assert counters["opened"] == "created"
    assert counters["restored_items"] == 2001
    assert counters["restore_expired_items"] == 500
    with Cache(name, create=False) as cache:
        assert len(cache) == 2001
        assert cache.get_many(list(LIVE)) == LIVE
        assert cache.get("short:0") is None
        assert cache.incr("counter") == 42
        cache.set_many({f"second:{i}": i for i in range(10)})
    _stop_and_destroy(second, name)
    newest = list_snapshots(snaps, name)[0]

    # 3. Flip one byte in the middle of the newest snapshot: reported, the older one used.
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x40
    newest.write_bytes(bytes(data))
    third = daemons(config).wait_ready()
    log = third.log()
    assert f"skipping snapshot {newest}" in log
    assert "1 newer snapshot(s) skipped" in log
    skipped = third.stats()["daemon"]["caches"][name]["restore_skipped"]
    assert [p for p, _ in skipped] == [str(newest)]
    status, _, body = third.get("/healthz")
    assert status == 200 and "warm-up skipped snapshot" in body
    with Cache(name, create=False) as cache:
        assert len(cache) == 2001
        assert cache.get("second:0") is None  # only in the damaged snapshot
        assert cache.get("counter") == 41
        cache.set_many({f"third:{i}": i for i in range(10)})
    _stop_and_destroy(third, name)

    # 4. Truncate the newest: it and the flipped one are skipped, the first used.
    newest = list_snapshots(snaps, name)[0]
    size = newest.stat().st_size
    with open(newest, "r+b") as f:
        f.truncate(size - 100)
    fourth = daemons(config).wait_ready()
    log = fourth.log()
    assert f"skipping snapshot {newest}" in log and "truncated" in log
    assert "2 newer snapshot(s) skipped" in log
    with Cache(name, create=False) as cache:
        assert len(cache) == 2001
        assert cache.get("third:0") is None and cache.get("second:0") is None
        assert cache.get_many(list(LIVE)) == LIVE
    assert fourth.stop() == 0


def test_periodic_and_on_demand_snapshots(tmp_path: Path, daemons: Any, names: Any) -> None:
    name = names()
    snaps = tmp_path / "snaps"
    config = write_config(
        tmp_path / "metisd.toml",
        [{"name": name, "capacity": "8MiB"}],
        snapshot={
            "enabled": True,
            "path": str(snaps),
            "interval": "300ms",
            "retention": 2,
            "on_shutdown": False,
        },
    )
    d = daemons(config).wait_ready()
    with Cache(name, create=False) as cache:
        cache.set("k", b"v")
    d.wait_stats(
        lambda s: s["daemon"]["caches"][name]["snapshots_written"] >= 3,
        what="3 periodic snapshots",
    )
    assert len(list_snapshots(snaps, name)) == 2  # retention
    stats = d.stats()["daemon"]["caches"][name]
    assert stats["last_snapshot_items"] == 1 and stats["snapshots_failed"] == 0

    # SIGUSR1: one more now, even with a long interval.
    long_interval = config.read_text().replace('"300ms"', '"1h"')
    config.write_text(long_interval)
    d.signal(signal.SIGHUP)
    d.wait_stats(lambda s: s["daemon"]["config"]["snapshot"]["interval"] == 3600.0)
    before = d.stats()["daemon"]["caches"][name]["snapshots_written"]
    d.signal(signal.SIGUSR1)
    d.wait_stats(
        lambda s: s["daemon"]["caches"][name]["snapshots_written"] == before + 1,
        what="the SIGUSR1 snapshot",
    )
    assert d.stop() == 0
