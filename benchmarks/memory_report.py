"""bench_memory's report: the four tables and the chart, from the rows of the JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _common import print_table
from memory_data import KEY_LEN, OVERLOAD, MiB


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%"


def print_report(report: dict[str, Any]) -> None:
    """The four tables, each under a line that says what its figures are."""
    rows = report["rows"]
    print(
        "bytes per item (memory / items; metis items = bytes_used, metis segment = the whole "
        "segment at the capacity that holds the set, redis = used_memory delta, "
        "memcached = slab pages + hash table):\n"
    )
    print_table(
        ("set", "items", "payload MiB", "key+value B", "metis items", "metis segment",
         "redis", "memcached"),
        [(r["set"], f"{r['items']:,}", f"{r['payload'] / MiB:.1f}", f"{r['payload_per_item']:.0f}",
          f"{r['metis']['bytes_per_item']:.0f}", f"{r['metis']['segment_bytes_per_item']:.0f}",
          f"{r['redis']['bytes_per_item']:.0f}", f"{r['memcached']['bytes_per_item']:.0f}")
         for r in rows],
    )  # fmt: skip
    print(
        "\noverhead per item beyond key + value, bytes (% of key + value); ratios are of the "
        "whole memory: metis segment / redis, metis segment / memcached:\n"
    )
    print_table(
        ("set", "metis items", "metis segment", "redis", "memcached", "mc slab rounding",
         "metis/redis", "metis/memcached"),
        [(r["set"],
          *(f"{o:.0f} ({_pct(o, r['payload_per_item'])})" for o in (
              r["metis"]["overhead_per_item"], r["metis"]["segment_overhead_per_item"],
              r["redis"]["overhead_per_item"], r["memcached"]["overhead_per_item"])),
          f"{r['memcached']['slab_rounding_per_item']:.0f}",
          f"{r['metis_over_redis']:.2f}", f"{r['metis_over_memcached']:.2f}")
         for r in rows],
    )  # fmt: skip
    print(
        "\nmetis: the capacity that holds the whole set (the fullest shard times the shard "
        f"count; the largest of {report['config']['metis_samples']} segments, each with its own "
        "hash seed; needed/used median and largest), the segment it makes, and the headroom "
        "rule of docs/memory.md: the samples its capacity covers, and whether it held the set "
        "in one more segment:\n"
    )
    print_table(
        ("set", "shards", "bytes used MiB", "capacity needed MiB", "needed/used med",
         "needed/used max", "segment MiB", "fixed MiB", "rule headroom", "rule covers",
         "rule holds all"),
        [(r["set"], str(m["n_shards"]), f"{m['bytes_used'] / MiB:.2f}",
          f"{m['capacity_needed'] / MiB:.2f}",
          f"{m['capacity_needed_over_bytes_used_median']:.3f}",
          f"{m['capacity_needed_over_bytes_used']:.3f}",
          f"{m['segment_size'] / MiB:.2f}", f"{m['fixed_overhead'] / MiB:.2f}",
          f"{m['rule']['headroom']:.3f}",
          f"{m['rule']['covers_samples']}/{len(m['capacity_needed_samples'])}",
          "yes" if m["rule"]["holds_all"] else "NO")
         for r in rows for m in [r["metis"]]],
    )  # fmt: skip
    print(
        f"\nsame memory budget, {OVERLOAD:g} x what it holds loaded: items kept (payload kept / "
        "budget); memory each one used (metis segment, redis used_memory, memcached slab pages "
        "+ hash table); metis frag = Stats.fragmentation after the churn:\n"
    )
    print_table(
        ("set", "budget MiB", "loaded", "metis held", "redis held", "memcached held",
         "metis MiB", "redis MiB", "memcached MiB", "metis frag"),
        [(r["set"], f"{r['metis']['budget']['segment_budget'] / MiB:.0f}",
          f"{r['metis']['budget']['loaded']:,}",
          *(f"{b['items_held']:,} ({100 * b['payload_held_over_budget']:.0f}%)" for b in bs),
          *(f"{b['memory'] / MiB:.1f}" for b in bs),
          f"{r['metis']['budget']['fragmentation']:.3f}")
         for r in rows
         for bs in [(r["metis"]["budget"], r["redis"]["budget"], r["memcached"]["budget"])]],
    )  # fmt: skip


def plot(report: dict[str, Any], path: Path) -> None:
    """Memory per byte of key + value, per data set and store, as a PNG."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install metis-shm[plot]") from None
    rows = report["rows"]
    series = {
        "Metis segment (capacity that holds the set)": [
            r["metis"]["segment_size"] / r["payload"] for r in rows
        ],
        "Metis items (bytes_used)": [r["metis"]["bytes_used"] / r["payload"] for r in rows],
        "Redis used_memory": [r["redis"]["memory"] / r["payload"] for r in rows],
        "memcached slab pages + hash table": [
            r["memcached"]["memory"] / r["payload"] for r in rows
        ],
    }
    fig = Figure(figsize=(9.0, 4.8))
    ax = fig.subplots()
    xs = range(len(rows))
    for (label, ys), marker in zip(series.items(), "osD^", strict=True):
        ax.plot(xs, ys, marker=marker, label=label)
    ax.axhline(1.0, color="grey", linestyle="dashed", linewidth=1, label="key + value only")
    ax.set_xticks(list(xs), labels=[r["set"] for r in rows])
    ax.set_xlabel(f"value size ({KEY_LEN}-byte keys)")
    ax.set_ylabel("memory / (key + value bytes)")
    ax.set_ylim(bottom=0.9)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title("Memory per byte stored: Metis, Redis, memcached")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
