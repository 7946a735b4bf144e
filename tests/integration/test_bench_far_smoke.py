"""``benchmarks/bench_far.py --quick`` runs all three contenders for real
(plain redis-py, redis-py's client-side cache, the Metis near tier with two
metisd) against its own redis-server, and writes a complete JSON.

Nothing is judged on speed (CI machines are noisy): only that every
configuration was measured, that every read returned its key's value, that
the hit ratios and memory figures are where they can only be, and that the
benchmark left no server, metisd or segment behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metis_shm import Cache
from metis_shm.segment import SHM_DIR

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_far.py"
CONTENDERS = {"redis", "redis-csc", "metis"}
SIZES = {100, 4096}
TIMEOUT_S = 90  # the quick run takes about 15 s on 2 vCPUs


def test_bench_far_quick_measures_every_configuration(tmp_path: Path) -> None:
    out = tmp_path / "far.json"
    cmd = [sys.executable, str(SCRIPT), "--quick", "--keys", "4000", "--json", str(out)]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        pytest.fail(f"bench_far.py --quick ran past {TIMEOUT_S} s:\n{stderr[-3000:]}")
    finally:
        leaked = _destroy_segments_of(proc.pid)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert not leaked, f"the benchmark left segments behind: {leaked}"
    assert "targets (issue 12" in stdout and "same memory" in stdout

    data = json.loads(out.read_text())
    rows = data["rows"]
    assert {(r["contender"], r["size"]) for r in rows} == {
        (c, s) for c in CONTENDERS for s in SIZES
    }
    assert len(rows) == len(CONTENDERS) * len(SIZES)
    for r in rows:
        _check_row(r)
    assert set(data["near_hit"]) == {"100 B", "4 KiB"}
    for pair in data["near_hit"].values():
        assert set(pair) == {"fresh", "after_run"}
        for x in pair.values():
            assert x["near_ns"] > 0 and x["local_ns"] > 0 and x["keys"] > 0, x
        assert pair["after_run"]["churn_ops"] > 0 and pair["fresh"]["churn_ops"] == 0
    assert len(data["targets"]) == 3 * len(SIZES)
    assert all(isinstance(t["met"], bool) for t in data["targets"])
    for s in data["sizing"].values():
        assert s["total_entries_near"] == s["total_entries_csc"], s  # the same memory, in entries

    # Every process it started is gone.
    pids = [data["redis_server"]["pid"]]
    pids += [seg["metisd_pid"] for r in rows for seg in r["segments"]]
    assert len(pids) == 1 + 2 * len(SIZES)
    for pid in pids:
        assert not _alive(pid), f"process {pid} outlived the benchmark"


def _check_row(r: dict) -> None:
    what = (r["contender"], r["size"])
    assert r["procs"] == 8, what
    assert r["ops_per_s"] > 0 and r["reads"] > 0 and r["writes"] > 0, what
    assert r["missing_reads"] == 0 and r["wrong_reads"] == 0, what
    assert r["latency_us"]["samples"] > 0, what
    assert r["redis_commands_per_s"] > 0 and r["client_memory"] > 0, what
    if r["contender"] == "redis":
        assert r["local_hit_ratio"] == 0.0 and r["x_redis"] == 1.0, what
        assert r["near"] is None and r["segments"] == [], what
    else:
        assert 0.0 < r["local_hit_ratio"] < 1.0, what
        assert r["entries_held"] > 0, what
    if r["contender"] == "metis":
        assert len(r["segments"]) == 2, what
        assert r["near"]["far_fetches"] > 0, what
        assert r["cache_memory"] >= sum(s["allocated"] for s in r["segments"]) > 0, what


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for this purpose; only a running process counts.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _destroy_segments_of(pid: int) -> list[str]:
    """Destroy the segments the benchmark process ``pid`` created; their names."""
    prefix = f"metis.bench-far-{pid}-"
    names = [f[len("metis.") :] for f in os.listdir(SHM_DIR) if f.startswith(prefix)]
    for name in names:
        Cache.destroy(name)
    return names


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env
