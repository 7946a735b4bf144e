"""``metis stats``, ``metis check``, ``metis inspect`` and ``metis top``: looking at a cache.

* ``metis stats NAME [--json]``: a cache's counters: the totals (free bytes
  and the largest free block of any shard included), then a table per shard.
* ``metis check NAME [--json]``: the full consistency check of a segment
  (exit 1 if it has problems).
* ``metis inspect NAME [--json]``: header fields, layout, per-shard memory
  (items, bytes, free, largest free block, fragmentation), policy state.
* ``metis top NAME [--interval S] [--once]``: a live view (ops/s, hit ratio,
  memory by shard, items, evictions); q or Ctrl-C quits. On a terminal it
  uses the alternate screen, restored however it ends (SIGTERM and SIGHUP
  too: exit 128 + the signal); into a pipe or a file it prints plain frames,
  one per refresh; ``--once`` prints one plain frame.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import signal
import sys
import termios
import threading
import time
import tty
from typing import Any, TextIO

from metis_shm.cache import Cache, _setting_name
from metis_shm.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    Subparsers,
    UsageError,
    jsonable,
    open_existing,
)
from metis_shm.far.report import far_report
from metis_shm.stats import Stats
from metis_shm.units import format_size


def register(subparsers: Subparsers) -> None:
    """Add ``stats``, ``check``, ``inspect`` and ``top`` to the ``metis`` parser."""
    stats = subparsers.add_parser(
        "stats",
        help="print a cache's counters (totals and per shard)",
        description="Read a cache's statistics from its segment (any user who may open it).",
        epilog="examples:\n  metis stats app\n  metis stats app --json | jq .hit_ratio",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stats.add_argument("name", help="cache name")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(handler=_cmd_stats)

    check = subparsers.add_parser(
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
    _register_inspect(subparsers)
    _register_top(subparsers)


def stats_dict(stats: Stats) -> dict[str, Any]:
    """What ``metis stats --json`` prints: ``Stats.to_dict()`` (whose totals'
    ``largest_free`` is the largest block of any shard, not their sum)."""
    return stats.to_dict()


# The per-shard table of `metis stats`: (heading, width, value of a row).
_SHARD_COLUMNS: tuple[tuple[str, int, Any], ...] = (
    ("items", 9, lambda s: f"{s.items:,}"),
    ("used", 10, lambda s: format_size(s.bytes_used)),
    ("free", 10, lambda s: format_size(s.free_bytes)),
    ("largest free", 12, lambda s: format_size(s.largest_free)),
    ("hits", 11, lambda s: f"{s.hits:,}"),
    ("misses", 10, lambda s: f"{s.misses:,}"),
    ("hit%", 6, lambda s: f"{s.hit_ratio:.1%}" if s.hits + s.misses else "-"),
    ("sets", 10, lambda s: f"{s.sets:,}"),
    ("deletes", 8, lambda s: f"{s.deletes:,}"),
    ("evictions", 9, lambda s: f"{s.evictions:,}"),
    ("expired", 8, lambda s: f"{s.expirations:,}"),
)


def _cmd_stats(args: argparse.Namespace) -> int:
    with open_existing(args.name) as cache:
        stats = cache.stats()
    if args.json:
        print(json.dumps(stats_dict(stats), indent=2))
        return EXIT_OK
    print(
        f"cache {stats.name!r}: policy {stats.policy}, {stats.n_shards} shards, "
        f"segment {stats.segment_size:,} bytes"
    )
    rows = stats.summary_rows()
    at = next((i + 1 for i, (field, _) in enumerate(rows) if field == "capacity"), len(rows))
    rows[at:at] = [
        ("free_bytes", f"{stats.free_bytes:,}"),
        ("largest_free", f"{stats.largest_free:,}"),
    ]
    for field, shown in rows:
        print(f"  {field:>16}  {shown}")
    print()
    print("  " + f"{'shard':>5}" + "".join(f" {h:>{w}}" for h, w, _ in _SHARD_COLUMNS))
    for label, shard in [*enumerate(stats.shards), ("all", stats)]:
        cells = "".join(f" {cell(shard):>{w}}" for _, w, cell in _SHARD_COLUMNS)
        print(f"  {label:>5}{cells}")
    return EXIT_OK


def _cmd_check(args: argparse.Namespace) -> int:
    with open_existing(args.name) as cache:
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
            "largest_free": stats.largest_free,  # of any shard (not their sum)
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
    with open_existing(args.name) as cache:
        info = inspect_cache(cache)
    if args.json:
        print(json.dumps(jsonable(info), indent=2))
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


# ---- top -----------------------------------------------------------------------------


QUIT_HINT = "q or Ctrl-C quits"
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
    now: Stats,
    before: Stats | None,
    seconds: float,
    *,
    width: int = 80,
    daemon: bool = False,
    quit_hint: bool = True,
    far: dict[str, Any] | None = None,
) -> str:
    """One frame of `metis top`: rates are the change from ``before`` over
    ``seconds``; ``quit_hint``: end with the line saying how to quit (the live
    view on a terminal only)."""

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
        f"views {now.pins:,} open   pinned {format_size(now.pinned_bytes)}   "
        f"held back {format_size(now.held_bytes)}",
        *_far_lines(far),
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
    if quit_hint:
        lines.append("")
        lines.append(QUIT_HINT)
    return "\n".join(line[:width] for line in lines)


def _far_lines(far: dict[str, Any] | None) -> list[str]:
    """A near cache's far-tier lines of `metis top` (none for a plain cache)."""
    if far is None:
        return []
    gate = (
        f"serving (vouched {far['vouched_for_seconds']:.2f} s)"
        if far["gate_open"]
        else "NOT serving"
    )
    return [
        f"far tier: tracker {far['tracker_state']}, near tier {gate}, generation "
        f"{far['generation']:,}",
        f"far hits {far['far_hits']:,}  misses {far['far_misses']:,}  fills {far['fills']:,} "
        f"(raced {far['fills_dropped']:,})  invalidations {far['invalidations']:,}  "
        f"reconnects {far['reconnects']:,}",
    ]


def _far_of(cache: Cache) -> dict[str, Any] | None:
    return far_report(cache) if cache.gated else None


def _next_frame(
    cache: Cache, before: Stats | None, t_before: float, *, quit_hint: bool
) -> tuple[Stats, float, str]:
    """The stats now, their time, and the frame that compares them with ``before``."""
    now = cache.stats()
    t_now = time.monotonic()
    width = shutil.get_terminal_size((100, 24)).columns
    frame = render_top(now, before, t_now - t_before, width=width, daemon=cache.daemon_alive,
                       quit_hint=quit_hint, far=_far_of(cache))  # fmt: skip
    return now, t_now, frame


def _cmd_top(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise UsageError(f"--interval: {args.interval} is not a positive number of seconds")
    with open_existing(args.name) as cache:
        if args.once:
            before = cache.stats()
            time.sleep(args.interval)
            width = shutil.get_terminal_size((100, 24)).columns
            print(
                render_top(
                    cache.stats(),
                    before,
                    args.interval,
                    width=width,
                    daemon=cache.daemon_alive,
                    quit_hint=False,
                    far=_far_of(cache),
                )
            )
            return EXIT_OK
        if not sys.stdout.isatty():
            return _plain_loop(cache, args.interval)
        return _top_loop(cache, args.interval)


def _plain_loop(cache: Cache, interval: float) -> int:
    """``metis top`` into a pipe or a file: a plain frame per refresh (no
    escape codes, no screen control), a blank line between frames."""
    before: Stats | None = None
    t_before = time.monotonic()
    first = True
    try:
        while True:
            now, t_now, frame = _next_frame(cache, before, t_before, quit_hint=False)
            sys.stdout.write(("" if first else "\n") + frame + "\n")
            sys.stdout.flush()
            first = False
            before, t_before = now, t_now
            time.sleep(interval)
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:  # `metis top app | head`: the reader is done
        # Python would flush stdout again at exit and complain: point it nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


class _Stopped(Exception):
    """SIGTERM or SIGHUP came while ``metis top`` had the terminal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _StopOnSignal:
    """The handler of SIGTERM and SIGHUP while ``metis top`` has the terminal:
    the first one ends the loop (``_Stopped``); once ``restoring`` is set,
    others wait for the terminal to be restored (they are ignored)."""

    def __init__(self) -> None:
        self.restoring = False

    def __call__(self, signum: int, frame: Any) -> None:
        if not self.restoring:
            self.restoring = True
            raise _Stopped(signum)


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _top_loop(cache: Cache, interval: float) -> int:
    """The live view on a terminal: alternate screen, cursor hidden, keys
    unbuffered; all restored however it ends (q, Ctrl-C, SIGTERM, SIGHUP, an
    error). A signal ends it with 128 + the signal's number."""
    out = sys.stdout
    stdin = sys.stdin
    tty_in = stdin.isatty()
    saved: Any = None
    handlers: dict[signal.Signals, Any] = {}
    on_signal = _StopOnSignal()
    try:
        if threading.current_thread() is threading.main_thread():
            for signum in _STOP_SIGNALS:
                handlers[signum] = signal.signal(signum, on_signal)
        if tty_in:
            saved = termios.tcgetattr(stdin.fileno())
            tty.setcbreak(stdin.fileno())
        out.write(_ALT_ON)
        before: Stats | None = None
        t_before = time.monotonic()
        while True:
            now, t_now, frame = _next_frame(cache, before, t_before, quit_hint=tty_in)
            out.write(_CLEAR + frame.replace("\n", "\r\n" if tty_in else "\n") + "\n")
            out.flush()
            before, t_before = now, t_now
            if _wait_for_quit(stdin if tty_in else None, interval):
                return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_OK
    except _Stopped as stopped:
        return 128 + stopped.signum
    finally:
        on_signal.restoring = True  # a signal now must not cut the restoring short
        _restore_terminal(out, stdin, saved)
        for number, handler in handlers.items():
            signal.signal(number, handler)


def _restore_terminal(out: TextIO, stdin: TextIO, saved: Any) -> None:
    """Leave the alternate screen, show the cursor, give the keys back as they
    were; quietly, as the terminal may be gone (SIGHUP)."""
    with contextlib.suppress(OSError, ValueError):
        out.write(_ALT_OFF)
        out.flush()
    if saved is not None:
        with contextlib.suppress(OSError, termios.error, ValueError):
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


__all__ = ["inspect_cache", "register", "render_top", "stats_dict"]
