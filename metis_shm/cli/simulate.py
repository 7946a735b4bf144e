"""``metis simulate``: replay access traces through the engine's eviction policies.

    metis simulate TRACE... --sizes 100,1000 [--policies lru,sieve] [--json F] [--plot F]

Each trace is replayed through a real cache in shared memory per policy and
size (``metis_shm.sim.simulator``) and the hit ratios printed as a table;
``--plot`` draws them (``plot_hit_ratios``, needs matplotlib). See
docs/policies.md.
"""

from __future__ import annotations

import argparse
import sys

from metis_shm.cli.common import EXIT_OK, Subparsers, UsageError
from metis_shm.cli.progress import ProgressLine
from metis_shm.sim.simulator import Progress, SimulationResult, available_policies, simulate
from metis_shm.sim.traces import FORMATS, load_trace, read_trace, trace_name

_SIMULATE_EXAMPLES = """\
examples:
  metis simulate benchmarks/traces/lirs-cs.trace.gz --sizes 563 --policies lru,sieve
  metis simulate benchmarks/traces/lirs-*.trace.gz --sizes 100,1000,10000 \\
      --json out.json --plot out.png
  metis simulate benchmarks/traces/corda-vaultservice.trace.gz --sizes 1024 --shards default
  metis simulate requests.log.gz --format text --sizes 1000
  metis simulate access.csv --csv-column url --sizes 1000,5000

formats (--format, guessed from the file name when not given):
  lirs   one decimal key per line, '*' lines skipped (lirs-*.trace.gz)
  int32  big-endian signed 32-bit integers (cache2k *.trace.xz)
  int64  big-endian signed 64-bit integers (corda-*)
  text   one key per line, any bytes (anything else)
  csv    one column of a CSV file (--csv-column NAME or 0-based INDEX)
  gzip, xz and bzip2 compression is recognised from the file's content.
"""


def register(subparsers: Subparsers) -> None:
    """Add ``simulate`` to the ``metis`` parser."""
    sim = subparsers.add_parser(
        "simulate",
        help="replay access traces through the engine's eviction policies",
        description=(
            "Replay each TRACE through a real Metis cache in shared memory, once per "
            "policy and size (max_entries = size), and report the hit ratios. Every "
            "request is a get; a miss inserts the key."
        ),
        epilog=_SIMULATE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sim.add_argument("traces", nargs="+", metavar="TRACE", help="trace files")
    sim.add_argument(
        "--sizes",
        required=True,
        metavar="N,N,...",
        help="cache sizes in entries, comma-separated (e.g. 100,1000; 10k and 1M work too)",
    )
    sim.add_argument(
        "--policies",
        metavar="P,P,...",
        help=f"policies, comma-separated (default: all: {','.join(available_policies())})",
    )
    sim.add_argument(
        "--shards",
        default="1",
        metavar="N|default",
        help="shards per cache: a power of two, or 'default' for the shard count a "
        "Cache gets by default on this machine (default: 1, exact)",
    )
    sim.add_argument("--format", choices=FORMATS, help="trace format (default: from the name)")
    sim.add_argument("--csv-column", metavar="NAME_OR_INDEX", help="CSV column holding the key")
    sim.add_argument(
        "--csv-header",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="whether the CSV's first row is a header (default: yes for a column "
        "name, no for an index)",
    )
    sim.add_argument(
        "--seed",
        default="0",
        metavar="N|random",
        help="the caches' hash key comes from N, so a run's figures are exact and "
        "repeatable; 'random' for a random key, as a real cache has (default: 0)",
    )
    sim.add_argument("--json", metavar="OUT.json", help="write the results as JSON")
    sim.add_argument(
        "--plot", metavar="OUT.png", help="draw hit ratio against size (needs matplotlib)"
    )
    sim.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    sim.set_defaults(handler=_cmd_simulate)


def _parse_count(text: str) -> int:
    t = text.strip().lower().replace("_", "")
    mult = 1
    if t.endswith("k"):
        mult, t = 1000, t[:-1]
    elif t.endswith("m"):
        mult, t = 1_000_000, t[:-1]
    if not t.isdigit() or int(t) * mult < 1:
        raise UsageError(f"--sizes: {text!r} is not a positive number of entries")
    return int(t) * mult


def _parse_sizes(text: str) -> list[int]:
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise UsageError("--sizes: no size given")
    return sorted(set(map(_parse_count, parts)))


def _parse_policies(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [p.strip() for p in text.split(",") if p.strip()]
    known = available_policies()
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise UsageError(
            f"--policies: {', '.join(unknown) or 'none given'}: the engine's policies are "
            f"{', '.join(known)}"
        )
    return names


def _parse_shards(text: str) -> int | None:
    if text == "default":
        return None
    if not text.isdigit() or int(text) < 1 or int(text) & (int(text) - 1):
        raise UsageError(f"--shards: {text!r} is not a power of two or 'default'")
    return int(text)


def _parse_seed(text: str) -> int | None:
    if text == "random":
        return None
    if not text.isdigit():
        raise UsageError(f"--seed: {text!r} is not a non-negative integer or 'random'")
    return int(text)


def _cmd_simulate(args: argparse.Namespace) -> int:
    sizes = _parse_sizes(args.sizes)
    policies = _parse_policies(args.policies)
    shards = _parse_shards(args.shards)
    seed = _parse_seed(args.seed)
    if args.csv_column is not None and args.format not in (None, "csv"):
        raise UsageError(f"--csv-column is for CSV traces, not --format {args.format}")
    if args.plot:
        _require_matplotlib()
    for path in args.traces:
        # Checks the file and the format now (reading is lazy), before any long run.
        read_trace(path, args.format, csv_column=args.csv_column, csv_header=args.csv_header)
    results = []
    for path in args.traces:
        progress: Progress | None = (
            None if args.quiet else ProgressLine(sys.stderr, trace_name(path), "requests")
        )
        keys = load_trace(path, args.format, csv_column=args.csv_column, csv_header=args.csv_header)
        results.append(
            simulate(
                keys,
                sizes,
                policies,
                shards=shards,
                progress=progress,
                name=trace_name(path),
                seed=seed,
            )
        )
    result = SimulationResult.concat(results)
    print(result.table())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(result.to_json() + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        plot_hit_ratios(result, args.plot)
        print(f"wrote {args.plot}")
    return EXIT_OK


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise UsageError(
            "--plot needs matplotlib, which is not installed: pip install metis-shm[plot]"
        ) from exc


def plot_hit_ratios(result: SimulationResult, path: str, *, title: str | None = None) -> None:
    """A PNG of hit ratio (%) against cache size (log scale): one subplot per
    trace (and shard count), one line per policy."""
    _require_matplotlib()
    from matplotlib.figure import Figure

    panels: dict[tuple[str, int], dict[str, list[tuple[int, float]]]] = {}
    for row in result.rows:
        lines = panels.setdefault((row.trace, row.shards), {})
        lines.setdefault(row.policy, []).append((row.size, row.hit_ratio))
    if not panels:
        raise UsageError("nothing to plot: no results")
    show_shards = len({s for _, s in panels}) > 1
    n = len(panels)
    cols = min(3, n)
    rows = -(-n // cols)
    fig = Figure(figsize=(5.0 * cols, 3.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, ((trace, shards), lines) in zip(axes.flat, panels.items(), strict=False):
        for policy, points in lines.items():
            points.sort()
            xs = [p[0] for p in points]
            ys = [p[1] for p in points]
            ax.plot(xs, ys, marker="o", label=policy)
        ax.set_xscale("log")
        sizes = sorted({x for pts in lines.values() for x, _ in pts})
        ax.set_xticks(sizes, labels=[f"{x:,}" for x in sizes])
        ax.minorticks_off()
        top = max(y for pts in lines.values() for _, y in pts)
        ax.set_ylim(0, min(100.0, top * 1.1 + 1.0))
        ax.set_xlabel("cache size (entries)")
        ax.set_ylabel("hit ratio (%)")
        ax.set_title(f"{trace} ({shards} shard{'s' if shards > 1 else ''})" if show_shards
                     else trace)  # fmt: skip
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


__all__ = ["plot_hit_ratios", "register"]
