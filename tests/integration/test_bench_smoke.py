"""``benchmarks/bench_ops.py --quick`` still runs and writes every row.

Only checks that the script works and its JSON is complete; the numbers
themselves are never judged here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_ops.py"

WORKLOADS = {"get-hit", "get-miss", "set", "mix"}
SIZES = {100, 4096}
PROCS = {1, 2}
NUMBERS = ("metis_ns", "floor_ns", "dict_ns", "metis_floor_ratio", "metis_dict_ratio", "ops_per_s")


def test_bench_ops_quick_writes_all_rows(tmp_path: Path) -> None:
    out = tmp_path / "bench_ops.json"
    cmd = [sys.executable, str(SCRIPT), "--quick", "--json", str(out)]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=180, env=_env(), check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "metis/floor" in proc.stdout
    assert "read scaling" in proc.stdout

    data = json.loads(out.read_text())
    for field in ("platform", "cpu_count", "python"):
        assert data["machine"][field], field
    rows = data["rows"]
    seen = {(r["workload"], r["size"], r["procs"]) for r in rows}
    assert seen == {(w, s, p) for w in WORKLOADS for s in SIZES for p in PROCS}
    assert len(rows) == len(seen)
    for row in rows:
        for field in NUMBERS:
            assert row[field] > 0, (row["workload"], row["size"], row["procs"], field)
        assert row["missing_after_fill"] == 0, row
    assert set(data["read_scaling"]) == {"100 B", "4 KiB"}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env
