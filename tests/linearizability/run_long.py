"""Record and check one long history: the CI test's workload, made bigger.

    python tests/linearizability/run_long.py --ops 1000000 --procs 8
    python tests/linearizability/run_long.py --ops 200000 --evict --policy lru

Exits 0 if the history is linearizable, 1 with the explanation if not.  The
segment is destroyed at the end either way.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from typing import Any

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_here, os.path.dirname(_here), os.path.dirname(os.path.dirname(_here))]

from _workers import new_name  # noqa: E402
from checker import check  # noqa: E402
from recorder import Workload, record  # noqa: E402

from metis_shm import Cache  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ops", type=int, default=100_000, help="recorded operations in all")
    ap.add_argument("--procs", type=int, default=4, help="processes")
    ap.add_argument("--policy", default=None, help="eviction policy (default: the cache's)")
    ap.add_argument(
        "--evict",
        action="store_true",
        help="a 1 MiB cache with large values under other keys; the model allows eviction",
    )
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    kwargs: dict[str, Any] = {}
    if args.policy:
        kwargs["policy"] = args.policy
    if args.evict:
        kwargs.update(capacity="1MiB", compress_threshold=None)
    w = Workload(
        procs=args.procs,
        ops_per_proc=-(-args.ops // args.procs),
        big_fraction=0.3 if args.evict else 0.0,
    )
    name = new_name()
    print(f"seed {seed}: {w.procs} processes x {w.ops_per_proc} ops, cache {kwargs or 'default'}")
    try:
        start = time.perf_counter()
        history, cache = record(name, w, seed, timeout=max(60.0, args.ops / 2000), **kwargs)
        cache.close()
        recorded = time.perf_counter()
        result = check(history, may_evict=args.evict)
        checked = time.perf_counter()
    finally:
        Cache.destroy(name)
    print(f"recorded in {recorded - start:.1f} s, checked in {checked - recorded:.1f} s")
    print(result.summary())
    if not result.ok:
        print(result.explanation)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
