"""``benchmarks/bench_stopped_writer.py --quick`` still runs and writes every scenario.

Only checks that the script works, that its JSON is complete, and that the
stopped-writer reader really read while the writer was stopped; the
latencies themselves are never judged here.
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
SCRIPT = ROOT / "benchmarks" / "bench_stopped_writer.py"

SCENARIOS = {"no-writer", "stopped-writer", "running-writer", "random-stop", "timer-only"}
SIZES = {100, 4096}
NUMBERS = ("p50_us", "p99_us", "p999_us", "max_us", "worst_max_us")


def test_bench_stopped_writer_quick_writes_all_scenarios(tmp_path: Path) -> None:
    out = tmp_path / "stopped_writer.json"
    cmd = [sys.executable, str(SCRIPT), "--quick", "--stop-seconds", "0.3", "--json", str(out)]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=_env(), check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for heading in ("p99.9 us", "worst max us", "max/base", "stopped writer", "target"):
        assert heading in proc.stdout, heading

    data = json.loads(out.read_text())
    for field in ("platform", "cpu_count", "python"):
        assert data["machine"][field], field
    assert set(data["scenarios"]) == SCENARIOS
    rows = data["rows"]
    assert {(r["scenario"], r["size"]) for r in rows} == {(s, n) for s in SCENARIOS for n in SIZES}
    assert len(rows) == len(SCENARIOS) * len(SIZES)
    assert data["problems"] == []
    for row in rows:
        where = (row["scenario"], row["size"])
        assert row["gets"] > 0, where
        assert len(row["repeats"]) == 2, where
        for field in NUMBERS:
            assert row[field] is not None and row[field] >= 0, (where, field)
        assert row["bad_reads"] == [], where
        assert row["unpreempted"]["gets"] > 0, where
        for rep in row["repeats"]:
            assert rep["all"]["gets"] > 0, where
        if row["scenario"] == "stopped-writer":
            # Every repeat read while the writer stayed stopped, holding the
            # lock, and never saw the unpublished value; after SIGCONT it did.
            assert row["writer_stopped_throughout"] is True, where
            assert row["gets_while_stopped"] > 0, where
            assert all(row["lock_held"]), where
            assert row["written_key_values"]["new"] == 0, where
            assert row["written_key_values"]["old"] > 0, where
            assert row["new_value_visible"] is True, where
        if row["scenario"] == "random-stop":
            assert row["writer_stopped_throughout"] is True, where
    for verdict in (data["target"]["all_gets"], data["target"]["unpreempted"]):
        assert set(verdict["sizes"]) == {"100 B", "4 KiB"}
        assert isinstance(verdict["holds"], bool)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env
