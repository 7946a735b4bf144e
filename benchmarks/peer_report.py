"""How bench_peers.py shows its results: the terminal table, the issue's
acceptance checks, markdown tables for the docs and the chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _common import fmt_size, print_table

# (what, workload, value size, processes, peer, Metis must be at least this many times faster)
TARGETS = (
    ("get-hit 100 B: Metis >= 3x lmdb (reused read txn)", "get-hit", 100, 1, "lmdb", 3.0),
    ("get-hit 100 B: Metis >= 2x UltraDict", "get-hit", 100, 1, "ultradict", 2.0),
    ("get-hit 100 B: Metis >= 25x diskcache", "get-hit", 100, 1, "diskcache", 25.0),
    ("get-hit 100 B: Metis >= 200x Redis (unix socket)", "get-hit", 100, 1, "redis-unix", 200.0),
    ("set 100 B: Metis >= 8x lmdb", "set", 100, 1, "lmdb", 8.0),
    ("mix 100 B, 2 processes: Metis throughput >= 4x lmdb", "mix", 100, 2, "lmdb", 4.0),
)
PER_PROCESS_TAG = "per-process, not shared"


def flags(row: dict[str, Any]) -> str:
    """What went wrong in a row, spelled out; empty when every read was right."""
    out = []
    if row["bad_reads"]:
        kinds = ", ".join(
            f"{n} {k}" for k, n in sorted(row["read_problems"].items()) if k != "missing" and n
        )
        out.append(f"WRONG: {row['bad_reads']} bad reads ({kinds})")
    if row["lost_updates"]:
        out.append(f"LOST: {row['lost_updates']} updates")
    if row["missing_reads"]:
        out.append(f"MISSING: {row['missing_reads']} reads")
    return "; ".join(out)


def ratio_text(x: float | None) -> str:
    """``230.4`` -> ``"230x"``, ``2.34`` -> ``"2.3x"``, ``0.5`` -> ``"0.50x"``."""
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:,.0f}x"
    if x >= 1:
        return f"{x:.1f}x"
    return f"{x:.2f}x"


def print_rows(rows: list[dict[str, Any]]) -> None:
    """One block per workload, size and process count; one line per peer."""
    header = ("peer", "sharing", "ns/op", "ops/s", "Metis is", "correctness")
    blocks: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for r in rows:
        blocks.setdefault((r["workload"], r["size"], r["procs"]), []).append(r)
    for (workload, size, procs), block in blocks.items():
        print()
        print(f"{workload}, {fmt_size(size)}, {procs} process{'es' if procs > 1 else ''}:")
        lines = [
            (
                r["label"],
                "shared" if r["shared"] else PER_PROCESS_TAG,
                f"{r['ns_per_op']:,.0f}",
                f"{r['ops_per_s']:,.0f}",
                "-" if r["peer"] == "metis" else _faster(r["metis_x"]),
                flags(r) or "ok",
            )
            for r in block
        ]
        print_table(header, lines, left=2)


def _faster(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{ratio_text(x)} faster" if x >= 1 else f"{ratio_text(1 / x)} slower"


def acceptance_checks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, evaluated on these rows (``"not run"`` if a peer was left out)."""
    by = {(r["peer"], r["workload"], r["size"], r["procs"]): r for r in rows}
    out = []
    for what, workload, size, procs, peer, target in TARGETS:
        row, metis = by.get((peer, workload, size, procs)), by.get(("metis", workload, size, procs))
        if row is None or metis is None:
            out.append({"check": what, "target": target, "measured": None, "result": "not run"})
            continue
        measured = metis["ops_per_s"] / row["ops_per_s"]
        ok = measured >= target and not (metis["bad_reads"] or metis["lost_updates"])
        out.append(
            {
                "check": what,
                "target": target,
                "measured": measured,
                "metis_ns": metis["ns_per_op"],
                "peer_ns": row["ns_per_op"],
                "metis_ops_per_s": metis["ops_per_s"],
                "peer_ops_per_s": row["ops_per_s"],
                "result": "pass" if ok else "miss",
            }
        )
    return out


def print_checks(checks: list[dict[str, Any]]) -> None:
    """The acceptance checks, one line each."""
    print("acceptance checks:")
    for c in checks:
        got = "-" if c["measured"] is None else ratio_text(c["measured"])
        print(f"  {c['result']:>7}  {c['check']}: measured {got}")


def write_markdown(result: dict[str, Any], path: Path) -> None:
    """The results section of docs/benchmarks.md, from one run: machine, tables, checks."""
    rows = result["rows"]
    by = {(r["peer"], r["workload"], r["size"], r["procs"]): r for r in rows}
    peers = list(result["peers"])
    m = result["machine"]
    load = m["loadavg_1m_during"]
    libs = ", ".join(
        f"{k} {v}"
        for k, v in sorted(m["libraries"].items(), key=lambda kv: kv[0].lower())
        if k != "metis-shm"
    )
    servers = ", ".join(_server_version(v) for v in result["versions"].values() if v)
    out: list[str] = [
        f"Run of {result['created'][:10]}: {m['cpu_model']} ({m['machine']}), "
        f"{m['cpu_count']} CPUs, Linux {m['kernel']}, Python {m['python']}; "
        f"metis-shm {m['metis_shm_version']}, {libs}; {servers}.",
        "",
        f"1-minute load average during the run: {load['min']:.1f} to {load['max']:.1f} "
        f"(median {load['median']:.1f}) on {m['cpu_count']} CPUs; the run took "
        f"{result['elapsed_s'] / 60:.1f} minutes.",
        "",
        "```",
        result["command"],
        "```",
        "",
        "What the value check costs Metis (get-hit, 1 process):",
        "",
        "| value size | checked ns/op | unchecked ns/op |",
        "|---|---:|---:|",
    ]
    for size, c in result["check_cost"].items():
        out.append(f"| {size} | {c['checked_ns']:,.0f} | {c['unchecked_ns']:,.0f} |")
    out.append("")
    for size in result["config"]["sizes"]:
        out += [
            f"### {fmt_size(size)} values, 1 process: ns per operation (Metis is N times faster)",
            "",
            "| peer | get-hit | get-miss | set | mix 90/10 | correctness |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for p in peers:
            cells = [by.get((p, w, size, 1)) for w in ("get-hit", "get-miss", "set", "mix")]
            out.append(_md_line(result, p, cells, per_op=True))
        out += [
            "",
            f"### {fmt_size(size)} values, all processes together: operations per second",
            "",
            "| peer | get-hit x2 | get-hit x4 | set x2 | set x4 | mix x2 | mix x4 | correctness |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for p in peers:
            cells = [by.get((p, w, size, n)) for w in ("get-hit", "set", "mix") for n in (2, 4)]
            out.append(_md_line(result, p, cells, per_op=False))
        out.append("")
    out += ["### Acceptance checks", "", "| check | measured | result |", "|---|---:|---|"]
    for c in result["acceptance"]:
        got = "-" if c["measured"] is None else ratio_text(c["measured"])
        out.append(f"| {c['check']} | {got} | {c['result']} |")
    path.write_text("\n".join(out) + "\n")


def _server_version(line: str) -> str:
    """``Redis server v=7.0.15 sha=...`` -> ``Redis server 7.0.15``; others as they are."""
    words = line.split()
    return " ".join(w.removeprefix("v=") for w in words if "=" not in w or w.startswith("v="))


def _md_line(
    result: dict[str, Any], peer: str, cells: list[dict[str, Any] | None], per_op: bool
) -> str:
    info = result["peers"][peer]
    name = info["label"] + ("" if info["shared"] else f" ({PER_PROCESS_TAG})")
    texts, problems = [], []
    for r in cells:
        if r is None:
            texts.append("-")
            continue
        number = f"{r['ns_per_op']:,.0f}" if per_op else f"{r['ops_per_s']:,.0f}"
        if r["peer"] != "metis":
            number += f" ({ratio_text(r['metis_x'])})"
        texts.append(number)
        f = flags(r)
        if f:
            problems.append(f"{r['workload']} x{r['procs']}: {f}")
    return f"| {name} | " + " | ".join(texts) + f" | {'; '.join(problems) or 'ok'} |"


def write_chart(result: dict[str, Any], path: Path) -> None:
    """Horizontal bars of ops/s on a log scale: one panel per value size."""
    from matplotlib.figure import Figure

    rows = result["rows"]
    by = {(r["peer"], r["workload"], r["size"], r["procs"]): r for r in rows}
    peers = list(result["peers"])
    series = [
        ("get-hit", 1),
        ("get-miss", 1),
        ("set", 1),
        ("mix", 1),
        ("mix", 2),
        ("mix", 4),
    ]
    sizes = result["config"]["sizes"]
    fig = Figure(figsize=(11.0, 1.5 + 0.62 * len(peers) * len(sizes)), layout="constrained")
    axes = fig.subplots(len(sizes), 1, squeeze=False)[:, 0]
    height = 0.8 / len(series)
    for ax, size in zip(axes, sizes, strict=True):
        for s, (workload, procs) in enumerate(series):
            ys, xs = [], []
            for i, p in enumerate(peers):
                r = by.get((p, workload, size, procs))
                if r is not None:
                    ys.append(i + (s - (len(series) - 1) / 2) * height)
                    xs.append(r["ops_per_s"])
            label = f"{workload}, {procs} proc{'s' if procs > 1 else ''}"
            ax.barh(ys, xs, height=height, label=label)
        names = []
        for p in peers:
            info = result["peers"][p]
            bad = [r for r in rows if r["peer"] == p and r["size"] == size and flags(r)]
            names.append(
                info["label"]
                + ("" if info["shared"] else "\n(per-process, not shared)")
                + ("\n" + _short_flags(bad) if bad else "")
            )
        ax.set_yticks(range(len(peers)), names, fontsize=7)
        for tick, p in zip(ax.get_yticklabels(), peers, strict=True):
            if any(r["peer"] == p and r["size"] == size and flags(r) for r in rows):
                tick.set_color("crimson")
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("operations per second, all processes together (log scale)")
        ax.set_title(f"{fmt_size(size)} values", fontsize=10)
        ax.grid(axis="x", which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(series), fontsize=8)
    machine = result["machine"]
    fig.suptitle(
        f"bench_peers.py: {machine.get('cpu_model') or machine['machine']}, "
        f"{machine['cpu_count']} CPUs, Python {machine['python']}",
        fontsize=10,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def _short_flags(rows: list[dict[str, Any]]) -> str:
    bad = sum(r["bad_reads"] for r in rows)
    lost = sum(r["lost_updates"] for r in rows)
    parts = [f"WRONG: {bad} bad reads"] if bad else []
    parts += [f"LOST: {lost} updates"] if lost else []
    return ", ".join(parts) or "MISSING reads"
