"""In-process tests of metisd's parts: the sd_notify client, the metrics
exposition, the HTTP server, live reload of settings, settings comparison."""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from _metisd import NotifyListener

from metis_shm import Cache
from metis_shm.daemon.config import DaemonConfig, diff_config, load_config
from metis_shm.daemon.health import Family, HealthServer, format_families, render_metrics
from metis_shm.daemon.lifecycle import settings_mismatch
from metis_shm.daemon.reload import apply_live
from metis_shm.daemon.systemd import Notifier

# ---- systemd ---------------------------------------------------------------------


def test_notifier_without_socket_is_a_no_op() -> None:
    n = Notifier({})
    assert not n.enabled and n.watchdog_interval is None
    assert n.ready("x") is False and n.watchdog() is False and n.stopping() is False


def test_notifier_path_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    listener = NotifyListener(path)
    try:
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000"})
        assert n.enabled and n.watchdog_interval == 1.5
        assert n.ready("warm\nand ready")
        assert n.status("hello") and n.watchdog() and n.extend_timeout(2.5) and n.stopping()
        listener.wait_field("STOPPING=1")
        assert listener.messages[0] == f"READY=1\nMAINPID={os.getpid()}\nSTATUS=warm and ready"
        assert listener.messages[1:4] == [
            "STATUS=hello",
            "WATCHDOG=1",
            "EXTEND_TIMEOUT_USEC=2500000",
        ]
        n.close()
    finally:
        listener.close()


def test_notifier_abstract_socket_and_reloading() -> None:
    listener = NotifyListener()
    try:
        assert listener.address.startswith("@")
        n = Notifier({"NOTIFY_SOCKET": listener.address})
        assert n.reloading() and n.ready()
        listener.wait_field("READY=1")
        fields = listener.fields()
        assert "RELOADING=1" in fields
        assert any(f.startswith("MONOTONIC_USEC=") for f in fields)
        n.close()
    finally:
        listener.close()


def test_notifier_watchdog_for_another_pid_and_bad_addresses(tmp_path: Path) -> None:
    other = Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert os.getpid() == 1 or other.watchdog_interval is None
    assert not Notifier({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert gone.enabled and gone.notify("READY=1") is False  # logged, not raised
    gone.close()


# ---- metrics -----------------------------------------------------------------------


def test_exposition_escapes_and_parses() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    fam = Family("metis_test_total", "counter", "help with \\ and\nnewline")
    fam.add(3, cache='a"b\\c\nd')
    gauge = Family("metis_test_seconds", "gauge", "g")
    gauge.add(0.25)
    gauge.add(float("inf"), kind="inf")
    empty = Family("metis_empty", "gauge", "no samples: left out")
    text = format_families([fam, gauge, empty])
    assert "metis_empty" not in text
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    sample = parsed["metis_test"].samples[0]
    assert sample.labels == {"cache": 'a"b\\c\nd'} and sample.value == 3
    assert parsed["metis_test"].documentation == "help with \\ and\nnewline"
    values = sorted(s.value for s in parsed["metis_test_seconds"].samples)
    assert values == [0.25, float("inf")]


def test_render_metrics_from_a_cache(cache: Cache) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    cache.set("a", b"1")
    cache.get("a")
    cache.get("b")
    daemon = {
        "version": "9.9",
        "state": "ready",
        "started_at": 1.5,
        "loop": {"ticks": 7, "last_tick_seconds": 0.001},
        "config": {"sweep": {"interval": 1.0, "budget": 10}},
        "reloads": {"ok": 2, "failed": 1},
        "caches": {cache.name: {"sweeps": 4, "swept_items": 3, "last_snapshot_path": "x"}},
    }
    text = render_metrics({cache.name: cache.stats()}, daemon)
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    assert parsed["metis_cache_hits"].samples[0].value == 1
    assert parsed["metis_cache_misses"].samples[0].value == 1
    assert parsed["metis_cache_info"].samples[0].labels == {
        "cache": cache.name,
        "policy": cache.policy,
    }
    assert parsed["metis_daemon_ticks"].samples[0].value == 7
    assert parsed["metis_daemon_sweeps"].samples[0].labels == {"cache": cache.name}
    assert parsed["metis_daemon_ready"].samples[0].value == 1
    reloads = {s.labels["result"]: s.value for s in parsed["metis_daemon_reloads"].samples}
    assert reloads == {"ok": 2, "failed": 1}
    assert "last_snapshot_path" not in text
    assert "metis_daemon" not in render_metrics({}, None)


# ---- the HTTP server ---------------------------------------------------------------


class _Endpoints:
    def __init__(self) -> None:
        self.ok = True

    def health(self) -> tuple[bool, dict[str, Any]]:
        return self.ok, {"status": "ok" if self.ok else "unavailable", "reasons": []}

    def stats(self, *, shards: bool = True) -> dict[str, Any]:
        return {"shards": shards}

    def metrics(self) -> str:
        raise RuntimeError("boom")


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_health_server(tmp_path: Path) -> None:
    endpoints = _Endpoints()
    sock = tmp_path / "h.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))  # a socket file nobody listens on: replaced
    stale.close()
    server = HealthServer(endpoints, "127.0.0.1:0", str(sock))
    server.start()
    try:
        assert server.url is not None and server.url.startswith("http://127.0.0.1:")
        assert server.unix_socket == str(sock)
        assert oct(os.stat(sock).st_mode & 0o777) == "0o660"
        assert _get(server.url + "/healthz") == (200, '{"status":"ok","reasons":[]}\n')
        endpoints.ok = False
        assert _get(server.url + "/healthz")[0] == 503
        assert json.loads(_get(server.url + "/stats?shards=0")[1]) == {"shards": False}
        status, body = _get(server.url + "/metrics")
        assert status == 500 and "boom" in body
        assert _get(server.url + "/")[0] == 200
        # A second server cannot take the same socket while this one serves.
        with pytest.raises(OSError, match="another process serves"):
            HealthServer(endpoints, None, str(sock)).start()
    finally:
        server.close()
    assert not sock.exists()
    sock.write_text("not a socket")
    with pytest.raises(FileExistsError):
        HealthServer(endpoints, None, str(sock)).start()


# ---- configuration -------------------------------------------------------------------


def test_apply_live_takes_only_live_fields(tmp_path: Path) -> None:
    old = load_config(overrides={"caches[0]": {"name": "a", "capacity": "4MiB"}}, env={}).config
    new = load_config(
        overrides={
            "caches[0]": {"name": "a", "capacity": "8MiB"},
            "sweep.interval": "2s",
            "log_level": "debug",
            "health.address": "127.0.0.1:1",
        },
        env={},
    ).config
    live, restart = diff_config(old, new)
    merged = apply_live(old, new, live)
    assert isinstance(merged, DaemonConfig)
    assert merged.sweep.interval == 2.0 and merged.log_level == "DEBUG"
    assert merged.caches[0].capacity == 4 << 20
    assert merged.health.address == old.health.address
    assert set(restart) == {"caches[0].capacity", "health.address"}
    assert old.sweep.interval == 1.0  # the old config is not changed in place
    assert apply_live(old, new, {}) is old


def test_settings_mismatch(cache: Cache) -> None:
    from metis_shm.daemon.config import CacheConfig

    same = CacheConfig(name=cache.name, capacity="8MiB")
    assert settings_mismatch(cache, same) == {}
    other = CacheConfig(
        name=cache.name, capacity="16MiB", policy="lru", shards=2 * cache.n_shards, default_ttl=5.0
    )
    differ = settings_mismatch(cache, other)
    assert differ["capacity"] == (8 << 20, 16 << 20)
    assert differ["policy"] == ("wtinylfu", "lru")
    assert differ["shards"] == (cache.n_shards, 2 * cache.n_shards)
    assert "default_ttl_ns" in differ


def test_every_metric_is_documented(cache: Cache) -> None:
    from _metisd import ROOT
    from prometheus_client.parser import text_string_to_metric_families

    from metis_shm.daemon.state import CacheCounters

    daemon = {
        "version": "1",
        "state": "ready",
        "started_at": 0.0,
        "loop": {
            "ticks": 1,
            "overruns": 0,
            "tick_seconds_total": 0.0,
            "last_tick_seconds": 0.0,
            "watchdog_pings": 0,
        },
        "config": {"sweep": {"interval": 1.0, "budget": 1}},
        "reloads": {"ok": 0, "failed": 0},
        "caches": {cache.name: CacheCounters().to_dict()},
    }
    text = render_metrics({cache.name: cache.stats()}, daemon)
    doc = (ROOT / "docs" / "daemon.md").read_text()
    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    missing = sorted(n for n in names if f"`{n}" not in doc)
    assert not missing, f"metrics missing from docs/daemon.md: {missing}"


def test_stop_during_warm_up(tmp_path: Path, cache_name: str, caplog: Any) -> None:
    from metis_shm.daemon.lifecycle import Daemon
    from metis_shm.daemon.snapshots.format import list_snapshots, write_snapshot

    with Cache(cache_name, capacity="8MiB") as cache:
        cache.set_many({f"k{i}": i for i in range(1000)})
        write_snapshot(cache, tmp_path)
    Cache.destroy(cache_name)
    loaded = load_config(
        env={},
        overrides={
            "caches[0]": {"name": cache_name, "capacity": "8MiB"},
            "snapshot.path": str(tmp_path),
            "health.enabled": False,
        },
    )
    daemon = Daemon(loaded, notifier=Notifier({}))
    daemon._stop = True  # as if SIGTERM came while the caches were opening
    daemon.start()
    managed = daemon.caches[cache_name]
    assert managed.counters.opened == "created" and not managed.warm
    assert "warm-up interrupted by a stop signal" in caplog.text
    daemon.shutdown(snapshot=True)
    assert len(list_snapshots(tmp_path, cache_name)) == 1  # no partial snapshot written
    assert Cache.exists(cache_name)  # left for the workers


def test_journal_log_lines_carry_priorities() -> None:
    import logging

    from metis_shm.daemon.logs import _JournalFormatter

    fmt = _JournalFormatter("%(name)s: %(message)s")
    record = logging.LogRecord("metis_shm.daemon", logging.WARNING, __file__, 1, "a\nb", (), None)
    assert fmt.format(record) == "<4>metis_shm.daemon: a\n<4>b"
    record.levelno = logging.DEBUG
    assert fmt.format(record).startswith("<7>")
