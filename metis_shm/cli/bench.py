"""``metis bench``: a quick get/set benchmark from this process (ns per operation).

    metis bench NAME|temp [--seconds S] [--value-size BYTES] [--keys N] [--json]

``temp`` creates a throwaway cache; with an existing cache's name the
benchmark writes keys ``metis-bench:*`` there and deletes them after.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from metis_shm.cache import Cache
from metis_shm.cli.common import EXIT_OK, Subparsers, UsageError, open_existing


def register(subparsers: Subparsers) -> None:
    """Add ``bench`` to the ``metis`` parser."""
    _register_bench(subparsers)


def _register_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench",
        help="a quick local get/set benchmark (ns per operation)",
        description="Time set, get (hit) and get (miss) from this process, one after the other, "
        "for --seconds in all. NAME 'temp' creates a throwaway cache; with an existing "
        "cache's name, the benchmark writes keys 'metis-bench:*' there and deletes them after.",
        epilog="examples:\n  metis bench temp\n  metis bench temp --seconds 3 --value-size 1024\n"
        "  metis bench app --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", metavar="NAME|temp", help="cache name, or 'temp'")
    p.add_argument("--seconds", type=float, default=1.0, metavar="S", help="total (default 1)")
    p.add_argument(
        "--value-size", type=int, default=100, metavar="BYTES", help="value size (default 100)"
    )
    p.add_argument("--keys", type=int, default=10_000, metavar="N", help="distinct keys "
                   "(default 10000)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_cmd_bench)


def _timed(op: Any, keys: list[str], seconds: float) -> tuple[int, float]:
    """Call op(key) round the keys until ``seconds`` pass: (calls, ns per call)."""
    n = 0
    clock = time.perf_counter_ns
    t0 = clock()
    deadline = t0 + int(seconds * 1e9)
    batch = keys[:1000]
    while True:
        for k in batch:
            op(k)
        n += len(batch)
        batch = keys[n % len(keys) : n % len(keys) + 1000] or keys[:1000]
        t = clock()
        if t >= deadline:
            return n, (t - t0) / n


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.seconds <= 0 or args.value_size < 0 or args.keys < 1:
        raise UsageError("--seconds and --keys must be positive, --value-size not negative")
    temp = args.name == "temp"
    name = f"metis-bench-{os.getpid()}" if temp else args.name
    cache = Cache(name, capacity="64MiB") if temp else open_existing(name)
    value = os.urandom(args.value_size)
    keys = [f"metis-bench:{i}" for i in range(args.keys)]
    missing = [f"metis-bench:absent:{i}" for i in range(args.keys)]
    phase = args.seconds / 3
    results: dict[str, dict[str, float]] = {}
    try:
        for k in keys:
            cache.set(k, value)
        set_one = cache.set
        for op_name, op, ks in (
            ("set", lambda k: set_one(k, value), keys),
            ("get (hit)", cache.get, keys),
            ("get (miss)", cache.get, missing),
        ):
            calls, ns = _timed(op, ks, phase)
            results[op_name] = {"ops": calls, "ns_per_op": round(ns, 1),
                                "ops_per_s": round(1e9 / ns)}  # fmt: skip
        shards, policy = cache.n_shards, cache.policy
    finally:
        if not temp:
            cache.delete_many(keys)
        cache.close()
        if temp:
            Cache.destroy(name)
    if args.json:
        print(json.dumps({"cache": "temp" if temp else name, "policy": policy, "shards": shards,
                          "value_size": args.value_size, "results": results}))  # fmt: skip
        return EXIT_OK
    where = "a temporary cache" if temp else f"cache {name!r}"
    print(f"{where}: policy {policy}, {shards} shards, {args.value_size}-byte values, "
          f"{args.keys:,} keys, one process")  # fmt: skip
    print(f"  {'operation':<11} {'ns/op':>8} {'ops/s':>12}")
    for op_name, r in results.items():
        print(f"  {op_name:<11} {r['ns_per_op']:>8,.0f} {r['ops_per_s']:>12,.0f}")
    return EXIT_OK


__all__ = ["register"]
