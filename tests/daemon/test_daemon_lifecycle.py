"""metisd's lifecycle with real processes: SIGKILL under load and re-attach,
an incompatible segment, a second daemon, ``--destroy``, a bad config."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _metisd import ROOT, python_env, write_config

from metis_shm import Cache, segment

CLIENTS = Path(__file__).with_name("_clients.py")


def _start_client(name: str, index: int, tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    out = tmp_path / f"client{index}.json"
    proc = subprocess.Popen(
        [sys.executable, str(CLIENTS), "rw", name, str(index), str(tmp_path / "stop"), str(out)],
        env=python_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, out


def _ops(out: Path) -> int:
    return json.loads(out.read_text())["ops"] if out.exists() else 0


def test_sigkill_under_load_then_restart_reattaches(
    tmp_path: Path, daemons: Any, names: Any
) -> None:
    name = names()
    config = write_config(
        tmp_path / "metisd.toml",
        [{"name": name, "capacity": "16MiB"}],
        sweep={"interval": "10ms", "budget": 100_000},
        heartbeat_interval="100ms",
    )
    first = daemons(config).wait_ready()
    clients = [_start_client(name, i, tmp_path) for i in range(2)]
    try:
        with Cache(name, create=False) as probe:
            deadline = time.monotonic() + 20
            while probe.stats().sets < 20_000 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert probe.stats().sets >= 20_000, "the clients never got going"
            assert probe.daemon_alive
            assert probe.settings["daemon_pid"] == first.pid

            first.signal(signal.SIGKILL)
            assert first.wait() == -signal.SIGKILL
            sets_at_kill = probe.stats().sets
            time.sleep(0.5)  # clients go on without a daemon
            assert probe.stats().sets > sets_at_kill

            second = daemons(config).wait_ready()
            assert "re-attached to the existing segment" in second.log()
            opened = second.stats()["daemon"]["caches"][name]["opened"]
            assert opened == "attached"
            deadline = time.monotonic() + 10
            while probe.settings["daemon_pid"] != second.pid and time.monotonic() < deadline:
                time.sleep(0.05)
            assert probe.settings["daemon_pid"] == second.pid
            assert probe.daemon_alive
            sets_at_restart = probe.stats().sets
            time.sleep(0.5)
            assert probe.stats().sets > sets_at_restart
    finally:
        (tmp_path / "stop").touch()
        outputs = []
        for proc, out in clients:
            try:
                text, _ = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                text, _ = proc.communicate()
            outputs.append((proc.returncode, text, out))

    written: dict[str, str] = {}
    for code, text, out in outputs:
        assert code == 0, text
        result = json.loads(out.read_text())
        assert result["n_errors"] == 0, result["errors"]
        assert result["ops"] > 0
        written.update(result["written"])
    assert len(written) == 2 * 4000

    with Cache(name, create=False) as cache:
        missing = [k for k, v in written.items() if cache.get(k) != v.encode()]
        assert not missing, f"{len(missing)} keys lost or changed, e.g. {missing[:5]}"
        assert cache.check() == []
    assert second.stop() == 0
    assert "stopped; the segments stay" in second.log()
    assert Cache.exists(name)
    with Cache(name, create=False) as cache:
        assert not cache.daemon_alive  # a clean stop clears the heartbeat
        assert len(cache) == 8000


def test_incompatible_segment_refused_then_replaced(
    tmp_path: Path, daemons: Any, names: Any
) -> None:
    name = names()
    path = segment.shm_path(name)
    with open(path, "wb") as f:
        f.write(b"NOTMETIS" + b"\0" * 8184)
    os.chmod(path, 0o600)
    config = write_config(tmp_path / "metisd.toml", [{"name": name, "capacity": "4MiB"}])
    refused = daemons(config)
    assert refused.wait() == 3
    log = refused.log()
    assert "SEGMENT_FOREIGN" in log and "--replace-incompatible" in log
    with open(path, "rb") as f:
        assert f.read(8) == b"NOTMETIS"  # untouched

    replacing = daemons(config, args=["--replace-incompatible"]).wait_ready()
    assert "replacing it (replace_incompatible)" in replacing.log()
    assert replacing.stats()["daemon"]["caches"][name]["opened"] == "replaced"
    with Cache(name, create=False) as cache:
        cache.set("k", b"v")
        assert cache.get("k") == b"v"
    assert replacing.stop() == 0


def test_second_daemon_on_the_same_cache_is_refused(
    tmp_path: Path, daemons: Any, names: Any
) -> None:
    name = names()
    config = write_config(tmp_path / "metisd.toml", [{"name": name, "capacity": "4MiB"}])
    first = daemons(config).wait_ready()
    second = daemons(config)
    assert second.wait() == 3
    assert f"already supervised by metisd pid {first.pid}" in second.log()
    assert first.alive()
    assert first.stop() == 0


def test_settings_changed_in_the_config_keep_the_segment_or_migrate(
    tmp_path: Path, daemons: Any, names: Any
) -> None:
    name = names()
    snaps = tmp_path / "snaps"
    snapshot = {"enabled": True, "path": str(snaps), "interval": 0, "on_shutdown": False}
    config = write_config(
        tmp_path / "a.toml", [{"name": name, "capacity": "4MiB"}], snapshot=snapshot
    )
    first = daemons(config).wait_ready()
    with Cache(name, create=False) as cache:
        cache.set_many({f"k{i}": i for i in range(100)})
    assert first.stop() == 0

    assert os.stat(segment.shm_path(name)).st_mode & 0o777 == 0o600
    bigger = write_config(
        tmp_path / "b.toml",
        [{"name": name, "capacity": "8MiB", "mode": 0o660}],
        snapshot=snapshot,
    )
    keeps = daemons(bigger).wait_ready()
    assert "exists with other settings than the configuration: capacity 4.0 MiB" in keeps.log()
    assert keeps.stats()["caches"][name]["capacity"] == 4 << 20
    assert "segment mode 0o600 -> 0o660" in keeps.log()  # a chmod, no new segment
    assert os.stat(segment.shm_path(name)).st_mode & 0o777 == 0o660
    assert keeps.stop() == 0

    migrates = daemons(bigger, args=["--replace-incompatible"]).wait_ready()
    stats = migrates.stats()
    assert stats["caches"][name]["capacity"] == 8 << 20
    assert stats["daemon"]["caches"][name]["restored_items"] == 100
    with Cache(name, create=False) as cache:
        assert cache.get_many([f"k{i}" for i in range(100)]) == {f"k{i}": i for i in range(100)}
    assert migrates.stop() == 0


def test_destroy(tmp_path: Path, daemons: Any, names: Any) -> None:
    name = names()
    config = write_config(tmp_path / "metisd.toml", [{"name": name, "capacity": "4MiB"}])
    d = daemons(config).wait_ready()

    def destroy(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "metis_shm.daemon", "--destroy", name, *extra],
            env=python_env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    busy = destroy()
    assert busy.returncode == 1 and "supervised by a running metisd" in busy.stderr
    assert Cache.exists(name)
    assert d.stop() == 0
    done = destroy()
    assert done.returncode == 0, done.stderr
    assert "destroyed cache" in done.stdout
    assert not Cache.exists(name)
    again = destroy()
    assert again.returncode == 1 and "no cache named" in again.stderr


def test_bad_config_names_field_value_and_rule(tmp_path: Path, daemons: Any, names: Any) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(f'[sweep]\ninterval = "soon"\n[[caches]]\nname = "{names()}"\n')
    d = daemons(config)
    assert d.wait() == 2
    log = d.log()
    assert "INVALID_CONFIG" in log
    assert "sweep.interval" in log and "'soon'" in log and "duration" in log
    assert f"{config}:2" in log


def test_health_address_taken(tmp_path: Path, daemons: Any, names: Any) -> None:
    name = names()
    config = write_config(tmp_path / "metisd.toml", [{"name": name, "capacity": "4MiB"}])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        d = daemons(config, args=["--health-address", f"127.0.0.1:{port}"])
        assert d.wait() == 1
    assert "cannot serve the health endpoints on 127.0.0.1" in d.log()
    assert not Cache.exists(name)  # it stopped before opening any cache
