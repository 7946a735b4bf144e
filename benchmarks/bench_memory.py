"""Memory per item: Metis against Redis and memcached, value sizes 16 B to 1 MiB.

What it measures
    For each value size (16 B, 64 B, ... 1 MiB, and one mixed-size set) the
    same data set -- the same 24-byte keys and the same value bytes -- is
    loaded into Metis, into a fresh redis-server and into a fresh memcached,
    and each one's own account of its memory is read:

    * Metis, ``Cache.stats()``: ``bytes_used`` (the blocks that hold items:
      56-byte item header, key, value, padding to 8, at least 64 B), per
      shard; and the segment's ``segment_size`` (header, stats slots, index,
      hint bytes, policy regions and the arenas). A Metis segment is sized up
      front and reserves all its pages at creation, so the memory it costs is
      ``segment_size`` however full it is. Shards fill unevenly, so the
      capacity that holds the whole set is the fullest shard's bytes times
      the shard count; each segment draws its own hash seed, so the script
      loads the set into ``--samples`` segments and reports the largest
      figure (and the median), then checks the headroom rule that
      docs/memory.md gives for sizing by loading the set at that capacity.
    * Redis, ``INFO memory`` before and after loading: ``used_memory`` (what
      Redis has allocated, as jemalloc's size classes round it, main hash
      table included; not the RSS fragmentation), ``used_memory_dataset``,
      ``used_memory_rss``, ``mem_fragmentation_ratio``; and ``MEMORY STATS``.
    * memcached, ``stats`` and ``stats slabs``: ``bytes`` (the items' own
      sizes: item header, key, value, CAS), the chunks the items occupy
      (``chunk_size x used_chunks`` per slab class: slab rounding), the slab
      pages allocated (``total_malloced``, allocated by 1 MiB page) and the
      hash table (``hash_bytes``).

    Per item: bytes = memory / items; overhead = bytes - (key + value).

    A second measurement gives each store the same memory budget and loads
    1.5 times as much data as the budget can hold, so each one evicts: Metis
    the largest capacity whose whole segment fits the budget, Redis
    ``maxmemory`` with ``allkeys-lru``, memcached ``-m``. It reports the items
    and payload each one keeps, and Metis's fragmentation after that churn
    (``1 - largest free block / free bytes``, summed over shards: the
    definition ``Stats.fragmentation`` uses).

Method
    Keys are ``m<8 chars>:<14 digits>``, 24 bytes. A value is its item's
    number (8 bytes) followed by a slice of a fixed random block, so values
    are distinct and incompressible; Metis runs with compression off (Redis
    and memcached do not compress), its default policy and its default shard
    count for the capacity. A data set holds about ``--payload`` bytes of
    key + value (64 MiB), at least ``--min-items`` items (128). The mixed set
    draws each value size log-uniformly from 16 B to 64 KiB. Everything is
    loaded in batches: ``Cache.set_many``, a redis-py pipeline, pymemcache
    ``set_many``. Servers run on unix sockets; each data set gets fresh ones.

Not a pass/fail test. ``--quick`` (the 16 B, 4 KiB, 1 MiB and mixed sets at
1 MiB, a 4 MiB budget, 2 samples) takes about 20 s; the JSON (``--json``)
holds every figure and the machine.

    python benchmarks/bench_memory.py [--quick] [--json PATH] [--plot PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import machine_info
from memory_data import KEY_LEN, MIXED_RANGE, OVERLOAD, DataSet, KiB, MiB, log
from memory_report import plot, print_report
from memory_servers import measure_memcached, measure_redis, server_versions

try:
    from metis_shm import _engine
except ImportError:  # run from a checkout, not installed: use the in-place build
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from metis_shm import _engine

# after the fallback above: it imports metis_shm
from memory_metis import measure_metis

from metis_shm.cache import DEFAULT_POLICY
from metis_shm.units import parse_size

SIZES = (16, 64, 256, KiB, 4 * KiB, 16 * KiB, 64 * KiB, 256 * KiB, MiB)
QUICK_SETS = ("16", "4KiB", "1MiB", "mixed")  # the smallest, a middle, the largest, mixed
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "memory.json"


def measure(ds: DataSet, budget: int, samples: int, workdir: Path) -> dict[str, Any]:
    """One data set through all three stores: a row of the report."""
    log(f"{ds.label}: {ds.n:,} items, {ds.payload / MiB:.1f} MiB of key + value")
    metis = measure_metis(ds, budget, samples)
    redis = measure_redis(ds, budget, workdir)
    memcached = measure_memcached(ds, budget, workdir)
    return {
        "set": ds.label,
        "value_size": ds.sizes[0] if min(ds.sizes) == max(ds.sizes) else None,
        "value_size_range": [min(ds.sizes), max(ds.sizes)],
        "items": ds.n,
        "key_bytes": KEY_LEN,
        "value_bytes": ds.value_bytes,
        "payload": ds.payload,
        "payload_per_item": ds.mean_payload(),
        "metis": metis,
        "redis": redis,
        "memcached": memcached,
        "metis_over_redis": metis["segment_size"] / redis["memory"],
        "metis_over_memcached": metis["segment_size"] / memcached["memory"],
        "metis_items_over_redis": metis["bytes_used"] / redis["memory"],
        "metis_items_over_memcached": metis["bytes_used"] / memcached["memory"],
    }


def main(argv: list[str] | None = None) -> int:
    """Measure every data set, print the tables, write the JSON (and the PNG)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sets, about 20 s")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, metavar="PATH",
                        help=f"where to write the results (default {DEFAULT_JSON})")  # fmt: skip
    parser.add_argument("--plot", type=Path, metavar="PATH", help="also draw a PNG chart")
    parser.add_argument("--payload", help="key + value bytes per data set (default 64MiB)")
    parser.add_argument("--min-items", type=int, help="items per data set at least (default 128)")
    parser.add_argument("--budget", help="memory budget of the eviction runs (default 64MiB)")
    parser.add_argument("--sizes", help="value sizes to run, comma-separated, 'mixed' allowed")
    parser.add_argument(
        "--samples", type=int, help="Metis segments (hash seeds) per data set (default 5)"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    args = parser.parse_args(argv)
    payload = parse_size(args.payload or ("1MiB" if args.quick else "64MiB"))
    budget = parse_size(args.budget or ("4MiB" if args.quick else "64MiB"))
    min_items = args.min_items or (4 if args.quick else 128)
    samples = args.samples or (2 if args.quick else 5)
    if samples < 1:
        parser.error("--samples must be positive")
    if budget % MiB or budget < 2 * MiB:
        parser.error("--budget must be a whole number of MiB, at least 2MiB (memcached's -m)")
    default_sets = QUICK_SETS if args.quick else (*map(str, SIZES), "mixed")
    wanted = args.sizes.split(",") if args.sizes else default_sets
    t_start = time.monotonic()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        for item in wanted:
            if item == "mixed":
                ds = DataSet.mixed(payload, min_items, args.seed)
            else:
                ds = DataSet.uniform(parse_size(item), payload, min_items, args.seed)
            rows.append(measure(ds, budget, samples, Path(tmp)))
    elapsed = time.monotonic() - t_start
    report = {
        "benchmark": "bench_memory",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "elapsed_s": round(elapsed, 1),
        "machine": machine_info(("redis", "hiredis", "pymemcache")),
        "config": {
            "quick": args.quick,
            "payload": payload,
            "min_items": min_items,
            "metis_samples": samples,
            "budget": budget,
            "overload": OVERLOAD,
            "key_bytes": KEY_LEN,
            "mixed_range": list(MIXED_RANGE),
            "seed": args.seed,
            "metis_policy": DEFAULT_POLICY,
            "metis_item_header": _engine.ITEM_OVERHEAD,
            "metis_compression": "off",
        },
        "versions": server_versions(),
        "rows": rows,
    }
    print_report(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json} ({len(rows)} rows) in {elapsed:.1f}s")
    if args.plot:
        plot(report, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
