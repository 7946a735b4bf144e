"""The trace simulator (metis_shm.sim.simulator) and the ``metis simulate`` CLI.

* With one shard the engine's LRU reproduces every published LRU figure for
  the traces of benchmarks/traces/ (libCacheSim's, the reference table that
  benchmarks/bench_hit_ratio.py prints) to 0.01 pp (issue 3's acceptance).
* Every engine policy replays a short real trace; the simulator's own hit
  count agrees with ``cache.stats()`` (simulate checks it) and it leaves no
  segment behind.
* The CLI runs end to end through ``main([...])``: table, JSON, PNG, errors.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metis_shm import Cache, InvalidConfig, _engine
from metis_shm.cli import main
from metis_shm.sim.simulator import SimulationResult, available_policies, simulate

ROOT = Path(__file__).resolve().parent.parent
TRACES = ROOT / "benchmarks" / "traces"  # part of the repository: never skipped
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None

#: LRU column of the reference table (bench_hit_ratio.REFERENCE): (file, size) -> hit ratio %
REFERENCE_LRU = [
    ("lirs-cs.trace.gz", 563, 1.83),
    ("lirs-gli.trace.gz", 1000, 11.21),
    ("lirs-gli.trace.gz", 252, 0.91),
    ("lirs-loop.trace.gz", 512, 0.00),
    ("lirs-multi2.trace.gz", 2000, 49.00),
    ("lirs-ps.trace.gz", 1000, 48.55),
    ("lirs-sprite.trace.gz", 500, 78.30),
    ("lirs-sprite.trace.gz", 1000, 90.64),
    ("lirs-cpp.trace.gz", 100, 69.71),
    ("lirs-2_pools.trace.gz", 1000, 54.41),
    ("cache2k-web07.trace.xz", 1024, 50.56),
    ("cache2k-web12.trace.xz", 1024, 65.01),
    ("corda-vaultservice.trace.gz", 1024, 33.33),
]


def _table_rows(out: str) -> list[list[str]]:
    """The printed table's rows, split into cells, without the seconds column."""
    return [line.split()[:7] for line in out.splitlines()]


def _sim_segments() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith(f"metis.sim-{os.getpid()}-")}


# ---- exactness -----------------------------------------------------------------


@pytest.mark.parametrize(("file", "size", "expected"), REFERENCE_LRU, ids=lambda v: str(v))
def test_lru_matches_reference(file: str, size: int, expected: float) -> None:
    result = simulate(TRACES / file, [size], ["lru"], shards=1)
    (row,) = result.rows
    assert row.shards == 1 and row.size == size
    assert abs(row.hit_ratio - expected) <= 0.01, (
        f"LRU on {file} @ {size}: {row.hit_ratio:.2f}%, the reference says {expected:.2f}% "
        "(see tests/ENGINE_BUGS.md #1)"
    )


def test_lru_keeps_every_hit_of_a_long_run(cache_name: str) -> None:
    """ENGINE_BUGS.md #1: more hits between two writes than the access ring holds."""
    c = Cache(cache_name, capacity="4MiB", shards=1, policy="lru", max_entries=100)
    try:
        for i in range(100):
            c.set(str(i), b"")
        for i in range(200):  # three times the ring, no write in between
            assert c.get(str(i % 100)) is not None
        c.set("new", b"")  # exact LRU evicts the least recently read: "0"
        assert [k for k in map(str, range(100)) if k not in c] == ["0"]
    finally:
        c.close()


def test_lru_on_a_hand_made_sequence() -> None:
    # size 2: a b a c b -> a hits; c evicts b; b misses
    result = simulate([b"a", b"b", b"a", b"c", b"b"], [2], ["lru"], name="hand")
    (row,) = result.rows
    assert (row.trace, row.requests, row.hits, row.misses) == ("hand", 5, 1, 4)
    assert row.hit_ratio == pytest.approx(20.0)


# ---- every policy on a short real trace ------------------------------------------


@pytest.mark.parametrize("policy", list(_engine.POLICIES))
def test_each_policy_runs_a_real_trace(policy: str) -> None:
    before = _sim_segments()
    result = simulate(TRACES / "lirs-cs.trace.gz", [100, 563], [policy], shards=1)
    assert [(r.policy, r.size, r.requests) for r in result.rows] == [
        (policy, 100, 6781),
        (policy, 563, 6781),
    ]
    for row in result.rows:
        assert 0.0 <= row.hit_ratio <= 100.0
        assert row.hits == round(row.hit_ratio * row.requests / 100)
    assert _sim_segments() == before


def test_policies_none_means_all_and_default_shards() -> None:
    keys = [str(i % 50).encode() for i in range(2000)]
    calls: list[tuple[int, int]] = []
    result = simulate(keys, [10, 40], None, shards=None, progress=lambda d, t: calls.append((d, t)))
    assert [r.policy for r in result.rows] == available_policies() * 2
    assert all(r.shards >= 1 for r in result.rows)
    total = 2000 * 2 * len(available_policies())
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    done = [d for d, _ in calls]
    assert done == sorted(done)
    assert 100 <= len(calls) <= 110  # about every 1%
    assert not _sim_segments()


def test_bad_arguments() -> None:
    with pytest.raises(InvalidConfig, match="not a policy of the engine"):
        simulate([b"a"], [10], ["nope"])
    with pytest.raises(InvalidConfig, match="sizes"):
        simulate([b"a"], [0], ["lru"])
    with pytest.raises(InvalidConfig, match="sizes"):
        simulate([b"a"], [], ["lru"])


def test_result_json_and_table_round_trip() -> None:
    result = simulate([b"a", b"b", b"a"], [1, 2], ["lru"], name="t")
    again = SimulationResult.from_json(result.to_json())
    assert again == result
    data = json.loads(result.to_json())
    assert data["rows"][1]["hits"] == 1 and data["rows"][1]["hit_ratio"] == pytest.approx(33.3333)
    table = result.table().splitlines()
    assert table[0].split() == [
        "trace", "policy", "size", "shards", "requests", "hits", "hit", "%", "seconds",
    ]  # fmt: skip
    assert len(table) == 4 and table[3].split()[:6] == ["t", "lru", "2", "1", "3", "1"]


# ---- the CLI -----------------------------------------------------------------------


def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_json = tmp_path / "out.json"
    out_png = tmp_path / "out.png"
    argv = [
        "simulate", str(TRACES / "lirs-cs.trace.gz"), str(TRACES / "lirs-gli.trace.gz"),
        "--sizes", "252,1000", "--policies", "lru,sieve", "--json", str(out_json),
    ]  # fmt: skip
    if HAS_MATPLOTLIB:
        argv += ["--plot", str(out_png)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert ["lirs-gli", "lru", "1000", "1", "6015", "674", "11.21"] in _table_rows(captured.out)
    # stderr is not a TTY here: a progress line every 10%, per trace
    progress = [ln for ln in captured.err.splitlines() if ln.startswith("lirs-gli:")]
    assert 10 <= len(progress) <= 12 and "100%" in progress[-1]
    rows = json.loads(out_json.read_text())["rows"]
    assert len(rows) == 2 * 2 * 2
    assert {(r["trace"], r["policy"], r["size"]) for r in rows} >= {("lirs-cs", "lru", 252)}
    if HAS_MATPLOTLIB:
        assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_quiet_and_text_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "keys.log"
    trace.write_text("a\nb\na\nc\nb\n")
    assert main(["simulate", str(trace), "--sizes", "2", "--policies", "lru", "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert ["keys", "lru", "2", "1", "5", "1", "20.00"] in _table_rows(captured.out)


def test_cli_csv_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "access.csv"
    trace.write_text("ts,key\n1,a\n2,b\n3,a\n")
    assert main(["simulate", str(trace), "--csv-column", "key", "--sizes", "5", "-q",
                 "--policies", "lru"]) == 0  # fmt: skip
    assert ["access", "lru", "5", "1", "3", "1", "33.33"] in _table_rows(capsys.readouterr().out)
    assert main(["simulate", str(trace), "--csv-column", "nope", "--sizes", "5", "-q"]) == 2
    assert "[TRACE_FORMAT]" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["simulate", "/nonexistent.trace.gz", "--sizes", "10"], "[TRACE_NOT_FOUND]"),
        (["simulate", "{trace}", "--sizes", "10", "--policies", "nope"], "--policies"),
        (["simulate", "{trace}", "--sizes", "ten"], "--sizes"),
        (["simulate", "{trace}", "--sizes", "10", "--shards", "3"], "--shards"),
        (["simulate", "{trace}", "--sizes", "10", "--format", "int16"], "invalid choice"),
        (["simulate", "{trace}"], "--sizes"),
        ([], "COMMAND"),
    ],
)
def test_cli_bad_usage_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    trace = tmp_path / "keys.log"
    trace.write_text("a\n")
    assert main([a.replace("{trace}", str(trace)) for a in args]) == 2
    assert message in capsys.readouterr().err


def test_cli_plot_without_matplotlib(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    trace = tmp_path / "keys.log"
    trace.write_text("a\n")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    code = main(["simulate", str(trace), "--sizes", "1", "--plot", str(tmp_path / "x.png")])
    assert code == 2
    assert "pip install metis-shm[plot]" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_python_dash_m_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "metis_shm", "simulate", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0
    assert "examples:" in proc.stdout and "--csv-column" in proc.stdout
