"""``benchmarks/bench_memory.py --quick`` runs against real redis-server and
memcached and writes a complete, sane JSON.

The figures are checked only where they follow from how each store is built
(a Metis item costs its 56-byte header plus padding; no store keeps a byte
per item less than the key and value), never against a speed or a machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metis_shm import Cache, _engine
from metis_shm.segment import SHM_DIR

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_memory.py"
QUICK_SETS = {"16 B", "4 KiB", "1 MiB", "mixed"}
TIMEOUT_S = 120  # the quick run takes about 20 s


def test_bench_memory_quick_writes_sane_rows(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        pytest.fail(f"bench_memory.py --quick ran past {TIMEOUT_S} s:\n{stderr[-3000:]}")
    finally:
        leaked = _destroy_segments_of(proc.pid)
    assert proc.returncode == 0, stdout + stderr
    assert not leaked, f"the benchmark left segments behind: {leaked}"
    assert "bytes per item" in stdout and "same memory budget" in stdout

    data = json.loads(out.read_text())
    for field in ("platform", "cpu_count", "python"):
        assert data["machine"][field], field
    assert data["config"]["metis_samples"] == 2
    assert set(data["versions"]) == {"redis-server", "memcached"}
    rows = data["rows"]
    assert {r["set"] for r in rows} == QUICK_SETS
    for r in rows:
        _check_row(r)


def _check_row(r: dict) -> None:
    label, n, per_item = r["set"], r["items"], r["payload_per_item"]
    assert n > 0 and r["payload"] == n * r["key_bytes"] + r["value_bytes"], label

    metis = r["metis"]
    # An item is its header, key and value rounded up to 8 (64 B at least).
    assert _engine.ITEM_OVERHEAD <= metis["overhead_per_item"] < _engine.ITEM_OVERHEAD + 64, label
    samples = metis["shard_bytes_used"]
    assert len(samples) == len(metis["capacity_needed_samples"]) == 2, label
    assert all(sum(shards) == metis["bytes_used"] for shards in samples), label
    assert metis["capacity_needed"] == max(metis["capacity_needed_samples"]), label
    assert metis["capacity_needed"] >= metis["bytes_used"], label
    assert metis["segment_size"] > metis["capacity_needed"], label
    rule = metis["rule"]
    assert rule["segment_allocated"] >= rule["segment_size"], (label, "pages not reserved")
    # The quick sets have 1 or 2 shards; the rule's headroom (at least 1 + 4 / sqrt(2))
    # holds them however the keys fall.
    assert rule["holds_all"] and rule["covers_samples"] == 2, (label, rule)
    assert 0 < rule["effective_items"] <= n, label
    assert 0.0 <= metis["budget"]["fragmentation"] <= 1.0, label
    assert metis["budget"]["memory"] <= metis["budget"]["segment_budget"], label

    redis = r["redis"]
    assert redis["after"]["keys_count"] == n, label
    assert redis["bytes_per_item"] > per_item, label

    memcached = r["memcached"]
    assert memcached["full"]["curr_items"] == n, label
    assert memcached["item_bytes_per_item"] > per_item, label
    assert memcached["chunk_bytes_per_item"] >= memcached["item_bytes_per_item"], label
    assert memcached["bytes_per_item"] >= memcached["chunk_bytes_per_item"], label

    for store in (metis, redis, memcached):
        budget = store["budget"]
        assert 0 < budget["items_held"] < budget["loaded"], (label, budget)
        assert budget["payload_held"] > 0, (label, budget)
    assert r["metis_over_redis"] > 0 and r["metis_over_memcached"] > 0, label


def _destroy_segments_of(pid: int) -> list[str]:
    """Destroy the segments the benchmark process ``pid`` created; their names."""
    prefix = f"metis.bench-mem-{pid}-"
    names = [f[len("metis.") :] for f in os.listdir(SHM_DIR) if f.startswith(prefix)]
    for name in names:
        Cache.destroy(name)
    return names
