"""Metis side by side with the caches users pick instead, every read checked.

What it measures
    The workloads of ``bench_ops.py`` (get-hit, get-miss, set, and a 90/10
    get/set mix over a Zipf(0.99) key sequence; 100 B and 4 KiB values) in 1, 2
    and 4 processes, against: Metis; Redis over a unix socket and over loopback
    TCP (redis-py with hiredis); memcached over a unix socket and loopback TCP
    (pymemcache); diskcache; lmdb (one reused read transaction for gets, one
    write transaction per set, fsync off); UltraDict (default RLock with forked
    workers, and ``shared_lock=True``); shared-memory-dict;
    ``multiprocessing.Manager().dict()``; and the per-process caches
    cachetools, cachebox and theine, which are not shared: with N processes
    each holds its own copy. Redis and memcached are started by this script
    (``peer_servers.py``), persistence off; files and segments live in a
    temporary directory on tmpfs when there is one.

Method
    Each cell (peer x workload x size x processes) forks fresh workers. They
    warm up together for ``--warm-ms``, size a round from that to last about
    ``--round-ms``, then run ``--rounds`` rounds, each started together at a
    barrier. A cell reports the median over rounds of the per-process ns/op
    and of the total ops/s of all processes (first start to last end).

Correctness
    Every value is self-describing (``peer_values.py``: key, writer, sequence,
    CRC). Every read in every timed loop is compared with the value it must
    be (a bytes ``!=``, the same cost for every peer); a mismatch is diagnosed
    as torn, foreign (another key's), stale (older than one already seen or
    written) or phantom. Writers write disjoint keys; after the last round
    each writer reads back every key it wrote, and one that does not hold its
    last value is a lost update. Wrong reads and lost updates are reported
    in the table, never dropped.

    python benchmarks/bench_peers.py [--quick] [--peers metis,lmdb] [--json PATH] [--png PATH]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import SET_FRACTION, ZIPF_S, KeySequence, fmt_size, machine_info, run_forked
from peer_report import acceptance_checks, print_checks, print_rows, write_chart, write_markdown
from peer_servers import ServerError, find_binary
from peer_values import FILL_WRITER, MISSING, ReadChecker, lost_updates, make_value
from peers import Peer, all_peers

try:
    import metis_shm  # noqa: F401
except ImportError:  # run from a checkout, not installed: use the in-place build
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORKLOADS = ("get-hit", "get-miss", "set", "mix")
SIZES = (100, 4096)
PROCS = (1, 2, 4)
QUICK_PROCS = (1, 2)  # 4 processes on a busy 2-CPU test machine only add waiting
RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_JSON = RESULTS / "peers.json"
DEFAULT_PNG = RESULTS / "peers.png"
WORKER_TIMEOUT_S = 300.0


# --------------------------------------------------------------------------- inputs


class PeerInputs(KeySequence):
    """The key sequence plus, per value size, the fill and what each key holds now.

    ``states[peer]`` is what every key of a shared peer must hold between
    cells: the fill, then the last value each cell's writers wrote (a
    per-process peer's workers always start from the fill). Inherited by the
    forked workers.
    """

    def __init__(self, n_keys: int, n_ops: int, seed: int) -> None:
        super().__init__(n_keys, n_ops, seed)
        self.keys_b = [k.encode() for k in self.keys]
        self.miss_keys_b = [k.encode() for k in self.miss_keys]
        self.size = 0
        self.fill: list[bytes] = []
        self.states: dict[str, list[bytes]] = {}

    def set_size(self, size: int, peers: list[Peer]) -> None:
        """Make the fill values of ``size`` bytes (writer FILL_WRITER, sequence 0)."""
        self.size = size
        self.fill = [make_value(i, FILL_WRITER, 0, size) for i in range(self.n_keys)]
        self.states = {p.name: list(self.fill) for p in peers}

    def key_list(self, peer: Peer, absent: bool = False) -> list[Any]:
        """The keys as ``peer`` takes them (lmdb takes bytes)."""
        if peer.bytes_keys:
            return self.miss_keys_b if absent else self.keys_b
        return self.miss_keys if absent else self.keys


PEER: Peer | None = None  # the peer under test; set before forking
INPUTS: PeerInputs | None = None


@dataclass(frozen=True)
class CellSpec:
    """One measurement: a workload on one peer with ``procs`` processes."""

    workload: str
    size: int
    procs: int
    seq: int  # the writers' sequence number in this cell: unique per cell
    rounds: int
    round_ns: int
    warm_ns: int


def owned_key(rank: int, procs: int, index: int) -> int:
    """The key of process ``index`` nearest to key ``rank``: writers never share a key.

    Keys are dealt round-robin (key j belongs to process j % procs), so each
    writer's keys are as hot in the Zipf sequence as anyone's.
    """
    return rank - rank % procs + index


# --------------------------------------------------------------------------- timed loops


def loop_get_hit(get: Callable[[Any], Any], items: Iterable[Any], check: ReadChecker) -> None:
    for k, e in items:
        r = get(k)
        if r != e:
            check.hit(k, r, check.unwrap(e))


def loop_get_plain(get: Callable[[Any], Any], items: Iterable[Any], check: ReadChecker) -> None:
    """get-hit without looking at the value: only to measure what the check costs."""
    for k, _ in items:
        get(k)


def loop_get_miss(
    get: Callable[[Any], Any], items: Iterable[Any], check: ReadChecker, missing: Any
) -> None:
    for k in items:
        r = get(k)
        if r != missing:
            check.phantom(k, r)


def loop_set(set_: Callable[[Any, bytes], Any], items: Iterable[Any]) -> None:
    for k, v in items:
        set_(k, v)


def loop_mix(
    get: Callable[[Any], Any],
    set_: Callable[[Any, bytes], Any],
    items: Iterable[Any],
    check: ReadChecker,
    last: dict[Any, Any],
    new: dict[Any, Any],
) -> None:
    for k, v, found in items:
        if v is None:
            r = get(k)
            if r != last[k]:
                check.mix_read(k, r, last, new)
        else:
            set_(k, v)
            last[k] = found


# --------------------------------------------------------------------------- worker


def cell_worker(index: int, barrier: Any, spec: CellSpec) -> dict[str, Any]:
    """Forked worker: open the peer, warm up, run the timed rounds, check what it wrote."""
    peer, inp = PEER, INPUTS
    assert peer is not None and inp is not None
    keys, state = inp.key_list(peer), inp.states[peer.name]
    procs, found = spec.procs, peer.found
    fill = dict(zip(keys, inp.fill, strict=True))
    handle = peer.open(index, fill)
    check = ReadChecker(peer.unwrap)
    new_values: dict[int, bytes] = {}

    def new_value(j: int) -> bytes:
        v = new_values.get(j)
        if v is None:
            v = new_values[j] = make_value(j, 1 + j % procs, spec.seq, spec.size)
        return v

    positions = range(inp.n_ops)
    run: Callable[[Iterator[Any]], None]
    wl = spec.workload
    if wl in ("get-hit", "get-hit-unchecked"):
        ops: list[Any] = [(keys[i], found(state[i])) for i in inp.idx]
        loop = loop_get_hit if wl == "get-hit" else loop_get_plain
        run = lambda it: loop(handle.get, it, check)  # noqa: E731
    elif wl == "get-miss":
        ops = [inp.key_list(peer, absent=True)[i] for i in inp.idx]
        run = lambda it: loop_get_miss(handle.get, it, check, peer.missing)  # noqa: E731
    elif wl == "set":
        own = [owned_key(i, procs, index) for i in inp.idx]
        ops = [(keys[j], new_value(j)) for j in own]
        handle.release()
        run = lambda it: loop_set(handle.set, it)  # noqa: E731
    elif wl == "mix":
        own = [owned_key(i, procs, index) for i in inp.idx]
        ops = [
            (keys[j], new_value(j), found(new_value(j))) if s else (keys[i], None, None)
            for i, j, s in zip(inp.idx, own, inp.is_set, strict=True)
        ]
        last = {keys[j]: found(state[j]) for j in range(inp.n_keys)}
        new = {keys[j]: found(new_value(j)) for j in range(inp.n_keys)}
        mix_get, mix_set = handle.mix_get or handle.get, handle.mix_set or handle.set
        run = lambda it: loop_mix(mix_get, mix_set, it, check, last, new)  # noqa: E731
    else:
        raise ValueError(f"unknown workload {wl!r}")

    it = itertools.cycle(ops)
    done = 0
    gc.disable()
    barrier.wait(timeout=WORKER_TIMEOUT_S)
    # Warm up together, doubling the chunk until it lasts warm_ns: this also
    # measures the cost of one operation, which sizes the rounds.
    chunk, per_op, warm_start = 1, 0.0, time.perf_counter_ns()
    while True:
        t0 = time.perf_counter_ns()
        run(itertools.islice(it, chunk))
        t1 = time.perf_counter_ns()
        done += chunk
        per_op = (t1 - t0) / chunk
        if t1 - warm_start >= spec.warm_ns:
            break
        chunk *= 2
    n = max(1, round(spec.round_ns / max(per_op, 1.0)))
    spans = []
    for _ in range(spec.rounds):
        barrier.wait(timeout=WORKER_TIMEOUT_S)
        t0 = time.perf_counter_ns()
        run(itertools.islice(it, n))
        spans.append((t0, time.perf_counter_ns(), n))
        done += n
    gc.enable()

    lost, lost_examples = 0, []
    written: list[int] = []
    barrier.wait(timeout=WORKER_TIMEOUT_S)  # every writer has finished
    if wl in ("set", "mix"):
        covered = positions if done >= inp.n_ops else range(done)
        sets = (p for p in covered if wl == "set" or inp.is_set[p])
        written = sorted({owned_key(inp.idx[p], procs, index) for p in sets})
        handle.sync()
        lost, lost_examples = lost_updates(
            handle.mix_get or handle.get, {keys[j]: new_value(j) for j in written}, peer.unwrap
        )
    handle.close()
    return {
        "spans": spans,
        "ops_per_round": n,
        "reads": dict(check.counts),
        "examples": check.examples + lost_examples,
        "lost": lost,
        "written": written,
    }


# --------------------------------------------------------------------------- driver


def measure_cell(peer: Peer, spec: CellSpec) -> dict[str, Any]:
    """Fork the workers of one cell; fold their spans and checks into one row."""
    from _common import summarize_spans

    inp = INPUTS
    assert inp is not None
    results = run_forked(
        cell_worker,
        spec.procs,
        (spec,),
        timeout=WORKER_TIMEOUT_S,
        what=f"{peer.name} {spec.workload} {fmt_size(spec.size)} x{spec.procs}",
    )
    summary = summarize_spans([r["spans"] for r in results], spec.procs)
    reads: Counter[str] = Counter()
    for r in results:
        reads.update(r["reads"])
    lost = sum(r["lost"] for r in results)
    checker = ReadChecker()
    checker.merge(reads)
    if peer.shared:
        if lost or checker.bad_reads or reads[MISSING]:
            peer.fill(dict(zip(inp.key_list(peer), inp.fill, strict=True)))
            inp.states[peer.name] = list(inp.fill)
        else:
            for index, r in enumerate(results):
                for j in r["written"]:
                    inp.states[peer.name][j] = make_value(j, index + 1, spec.seq, spec.size)
    return {
        "peer": peer.name,
        "label": peer.label,
        "shared": peer.shared,
        "workload": spec.workload,
        "size": spec.size,
        "procs": spec.procs,
        "ns_per_op": summary["ns_per_op"],
        "ops_per_s": summary["ops_per_s"],
        "rounds_ns_per_op": summary["rounds_ns_per_op"],
        "ops_per_round": [r["ops_per_round"] for r in results],
        "bad_reads": checker.bad_reads,
        "missing_reads": reads[MISSING],
        "read_problems": dict(reads),
        "lost_updates": lost,
        "written_keys": sum(len(r["written"]) for r in results),
        "examples": [e for r in results for e in r["examples"]][:5],
        "loadavg_1m": os.getloadavg()[0],
    }


def run_all(
    peers: list[Peer], args: argparse.Namespace, procs: tuple[int, ...], progress: Progress
) -> list[dict[str, Any]]:
    """Every cell of every peer, all peers started for the whole run.

    The loop runs every peer through one workload before the next workload,
    so Metis and each peer are measured within seconds of each other: on a
    shared machine, load that comes and goes then hits both alike.
    """
    global PEER
    inp = INPUTS
    assert inp is not None
    rows = []
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="bp-", dir=base) as tmp, ExitStack() as stack:
        for peer in peers:
            workdir = Path(tmp) / peer.name
            workdir.mkdir()
            stack.enter_context(peer.started(workdir, inp.n_keys, max(SIZES)))
        for size in SIZES:
            inp.set_size(size, peers)
            for peer in peers:
                if peer.shared:
                    peer.fill(dict(zip(inp.key_list(peer), inp.fill, strict=True)))
            for workload in WORKLOADS:
                for n in procs:
                    for peer in peers:
                        extra = ["get-hit-unchecked"] if peer.name == "metis" else []
                        for wl in [workload] + (extra if (workload, n) == ("get-hit", 1) else []):
                            spec = CellSpec(
                                wl,
                                size,
                                n,
                                seq=progress.done + 1,
                                rounds=args.rounds,
                                round_ns=int(args.round_ms * 1e6),
                                warm_ns=int(args.warm_ms * 1e6),
                            )
                            PEER = peer
                            row = measure_cell(peer, spec)
                            rows.append(row)
                            progress.step(row)
    return rows


class Progress:
    """One line per cell on stderr, with the elapsed time."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.start = time.monotonic()

    def step(self, row: dict[str, Any]) -> None:
        """Report a finished cell."""
        self.done += 1
        flags = ""
        if row["bad_reads"]:
            flags += f"  WRONG: {row['bad_reads']} bad reads"
        if row["lost_updates"]:
            flags += f"  LOST: {row['lost_updates']} updates"
        print(
            f"[{self.done:3d}/{self.total}] {time.monotonic() - self.start:6.1f}s "
            f"{row['peer']:>22} {row['workload']:>8} {fmt_size(row['size']):>6} "
            f"x{row['procs']}: {row['ns_per_op']:12,.0f} ns/op {row['ops_per_s']:13,.0f} ops/s"
            f"{flags}",
            file=sys.stderr,
            flush=True,
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; --quick shrinks every knob it does not set."""
    names = [p.name for p in all_peers()]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny run for tests: ~2 s per peer, 1 and 2 processes"
    )
    parser.add_argument(
        "--peers", default=",".join(names), help=f"comma-separated, from: {','.join(names)}"
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, metavar="PATH")
    parser.add_argument("--png", type=Path, default=DEFAULT_PNG, metavar="PATH")
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="also write md tables")
    parser.add_argument("--keys", type=int, help="distinct keys (default 10000)")
    parser.add_argument("--ops", type=int, help="length of the key sequence (default 200000)")
    parser.add_argument("--rounds", type=int, help="timed rounds per cell (default 5)")
    parser.add_argument("--round-ms", type=float, help="length of a round (default 100)")
    parser.add_argument("--warm-ms", type=float, help="warm-up per cell (default 30)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    q = args.quick
    args.keys = args.keys or (400 if q else 10_000)
    args.ops = args.ops or (2_000 if q else 200_000)
    args.rounds = args.rounds or (2 if q else 5)
    args.round_ms = args.round_ms or (5.0 if q else 100.0)
    args.warm_ms = args.warm_ms or (2.0 if q else 30.0)
    args.procs = QUICK_PROCS if q else PROCS
    wanted = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        parser.error(f"unknown peers {unknown}; known: {names}")
    if "metis" not in wanted:
        wanted.insert(0, "metis")  # every ratio is to Metis
    args.peer_list = [p for p in all_peers() if p.name in wanted]
    if min(args.keys, args.ops, args.rounds) < 1 or args.keys % max(PROCS):
        parser.error(f"--keys, --ops, --rounds must be positive; --keys a multiple of {max(PROCS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run every cell of every peer; print the table; write JSON, PNG (and markdown)."""
    global INPUTS
    args = parse_args(argv)
    t_start = time.monotonic()
    load_before = os.getloadavg()
    INPUTS = PeerInputs(args.keys, args.ops, args.seed)
    cells = len(SIZES) * len(WORKLOADS) * len(args.procs)
    total = cells * len(args.peer_list) + len(SIZES)
    print(
        f"bench_peers: {len(args.peer_list)} peers x {cells} cells; {args.keys:,} keys, "
        f"Zipf({ZIPF_S}) sequence of {args.ops:,} ({INPUTS.distinct:,} distinct), "
        f"{args.rounds} rounds of ~{args.round_ms:g} ms per cell",
        file=sys.stderr,
    )
    rows: list[dict[str, Any]] = []
    progress = Progress(total)
    try:
        for binary in sorted({b for p in args.peer_list for b in p.binaries}):
            find_binary(binary)  # fail before the first cell, not halfway
        rows = run_all(args.peer_list, args, args.procs, progress)
    except ServerError as exc:
        print(f"bench_peers: {exc}", file=sys.stderr)
        return 2
    libraries = sorted({lib for p in args.peer_list for lib in p.libraries} | {"matplotlib"})
    check_rows = [r for r in rows if r["workload"] == "get-hit-unchecked"]
    rows = [r for r in rows if r["workload"] != "get-hit-unchecked"]
    add_ratios(rows)
    checks = acceptance_checks(rows)
    elapsed = time.monotonic() - t_start
    result = {
        "benchmark": "bench_peers",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "elapsed_s": round(elapsed, 1),
        "command": "python benchmarks/bench_peers.py " + " ".join(argv or sys.argv[1:]),
        "machine": machine_info(libraries)
        | {
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "loadavg_1m_during": _spread([r["loadavg_1m"] for r in rows]),
        },
        "versions": {"redis-server": _version("redis-server"), "memcached": _version("memcached")},
        "config": {
            "quick": args.quick,
            "keys": args.keys,
            "sequence": args.ops,
            "rounds": args.rounds,
            "round_ms": args.round_ms,
            "warm_ms": args.warm_ms,
            "zipf_s": ZIPF_S,
            "set_fraction": SET_FRACTION,
            "sizes": list(SIZES),
            "procs": list(args.procs),
            "seed": args.seed,
        },
        "peers": {p.name: {"label": p.label, "shared": p.shared} for p in args.peer_list},
        "rows": rows,
        "check_cost": {
            fmt_size(r["size"]): {
                "unchecked_ns": r["ns_per_op"],
                "checked_ns": next(
                    x["ns_per_op"]
                    for x in rows
                    if (x["peer"], x["workload"], x["size"], x["procs"])
                    == ("metis", "get-hit", r["size"], 1)
                ),
            }
            for r in check_rows
        },
        "acceptance": checks,
    }
    print_rows(rows)
    print()
    print_checks(checks)
    for size, c in result["check_cost"].items():
        print(
            f"value check: Metis get-hit {size}: {c['checked_ns']:.0f} ns/op checked, "
            f"{c['unchecked_ns']:.0f} unchecked"
        )
    load = result["machine"]["loadavg_1m_during"]
    print(
        f"1-minute load average during the run: {load['min']:.2f} to {load['max']:.2f}"
        f" (median {load['median']:.2f}) on {os.cpu_count()} CPUs"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    write_chart(result, args.png)
    if args.markdown:
        write_markdown(result, args.markdown)
    print(f"\nwrote {args.json} and {args.png} in {elapsed:.0f} s")
    return 0


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """``metis_x``: Metis's throughput over the row's, for the same workload, size, procs."""
    metis = {(r["workload"], r["size"], r["procs"]): r for r in rows if r["peer"] == "metis"}
    for r in rows:
        m = metis.get((r["workload"], r["size"], r["procs"]))
        r["metis_x"] = m["ops_per_s"] / r["ops_per_s"] if m else None


def _spread(xs: list[float]) -> dict[str, float]:
    """Minimum, median and maximum."""
    xs = sorted(xs)
    return {"min": xs[0], "median": xs[len(xs) // 2], "max": xs[-1]}


def _version(binary: str) -> str | None:
    import shutil
    import subprocess

    path = shutil.which(binary)
    if path is None:
        return None
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


if __name__ == "__main__":
    sys.exit(main())
