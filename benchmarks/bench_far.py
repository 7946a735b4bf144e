"""Metis as the near tier of Redis, against redis-py alone and against
redis-py's own client-side cache, in one run on one machine.

What it measures
    8 worker processes on 2 "machines" (4 each) read and write N keys held
    in one redis-server (started here on a free loopback port, persistence
    off): Zipf(0.99) key popularity, 99 % GET / 1 % SET, values of 100 B and
    4 KiB (two runs), a fixed duration per configuration after a warm-up.
    The contenders (far_workers.py): plain redis-py, one client per process;
    redis-py's client-side cache (RESP3 + CLIENT TRACKING), one per process;
    the Metis near tier, one NearCache per machine opened by its 4 workers,
    each machine with its own metisd holding the tracking connection
    (far_machines.py).

Same memory
    A machine's near cache holds at most M entries (``max_entries``, and a
    capacity with room for M items of the value size); each process's
    redis-py cache holds M / 4 (``CacheConfig(max_size=M // 4)``): one copy
    per machine against one per process, 2 M entries in all either way.
    Default M = N / 10.

Per configuration
    Total ops/s (all operations, first start to last end); latency p50/p99
    of every operation in one block in 16 (``perf_counter_ns`` around each);
    the local hit ratio (reads that sent no GET to Redis: 1 - the server's
    GET count / reads); Redis's commands/s (INFO total_commands_processed,
    delta over the run); client memory: the workers' USS (without the pages
    of the shared segment) plus the near segments' allocated bytes, and of
    it the cache's share (USS growth over the run plus the segments).

Near-hit latency
    A NearCache hit against a plain local Cache hit: one process, a tight
    loop over the 1,000 hottest keys, ns/op, in pairs of rounds. Both fresh
    (the near tier before the workload: the target's figure), and again
    after it, against a local cache that replayed 300,000 of the same draws
    (items scattered by fills and evictions cost both about a third more).

    python benchmarks/bench_far.py [--quick] [--keys N] [--near-entries M] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

try:
    import metis_shm  # noqa: F401
except ImportError:  # run from a checkout, not installed: use the in-place build
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import ZIPF_S, fmt_size, machine_info, zipf_indices
from far_machines import KEY_LEN, Machine, item_bytes, machines, near_capacity, near_hit_latency
from far_report import (
    add_ratios,
    make_row,
    print_details,
    print_near_hit,
    print_rows,
    print_targets,
    targets,
)
from far_workers import BLOCK, RunSpec, Workers, memory, value_of
from peer_servers import ServerError, redis_server

from metis_shm.segment import shm_path
from metis_shm.units import format_size

SIZES = (100, 4096)
CONTENDERS = ("redis", "redis-csc", "metis")
MACHINES = 2
PROCS_PER_MACHINE = 4
RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_JSON = RESULTS / "far.json"
PRELOAD_BATCH = 1000
NEAR_HIT_KEYS = 1000
CHURN_OPS = 300_000  # the local cache's replay, to match the near one's state after a run


def preload(client: Any, prefix: str, n_keys: int, size: int) -> float:
    """SET every key to its value of ``size`` (pipelined); seconds taken."""
    t0 = time.monotonic()
    for start in range(0, n_keys, PRELOAD_BATCH):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(n_keys, start + PRELOAD_BATCH)):
            pipe.set(f"{prefix}key:{i:08d}", value_of(i, size))
        pipe.execute()
    return time.monotonic() - t0


def redis_counters(client: Any) -> dict[str, int]:
    stats = client.info("stats")
    get = client.info("commandstats").get("cmdstat_get", {})
    return {
        "commands": int(stats["total_commands_processed"]),
        "get_calls": int(get.get("calls", 0)),
    }


FAR_COUNTERS = (
    "far_hits",
    "far_misses",
    "fills",
    "fills_dropped",
    "single_flight_waits",
    "invalidations",
    "far_writes",
)


def far_counters(ms: list[Machine]) -> dict[str, int]:
    """The far counters summed over the machines, and the near tier's own hits and misses."""
    out = dict.fromkeys(FAR_COUNTERS, 0)
    out["near_hits"] = out["near_misses"] = out["items"] = 0
    for m in ms:
        fs = m.cache.far_stats()
        for k in FAR_COUNTERS:
            out[k] += int(fs.get(k, 0))
        st = m.cache.stats()
        out["near_hits"] += st.hits
        out["near_misses"] += st.misses
        out["items"] += st.items
    return out


def run_config(spec: RunSpec, seqs: list[list[int]], admin: Any, ms: list[Machine]) -> dict:
    """Fork the workers of one configuration, meet them at their barriers, make its row."""
    procs = MACHINES * PROCS_PER_MACHINE
    workers = Workers(procs, spec, seqs, ms)
    try:
        workers.wait()  # every worker open
        workers.wait()  # warmed up
        far_before = far_counters(ms) if ms else None
        before = redis_counters(admin)
        t0 = time.monotonic()
        workers.wait()  # go
        workers.wait()  # done
        wall = time.monotonic() - t0
        after = redis_counters(admin)
        far_after = far_counters(ms) if ms else None
        results = workers.results()
    finally:
        workers.close()
    near = None
    if far_before is not None and far_after is not None:
        near = {k: far_after[k] - far_before[k] for k in far_after if k != "items"}
        near["items"] = far_after["items"]
        near["far_fetches"] = near["far_hits"] + near["far_misses"]
    segments = []
    for m in ms:
        size, allocated = m.segment_bytes()
        # metisd's own memory is a per-machine cost too (not in the table: not a worker's).
        _, daemon = memory((shm_path(m.name),), m.proc.pid)
        segments.append(
            {
                "name": m.name,
                "size": size,
                "allocated": allocated,
                "metisd_pid": m.proc.pid,
                "metisd_uss": daemon,
            }
        )
    row = make_row(spec.contender, spec.size, results, before, after, wall, segments, near)
    row["loadavg_1m"] = os.getloadavg()[0]
    return row


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny run for tests: 10,000 keys, ~2 s")
    p.add_argument("--keys", type=int, help="keys in Redis (default 100,000; quick 10,000)")
    p.add_argument("--near-entries", type=int, help="M, a near cache's entries (default keys/10)")
    p.add_argument("--duration", type=float, help="timed seconds per configuration (default 10)")
    p.add_argument("--warm", type=float, help="warm-up seconds per configuration (default 2)")
    p.add_argument("--sizes", help="value sizes in bytes, comma-separated (default 100,4096)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, metavar="PATH")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    q = a.quick
    a.keys = a.keys or (10_000 if q else 100_000)
    a.near_entries = a.near_entries or a.keys // 10
    a.duration = a.duration or (1.5 if q else 10.0)
    a.warm = a.warm if a.warm is not None else (0.3 if q else 2.0)
    a.sizes = tuple(int(s) for s in a.sizes.split(",")) if a.sizes else SIZES
    a.sequence = (1 << 14) if q else (1 << 18)  # Zipf draws per worker, cycled
    if a.near_entries < PROCS_PER_MACHINE or a.keys < 1 or min(a.sizes) < 8:
        p.error("--keys >= 1, --near-entries >= 4 and every size >= 8 bytes")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import redis
    import redis.utils

    t_start = time.monotonic()
    load_before = os.getloadavg()
    procs = MACHINES * PROCS_PER_MACHINE
    m_entries, csc_entries = args.near_entries, args.near_entries // PROCS_PER_MACHINE
    rng = random.Random(args.seed)
    draws = zipf_indices(args.keys, procs * args.sequence, ZIPF_S, rng)
    seqs = [draws[w * args.sequence : (w + 1) * args.sequence] for w in range(procs)]
    parser = "hiredis" if redis.utils.HIREDIS_AVAILABLE else "pure Python (hiredis not installed)"
    prefix = f"bf{os.getpid()}:"
    print(
        f"bench_far: {procs} workers on {MACHINES} machines, {args.keys:,} keys, Zipf({ZIPF_S}), "
        f"{BLOCK - 1}/{BLOCK} reads, {args.duration:g} s per configuration after "
        f"{args.warm:g} s warm-up; redis-py {redis.__version__}, parser {parser}",
        file=sys.stderr,
    )
    rows, near_hit, sizing = [], {}, {}
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    try:
        with (
            tempfile.TemporaryDirectory(prefix="bf-", dir=base) as tmp,
            redis_server(Path(tmp)) as server,
        ):
            admin = redis.Redis(host="127.0.0.1", port=server.port)
            redis_proc = {"pid": server.pid, "port": server.port}
            version = admin.info("server")["redis_version"]
            far = {"url": f"redis://127.0.0.1:{server.port}", "prefix": prefix}
            for size in args.sizes:
                took = preload(admin, prefix, args.keys, size)
                capacity = near_capacity(m_entries, size)
                sizing[size] = {
                    "near_entries_per_machine": m_entries,
                    "near_capacity_per_machine": capacity,
                    "near_item_bytes": item_bytes(size),
                    "csc_entries_per_process": csc_entries,
                    "csc_payload_bytes_per_process": csc_entries * (len(prefix) + KEY_LEN + size),
                    "total_entries_near": m_entries * MACHINES,
                    "total_entries_csc": csc_entries * procs,
                    "preload_s": took,
                }
                for contender in CONTENDERS:
                    spec = RunSpec(
                        contender,
                        size,
                        args.warm,
                        args.duration,
                        server.port,
                        prefix,
                        csc_entries,
                        PROCS_PER_MACHINE,
                    )
                    print(f"  {fmt_size(size)} {contender} ...", file=sys.stderr, flush=True)
                    if contender == "metis":
                        hot = min(NEAR_HIT_KEYS, m_entries // 2)
                        churn = [i for q in seqs[:PROCS_PER_MACHINE] for i in q][:CHURN_OPS]
                        with machines(Path(tmp), MACHINES, far, capacity, m_entries) as ms:
                            near = ms[0].cache
                            fresh = near_hit_latency(near, size, hot, capacity, m_entries, None)
                            near.clear()  # the run starts cold, like the others'
                            rows.append(run_config(spec, seqs, admin, ms))
                            after = near_hit_latency(near, size, hot, capacity, m_entries, churn)
                        near_hit[size] = {"fresh": fresh, "after_run": after}
                    else:
                        rows.append(run_config(spec, seqs, admin, []))
                    r = rows[-1]
                    print(
                        f"    {r['ops_per_s']:,.0f} ops/s, local hits {r['local_hit_ratio']:.1%}",
                        file=sys.stderr,
                    )
                admin.flushdb()
            admin.close()
    except ServerError as exc:
        print(f"bench_far: {exc}", file=sys.stderr)
        return 2
    add_ratios(rows)
    checks = targets(rows, near_hit)
    elapsed = time.monotonic() - t_start
    result = {
        "benchmark": "bench_far",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "elapsed_s": round(elapsed, 1),
        "command": "python benchmarks/bench_far.py " + " ".join(argv or sys.argv[1:]),
        "machine": machine_info(["redis", "hiredis", "psutil"])
        | {"loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "versions": {"redis-server": version, "redis-py": redis.__version__, "parser": parser},
        "redis_server": redis_proc,
        "csc_version_gate_lowered": _older(version, "7.4.0"),
        "config": {
            "quick": args.quick,
            "keys": args.keys,
            "zipf_s": ZIPF_S,
            "sizes": list(args.sizes),
            "machines": MACHINES,
            "procs_per_machine": PROCS_PER_MACHINE,
            "write_fraction": 1 / BLOCK,
            "duration_s": args.duration,
            "warm_s": args.warm,
            "sequence_per_worker": args.sequence,
            "seed": args.seed,
            "near_entries": m_entries,
            "csc_entries": csc_entries,
        },
        "sizing": {fmt_size(s): v for s, v in sizing.items()},
        "rows": rows,
        "near_hit": {fmt_size(s): v for s, v in near_hit.items()},
        "targets": checks,
    }
    _print_sizing(sizing, version, parser)
    print_rows(rows)
    print()
    print_details(rows)
    print()
    print_near_hit(near_hit)
    print()
    print_targets(checks)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.json} in {elapsed:.0f} s")
    return 0


def _print_sizing(sizing: dict[int, dict[str, Any]], version: str, parser: str) -> None:
    print(f"Redis {version}; redis-py parser: {parser}")
    if _older(version, "7.4.0"):
        print(
            "redis-py's client-side cache wants Redis >= 7.4: its version gate is lowered to "
            "6.0 (CLIENT TRACKING with RESP3 pushes, what it uses, is Redis 6.0's)"
        )
    for size, s in sizing.items():
        print(
            f"same memory, {fmt_size(size)}: near cache {s['near_entries_per_machine']:,} entries "
            f"per machine (max_entries; capacity {format_size(s['near_capacity_per_machine'])}, "
            f"{s['near_item_bytes']} B per item) x {MACHINES} machines = "
            f"{s['total_entries_near']:,}; redis-py cache {s['csc_entries_per_process']:,} "
            f"entries per process ({s['csc_payload_bytes_per_process'] / 2**20:.1f} MiB of keys "
            f"and values) x {MACHINES * PROCS_PER_MACHINE} = {s['total_entries_csc']:,}"
        )
    print()


def _older(version: str, than: str) -> bool:
    def parts(v: str) -> tuple[int, ...]:
        return tuple(int(x) for x in v.split(".")[:3])

    return parts(version) < parts(than)


if __name__ == "__main__":
    sys.exit(main())
