"""Per-operation cost of Metis ``get``/``set``, against a floor and a dict.

What it measures
    Nanoseconds per call of ``Cache.get`` and ``Cache.set`` from Python, for
    four workloads: ``get-hit`` (every key present), ``get-miss`` (no key
    present), ``set`` (overwrite present keys) and ``mix`` (90 % get / 10 %
    set). Keys are drawn from a Zipf(0.99) distribution over ``--keys`` keys
    (a precomputed sequence, the same for every contender); values are
    ``bytes`` of 100 B and 4 KiB. Each workload runs in 1 and in 2 processes
    that share the cache; for 2 processes the aggregate throughput is the
    total number of calls divided by the wall time of the round.

Against what
    * the floor: a Python-level function that copies the same number of bytes
      out of (``get``) or into (``set``) a shared ``mmap``, e.g.
      ``def floor_get(m, off, n): return m[off:off + n]``, called in the same
      loop shape. No hashing, no index, no locking, no decoding: what any
      Python call that returns a fresh ``bytes`` of that size costs at least.
      For ``get-miss`` it copies 0 bytes. It bounds the copy, not the call:
      ``floor_get`` runs a Python frame that a call of the compiled
      ``Cache.get`` does not, so for small values Metis can come in under it.
    * a plain ``dict`` (``d.get`` / ``d.__setitem__``), private to each
      process: what a per-process cache costs when it hits (it returns a
      reference; nothing is copied).

Method
    Inputs are built once in the parent, then each measurement forks fresh
    worker processes (which attach to the cache by name). Each worker runs the
    ``--ops``-long sequence once to warm up, then ``--rounds`` rounds, each
    repeating the sequence enough times to last about ``--round-ms``; the
    processes start each round together at a barrier, and the garbage
    collector is off during rounds. A row reports the median over rounds (of the mean over
    processes) in ns/op. ``ops/s`` is 1e9 / ns for 1 process and the measured
    aggregate for 2. "Read scaling" is the 2-process ``get-hit`` throughput
    divided by the 1-process one: 2.0 would be perfect scaling on 2 free CPUs.

Views
    Then one process reads values of 100 B to 1 MiB in place
    (``Cache.view``) and by copy (``get``), against py-lmdb with
    ``buffers=True`` and without, and decodes a MessagePack dict from a view
    against ``get`` (ops_views.py).

Batches
    Then ``get_many`` of 100 random keys against a ``get`` per key, a local
    ``dict`` and py-lmdb's ``getmulti``, in a cache that fits the CPU's
    caches and one that does not (ops_batch.py).

Not a pass/fail test: numbers depend on the machine. ``--quick`` finishes in
about 10 s; the JSON (``--json``) holds every row and the machine it ran on.

    python benchmarks/bench_ops.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import gc
import json
import mmap
import os
import random
import sys
import time
import uuid
from pathlib import Path

from _common import (
    SET_FRACTION,
    ZIPF_S,
    KeySequence,
    fmt_size,
    machine_info,
    print_table,
    run_forked,
    summarize_spans,
)

try:
    from metis_shm import Cache, _engine
except ImportError:  # run from a checkout, not installed: use the in-place build
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from metis_shm import Cache, _engine

from ops_batch import measure_batch, print_batch
from ops_views import measure_views, print_views

WORKLOADS = ("get-hit", "get-miss", "set", "mix")
SIZES = (100, 4096)
PROCS = (1, 2)
IMPLS = ("metis", "floor", "dict")
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "bench_ops.json"


# --------------------------------------------------------------------------- floor


def floor_get(m: mmap.mmap, off: int, n: int) -> bytes:
    """Copy ``n`` bytes out of the mmap: the least a ``get`` can cost."""
    return m[off : off + n]


def floor_set(m: mmap.mmap, off: int, n: int, v: bytes) -> None:
    """Copy ``n`` bytes into the mmap: the least a ``set`` can cost."""
    m[off : off + n] = v


# --------------------------------------------------------------------------- inputs


class Inputs(KeySequence):
    """Everything the timed loops read; built in the parent, inherited through fork."""

    def __init__(self, n_keys: int, n_ops: int, seed: int) -> None:
        super().__init__(n_keys, n_ops, seed)
        # set per size by prepare():
        self.size = 0
        self.value = b""
        self.offs: list[int] = []
        self.mix_offs: list[tuple[bool, int]] = []
        self.mm: mmap.mmap | None = None
        self.dict: dict[str, bytes] = {}

    def prepare(self, size: int, cache: Cache) -> int:
        """Fill the cache, the dict and the floor's mmap with values of ``size`` bytes.

        Returns how many keys were missing from the cache right after filling it
        (should be 0: otherwise ``get-hit`` is not all hits).
        """
        self.size = size
        self.value = bytes(random.Random(size).getrandbits(8) for _ in range(size))
        self.offs = [i * size for i in self.idx]
        self.mix_offs = list(zip(self.is_set, self.offs, strict=True))
        if self.mm is not None:
            self.mm.close()
        self.mm = mmap.mmap(-1, self.n_keys * size)  # MAP_SHARED: both processes see it
        for i in range(self.n_keys):
            self.mm[i * size : (i + 1) * size] = self.value
        self.dict = dict.fromkeys(self.keys, self.value)
        cache.clear()
        for k in self.keys:
            cache.set(k, self.value)
        return sum(1 for k in self.keys if cache.get(k) is None)


INPUTS: Inputs | None = None  # set in the parent before forking


# --------------------------------------------------------------------------- loops


def make_round(impl: str, workload: str, cache: Cache | None):
    """Return a function that runs one round of ``workload`` on ``impl``."""
    inp = INPUTS
    assert inp is not None
    v = inp.value
    n = inp.size
    m = inp.mm
    fget, fset = floor_get, floor_set

    if impl == "floor":
        offs, mix = inp.offs, inp.mix_offs

        if workload in ("get-hit", "get-miss"):
            n_copy = n if workload == "get-hit" else 0

            def run() -> None:
                for off in offs:
                    fget(m, off, n_copy)
        elif workload == "set":

            def run() -> None:
                for off in offs:
                    fset(m, off, n, v)
        else:

            def run() -> None:
                for is_set, off in mix:
                    if is_set:
                        fset(m, off, n, v)
                    else:
                        fget(m, off, n)

        return run

    if impl == "metis":
        assert cache is not None
        get, set_ = cache.get, cache.set
    else:
        d = inp.dict
        get, set_ = d.get, d.__setitem__
    keys = inp.miss_seq if workload == "get-miss" else inp.hit_seq
    mix = inp.mix_seq

    if workload in ("get-hit", "get-miss"):

        def run() -> None:
            for k in keys:
                get(k)
    elif workload == "set":

        def run() -> None:
            for k in keys:
                set_(k, v)
    else:

        def run() -> None:
            for is_set, k in mix:
                if is_set:
                    set_(k, v)
                else:
                    get(k)

    return run


def _worker(
    index: int,
    barrier,
    impl: str,
    workload: str,
    cache_name: str,
    rounds: int,
    round_ns: int,
    record_hits: bool = True,
) -> list[tuple[int, int, int]]:
    """Child process: warm up, then time ``rounds`` rounds; return [(start, end, ops)].

    A round repeats the key sequence enough times to last about ``round_ns``,
    so that fast contenders (dict) are not timed over a fraction of a millisecond.
    """
    cache = Cache(cache_name, create=False) if impl == "metis" else None
    if cache is not None and not record_hits:
        cache._set_hit_recording(False)
    run = make_round(impl, workload, cache)
    assert INPUTS is not None
    gc.collect()
    gc.disable()
    t0 = time.perf_counter_ns()
    run()  # warm-up (also touches copy-on-write pages of inherited inputs)
    repeat = max(1, round(round_ns / max(1, time.perf_counter_ns() - t0)))
    spans = []
    for _ in range(rounds):
        barrier.wait(timeout=120)
        t0 = time.perf_counter_ns()
        for _ in range(repeat):
            run()
        spans.append((t0, time.perf_counter_ns(), repeat * INPUTS.n_ops))
    gc.enable()
    if cache is not None:
        cache.close()
    return spans


def measure(
    impl: str,
    workload: str,
    procs: int,
    cache_name: str,
    rounds: int,
    round_ns: int,
    record_hits: bool = True,
) -> dict:
    """Fork ``procs`` workers running the same loop; return ns/op and ops/s."""
    assert INPUTS is not None
    all_spans = run_forked(
        _worker,
        procs,
        (impl, workload, cache_name, rounds, round_ns, record_hits),
        timeout=600,
        what=f"{impl}/{workload}",
    )
    return summarize_spans(all_spans, procs)


def measure_hit_recording(capacity: str, rounds: int, round_ns: int) -> dict:
    """get-hit of 100 B values, 1 process, per policy: hit recording on vs off.

    Recording is what the policy learns from a read (SIEVE/S3-FIFO: a hint
    byte; LRU/ARC/2Q/W-TinyLFU: an access-ring entry, drained by writers).
    """
    assert INPUTS is not None
    out = {}
    print()
    print("hit recording cost (get-hit, 100 B, 1 process, ns/op):")
    print(f"  {'policy':>9}  {'on':>7}  {'off':>7}  {'added':>6}")
    for policy in _engine.POLICIES:
        name = f"bench-rec-{os.getpid()}-{policy}"
        cache = Cache(name, capacity=capacity, policy=policy)
        try:
            INPUTS.prepare(100, cache)
            on = measure("metis", "get-hit", 1, name, rounds, round_ns)["ns_per_op"]
            off = measure("metis", "get-hit", 1, name, rounds, round_ns, False)["ns_per_op"]
        finally:
            cache.close()
            Cache.destroy(name)
        out[policy] = {"on_ns": on, "off_ns": off, "added": on / off - 1}
        print(f"  {policy:>9}  {on:7.1f}  {off:7.1f}  {100 * (on / off - 1):5.1f}%")
    return out


def measure_hash_cost(get_hit_ns: float) -> dict:
    """What the keyed hash (SipHash-1-3) costs per key, timed in C over
    distinct keys, and its share of a 100 B get-hit."""
    out = {}
    print()
    print("key hash cost (SipHash-1-3, timed in C; share of a 100 B get-hit):")
    for key_len in (8, 16, 32, 64):
        ns = min(_engine._time_hash(key_len, 2_000_000) for _ in range(3))
        out[key_len] = {"ns": ns, "share_of_get_hit": ns / get_hit_ns}
        print(f"  {key_len:>3}-byte key: {ns:5.1f} ns  ({100 * ns / get_hit_ns:4.1f}%)")
    return out


# --------------------------------------------------------------------------- report


def print_rows(rows: list[dict]) -> None:
    """The results table: one line per workload, size and process count."""
    header = (
        "workload",
        "size",
        "procs",
        "metis ns/op",
        "floor ns/op",
        "dict ns/op",
        "metis/floor",
        "metis/dict",
        "ops/s",
    )
    lines = [
        (
            r["workload"],
            fmt_size(r["size"]),
            str(r["procs"]),
            f"{r['metis_ns']:.0f}",
            f"{r['floor_ns']:.0f}",
            f"{r['dict_ns']:.0f}",
            f"{r['metis_floor_ratio']:.2f}x",
            f"{r['metis_dict_ratio']:.2f}x",
            f"{r['ops_per_s']:,.0f}",
        )
        for r in rows
    ]
    print_table(header, lines)


def main(argv: list[str] | None = None) -> int:
    global INPUTS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small run, about 10 s")
    parser.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_JSON,
        metavar="PATH",
        help=f"where to write the results (default {DEFAULT_JSON})",
    )
    parser.add_argument("--ops", type=int, help="calls per round per process")
    parser.add_argument("--rounds", type=int, help="timed rounds per measurement")
    parser.add_argument("--keys", type=int, help="distinct keys")
    parser.add_argument(
        "--round-ms",
        type=float,
        help="minimum duration of a round: the sequence is repeated to fill it",
    )
    parser.add_argument("--capacity", default="256MiB", help="cache capacity (default 256MiB)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    args = parser.parse_args(argv)
    n_ops = args.ops or (20_000 if args.quick else 200_000)
    rounds = args.rounds or (3 if args.quick else 7)
    n_keys = args.keys or (2_000 if args.quick else 10_000)
    round_ns = int((args.round_ms or (20 if args.quick else 100)) * 1e6)
    if min(n_ops, rounds, n_keys) < 1:
        parser.error("--ops, --rounds and --keys must be positive")

    t_start = time.monotonic()
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if load > cpus / 2:
        print(
            f"note: load average {load:.1f} on {cpus} CPUs: other work competes for the CPUs,"
            " so the 2-process numbers are unreliable",
            file=sys.stderr,
        )
    name = f"bench-ops-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    cache = Cache(name, capacity=args.capacity)
    try:
        INPUTS = Inputs(n_keys, n_ops, args.seed)
        st = cache.stats()
        print(
            f"bench_ops: {n_keys:,} keys, Zipf({ZIPF_S}) over them "
            f"({INPUTS.distinct:,} distinct in the sequence), {n_ops:,} ops x {rounds} rounds"
            f" of >= {round_ns / 1e6:g} ms;"
            f" cache {args.capacity}, {st.policy}, {st.n_shards} shards; seed {args.seed}"
        )
        rows = []
        for size in SIZES:
            missing = INPUTS.prepare(size, cache)
            if missing:
                print(
                    f"warning: {missing} of {n_keys} keys did not fit in the cache at "
                    f"{fmt_size(size)}; get-hit includes misses",
                    file=sys.stderr,
                )
            for workload in WORKLOADS:
                for procs in PROCS:
                    res = {
                        impl: measure(impl, workload, procs, name, rounds, round_ns)
                        for impl in IMPLS
                    }
                    m, f, d = (res[i]["ns_per_op"] for i in IMPLS)
                    rows.append(
                        {
                            "workload": workload,
                            "size": size,
                            "procs": procs,
                            "metis_ns": m,
                            "floor_ns": f,
                            "dict_ns": d,
                            "metis_floor_ratio": m / f,
                            "metis_dict_ratio": m / d,
                            "ops_per_s": res["metis"]["ops_per_s"],
                            "floor_ops_per_s": res["floor"]["ops_per_s"],
                            "dict_ops_per_s": res["dict"]["ops_per_s"],
                            "rounds_ns_per_op": {i: res[i]["rounds_ns_per_op"] for i in IMPLS},
                            "missing_after_fill": missing,
                        }
                    )
        print()
        print_rows(rows)

        by = {(r["workload"], r["size"], r["procs"]): r for r in rows}
        scaling = {}
        print()
        print("2-process read scaling (get-hit throughput, 2 procs / 1 proc):")
        for size in SIZES:
            one, two = by[("get-hit", size, 1)], by[("get-hit", size, 2)]
            entry = {
                impl: two[f"{key}ops_per_s"] / one[f"{key}ops_per_s"]
                for impl, key in (("metis", ""), ("floor", "floor_"), ("dict", "dict_"))
            }
            scaling[fmt_size(size)] = entry
            print(
                f"  {fmt_size(size):>6}: metis {entry['metis']:.2f}x, "
                f"floor {entry['floor']:.2f}x, dict {entry['dict']:.2f}x"
            )
        views = measure_views(seconds=0.05 if args.quick else 0.2, rounds=rounds)
        print()
        print_views(views, fmt_size)
        batch = measure_batch(quick=args.quick, rounds=rounds, seed=args.seed)
        print()
        print_batch(batch)
        recording = measure_hit_recording(args.capacity, rounds, round_ns)
        hash_cost = measure_hash_cost(by[("get-hit", 100, 1)]["metis_ns"])
        stats = cache.stats()
        elapsed = time.monotonic() - t_start
        result = {
            "benchmark": "bench_ops",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "elapsed_s": round(elapsed, 2),
            "machine": machine_info(),
            "config": {
                "quick": args.quick,
                "ops_per_round": n_ops,
                "rounds": rounds,
                "keys": n_keys,
                "round_ms": round_ns / 1e6,
                "zipf_s": ZIPF_S,
                "set_fraction": SET_FRACTION,
                "sizes": list(SIZES),
                "procs": list(PROCS),
                "seed": args.seed,
                "capacity": args.capacity,
                "policy": stats.policy,
                "n_shards": stats.n_shards,
            },
            "rows": rows,
            "read_scaling": scaling,
            "views": views,
            "batch": batch,
            "hit_recording": recording,
            "hash_ns": hash_cost,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print()
        print(f"wrote {args.json} ({len(rows)} rows) in {elapsed:.1f}s")
        return 0
    finally:
        cache.close()
        Cache.destroy(name)


if __name__ == "__main__":
    sys.exit(main())
