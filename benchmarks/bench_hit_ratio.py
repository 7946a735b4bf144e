"""Hit ratios of Metis's eviction policies on real traces, against the
published reference figures and the in-process caches users would pick.

What it measures
    The hit ratio (% of requests that hit, cold start, whole trace) of a
    read-through cache that holds at most N entries, replaying every trace in
    ``benchmarks/traces/`` (``--traces DIR``; that folder's README says where
    each trace comes from): each request is a ``get``; a miss inserts the key
    (a 0-byte value). N is the size of the reference table (``REFERENCE``
    below) for that trace (several for gli and sprite); traces the table does
    not list use 1000.

Contenders, all in the same run
    * every policy of the engine (``metis_shm._engine.POLICIES``), through a
      real Metis cache in shared memory (``metis_shm.sim.simulator``), with 1 shard
      (exact: the figures compare with the references) and with the default
      shard count of this machine (what ``Cache(name)`` gets; each shard
      holds ``ceil(N / shards)`` entries), so sharding's cost shows;
    * theine's W-TinyLFU (``theine.Cache(N)``; its only policy since 2.0);
    * cachetools' ``LRUCache`` and ``LFUCache`` (``maxsize=N``).
    A peer that is not installed is skipped and said so.

What it prints
    A table per trace and size: each contender's hit ratio; the reference
    figure of the same policy from the reference table (libCacheSim;
    ``REFERENCE`` below), the difference to it; the difference in
    percentage points (pp) to Metis's default policy with 1 shard; for the
    sharded rows, the difference to the same policy with 1 shard. Each table's
    title gives the best classic policy of the reference row and Belady's
    optimum.

Not a pass/fail test. ``--quick`` runs 3 small traces (cs, gli, cpp) in a
few seconds; the JSON (``--json``, default benchmarks/results/hit_ratio.json)
holds every row; ``--plot FILE.png`` draws them (needs matplotlib).

    python benchmarks/bench_hit_ratio.py [--quick] [--traces DIR] [--json PATH] [--plot PNG]

Peers: ``pip install metis-shm[bench]`` (theine, cachetools, matplotlib).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import metis_shm  # noqa: E402
from metis_shm import cache as cache_module  # noqa: E402
from metis_shm.sim.simulator import available_policies, default_shard_count, simulate  # noqa: E402
from metis_shm.sim.traces import load_trace, trace_name  # noqa: E402

DEFAULT_TRACES = ROOT / "benchmarks" / "traces"
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "hit_ratio.json"
QUICK_TRACES = ("lirs-cs", "lirs-gli", "lirs-cpp")
OTHER_SIZE = 1000  # for traces the reference table does not list

#: The reference hit ratios of these traces (%, cache size in entries, cold
#: start, whole trace), measured with libCacheSim (PyPI ``libcachesim``), whose
#: LRU matches every published LRU figure for them; WTinyLFU(1%) is a fixed 1%
#: window, Belady the offline optimum: (trace, size) -> policy -> hit ratio in %.
REFERENCE_POLICIES = (
    "LRU", "ARC", "LIRS", "2Q", "WTinyLFU(1%)", "S3FIFO", "SIEVE", "Belady",
)  # fmt: skip
_REFERENCE_ROWS: list[tuple[str, int, tuple[float, ...]]] = [
    ("gli", 252, (0.91, 1.38, 16.16, 1.00, 16.13, 15.96, 1.38, 17.77)),
    ("gli", 1000, (11.21, 21.31, 50.72, 30.77, 50.49, 44.34, 31.34, 53.13)),
    ("cs", 563, (1.83, 1.83, 32.21, 1.83, 32.16, 30.32, 1.83, 35.04)),
    ("loop", 512, (0.00, 0.00, 50.05, 0.00, 42.73, 45.51, 0.00, 50.54)),
    ("multi2", 2000, (49.00, 64.26, 71.10, 60.98, 70.45, 68.61, 50.94, 74.65)),
    ("ps", 1000, (48.55, 52.59, 66.24, 50.56, 66.81, 65.29, 52.59, 67.67)),
    ("sprite", 500, (78.30, 77.37, 76.00, 78.18, 69.73, 78.68, 72.59, 87.88)),
    ("sprite", 1000, (90.64, 89.70, 87.71, 89.63, 80.14, 89.31, 86.97, 93.24)),
    ("cpp", 100, (69.71, 77.04, 77.68, 73.38, 76.43, 76.50, 69.54, 82.51)),
    ("2_pools", 1000, (54.41, 54.33, 54.35, 54.24, 54.40, 54.36, 54.36, 68.52)),
    ("web07", 1024, (50.56, 53.21, 52.41, 53.16, 51.67, 54.25, 53.44, 63.72)),
    ("web12", 1024, (65.01, 67.67, 66.75, 68.32, 67.67, 69.28, 68.46, 77.95)),
    ("corda", 1024, (33.33, 33.30, 0.60, 33.33, 2.49, 33.33, 0.75, 33.33)),
]
REFERENCE: dict[tuple[str, int], dict[str, float]] = {
    (t, s): dict(zip(REFERENCE_POLICIES, v, strict=True)) for t, s, v in _REFERENCE_ROWS
}
#: the classic policies the issue's acceptance compares the default against
CLASSIC = ("LRU", "ARC", "LIRS", "2Q", "WTinyLFU(1%)", "S3FIFO", "SIEVE")
#: a Metis policy name -> its column in the reference table
METIS_REFERENCE_COLUMN = {
    "lru": "LRU", "arc": "ARC", "lirs": "LIRS", "2q": "2Q",
    "wtinylfu": "WTinyLFU(1%)", "s3fifo": "S3FIFO", "sieve": "SIEVE",
}  # fmt: skip


def default_policy() -> str:
    """Metis's default policy: ``metis_shm.cache.DEFAULT_POLICY`` once it exists."""
    return str(getattr(cache_module, "DEFAULT_POLICY", "sieve"))


def short_name(trace: str) -> str:
    """The reference table's name of a trace file's name (lirs-gli -> gli)."""
    for prefix in ("lirs-", "cache2k-"):
        if trace.startswith(prefix):
            return trace[len(prefix) :]
    if trace.startswith("corda-"):
        return "corda"
    return trace


def sizes_for(short: str) -> list[int]:
    sizes = sorted(s for t, s in REFERENCE if t == short)
    return sizes or [OTHER_SIZE]


# ---- peers --------------------------------------------------------------------

Replay = Callable[[Sequence[bytes], int], int]  # (keys, size) -> hits


def _replay_theine(keys: Sequence[bytes], size: int) -> int:
    import theine

    make: Any = theine.Cache  # its signature changed in 2.0
    params = inspect.signature(make.__init__).parameters
    cache: Any
    if "policy" in params:  # theine < 2.0: Cache(policy, size); get(key, default)
        cache = make("tlfu", size)
        missing = object()

        def has(k: bytes) -> bool:
            return cache.get(k, missing) is not missing

    else:  # theine >= 2.0: Cache(size) is W-TinyLFU; get(key) -> (value, found)
        cache = make(size, nolock=True) if "nolock" in params else make(size)

        def has(k: bytes) -> bool:
            return bool(cache.get(k)[1])

    hits = 0
    put = cache.set
    try:
        for k in keys:
            if has(k):
                hits += 1
            else:
                put(k, b"")
    finally:
        close = getattr(cache, "close", None)
        if close is not None:
            close()
    return hits


def _replay_cachetools(kind: str) -> Replay:
    def replay(keys: Sequence[bytes], size: int) -> int:
        import cachetools

        cache: Any = getattr(cachetools, kind)(maxsize=size)
        hits = 0
        for k in keys:
            try:
                cache[k]
            except KeyError:
                cache[k] = b""
            else:
                hits += 1
        return hits

    return replay


#: name -> (module to import, replay function, reference column)
PEERS: dict[str, tuple[str, Replay, str | None]] = {
    "theine W-TinyLFU": ("theine", _replay_theine, "WTinyLFU(1%)"),
    "cachetools LRUCache": ("cachetools", _replay_cachetools("LRUCache"), "LRU"),
    "cachetools LFUCache": ("cachetools", _replay_cachetools("LFUCache"), None),
}


def _installed(module: str) -> str | None:
    """The module's version if it imports, else None."""
    try:
        mod = __import__(module)
    except ImportError:
        return None
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return str(getattr(mod, "__version__", "?"))


# ---- run ---------------------------------------------------------------------


@dataclass
class Row:
    trace: str  # reference name (gli)
    file: str
    size: int
    contender: str  # "metis lru", "theine W-TinyLFU", ...
    policy: str
    shards: int | None  # None for the peers
    requests: int
    hits: int
    hit_ratio: float
    seconds: float
    reference_policy: str | None = None
    reference: float | None = None
    diff_reference: float | None = None
    diff_default: float | None = None
    diff_one_shard: float | None = None


def find_traces(folder: Path, quick: bool) -> list[Path]:
    files = sorted(p for p in folder.glob("*.trace.*") if p.is_file())
    if quick:
        files = [p for p in files if trace_name(p) in QUICK_TRACES]
    return files


def run(
    folder: Path, quick: bool, log: Callable[[str], None], seed: int | None = 0
) -> dict[str, Any]:
    files = find_traces(folder, quick)
    if not files:
        raise SystemExit(f"no *.trace.* files in {folder}")
    policies = available_policies()
    default = default_policy()
    shard_counts = [1, default_shard_count()]
    if shard_counts[1] == 1:
        shard_counts = [1]
    peers = {name: spec for name, spec in PEERS.items() if _installed(spec[0])}
    for name, (module, _, _) in PEERS.items():
        if name not in peers:
            log(f"skipping {name}: {module} is not installed (pip install metis-shm[bench])")
    rows: list[Row] = []
    for path in files:
        keys = load_trace(path)
        short = short_name(trace_name(path))
        sizes = sizes_for(short)
        log(f"{trace_name(path)}: {len(keys):,} requests, sizes {sizes}")
        for shards in shard_counts:
            result = simulate(keys, sizes, policies, shards=shards, name=short, seed=seed)
            for r in result.rows:
                rows.append(
                    Row(short, path.name, r.size, f"metis {r.policy}", r.policy, r.shards,
                        r.requests, r.hits, r.hit_ratio, r.seconds,
                        METIS_REFERENCE_COLUMN.get(r.policy))
                )  # fmt: skip
        for size in sizes:
            for name, (_, replay, column) in peers.items():
                start = time.perf_counter()
                hits = replay(keys, size)
                seconds = time.perf_counter() - start
                rows.append(
                    Row(short, path.name, size, name, name, None, len(keys), hits,
                        round(100.0 * hits / len(keys), 4), round(seconds, 4), column)
                )  # fmt: skip
    _fill_differences(rows, default)
    return {
        "benchmark": "hit_ratio",
        "metis_version": metis_shm.__version__,
        "policies": policies,
        "default_policy": default,
        "default_shards": shard_counts[-1],
        "peers": {name: _installed(spec[0]) for name, spec in peers.items()},
        "python": platform.python_version(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "traces": str(folder),
        "quick": quick,
        "reference_source": "bench_hit_ratio.REFERENCE (libCacheSim)",
        "rows": [asdict(r) for r in rows],
        "checks": acceptance_checks(rows, default),
    }


def acceptance_checks(rows: list[Row], default: str) -> dict[str, list[str]]:
    """Issue 3's acceptance, row by row: the rows that miss each bar.

    * ``lru_exact``: metis lru (1 shard) within 0.01 pp of the reference LRU;
    * ``classic_within_1pp``: metis arc, 2q, s3fifo, sieve (1 shard) within
      1 pp of their reference;
    * ``default_within_2pp_of_best``: the default policy (1 shard) within 2 pp
      of the best classic policy of the reference row;
    * ``sharding_within_1pp``: the default policy with the default shards
      loses at most 1 pp against 1 shard, on reference rows of size >= 1000.
    """
    checks: dict[str, list[str]] = {
        "lru_exact": [],
        "classic_within_1pp": [],
        "default_within_2pp_of_best": [],
        "sharding_within_1pp": [],
    }
    for r in rows:
        where = f"{r.trace}@{r.size} {r.policy}"
        if r.shards == 1 and r.diff_reference is not None:
            if r.policy == "lru" and abs(r.diff_reference) > 0.01:
                checks["lru_exact"].append(f"{where}: {r.diff_reference:+.2f}")
            if r.policy in ("arc", "2q", "s3fifo", "sieve") and abs(r.diff_reference) > 1.0:
                checks["classic_within_1pp"].append(f"{where}: {r.diff_reference:+.2f}")
        ref = REFERENCE.get((r.trace, r.size))
        if r.shards == 1 and r.policy == default and ref:
            gap = r.hit_ratio - max(ref[p] for p in CLASSIC)
            if gap < -2.0:
                checks["default_within_2pp_of_best"].append(f"{where}: {gap:+.2f}")
        if (
            r.shards is not None and r.shards > 1 and r.policy == default and r.size >= 1000
            and ref and r.diff_one_shard is not None and r.diff_one_shard < -1.0
        ):  # fmt: skip
            checks["sharding_within_1pp"].append(
                f"{where} ({r.shards} shards): {r.diff_one_shard:+.2f}"
            )
    return checks


def _fill_differences(rows: list[Row], default: str) -> None:
    one_shard = {(r.trace, r.size, r.policy): r.hit_ratio for r in rows if r.shards == 1}
    for r in rows:
        ref = REFERENCE.get((r.trace, r.size), {})
        if r.reference_policy in ref:
            r.reference = ref[r.reference_policy]
            r.diff_reference = round(r.hit_ratio - r.reference, 2)
        base = one_shard.get((r.trace, r.size, default))
        if base is not None:
            r.diff_default = round(r.hit_ratio - base, 2)
        if r.shards is not None and r.shards > 1:
            same = one_shard.get((r.trace, r.size, r.policy))
            if same is not None:
                r.diff_one_shard = round(r.hit_ratio - same, 2)


# ---- output ------------------------------------------------------------------


def _fmt(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "-"
    v = round(v, 2) or 0.0  # no "-0.00"
    return f"{v:+.2f}" if signed else f"{v:.2f}"


def render(report: dict[str, Any]) -> str:
    rows = [Row(**r) for r in report["rows"]]
    default = report["default_policy"]
    out: list[str] = [
        f"Metis {report['metis_version']}: hit ratio (%), cold start, whole trace. "
        f"Default policy: {default}; default shards here: {report['default_shards']}.",
        "ref = the same policy in the reference table (libCacheSim); "
        f"vs default = pp against metis {default} with 1 shard; "
        "vs 1 shard = pp against the same policy with 1 shard.",
    ]
    groups: dict[tuple[str, int], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.trace, r.size), []).append(r)
    head = ("contender", "shards", "hit %", "ref", "vs ref", "vs default", "vs 1 shard")
    for (trace, size), group in groups.items():
        ref = REFERENCE.get((trace, size))
        title = f"== {trace} @ {size} ({group[0].requests:,} requests, {group[0].file})"
        if ref:
            best = max(CLASSIC, key=lambda p: ref[p])
            title += f"; best classic: {best} {ref[best]:.2f}, Belady {ref['Belady']:.2f}"
        body = [
            (
                r.contender
                + (f" ({r.reference_policy})" if r.shards is None and r.reference_policy else ""),
                "-" if r.shards is None else str(r.shards),
                _fmt(r.hit_ratio),
                _fmt(r.reference),
                _fmt(r.diff_reference, True),
                _fmt(r.diff_default, True),
                _fmt(r.diff_one_shard, True),
            )
            for r in group
        ]
        widths = [max(len(c) for c in col) for col in zip(head, *body, strict=True)]

        def line(cells: Sequence[str], widths: list[int] = widths) -> str:
            return "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()

        out += ["", title, line(head), "  ".join("-" * w for w in widths)]
        out += [line(b) for b in body]
    out += ["", "Issue 3 acceptance (rows that miss the bar; see acceptance_checks):"]
    for name, misses in report.get("checks", {}).items():
        out.append(f"  {name}: {'ok' if not misses else '; '.join(misses)}")
    return "\n".join(out)


def render_markdown(report: dict[str, Any]) -> str:
    """One table, a row per (trace, size), a column per contender (1 shard for
    Metis, plus its default policy with the default shards)."""
    rows = [Row(**r) for r in report["rows"]]
    default = report["default_policy"]
    cols: list[tuple[str, int | None]] = []
    for r in rows:
        key = (r.contender, r.shards)
        if (r.shards in (None, 1) or r.policy == default) and key not in cols:
            cols.append(key)
    cells: dict[tuple[str, int], dict[tuple[str, int | None], float]] = {}
    for r in rows:
        cells.setdefault((r.trace, r.size), {})[(r.contender, r.shards)] = r.hit_ratio

    def col_name(c: tuple[str, int | None]) -> str:
        name = c[0].removeprefix("metis ")
        return name if c[1] in (None, 1) else f"{name} ({c[1]} shards)"

    head = ["trace", "size", *map(col_name, cols), "ref best classic"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * (len(cols) + 1)]
    for (trace, size), vals in cells.items():
        ref = REFERENCE.get((trace, size))
        best = f"{max(ref[p] for p in CLASSIC):.2f}" if ref else "-"
        vs = [f"{vals[c]:.2f}" if c in vals else "-" for c in cols]
        lines.append("| " + " | ".join([trace, str(size), *vs, best]) + " |")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: str) -> None:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install metis-shm[plot]") from None
    rows = [Row(**r) for r in report["rows"]]
    default = report["default_policy"]
    groups: list[tuple[str, int]] = []
    for r in rows:
        if (r.trace, r.size) not in groups:
            groups.append((r.trace, r.size))
    series: dict[str, dict[int, float]] = {}
    for r in rows:
        label = r.contender if r.shards in (None, 1) else f"{r.contender} ({r.shards} shards)"
        if r.shards not in (None, 1) and r.policy != default:
            continue
        series.setdefault(label, {})[groups.index((r.trace, r.size))] = r.hit_ratio
    fig = Figure(figsize=(max(8.0, 0.7 * len(groups) + 3), 5.0))
    ax = fig.subplots()
    markers = "os^vD<>pPX*h"
    width = 0.7 / max(1, len(series))  # contenders side by side within a row
    for i, (label, points) in enumerate(series.items()):
        xs = sorted(points)
        dodge = (i - (len(series) - 1) / 2) * width
        ax.plot([x + dodge for x in xs], [points[x] for x in xs], linestyle="none",
                marker=markers[i % len(markers)], label=label, alpha=0.85)  # fmt: skip
    best_x = [i for i, g in enumerate(groups) if g in REFERENCE]
    if best_x:
        lo = [x - 0.42 for x in best_x]
        hi = [x + 0.42 for x in best_x]
        best = [max(REFERENCE[groups[i]][p] for p in CLASSIC) for i in best_x]
        belady = [REFERENCE[groups[i]]["Belady"] for i in best_x]
        ax.hlines(best, lo, hi, colors="black", label="reference: best classic")
        ax.hlines(belady, lo, hi, colors="grey", linestyles="dashed", label="reference: Belady")
    ax.set_xticks(range(len(groups)), labels=[f"{t}\n@{s}" for t, s in groups], fontsize=8)
    ax.set_ylabel("hit ratio (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(f"Metis {report['metis_version']} hit ratios (default policy: {default})")
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0] if __doc__ else None,
        epilog="See the module docstring for what is measured.",
    )
    parser.add_argument("--traces", type=Path, default=DEFAULT_TRACES,
                        help=f"folder of *.trace.* files (default: {DEFAULT_TRACES})")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK_TRACES)}")
    parser.add_argument("--json", default=str(DEFAULT_JSON), help="where to write the JSON")
    parser.add_argument("--plot", metavar="PNG", help="draw the results (needs matplotlib)")
    parser.add_argument("--seed", type=int, default=0,
                        help="the caches' hash key comes from it (default 0)")  # fmt: skip
    parser.add_argument("--markdown", action="store_true",
                        help="also print one markdown table (for docs/policies.md)")  # fmt: skip
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    start = time.perf_counter()
    report = run(args.traces, args.quick, log, seed=args.seed)
    report["seed"] = args.seed
    report["seconds"] = round(time.perf_counter() - start, 2)
    print(render(report))
    if args.markdown:
        print()
        print(render_markdown(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        log(f"wrote {args.json}")
    if args.plot:
        plot(report, args.plot)
        log(f"wrote {args.plot}")
    log(f"done in {report['seconds']:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
