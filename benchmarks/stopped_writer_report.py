"""What bench_stopped_writer makes of the repeats: a row per scenario and
value size, the target's verdict, the tables, and the problems that make it
exit 1."""

from __future__ import annotations

import statistics
from typing import Any

from _common import fmt_size, print_table
from stopped_writer_scenarios import LABELS, SIZES, STATS, STOPPED, TARGET_US


def combine(scenario: str, size: int, reps: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over repeats of each statistic, and the worst max."""
    row: dict[str, Any] = {"scenario": scenario, "label": LABELS[scenario], "size": size}
    for field in STATS:  # all gets, at the top level of the row
        row[field] = statistics.median(r["all"][field] for r in reps)
    row["worst_max_us"] = max(r["all"]["max_us"] for r in reps)
    row["maxes_us"] = [r["all"]["max_us"] for r in reps]
    for part in ("unpreempted", "written_key", "other_keys"):
        row[part] = {f: statistics.median(r[part][f] for r in reps) for f in STATS}
        row[part]["worst_max_us"] = max(r[part]["max_us"] for r in reps)
        row[part]["maxes_us"] = [r[part]["max_us"] for r in reps]
    row["unpreempted"]["kept"] = statistics.median(
        r["unpreempted"]["gets"] / r["all"]["gets"] for r in reps
    )
    for field in ("read_retries", "preemptions", "preempted_chunks", "chunks"):
        row[field] = statistics.median(r[field] for r in reps)
    row["read_retries_each"] = [r["read_retries"] for r in reps]
    row["written_key_values"] = {
        k: sum(r["written_key_values"][k] for r in reps) for k in ("old", "new", "writer")
    }
    row["bad_reads"] = [b for r in reps for b in r["bad_reads"]]
    row["bad_read_count"] = sum(r["written_key_values"]["bad"] for r in reps)
    row["timer_overhead_ns"] = statistics.median(r["overhead"]["median_ns"] for r in reps)
    row["timer_p99_ns"] = statistics.median(r["overhead"]["p99_ns"] for r in reps)
    row["timer_p999_ns"] = statistics.median(r["overhead"]["p999_ns"] for r in reps)
    if scenario in STOPPED:
        row["writer_stopped_throughout"] = all(r["writer_stopped_throughout"] for r in reps)
        row["gets_while_stopped"] = min(r["all"]["gets"] for r in reps)
        row["lock_held"] = [r["lock_held"] for r in reps]
    if scenario == "stopped-writer":
        row["new_value_visible"] = all(r["new_value_visible"] for r in reps)
    if scenario in ("running-writer", "random-stop"):
        row["writer_sets"] = statistics.median(r["writer_sets"] for r in reps)
    row["repeats"] = reps
    return row


def judge(rows: list[dict[str, Any]], part: str) -> dict[str, Any]:
    """Ratios to the baseline, and the target per size (see the module docstring).

    ``part`` is ``"all"`` (every get; the figures at the top level of a row)
    or ``"unpreempted"`` (``row["unpreempted"]``); the ratios and verdicts
    are written next to the figures they are about.
    """

    def figures(row: dict[str, Any]) -> dict[str, Any]:
        return row if part == "all" else row[part]

    verdict: dict[str, Any] = {"threshold_us": TARGET_US, "sizes": {}}
    for size in SIZES:
        at = {r["scenario"]: r for r in rows if r["size"] == size}
        base = figures(at["no-writer"])
        noise = max(base["maxes_us"]) - min(base["maxes_us"])
        for r in at.values():
            f = figures(r)
            f["max_ratio"] = f["max_us"] / base["max_us"] if base["max_us"] else None
            f["p99_ratio"] = f["p99_us"] / base["p99_us"] if base["p99_us"] else None
            f["max_excess_us"] = f["max_us"] - base["max_us"]
            f["within_noise"] = f["max_excess_us"] <= noise
            f["under_target"] = f["worst_max_us"] < TARGET_US
            f["target_met"] = f["within_noise"] and f["under_target"]
        stopped = figures(at["stopped-writer"])
        verdict["sizes"][fmt_size(size)] = {
            "baseline_max_us": base["max_us"],
            "baseline_worst_max_us": base["worst_max_us"],
            "noise_us": noise,
            "baseline_under_target": base["under_target"],
            "stopped_max_us": stopped["max_us"],
            "stopped_worst_max_us": stopped["worst_max_us"],
            "under_target": stopped["under_target"],
            "within_noise": stopped["within_noise"],
            "holds": stopped["target_met"],
        }
    verdict["holds"] = all(v["holds"] for v in verdict["sizes"].values())
    return verdict


def us(x: float | None) -> str:
    """Microseconds in a table cell: 2 decimals under 10, 1 above, ``-`` for none."""
    return "-" if x is None else f"{x:.2f}" if x < 10 else f"{x:.1f}"


def ratio(x: float | None) -> str:
    """A ratio to the baseline in a table cell, ``-`` for none."""
    return "-" if x is None else f"{x:.2f}x"


def size_cell(row: dict[str, Any]) -> str:
    """The value size of a row in a table cell."""
    # The empty bracket reads no value: its size is that of the pass it ran in.
    return fmt_size(row["size"])


def target_cell(row: dict[str, Any], f: dict[str, Any]) -> str:
    """``met`` or ``missed`` for a stopped writer's row (figures ``f``), else empty."""
    if row["scenario"] not in STOPPED:
        return ""
    return "met" if f["target_met"] else "missed"


def print_rows(rows: list[dict[str, Any]]) -> None:
    """The main table: every get of every row, against the baseline."""
    header = (
        "scenario",
        "size",
        "gets",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "max us",
        "worst max us",
        "retries",
        "preempt",
        "max/base",
        "p99/base",
        "target",
    )
    lines = [
        (
            r["label"],
            size_cell(r),
            f"{r['gets']:,.0f}",
            us(r["p50_us"]),
            us(r["p99_us"]),
            us(r["p999_us"]),
            us(r["max_us"]),
            us(r["worst_max_us"]),
            f"{r['read_retries']:,.0f}",
            f"{r['preemptions']:,.0f}",
            ratio(r["max_ratio"]),
            ratio(r["p99_ratio"]),
            target_cell(r, r),
        )
        for r in rows
    ]
    print_table(header, lines, left=1)


def print_unpreempted(rows: list[dict[str, Any]]) -> None:
    """The same without the chunks of gets in which the kernel preempted the reader."""
    header = (
        "scenario",
        "size",
        "gets kept",
        "p99 us",
        "p99.9 us",
        "max us",
        "worst max us",
        "max/base",
        "target",
    )
    lines = []
    for r in rows:
        u = r["unpreempted"]
        lines.append(
            (
                r["label"],
                size_cell(r),
                f"{100 * u['kept']:.1f}%",
                us(u["p99_us"]),
                us(u["p999_us"]),
                us(u["max_us"]),
                us(u["worst_max_us"]),
                ratio(u["max_ratio"]),
                target_cell(r, u),
            )
        )
    print_table(header, lines, left=1)


def print_written_key(rows: list[dict[str, Any]]) -> None:
    """The gets of the written key only, and which values they read."""
    header = ("scenario", "size", "gets", "p50 us", "p99 us", "max us", "old", "new", "writer's")
    lines = []
    for r in rows:
        if r["scenario"] == "timer-only":
            continue
        w, v = r["written_key"], r["written_key_values"]
        lines.append(
            (
                r["label"],
                size_cell(r),
                f"{w['gets']:,.0f}",
                us(w["p50_us"]),
                us(w["p99_us"]),
                us(w["worst_max_us"]),
                f"{v['old']:,}",
                f"{v['new']:,}",
                f"{v['writer']:,}",
            )
        )
    print_table(header, lines, left=1)


def print_verdict(title: str, verdict: dict[str, Any]) -> None:
    """The target's verdict per value size (from ``judge``), under ``title``."""
    print(f"target, {title}:")
    for size_name, v in verdict["sizes"].items():
        line = (
            f"  {size_name:>6}: worst max {v['stopped_worst_max_us']:.1f} us"
            f" ({'under' if v['under_target'] else 'NOT under'} {TARGET_US:g});"
            f" median max {v['stopped_max_us']:.1f} us against {v['baseline_max_us']:.1f} us"
            f" with no writer, noise {v['noise_us']:.1f} us"
            f" ({'within' if v['within_noise'] else 'NOT within'} noise)"
            f" -> {'met' if v['holds'] else 'missed'}"
        )
        if not v["baseline_under_target"]:
            line += (
                f"; with no writer the reader too reached {v['baseline_worst_max_us']:.1f} us:"
                f" this machine's noise exceeds {TARGET_US:g} us"
            )
        print(line)
    print(f"  -> the target {'holds' if verdict['holds'] else 'does not hold'} on this run")


def find_problems(rows: list[dict[str, Any]]) -> list[str]:
    """Wrong values read, or a stopped writer that ran or whose write was lost."""
    problems = []
    for r in rows:
        where = f"{r['label']} {fmt_size(r['size'])}"
        if r["bad_read_count"]:
            problems.append(f"{where}: {r['bad_read_count']} bad reads, e.g. {r['bad_reads']}")
        if r["scenario"] in STOPPED and not r["writer_stopped_throughout"]:
            problems.append(f"{where}: the writer ran during the window")
        if r["scenario"] == "stopped-writer":
            if not r["new_value_visible"]:
                problems.append(f"{where}: the new value was not visible after SIGCONT")
            if r["written_key_values"]["new"]:
                problems.append(f"{where}: the unpublished value was read")
    return problems
