"""bench_ops.py's batch section: ``get_many`` against a ``get`` per key.

Nanoseconds per key, one process, batches of ``BATCH`` keys drawn at random
from every key stored (100 B values), for a cache that fits the CPU's caches
(``small``) and one that does not (``large``):

* ``get_many``: ``cache.get_many(batch)``, one call per batch; the engine
  prefetches each window of keys' buckets and first items before it reads
  them (engine_read.pxi);
* ``get loop``: ``{k: v for k in batch if (v := cache.get(k)) is not None}``;
* ``dict``: the same comprehension over a process-local ``dict`` (the copy a
  worker keeps without a shared cache);
* ``lmdb getmulti``: py-lmdb's batched read, ``txn.cursor().getmulti(batch)``
  in one read transaction per batch.

Every figure is the best of ``rounds`` passes over the same batches.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

from metis_shm import Cache

BATCH = 100
VALUE = 100


def _best_per_key(
    fn: Callable[[list[bytes]], Any], batches: list[list[bytes]], rounds: int
) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        for batch in batches:
            fn(batch)
        best = min(best, (time.perf_counter_ns() - t0) / (len(batches) * BATCH))
    return best


def _measure_one(
    n_keys: int, capacity: str, n_batches: int, rounds: int, seed: int
) -> dict[str, Any]:
    import lmdb

    rng = random.Random(seed)
    name = f"bench-batch-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    workdir = tempfile.mkdtemp(prefix="bench-batch-")
    cache = Cache(name, capacity, compress_threshold=None)
    env = lmdb.open(workdir, map_size=4 << 30, sync=False, metasync=False, writemap=True)
    try:
        keys = [b"key:%d" % i for i in range(n_keys)]
        local = {}
        with env.begin(write=True) as txn:
            for k in keys:
                v = rng.randbytes(VALUE)
                cache.set(k, v)
                txn.put(k, v)
                local[k] = v
        stored = cache.stats().items
        batches = [rng.sample(keys, BATCH) for _ in range(n_batches)]
        get = cache.get
        get_many = cache.get_many

        def loop(batch: list[bytes]) -> dict[bytes, Any]:
            return {k: v for k in batch if (v := get(k)) is not None}

        def dict_loop(batch: list[bytes]) -> dict[bytes, Any]:
            return {k: v for k in batch if (v := local.get(k)) is not None}

        def lmdb_many(batch: list[bytes]) -> list[tuple[bytes, bytes]]:
            with env.begin() as txn:
                return txn.cursor().getmulti(batch)

        assert get_many(batches[0]) == loop(batches[0])
        return {
            "keys": n_keys,
            "stored": stored,
            "capacity": capacity,
            "get_many_ns": _best_per_key(get_many, batches, rounds),
            "get_loop_ns": _best_per_key(loop, batches, rounds),
            "dict_ns": _best_per_key(dict_loop, batches, rounds),
            "lmdb_getmulti_ns": _best_per_key(lmdb_many, batches, rounds),
        }
    finally:
        cache.close()
        Cache.destroy(name)
        env.close()
        shutil.rmtree(workdir, ignore_errors=True)


def measure_batch(quick: bool = False, rounds: int = 5, seed: int = 1) -> list[dict[str, Any]]:
    """The rows of the batch table: a small cache and a large one."""
    large = 200_000 if quick else 1_000_000
    return [
        {"cache": "small", **_measure_one(10_000, "16MiB", 200, rounds, seed)},
        {"cache": "large", **_measure_one(large, "512MiB", 500 if quick else 2000, rounds, seed)},
    ]


def print_batch(rows: list[dict[str, Any]]) -> None:
    """The batch table, as bench_ops prints it."""
    from _common import print_table

    lines = [
        [
            f"{r['cache']} ({r['stored']:,} keys)",
            f"{r['get_many_ns']:,.0f}",
            f"{r['get_loop_ns']:,.0f}",
            f"{r['dict_ns']:,.0f}",
            f"{r['lmdb_getmulti_ns']:,.0f}",
            f"{r['get_loop_ns'] / r['get_many_ns']:.2f}x",
            f"{r['lmdb_getmulti_ns'] / r['get_many_ns']:.2f}x",
        ]
        for r in rows
    ]
    print(f"Batched reads, {BATCH} random keys of {VALUE} B (ns per key, best of the rounds):")
    print_table(
        ["cache", "get_many", "get loop", "dict", "lmdb getmulti", "loop/many", "lmdb/many"],
        lines,
        left=1,
    )
