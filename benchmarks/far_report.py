"""bench_far's arithmetic and output: one row per configuration from its
workers' results and the counters read around the run, the ratios to plain
redis-py, the issue's three targets, and the tables."""

from __future__ import annotations

import statistics
from typing import Any

from _common import fmt_size, print_table

LABELS = {
    "redis": "redis-py GET",
    "redis-csc": "redis-py client-side cache",
    "metis": "Metis near tier",
}
MiB = 1 << 20
TARGET_THROUGHPUT_X = 20.0
TARGET_NEAR_HIT_X = 1.2


def percentile(sorted_values: list[int], q: float) -> float:
    """Nearest-rank q-quantile (0..1) of an already sorted list; nan if empty."""
    if not sorted_values:
        return float("nan")
    return float(sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))])


def _lat(values: list[int]) -> dict[str, float]:
    s = sorted(values)
    us = {f"p{k}": percentile(s, q) / 1000 for k, q in (("50", 0.5), ("99", 0.99), ("999", 0.999))}
    return {**us, "samples": len(s)}


def make_row(
    contender: str,
    size: int,
    results: list[dict[str, Any]],
    redis_before: dict[str, int],
    redis_after: dict[str, int],
    wall_s: float,
    segments: list[dict[str, int]],
    near: dict[str, Any] | None,
) -> dict[str, Any]:
    """The row of one configuration."""
    start = min(r["start_ns"] for r in results)
    end = max(r["end_ns"] for r in results)
    ops = sum(r["ops"] for r in results)
    reads = sum(r["reads"] for r in results)
    gets = redis_after["get_calls"] - redis_before["get_calls"]
    commands = redis_after["commands"] - redis_before["commands"]
    read_ns = [x for r in results for x in r["read_ns"]]
    write_ns = [x for r in results for x in r["write_ns"]]
    seg_alloc = sum(s["allocated"] for s in segments)
    uss_end = sum(r["uss_end_private"] for r in results)
    grown = sum(r["uss_end_private"] - r["uss_base_private"] - r["sample_bytes"] for r in results)
    if contender == "redis-csc":
        entries = sum(r["csc_entries"] or 0 for r in results)
    elif near is not None:
        entries = near["items"]
    else:
        entries = 0
    return {
        "contender": contender,
        "label": LABELS[contender],
        "size": size,
        "procs": len(results),
        "duration_s": (end - start) / 1e9,
        "ops": ops,
        "reads": reads,
        "writes": ops - reads,
        "ops_per_s": ops * 1e9 / (end - start),
        "latency_us": _lat(read_ns + write_ns),
        "read_latency_us": _lat(read_ns),
        "write_latency_us": _lat(write_ns),
        "redis_gets": gets,
        "local_hit_ratio": 1.0 - gets / reads if reads else 0.0,
        "redis_commands": commands,
        "redis_commands_per_s": commands / wall_s,
        "redis_wall_s": wall_s,
        "client_memory": uss_end + seg_alloc,
        "cache_memory": grown + seg_alloc,
        "workers_uss": sum(r["uss_end"] for r in results),
        "workers_uss_private": uss_end,
        "workers_uss_growth": grown,
        "segments": segments,
        "entries_held": entries,
        "missing_reads": sum(r["missing"] for r in results),
        "wrong_reads": sum(r["wrong"] for r in results),
        "near": near,
    }


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """``x_redis``: the row's throughput over plain redis-py's, same size."""
    base = {r["size"]: r["ops_per_s"] for r in rows if r["contender"] == "redis"}
    for r in rows:
        b = base.get(r["size"])
        r["x_redis"] = r["ops_per_s"] / b if b else None
        r["commands_x_redis"] = None
        for x in rows:
            if x["size"] == r["size"] and x["contender"] == "redis" and x["redis_commands_per_s"]:
                r["commands_x_redis"] = r["redis_commands_per_s"] / x["redis_commands_per_s"]


def targets(rows: list[dict[str, Any]], near_hit: dict[int, dict[str, Any]]) -> list[dict]:
    """The issue's targets, per value size: met or not (never asserted)."""
    by = {(r["contender"], r["size"]): r for r in rows}
    out = []
    for size in sorted({r["size"] for r in rows}):
        metis, csc = by.get(("metis", size)), by.get(("redis-csc", size))
        if metis and metis.get("x_redis") is not None:
            x, miss = metis["x_redis"], 1.0 - metis["local_hit_ratio"]
            # Each miss costs about a GET: the speed-up is bounded near 1 / miss ratio.
            bound = f"; 1 / miss ratio = {1 / miss:.1f}x" if miss > 0 else ""
            out.append(
                _target(
                    size,
                    f">= {TARGET_THROUGHPUT_X:g}x plain redis-py throughput",
                    f"{x:.1f}x{bound}",
                    x >= TARGET_THROUGHPUT_X,
                )
            )
        if metis and csc:
            a, b = metis["local_hit_ratio"], csc["local_hit_ratio"]
            out.append(
                _target(
                    size,
                    "near hit ratio above redis-py's client-side cache",
                    f"{a:.1%} vs {b:.1%}",
                    a > b,
                )
            )
        lat = near_hit.get(size, {}).get("fresh")
        if lat:
            x = lat["ratio"]
            what = f"near hit within {TARGET_NEAR_HIT_X:g}x a local Metis hit"
            got = f"{x:.2f}x ({lat['near_ns']:.0f} vs {lat['local_ns']:.0f} ns)"
            out.append(_target(size, what, got, x <= TARGET_NEAR_HIT_X))
    return out


def _target(size: int, what: str, measured: str, met: bool) -> dict[str, Any]:
    return {"size": size, "target": what, "measured": measured, "met": met}


def print_rows(rows: list[dict[str, Any]]) -> None:
    """The main table: one line per value size and contender."""
    header = [
        "size",
        "contender",
        "ops/s",
        "x redis",
        "p50 us",
        "p99 us",
        "local hits",
        "Redis cmd/s",
        "client MiB",
        "cache MiB",
        "entries",
    ]
    lines = []
    for r in rows:
        lat = r["latency_us"]
        lines.append(
            [
                fmt_size(r["size"]),
                r["label"],
                f"{r['ops_per_s']:,.0f}",
                f"{r['x_redis']:.2f}x" if r["x_redis"] is not None else "-",
                f"{lat['p50']:.1f}",
                f"{lat['p99']:.1f}",
                f"{r['local_hit_ratio']:.1%}",
                f"{r['redis_commands_per_s']:,.0f}",
                f"{r['client_memory'] / MiB:.1f}",
                f"{r['cache_memory'] / MiB:.1f}",
                f"{r['entries_held']:,}",
            ]
        )
    print_table(header, lines, left=2)


def print_details(rows: list[dict[str, Any]]) -> None:
    """Read and write latencies apart, and what the near tier counted."""
    header = [
        "size",
        "contender",
        "read p50",
        "read p99",
        "read p99.9",
        "write p50",
        "write p99",
        "samples",
        "missing",
        "wrong",
    ]
    lines = []
    for r in rows:
        rl, wl = r["read_latency_us"], r["write_latency_us"]
        lines.append(
            [
                fmt_size(r["size"]),
                r["label"],
                f"{rl['p50']:.1f}",
                f"{rl['p99']:.1f}",
                f"{rl['p999']:.1f}",
                f"{wl['p50']:.1f}",
                f"{wl['p99']:.1f}",
                f"{rl['samples'] + wl['samples']:,}",
                f"{r['missing_reads']:,}",
                f"{r['wrong_reads']:,}",
            ]
        )
    print("latency in us (sampled blocks), reads and writes apart:")
    print_table(header, lines, left=2)
    for r in rows:
        n = r["near"]
        if n:
            print(
                f"Metis {fmt_size(r['size'])}: {n['far_fetches']:,} Redis fetches for "
                f"{r['reads']:,} reads, {n['single_flight_waits']:,} misses waited for another "
                f"process's fetch, {n['fills']:,} fills ({n['fills_dropped']:,} dropped by a "
                f"racing invalidation), {n['invalidations']:,} invalidations applied; "
                f"each metisd {statistics.fmean(x['metisd_uss'] for x in r['segments']) / MiB:.1f}"
                " MiB USS (not in the table)"
            )


def print_near_hit(near_hit: dict[int, dict[str, Any]]) -> None:
    """NearCache hit against a plain local Cache hit, same process, both fresh and
    both after a run (the local one replayed the same keys)."""
    header = ["size", "caches", "NearCache hit ns", "local Cache hit ns", "ratio", "keys"]
    lines = []
    for s, pair in sorted(near_hit.items()):
        for when, label in (("fresh", "fresh"), ("after_run", "after the run / a replay")):
            x = pair[when]
            lines.append(
                [
                    fmt_size(s),
                    label,
                    f"{x['near_ns']:.0f}",
                    f"{x['local_ns']:.0f}",
                    f"{x['ratio']:.2f}x",
                    f"{x['keys']:,}",
                ]
            )
    print(
        "near-hit latency (one process, tight loop over the hottest keys; medians of "
        f"{len(pair['fresh']['near_rounds'])} rounds, ratio the median of paired rounds):"
    )
    print_table(header, lines, left=2)


def print_targets(checks: list[dict[str, Any]]) -> None:
    print("targets (issue 12; printed, not asserted):")
    for c in checks:
        verdict = "met" if c["met"] else "NOT met"
        print(f"  {fmt_size(c['size']):>6}  {c['target']}: {c['measured']} -> {verdict}")
