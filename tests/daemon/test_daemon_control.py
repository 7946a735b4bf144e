"""Talking to a running metisd: /healthz, /stats and /metrics over HTTP and a
unix socket, SIGHUP reloads (a live change applied, an invalid edit refused),
and systemd's notifications on a test-owned NOTIFY_SOCKET."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import time
from pathlib import Path
from typing import Any

from _metisd import NotifyListener, config_text

from metis_shm import Cache
from metis_shm.stats import SUMMARY_FIELDS


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self.unix_path)


def _unix_get(path: str, url: str) -> tuple[int, str]:
    conn = _UnixHTTPConnection(path)
    try:
        conn.request("GET", url)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def _config(name: str, sock: Path, *, interval: str, level: str, capacity: str = "8MiB") -> str:
    return config_text(
        [{"name": name, "capacity": capacity}],
        sweep={"interval": interval, "budget": 5000},
        health={"unix_socket": str(sock)},
        log_level=level,
        heartbeat_interval="200ms",
    )


def test_endpoints_reload_and_notify(tmp_path: Path, daemons: Any, names: Any) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    name = names()
    sock = tmp_path / "health.sock"
    config = tmp_path / "metisd.toml"
    config.write_text(_config(name, sock, interval="500ms", level="INFO"))
    listener = NotifyListener()  # abstract namespace: NOTIFY_SOCKET=@...
    try:
        d = daemons(config, env={"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "400000"})
        d.wait_ready()

        # ---- systemd: STATUS lines, READY=1 after the caches are open, WATCHDOG=1
        listener.wait_field("READY=1")
        fields = listener.fields()
        assert fields.index("STATUS=starting") < fields.index("READY=1")
        assert any(f.startswith("STATUS=ready: 1 cache") for f in fields)
        assert f"MAINPID={d.pid}" in fields
        listener.wait_field("WATCHDOG=1", count=3, timeout=10)

        # ---- data to look at
        with Cache(name, create=False) as cache:
            cache.set_many({f"k{i}": i for i in range(100)})
            for i in range(150):
                cache.get(f"k{i}")

        # ---- /healthz
        status, ctype, body = d.get("/healthz")
        assert status == 200 and ctype == "application/json"
        health = json.loads(body)
        assert health["status"] == "ok" and health["reasons"] == []
        assert health["caches"][name]["warm"] is True

        # ---- /stats
        status, ctype, body = d.get("/stats")
        assert status == 200 and ctype == "application/json"
        stats = json.loads(body)
        cache_stats = stats["caches"][name]
        assert set(SUMMARY_FIELDS) <= set(cache_stats)
        assert cache_stats["hits"] == 100 and cache_stats["misses"] == 50
        assert cache_stats["items"] == 100 and len(cache_stats["shards"]) == cache_stats["n_shards"]
        daemon = stats["daemon"]
        assert daemon["pid"] == d.pid and daemon["state"] == "ready"
        assert daemon["config"]["sweep"] == {"interval": 0.5, "budget": 5000}
        assert daemon["config"]["log_level"] == "INFO"
        assert daemon["loop"]["watchdog_interval"] == 0.2
        counters = daemon["caches"][name]
        for key in ("sweeps", "drains", "heartbeats", "rollups", "snapshots_written", "errors"):
            assert key in counters
        assert counters["heartbeats"] > 0 and counters["sweeps"] > 0
        assert "shards" not in d.get_json("/stats?shards=0")["caches"][name]

        # ---- /metrics, parsed by the Prometheus client library's parser
        status, ctype, text = d.get("/metrics")
        assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
        families = {f.name: f for f in text_string_to_metric_families(text)}
        hits = families["metis_cache_hits"]
        assert hits.type == "counter"
        assert [(s.name, s.labels, s.value) for s in hits.samples] == [
            ("metis_cache_hits_total", {"cache": name}, 100.0)
        ]
        assert families["metis_cache_items"].type == "gauge"
        assert families["metis_cache_items"].samples[0].value == 100.0
        for family in (
            "metis_cache_used_bytes",
            "metis_cache_capacity_bytes",
            "metis_cache_expirations",
            "metis_cache_lock_recoveries",
            "metis_daemon_sweeps",
            "metis_daemon_swept_items",
            "metis_daemon_heartbeats",
            "metis_daemon_snapshots_written",
            "metis_daemon_ticks",
            "metis_daemon_watchdog_pings",
            "metis_daemon_reloads",
        ):
            assert family in families, family
        assert families["metis_daemon_sweep_interval_seconds"].samples[0].value == 0.5
        for fam in families.values():
            for sample in fam.samples:
                if "cache" in sample.labels:
                    assert sample.labels["cache"] == name

        # ---- the same over the unix socket; unknown paths are 404
        status, body = _unix_get(str(sock), "/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        status, body = _unix_get(str(sock), "/metrics")
        assert status == 200 and "metis_cache_hits_total" in body
        assert d.get("/nope")[0] == 404

        # ---- SIGHUP: live settings change, the others are logged as needing a restart
        ticks = d.stats()["daemon"]["loop"]["ticks"]
        mark = d.mark()
        config.write_text(_config(name, sock, interval="50ms", level="DEBUG", capacity="16MiB"))
        d.signal(signal.SIGHUP)
        d.wait_for(r"reloaded: .*sweep\.interval 0\.5 -> 0\.05", start=mark)
        d.wait_for(r"only applied by a restart.*caches\[0\]\.capacity", start=mark)
        listener.wait_field("RELOADING=1")
        stats = d.stats()
        assert stats["daemon"]["config"]["sweep"]["interval"] == 0.05
        assert stats["daemon"]["config"]["log_level"] == "DEBUG"
        assert stats["daemon"]["reloads"]["ok"] == 1
        assert stats["caches"][name]["capacity"] == 8 << 20  # needs a restart
        d.get("/healthz")
        d.wait_for(r"DEBUG .*http .*GET /healthz", start=mark)  # the new level is live
        t = time.monotonic()
        ticks = d.stats()["daemon"]["loop"]["ticks"]
        time.sleep(1.0)
        faster = d.stats()["daemon"]["loop"]["ticks"] - ticks
        assert faster >= 0.5 / 0.05 * (time.monotonic() - t) / 2, faster

        # ---- an invalid edit: refused with the error, the running config stays
        mark = d.mark()
        config.write_text(
            _config(name, sock, interval="50ms", level="DEBUG").replace('"50ms"', '"fast"')
        )
        d.signal(signal.SIGHUP)
        m = d.wait_for(r"reload refused.*", start=mark)
        assert "INVALID_CONFIG" in m.group(0) and "sweep.interval" in m.group(0)
        assert "'fast'" in m.group(0) and "duration" in m.group(0)
        stats = d.stats()
        assert stats["daemon"]["config"]["sweep"]["interval"] == 0.05
        assert stats["daemon"]["config"]["log_level"] == "DEBUG"
        assert stats["daemon"]["reloads"]["failed"] == 1
        assert "INVALID_CONFIG" in stats["daemon"]["reloads"]["last_error"]
        assert d.get("/healthz")[0] == 200
        assert d.alive()

        # ---- a segment removed under the daemon: /healthz says 503 and why
        Cache.destroy(name)
        deadline = time.monotonic() + 10
        status, body = 200, ""
        while time.monotonic() < deadline:
            status, _, body = d.get("/healthz")
            if status == 503:
                break
            time.sleep(0.05)
        assert status == 503, body
        assert "was removed" in " ".join(json.loads(body)["reasons"])

        # ---- SIGTERM: STOPPING=1, exit 0
        assert d.stop() == 0
        listener.wait_field("STOPPING=1")
        assert not sock.exists()
    finally:
        listener.close()


def test_no_notify_socket_and_health_disabled(tmp_path: Path, daemons: Any, names: Any) -> None:
    name = names()
    config = tmp_path / "metisd.toml"
    config.write_text(config_text([{"name": name, "capacity": "4MiB"}], health={"enabled": False}))
    d = daemons(config)
    d.wait_for(r"ready \(pid")
    assert "health endpoints" not in d.log()
    assert d.stop() == 0
