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
* ``metis get NAME KEY [--json]`` / ``metis set NAME KEY VALUE [--type T]
  [--ttl S]`` / ``metis delete NAME KEY``: one item by hand.
* ``metis keys NAME [--prefix P] [--limit N] [--json]``: list keys.
* ``metis inspect NAME [--json]``: header fields, layout, per-shard memory
  (items, bytes, free, largest free block, fragmentation), policy state.
* ``metis top NAME [--interval S] [--once]``: a live view (ops/s, hit ratio,
  memory by shard, items, evictions); q or Ctrl-C quits.
* ``metis bench NAME|temp [--seconds S]``: a quick get/set benchmark (ns/op).

See docs/cli.md for each command's output.

Exit codes:

* 0: success (``top``: quit with q or Ctrl-C);
* 1: the command ran and the answer is "no": ``check`` found problems,
  ``get``/``delete`` found no such key (``[KEY_NOT_FOUND]`` on stderr),
  ``snapshot``/``restore`` failed (anything else that went wrong, too);
* 2: bad usage or bad input, including a missing cache
  (``[SEGMENT_NOT_FOUND]``): the error's code is printed on stderr;
* 130: interrupted (Ctrl-C) outside ``top``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import select
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from metis_shm import cli_config, cli_snapshot
from metis_shm.cache import Cache, _setting_name, attach_existing
from metis_shm.errors import KeyNotFound, MetisError
from metis_shm.progress import ProgressLine
from metis_shm.simulate import (
    Progress,
    SimulationResult,
    available_policies,
    simulate,
)
from metis_shm.stats import Stats
from metis_shm.traces import FORMATS, load_trace, read_trace, trace_name
from metis_shm.units import format_size, parse_duration

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


_MISSING: Any = object()


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

    _register_get(sub)
    _register_set(sub)
    _register_delete(sub)
    _register_keys(sub)
    _register_inspect(sub)
    _register_top(sub)
    _register_bench(sub)
    cli_snapshot.register(sub)
    cli_config.register(sub)
    return parser


def _open_existing(name: str, *, reads_values: bool = False, pickle: bool = False) -> Cache:
    # Only `get` decodes values; it unpickles a pickle cache's values only
    # when asked with --pickle (docs/security.md).
    return attach_existing(name, accept_pickle=pickle or not reads_values)


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


# ---- get / set / delete / keys -------------------------------------------------------

_KEY_HELP = "the key (a str key; --bytes-key for a bytes key)"


def _key(args: argparse.Namespace) -> str | bytes:
    key: str = args.key
    return key.encode() if args.bytes_key else key


def _show(value: Any) -> str:
    """A value as `metis get` prints it: text as is, bytes decoded when UTF-8."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            return repr(bytes(value))
    return json.dumps(_jsonable(value))


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def _show_key(key: str | bytes) -> str:
    return key if isinstance(key, str) else repr(key)


def _register_get(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "get",
        help="print the value stored under a key (exit 1 if absent)",
        description="Read KEY from cache NAME. Text and UTF-8 bytes print as they are; "
        "other values print as JSON.",
        epilog="examples:\n  metis get app user:42\n  metis get app user:42 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", help="cache name")
    p.add_argument("key", help=_KEY_HELP)
    p.add_argument("--bytes-key", action="store_true", help="KEY is a bytes key (UTF-8)")
    p.add_argument("--json", action="store_true", help="print JSON (found, type, value)")
    p.add_argument(
        "--pickle",
        action="store_true",
        help="unpickle the value if the cache uses serializer pickle (runs code chosen by "
        "whoever wrote it: only for trusted writers)",
    )
    p.set_defaults(handler=_cmd_get)


def _cmd_get(args: argparse.Namespace) -> int:
    key = _key(args)
    with _open_existing(args.name, reads_values=True, pickle=args.pickle) as cache:
        value = cache.get(key, _MISSING)
    found = value is not _MISSING
    if args.json:
        print(json.dumps({
            "name": args.name, "key": _show_key(key), "found": found,
            "type": type(value).__name__ if found else None,
            "value": _jsonable(value) if found else None,
        }))  # fmt: skip
    elif found:
        print(_show(value))
    if not found:
        print(f"metis get: error: {KeyNotFound(key)} not in cache {args.name!r}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


_VALUE_TYPES = ("str", "bytes", "int", "json")


def _register_set(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "set",
        help="store a value under a key",
        description="Store VALUE under KEY in cache NAME (as a str unless --type says otherwise).",
        epilog=(
            "examples:\n  metis set app greeting hello\n  metis set app hits 0 --type int\n"
            '  metis set app user:42 \'{"name": "Ada"}\' --type json --ttl 10m'
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", help="cache name")
    p.add_argument("key", help=_KEY_HELP)
    p.add_argument("value", help="the value")
    p.add_argument("--bytes-key", action="store_true", help="KEY is a bytes key (UTF-8)")
    p.add_argument(
        "--type", choices=_VALUE_TYPES, default="str", help="how to store VALUE (default: str)"
    )
    p.add_argument("--ttl", metavar="S", help="expire after S (30, 250ms, 5m, 2h)")
    p.set_defaults(handler=_cmd_set)


def _cmd_set(args: argparse.Namespace) -> int:
    key = _key(args)
    text: str = args.value
    value: Any
    if args.type == "bytes":
        value = text.encode()
    elif args.type == "int":
        try:
            value = int(text)
        except ValueError as exc:
            raise UsageError(f"--type int: {text!r} is not an integer") from exc
    elif args.type == "json":
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"--type json: {text!r} is not JSON: {exc}") from exc
    else:
        value = text
    ttl = None if args.ttl is None else parse_duration(args.ttl, "--ttl")
    with _open_existing(args.name) as cache:
        cache.set(key, value, ttl=ttl)
    expiry = "" if ttl is None else f", expires in {ttl:g} s"
    print(f"stored {_show_key(key)} ({args.type}{expiry})")
    return EXIT_OK


def _register_delete(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "delete",
        help="delete a key (exit 1 if it was absent)",
        description="Remove KEY from cache NAME.",
        epilog="examples:\n  metis delete app user:42",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", help="cache name")
    p.add_argument("key", help=_KEY_HELP)
    p.add_argument("--bytes-key", action="store_true", help="KEY is a bytes key (UTF-8)")
    p.set_defaults(handler=_cmd_delete)


def _cmd_delete(args: argparse.Namespace) -> int:
    key = _key(args)
    with _open_existing(args.name) as cache:
        removed = cache.delete(key)
    if not removed:
        print(
            f"metis delete: error: {KeyNotFound(key)} not in cache {args.name!r}", file=sys.stderr
        )
        return EXIT_FAILED
    print(f"deleted {_show_key(key)}")
    return EXIT_OK


def _register_keys(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "keys",
        help="list keys, optionally those with a prefix",
        description="Print the keys of cache NAME, one a line (bytes keys as b'...'), in "
        "storage order. Safe while other processes write.",
        epilog="examples:\n  metis keys app --prefix user: --limit 20\n  metis keys app --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", help="cache name")
    p.add_argument("--prefix", metavar="P", help="only keys starting with P")
    p.add_argument(
        "--limit", type=int, default=1000, metavar="N", help="at most N keys (default 1000; 0: all)"
    )
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(handler=_cmd_keys)


def _cmd_keys(args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise UsageError(f"--limit: {args.limit} is negative")
    keys: list[str | bytes] = []
    more = False
    with _open_existing(args.name) as cache:
        for key in cache.keys(prefix=args.prefix):
            if args.limit and len(keys) >= args.limit:
                more = True
                break
            keys.append(key)
    if args.json:
        print(json.dumps([_show_key(k) for k in keys]))
    else:
        for key in keys:
            print(_show_key(key))
    if more:
        print(f"metis keys: stopped at --limit {args.limit}", file=sys.stderr)
    return EXIT_OK


# ---- inspect -------------------------------------------------------------------------


def inspect_cache(cache: Cache) -> dict[str, Any]:
    """What `metis inspect` shows: header, layout, per-shard memory and policy state."""
    header = {k: _setting_name(k, v) for k, v in cache.settings.items()}
    header["magic"] = bytes(header["magic"]).decode(errors="replace")
    stats = cache.stats()
    shards = []
    for i, s in enumerate(stats.shards):
        shards.append({
            "shard": i, "items": s.items, "bytes_used": s.bytes_used, "capacity": s.capacity,
            "free_bytes": s.free_bytes, "largest_free": s.largest_free,
            "fragmentation": s.fragmentation, "evictions": s.evictions,
            "policy_state": cache._policy_state(i),
        })  # fmt: skip
    return {
        "name": cache.name,
        "policy": cache.policy,
        "n_shards": stats.n_shards,
        "segment_size": stats.segment_size,
        "daemon_alive": cache.daemon_alive,
        "header": header,
        "totals": {
            "items": stats.items,
            "bytes_used": stats.bytes_used,
            "capacity": stats.capacity,
            "free_bytes": stats.free_bytes,
            "largest_free": stats.largest_free,
            "fragmentation": stats.fragmentation,
        },
        "shards": shards,
    }


def _register_inspect(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "inspect",
        help="show a segment's layout, shards, memory and policy state",
        description="Print the header fields of cache NAME's segment (layout offsets, limits, "
        "creator), then per shard its items, bytes used, free bytes, largest free block, "
        "fragmentation and the eviction policy's state.",
        epilog="examples:\n  metis inspect app\n  metis inspect app --json | jq '.shards[0]'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", help="cache name")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_cmd_inspect)


_HEADER_GROUPS = (
    ("segment", ("magic", "layout_version", "state", "segment_size", "header_size", "flags")),
    ("settings", ("policy", "serializer", "capacity", "max_entries", "max_key_size",
                  "max_value_size", "compress_threshold", "default_ttl_ns")),
    ("layout", ("n_shards", "shard_arena_size", "shard_shift", "index_buckets", "n_slots",
                "slot_size", "ghost_cap", "sketch_width")),
    ("offsets", ("shards_offset", "slots_offset", "index_offset", "bitmap_offset",
                 "bitmap_stride", "policy_offset", "policy_stride", "arena_offset")),
    ("owners", ("creator_pid", "creator_uid", "created_ns", "daemon_pid",
                "daemon_heartbeat_ns")),
)  # fmt: skip


def _cmd_inspect(args: argparse.Namespace) -> int:
    with _open_existing(args.name) as cache:
        info = inspect_cache(cache)
    if args.json:
        print(json.dumps(_jsonable(info), indent=2))
        return EXIT_OK
    header = info["header"]
    created = time.strftime(
        "%Y-%m-%d %H:%M:%S", time.localtime(int(header.get("created_ns", 0)) / 1e9)
    )
    print(
        f"cache {info['name']!r}: policy {info['policy']}, {info['n_shards']} shards, segment "
        f"{format_size(info['segment_size'])}, created {created}, daemon "
        f"{'alive' if info['daemon_alive'] else 'none'}"
    )
    shown: set[str] = set()
    for group, fields in _HEADER_GROUPS:
        row = [f"{f}={header[f]}" for f in fields if f in header]
        shown.update(fields)
        _print_wrapped(f"{group}:", row)
    rest = [f"{k}={v}" for k, v in header.items() if k not in shown]
    if rest:
        _print_wrapped("other:", rest)
    print()
    print(f"  {'shard':>5} {'items':>8} {'used':>10} {'free':>10} {'largest free':>12} "
          f"{'frag':>6} {'evictions':>9}")  # fmt: skip
    rows = [*info["shards"], {"shard": "all", **info["totals"], "evictions": sum(
        s["evictions"] for s in info["shards"])}]  # fmt: skip
    for s in rows:
        print(
            f"  {s['shard']:>5} {s['items']:>8,} {format_size(s['bytes_used']):>10} "
            f"{format_size(s['free_bytes']):>10} {format_size(s['largest_free']):>12} "
            f"{s['fragmentation']:>6.1%} {s['evictions']:>9,}"
        )
    print()
    print("  policy state:")
    for s in info["shards"]:
        state = "  ".join(f"{k}={_fmt_state(v)}" for k, v in s["policy_state"].items())
        print(f"  {s['shard']:>5}  {state}")
    return EXIT_OK


def _print_wrapped(label: str, items: list[str], width: int = 96) -> None:
    line = f"  {label:<9}"
    for item in items:
        if len(line) + 2 + len(item) > width and line.strip() != label:
            print(line)
            line = " " * 11
        line += "  " + item
    print(line)


def _fmt_state(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_fmt_state(v) for v in value) + "]"
    return str(value)


# ---- bench ---------------------------------------------------------------------------


def _register_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench",
        help="a quick local get/set benchmark (ns per operation)",
        description="Time set, get (hit) and get (miss) from this process, one after the other, "
        "for --seconds in all. NAME 'temp' creates a throwaway cache; with an existing "
        "cache's name, the benchmark writes keys 'metis-bench:*' there and deletes them after.",
        epilog="examples:\n  metis bench temp\n  metis bench temp --seconds 3 --value-size 1024\n"
        "  metis bench app --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", metavar="NAME|temp", help="cache name, or 'temp'")
    p.add_argument("--seconds", type=float, default=1.0, metavar="S", help="total (default 1)")
    p.add_argument(
        "--value-size", type=int, default=100, metavar="BYTES", help="value size (default 100)"
    )
    p.add_argument("--keys", type=int, default=10_000, metavar="N", help="distinct keys "
                   "(default 10000)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_cmd_bench)


def _timed(op: Any, keys: list[str], seconds: float) -> tuple[int, float]:
    """Call op(key) round the keys until ``seconds`` pass: (calls, ns per call)."""
    n = 0
    clock = time.perf_counter_ns
    t0 = clock()
    deadline = t0 + int(seconds * 1e9)
    batch = keys[:1000]
    while True:
        for k in batch:
            op(k)
        n += len(batch)
        batch = keys[n % len(keys) : n % len(keys) + 1000] or keys[:1000]
        t = clock()
        if t >= deadline:
            return n, (t - t0) / n


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.seconds <= 0 or args.value_size < 0 or args.keys < 1:
        raise UsageError("--seconds and --keys must be positive, --value-size not negative")
    temp = args.name == "temp"
    name = f"metis-bench-{os.getpid()}" if temp else args.name
    cache = Cache(name, capacity="64MiB") if temp else _open_existing(name)
    value = os.urandom(args.value_size)
    keys = [f"metis-bench:{i}" for i in range(args.keys)]
    missing = [f"metis-bench:absent:{i}" for i in range(args.keys)]
    phase = args.seconds / 3
    results: dict[str, dict[str, float]] = {}
    try:
        for k in keys:
            cache.set(k, value)
        set_one = cache.set
        for op_name, op, ks in (
            ("set", lambda k: set_one(k, value), keys),
            ("get (hit)", cache.get, keys),
            ("get (miss)", cache.get, missing),
        ):
            calls, ns = _timed(op, ks, phase)
            results[op_name] = {"ops": calls, "ns_per_op": round(ns, 1),
                                "ops_per_s": round(1e9 / ns)}  # fmt: skip
        shards, policy = cache.n_shards, cache.policy
    finally:
        if not temp:
            cache.delete_many(keys)
        cache.close()
        if temp:
            Cache.destroy(name)
    if args.json:
        print(json.dumps({"cache": "temp" if temp else name, "policy": policy, "shards": shards,
                          "value_size": args.value_size, "results": results}))  # fmt: skip
        return EXIT_OK
    where = "a temporary cache" if temp else f"cache {name!r}"
    print(f"{where}: policy {policy}, {shards} shards, {args.value_size}-byte values, "
          f"{args.keys:,} keys, one process")  # fmt: skip
    print(f"  {'operation':<11} {'ns/op':>8} {'ops/s':>12}")
    for op_name, r in results.items():
        print(f"  {op_name:<11} {r['ns_per_op']:>8,.0f} {r['ops_per_s']:>12,.0f}")
    return EXIT_OK


# ---- top -----------------------------------------------------------------------------


_CLEAR = "\x1b[H\x1b[2J"
_ALT_ON, _ALT_OFF = "\x1b[?1049h\x1b[?25l", "\x1b[?25h\x1b[?1049l"


def _register_top(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "top",
        help="a live view of a cache: ops/s, hit ratio, memory by shard",
        description="Refresh a view of cache NAME every --interval seconds: operations per "
        "second (from the change in hits, misses and sets), hit ratio (overall and over the "
        "last interval), items, evictions, and memory used per shard. q or Ctrl-C quits.",
        epilog="examples:\n  metis top app\n  metis top app --interval 0.5\n"
        "  metis top app --once      # one frame (rates over one interval), no screen control",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", help="cache name")
    p.add_argument(
        "--interval", type=float, default=1.0, metavar="S", help="seconds between frames (1)"
    )
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.set_defaults(handler=_cmd_top)


def _bar(fraction: float, width: int) -> str:
    fraction = min(max(fraction, 0.0), 1.0)
    full = round(fraction * width)
    return "#" * full + "." * (width - full)


def render_top(
    now: Stats, before: Stats | None, seconds: float, *, width: int = 80, daemon: bool = False
) -> str:
    """One frame of `metis top`: rates are the change from ``before`` over ``seconds``."""

    def rate(field: str) -> float:
        if before is None or seconds <= 0:
            return 0.0
        delta: int = getattr(now, field) - getattr(before, field)
        return max(0, delta) / seconds

    gets = rate("hits") + rate("misses")
    sets = rate("sets")
    if before is not None:
        d_hits = now.hits - before.hits
        d_reads = d_hits + now.misses - before.misses
        recent = f"{d_hits / d_reads:.1%}" if d_reads > 0 else "-"
    else:
        recent = "-"
    used = now.bytes_used / now.capacity if now.capacity else 0.0
    lines = [
        f"metis top - cache {now.name!r}  policy {now.policy}  {now.n_shards} shards  "
        f"daemon {'alive' if daemon else 'none'}  {time.strftime('%H:%M:%S')}",
        f"ops/s {gets + sets:>12,.0f}   gets/s {gets:>12,.0f}   sets/s {sets:>10,.0f}",
        f"hit ratio {now.hit_ratio:>7.1%} (last {seconds:.1f} s: {recent})   "
        f"hits {now.hits:,}  misses {now.misses:,}",
        f"items {now.items:,}   evictions {now.evictions:,} ({rate('evictions'):,.0f}/s)   "
        f"expirations {now.expirations:,}   deletes {now.deletes:,}",
        f"memory {format_size(now.bytes_used)} / {format_size(now.capacity)} ({used:.1%})   "
        f"fragmentation {now.fragmentation:.1%}   lock waits {now.lock_waits:,}",
        "",
        f"{'shard':>5} {'items':>9} {'used':>10} {'free':>10} {'evict':>8}  memory used",
    ]
    bar_width = max(10, width - 55)
    for i, s in enumerate(now.shards):
        share = s.bytes_used / s.capacity if s.capacity else 0.0
        lines.append(
            f"{i:>5} {s.items:>9,} {format_size(s.bytes_used):>10} "
            f"{format_size(s.free_bytes):>10} {s.evictions:>8,}  {_bar(share, bar_width)} "
            f"{share:>4.0%}"
        )
    lines.append("")
    lines.append("q or Ctrl-C quits")
    return "\n".join(line[:width] for line in lines)


def _cmd_top(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise UsageError(f"--interval: {args.interval} is not a positive number of seconds")
    with _open_existing(args.name) as cache:
        if args.once:
            before = cache.stats()
            time.sleep(args.interval)
            width = shutil.get_terminal_size((100, 24)).columns
            print(render_top(cache.stats(), before, args.interval, width=width,
                             daemon=cache.daemon_alive))  # fmt: skip
            return EXIT_OK
        return _top_loop(cache, args.interval)


def _top_loop(cache: Cache, interval: float) -> int:
    out = sys.stdout
    stdin = sys.stdin
    tty_in = stdin.isatty()
    saved: Any = None
    if tty_in:
        import termios
        import tty

        saved = termios.tcgetattr(stdin.fileno())
        tty.setcbreak(stdin.fileno())
    out.write(_ALT_ON)
    try:
        before: Stats | None = None
        t_before = time.monotonic()
        while True:
            now = cache.stats()
            t_now = time.monotonic()
            width = shutil.get_terminal_size((100, 24)).columns
            frame = render_top(now, before, t_now - t_before, width=width,
                               daemon=cache.daemon_alive)  # fmt: skip
            out.write(_CLEAR + frame.replace("\n", "\r\n" if tty_in else "\n") + "\n")
            out.flush()
            before, t_before = now, t_now
            if _wait_for_quit(stdin if tty_in else None, interval):
                return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        out.write(_ALT_OFF)
        out.flush()
        if saved is not None:
            import termios

            termios.tcsetattr(stdin.fileno(), termios.TCSADRAIN, saved)


def _wait_for_quit(stdin: TextIO | None, interval: float) -> bool:
    """Sleep ``interval``; True if 'q' was typed meanwhile."""
    if stdin is None:
        time.sleep(interval)
        return False
    deadline = time.monotonic() + interval
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([stdin], [], [], left)
        if ready:
            ch = os.read(stdin.fileno(), 1)
            if ch in (b"q", b"Q", b""):
                return True
    return False


__all__ = ["build_parser", "inspect_cache", "main", "plot_hit_ratios", "render_top"]
