"""``benchmarks/bench_peers.py --quick`` runs every peer for real, and its
value checker catches what it must.

The numbers are never judged here; only that every peer and workload was
measured, that Metis returned right values throughout, and that the checker
flags a foreign value, a torn value and a lost update when given one.
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
BENCH = ROOT / "benchmarks"
SCRIPT = BENCH / "bench_peers.py"
sys.path.insert(0, str(BENCH))

from peer_values import (  # noqa: E402
    FOREIGN,
    STALE,
    TORN,
    ReadChecker,
    lost_updates,
    make_value,
    read_stamp,
)
from peers import all_peers  # noqa: E402

WORKLOADS = {"get-hit", "get-miss", "set", "mix"}


def test_quick_run_measures_every_peer_and_workload(tmp_path: Path) -> None:
    out, png = tmp_path / "peers.json", tmp_path / "peers.png"
    cmd = [sys.executable, str(SCRIPT), "--quick", "--json", str(out), "--png", str(png)]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=_env(), check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "acceptance checks:" in proc.stdout
    assert png.stat().st_size > 10_000

    data = json.loads(out.read_text())
    names = {p.name for p in all_peers()}
    assert set(data["peers"]) == names
    sizes, procs = set(data["config"]["sizes"]), set(data["config"]["procs"])
    want = {(p, w, s, n) for p in names for w in WORKLOADS for s in sizes for n in procs}
    seen = {(r["peer"], r["workload"], r["size"], r["procs"]) for r in data["rows"]}
    assert seen == want
    for row in data["rows"]:
        assert row["ops_per_s"] > 0 and row["ns_per_op"] > 0, row
        if row["peer"] == "metis":
            assert row["bad_reads"] == row["lost_updates"] == row["missing_reads"] == 0, row
    assert len(data["acceptance"]) == 6
    assert {c["result"] for c in data["acceptance"]} <= {"pass", "miss"}
    assert data["machine"]["libraries"]["lmdb"]


def test_checker_flags_a_foreign_value() -> None:
    check = ReadChecker()
    mine, other = make_value(7, 0, 0, 100), make_value(8, 0, 0, 100)
    check.hit("key:00000007", other, mine)
    assert check.counts[FOREIGN] == 1 and check.bad_reads == 1


def test_checker_flags_a_torn_value() -> None:
    old, new = make_value(7, 1, 1, 4096), make_value(7, 1, 2, 4096)
    torn = new[:2048] + old[2048:]  # a reader that copied while the writer wrote
    assert read_stamp(torn) is None
    check = ReadChecker()
    check.hit("key:00000007", torn, new)
    check.hit("key:00000007", new[:-1], new)  # cut short
    flipped = bytearray(new)
    flipped[100] ^= 1
    check.hit("key:00000007", bytes(flipped), new)
    assert check.counts[TORN] == 3


def test_checker_flags_a_read_that_goes_back_in_the_mix() -> None:
    before, written = make_value(3, 0, 0, 100), make_value(3, 1, 5, 100)
    last, new = {"key:00000003": before}, {"key:00000003": written}
    check = ReadChecker()
    check.mix_read("key:00000003", written, last, new)  # moving forward is right
    assert check.bad_reads == 0 and last["key:00000003"] == written
    check.mix_read("key:00000003", before, last, new)  # and back is not
    assert check.counts[STALE] == 1


def test_lost_update_is_counted() -> None:
    # Two writers with disjoint keys; the store kept writer 2's snapshot of
    # writer 1's key, as a whole-dict read-modify-write race does.
    store = {
        "key:00000000": make_value(0, 0, 0, 100),  # writer 1 wrote seq 3 here: lost
        "key:00000001": make_value(1, 2, 3, 100),
    }
    expected = {"key:00000000": make_value(0, 1, 3, 100), "key:00000001": store["key:00000001"]}
    lost, examples = lost_updates(store.get, expected, lambda r: r)
    assert lost == 1 and "key:00000000" in examples[0]
    lost, _ = lost_updates({}.get, expected, lambda r: r)  # evicted or never stored
    assert lost == 2


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env
