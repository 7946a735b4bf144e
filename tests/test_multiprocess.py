"""Several processes on one cache at once: stress, keys() under churn, atomic add.

The stress test runs for METIS_STRESS_SECONDS (3 s by default) under pytest,
and for as long as you like as a script:

    python tests/test_multiprocess.py --seconds 60 --processes 8
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import sys
import time
from typing import Any

if __name__ == "__main__":  # run as a script: make the helpers (and an in-place build) importable
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [_here, os.path.dirname(_here)]

import pytest
from _workers import mixed_loop, new_name, run_in_fork, verify_value

from metis_shm import Cache

STRESS_SECONDS = float(os.environ.get("METIS_STRESS_SECONDS", "3"))
STRESS_KEYS = 200
STRESS_CAPACITY = "1MiB"
COMPRESS_THRESHOLD = 16 * 1024


def _stress_worker(name: str, keys: list[str], seed: int, seconds: float, queue: Any) -> None:
    try:
        with Cache(name, create=False) as c:
            queue.put(mixed_loop(c, keys, seed, seconds, COMPRESS_THRESHOLD))
    except BaseException as exc:  # reported to the parent, then re-raised
        queue.put({"error": repr(exc), "pid": os.getpid()})
        raise


def run_stress(
    name: str, seed: int, seconds: float, processes: int = 4, verbose: bool = False
) -> dict[str, Any]:
    """Run the stress workload; return the summed counts and the final stats."""
    ctx = multiprocessing.get_context("fork")
    keys = [f"key-{i:04d}" for i in range(STRESS_KEYS)]
    with Cache(
        name, capacity=STRESS_CAPACITY, shards=2, compress_threshold=COMPRESS_THRESHOLD
    ) as c:
        queue = ctx.Queue()
        procs = [
            ctx.Process(target=_stress_worker, args=(name, keys, seed + i, seconds, queue))
            for i in range(processes)
        ]
        for p in procs:
            p.start()
        results = [queue.get(timeout=seconds + 60) for _ in procs]
        for p in procs:
            p.join(timeout=30)
        errors = [r for r in results if "error" in r]
        assert not errors, errors
        assert [p.exitcode for p in procs] == [0] * processes
        total = {k: sum(r["counts"][k] for r in results) for k in results[0]["counts"]}
        bad = [b for r in results for b in r["bad"]]
        # every value still in the cache is whole and belongs to its key
        final_bad = [k for k in keys if (v := c.get(k)) is not None and verify_value(k, v) != "ok"]
        stats = c.stats()
        problems = c.check()
    summary = {
        "counts": total,
        "bad": bad,
        "final_bad": final_bad,
        "stats": stats,
        "check": problems,
    }
    if verbose:
        print(f"counts: {total}")
        print(
            f"evictions={stats.evictions} items={stats.items} bytes_used={stats.bytes_used} "
            f"read_retries={stats.read_retries} lock_waits={stats.lock_waits}"
        )
    return summary


def assert_stress_ok(summary: dict[str, Any], seconds: float) -> None:
    counts = summary["counts"]
    assert counts["torn"] == 0, summary["bad"]
    assert counts["foreign"] == 0, summary["bad"]
    assert summary["final_bad"] == []
    assert summary["check"] == []
    assert counts["reads"] >= 500 * seconds, counts
    assert counts["ok"] >= 100 * seconds, counts
    assert counts["writes"] >= 100 * seconds, counts
    stats = summary["stats"]
    assert stats.evictions > 0, "the cache should be small enough to evict during the run"
    assert stats.bytes_used <= stats.capacity


@pytest.mark.slow
def test_stress(seed: int) -> None:
    name = new_name()
    try:
        summary = run_stress(name, seed, STRESS_SECONDS)
    finally:
        Cache.destroy(name)
    assert_stress_ok(summary, STRESS_SECONDS)


def _churn(name: str, seconds: float, seed: int) -> int:
    rng = random.Random(seed)
    n = 0
    with Cache(name, create=False) as c:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            k = f"churn-{rng.randrange(2000)}"
            if rng.random() < 0.6:
                c.set(k, b"c" * rng.randrange(200))
            else:
                c.delete(k)
            n += 1
    return n


def test_keys_under_concurrent_writes(cache: Cache, cache_name: str, seed: int) -> None:
    """A key present for the whole iteration is yielded exactly once, whatever others write."""
    stable = {f"stable-{i}" for i in range(500)}
    cache.set_many({k: b"s" for k in stable})
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        jobs = [pool.apply_async(_churn, (cache_name, 1.5, seed + i)) for i in range(2)]
        rounds = 0
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline or rounds < 3:
            got = [k for k in cache.keys(prefix=None) if k in stable]
            assert len(got) == len(stable), f"round {rounds}: {len(got)} stable keys"
            assert set(got) == stable
            got_prefix = list(cache.keys(prefix="stable-"))
            assert sorted(got_prefix) == sorted(stable)
            rounds += 1
        writes = [j.get(timeout=30) for j in jobs]
    assert all(n > 0 for n in writes)
    assert cache.check() == []


def _adder(name: str, n_keys: int, tag: int) -> list[int]:
    with Cache(name, create=False) as c:
        return [j for j in range(n_keys) if c.add(f"slot-{j}", tag)]


def _incrementer(name: str, n: int) -> int:
    with Cache(name, create=False) as c:
        last = 0
        for _ in range(n):
            last = c.incr("counter", default=0)
        return last


def test_add_and_incr_atomic_across_processes(cache: Cache, cache_name: str) -> None:
    ctx = multiprocessing.get_context("fork")
    n_keys = 300
    with ctx.Pool(4) as pool:
        adds = pool.starmap(_adder, [(cache_name, n_keys, t) for t in range(4)])
        incrs = pool.starmap(_incrementer, [(cache_name, 1000)] * 4)
    assert sorted(j for won in adds for j in won) == list(range(n_keys))
    for tag, won in enumerate(adds):
        for j in won:
            assert cache.get(f"slot-{j}") == tag
    assert cache.get("counter") == 4000
    assert max(incrs) == 4000
    assert cache.check() == []


def test_writes_in_other_process_visible_at_once(cache: Cache, cache_name: str) -> None:
    def child() -> int:
        with Cache(cache_name, create=False) as c:
            for i in range(1000):
                c.set(f"v{i}", i)
        return 1000

    assert run_in_fork(child) == 1000
    assert cache.get_many([f"v{i}" for i in range(1000)]) == {f"v{i}": i for i in range(1000)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    print(f"METIS_TEST_SEED={seed} seconds={args.seconds} processes={args.processes}")
    name = new_name()
    try:
        summary = run_stress(name, seed, args.seconds, args.processes, verbose=True)
    finally:
        Cache.destroy(name)
    try:
        assert_stress_ok(summary, args.seconds)
    except AssertionError as exc:
        print(f"FAILED: {exc}")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
