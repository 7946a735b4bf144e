"""Cross-process single-flight with ``metis_shm.contrib.memoize``, shown with real processes.

    python examples/memoize_script.py [cache-name]
    (from a checkout without metis-shm installed: PYTHONPATH=. python examples/...)

1. Eight processes call the same slow memoized function at the same moment:
   one runs it, seven wait for its result.
2. Again, but the process computing is SIGKILLed half-way: a survivor notices
   the owner is dead, takes over its lease and computes; the others get that
   result, long before the lease would have expired.

Prints what happened in each process; exits 1 if single-flight did not hold.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from typing import Any

from metis_shm import Cache
from metis_shm.contrib.memoize import lease_key_for, memoize

N = 8
COMPUTE_SECONDS = 0.5
ctx = multiprocessing.get_context("fork")


def main(name: str) -> int:
    cache = Cache(name, capacity="8MiB")
    try:
        ok = run(cache)
    finally:
        cache.close()
        Cache.destroy(name)
    return 0 if ok else 1


def run(cache: Cache) -> bool:
    @memoize(cache, ttl=60, lock_timeout=5.0)
    def expensive_report(day: str) -> dict[str, Any]:
        cache.incr(f"runs:{day}", default=0)
        time.sleep(COMPUTE_SECONDS)
        return {"day": day, "computed_by": os.getpid()}

    def worker(day: str, barrier: Any, out: Any) -> None:
        barrier.wait()
        start = time.monotonic()
        value = expensive_report(day)
        role = "owner" if expensive_report.stats.computed else "waiter"
        if expensive_report.stats.took_over:
            role = "took over"
        out.put((os.getpid(), role, value["computed_by"], time.monotonic() - start))

    def launch(day: str) -> tuple[list[Any], Any]:
        barrier, out = ctx.Barrier(N), ctx.Queue()
        procs = [ctx.Process(target=worker, args=(day, barrier, out)) for _ in range(N)]
        for p in procs:
            p.start()
        return procs, out

    # 1. eight processes miss one key at once
    procs, out = launch("2024-06-01")
    rows = sorted(out.get(timeout=30) for _ in range(N))
    for p in procs:
        p.join()
    runs = cache.get("runs:2024-06-01")
    print(f"[1] body ran {runs} time(s) for {N} processes")
    for pid, role, by, seconds in rows:
        print(f"    pid {pid:>7}: {role:<9} got the report computed by {by} in {seconds:.3f}s")
    ok = runs == 1 and len({by for _, _, by, _ in rows}) == 1

    # 2. the owner is SIGKILLed mid-compute
    procs, out = launch("2024-06-02")
    lease_key = lease_key_for(expensive_report.cache_key("2024-06-02"))
    while (lease := cache.get(lease_key)) is None:
        time.sleep(0.005)
    time.sleep(COMPUTE_SECONDS / 2)
    os.kill(lease["pid"], signal.SIGKILL)
    killed = time.monotonic()
    print(f"[2] SIGKILLed the owner, pid {lease['pid']}, half-way through computing")
    rows = sorted(out.get(timeout=30) for _ in range(N - 1))
    recovered = time.monotonic() - killed
    for p in procs:
        p.join()
    runs = cache.get("runs:2024-06-02")
    for pid, role, by, seconds in rows:
        print(f"    pid {pid:>7}: {role:<9} got the report computed by {by} in {seconds:.3f}s")
    print(
        f"    {N - 1} survivors recovered {recovered:.3f}s after the kill "
        f"(lock_timeout 5.0s); body ran {runs} time(s) in all"
    )
    return ok and runs == 2 and len({by for _, _, by, _ in rows}) == 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "memoize-example"))
