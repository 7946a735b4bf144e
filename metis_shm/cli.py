"""The ``metis`` command line (``python -m metis_shm``).

Subcommands:

* ``metis simulate TRACE... --sizes 100,1000 [--policies lru,sieve]``: replay
  traces through the engine's eviction policies and print their hit ratios
  (see docs/policies.md).
* ``metis stats NAME [--json]``: a cache's counters, totals and per shard.
* ``metis check NAME [--json]``: the full consistency check of a segment.
* ``metis snapshot NAME --dir DIR`` / ``metis restore NAME --dir DIR``: write a
  snapshot of a cache, or load the newest valid one (docs/persistence.md).
* ``metis config check FILE`` / ``metis config show``: validate a metisd
  configuration, or print the effective one with each value's source.

Exit codes: 0 success, 1 the check found problems (or anything else went
wrong), 2 bad usage or bad input (the error's code is printed).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from metis_shm import cli_config, cli_snapshot
from metis_shm.cache import Cache
from metis_shm.errors import MetisError
from metis_shm.progress import ProgressLine
from metis_shm.simulate import (
    Progress,
    SimulationResult,
    available_policies,
    simulate,
)
from metis_shm.traces import FORMATS, load_trace, read_trace, trace_name

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_SIMULATE_EXAMPLES = """\
examples:
  metis simulate ../shared/traces/lirs-cs.trace.gz --sizes 563 --policies lru,sieve
  metis simulate ../shared/traces/lirs-*.trace.gz --sizes 100,1000,10000 \\
      --json out.json --plot out.png
  metis simulate ../shared/traces/corda-vaultservice.trace.gz --sizes 1024 --shards default
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


class UsageError(Exception):
    """Bad command-line input found after parsing (exit code 2)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metis",
        description="Metis: a cache shared by Python processes through POSIX shared memory.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    sim = sub.add_parser(
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
    sim.add_argument("--json", metavar="OUT.json", help="write the results as JSON")
    sim.add_argument(
        "--plot", metavar="OUT.png", help="draw hit ratio against size (needs matplotlib)"
    )
    sim.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    sim.set_defaults(handler=_cmd_simulate)

    stats = sub.add_parser(
        "stats",
        help="print a cache's counters (totals and per shard)",
        description="Read a cache's statistics from its segment (any user who may open it).",
        epilog="examples:\n  metis stats app\n  metis stats app --json | jq .hit_ratio",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stats.add_argument("name", help="cache name")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(handler=_cmd_stats)

    check = sub.add_parser(
        "check",
        help="check a segment's consistency (exit 1 if it has problems)",
        description=(
            "Run the full consistency check of a cache's segment: allocator tiling and "
            "free lists, index chains, policy queues, counters. Takes each shard's lock "
            "in turn (a shard whose writer died is repaired first, as any writer would)."
        ),
        epilog="examples:\n  metis check app\n  metis check app --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("name", help="cache name")
    check.add_argument("--json", action="store_true", help="print JSON")
    check.set_defaults(handler=_cmd_check)

    cli_snapshot.register(sub)
    cli_config.register(sub)
    return parser


def _open_existing(name: str) -> Cache:
    return Cache(name, create=False)


def _cmd_stats(args: argparse.Namespace) -> int:
    with _open_existing(args.name) as cache:
        stats = cache.stats()
    if args.json:
        print(json.dumps(stats.to_dict(), indent=2))
        return EXIT_OK
    print(
        f"cache {stats.name!r}: policy {stats.policy}, {stats.n_shards} shards, "
        f"segment {stats.segment_size:,} bytes"
    )
    for field, shown in stats.summary_rows():
        print(f"  {field:>16}  {shown}")
    return EXIT_OK


def _cmd_check(args: argparse.Namespace) -> int:
    with _open_existing(args.name) as cache:
        problems = cache.check()
    if args.json:
        print(json.dumps({"name": args.name, "ok": not problems, "problems": problems}))
    elif problems:
        print(f"cache {args.name!r}: {len(problems)} problem(s)")
        for problem in problems:
            print(f"  {problem}")
    else:
        print(f"cache {args.name!r}: consistent")
    return EXIT_OK if not problems else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``metis`` command; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    try:
        code: int = args.handler(args)
        return code
    except UsageError as exc:
        print(f"metis {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MetisError as exc:
        # str(exc) starts with the error's code: "[TRACE_FORMAT] ..."
        print(f"metis {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"metis {args.command}: interrupted", file=sys.stderr)
        return 130


# ---- simulate ----------------------------------------------------------------


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


def _cmd_simulate(args: argparse.Namespace) -> int:
    sizes = _parse_sizes(args.sizes)
    policies = _parse_policies(args.policies)
    shards = _parse_shards(args.shards)
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
            simulate(keys, sizes, policies, shards=shards, progress=progress, name=trace_name(path))
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


__all__ = ["build_parser", "main", "plot_hit_ratios"]
