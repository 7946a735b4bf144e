"""Writers SIGKILLed mid-write while readers run (contract point 3).

Two ways of killing, both in one test, with the same two readers running all
along:

1. random timing: fork a writer that writes in a tight loop, wait for it to
   start, sleep 0-5 ms, SIGKILL it; 200 times;
2. deterministic: ``metis_shm._engine.set_crash_point(point, after)`` makes a
   writer SIGKILL itself at a labelled point of the locked write path; every
   point, several ``after`` values.

The readers verify every value they see (right key, valid checksum).  At the
end: every shard takes a write within 1 s, ``lock_recoveries > 0``, and
``check() == []``.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
import traceback
from typing import Any

import pytest
from _workers import (
    OK,
    ForkedChild,
    StopFlag,
    reader_loop,
    run_in_fork,
    verify_value,
    wait_status,
    writer_loop,
)

from metis_shm import Cache

N_RANDOM_KILLS = 200
AFTERS = (0, 1, 4, 25)  # for each crash point: die the 1st, 2nd, 5th, 26th time it is reached
MAX_OPS = 3000  # a deterministic writer that never reaches its point stops after this many ops
KEYS = [f"key-{i:03d}" for i in range(120)]
SHARDS = 4


def status_text(status: int | None) -> str:
    if status is None:
        return "still running"
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exited with code {os.WEXITSTATUS(status)}"


def _child(body: Any) -> int:
    """Run ``body()`` in a freshly forked child; never returns there."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        body()
        code = 0
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
    finally:
        os._exit(code)
    raise AssertionError("unreachable")


def kill_random_writer(cache: Cache, seed: int, delay: float) -> int | None:
    """One round of way 1; returns the writer's wait status."""
    r, w = os.pipe()

    def body() -> None:
        os.close(r)
        writer_loop(cache, KEYS, seed, ready_fd=w)

    pid = _child(body)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], 10)
        started = bool(ready) and os.read(r, 1) == b"r"
    finally:
        os.close(r)
    if started:
        time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    status = wait_status(pid, 10)
    assert started, f"writer did not start ({status_text(status)})"
    return status


def run_crash_point_writer(cache: Cache, seed: int, point: int, after: int) -> int | None:
    """One writer of way 2; returns its wait status (SIGKILL if the point was reached)."""

    def body() -> None:
        from metis_shm import _engine

        _engine.set_crash_point(point, after)
        writer_loop(cache, KEYS, seed, max_ops=MAX_OPS)

    pid = _child(body)
    status = wait_status(pid, 30)
    if status is None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return status


def probe_shards(cache: Cache) -> dict[str, Any]:
    """Write until every shard has taken a write; each write must take less than 1 s."""
    stats = cache.stats()
    n = stats.n_shards
    before = [sh.sets for sh in stats.shards]
    worst = 0.0
    for i in range(50 * n):
        t0 = time.monotonic()
        cache.set(f"probe-{os.getpid()}-{i}", b"probe")
        took = time.monotonic() - t0
        worst = max(worst, took)
        assert took < 1.0, f"a write took {took:.2f} s"
        now = [sh.sets for sh in cache.stats().shards]
        if all(a > b for a, b in zip(now, before, strict=True)):
            return {"writes": i + 1, "worst": worst, "check": cache.check()}
    raise AssertionError(f"not every shard took a write: {before} -> {now}")


def verify_contents(cache: Cache) -> list[str]:
    bad = []
    for k in KEYS:
        v = cache.get(k)
        if v is not None and verify_value(k, v) != OK:
            bad.append(f"{k}: {verify_value(k, v)}")
    for i in range(8):
        v = cache.get(f"ctr-{i}")
        if v is not None and type(v) is not int:
            bad.append(f"ctr-{i}: {v!r}")
    return bad


@pytest.mark.slow
def test_writers_killed_mid_write(cache_name: str, seed: int, rng: Any) -> None:
    from metis_shm import _engine

    n_points = _engine.CRASH_POINTS
    assert isinstance(n_points, int) and n_points >= 1
    started = time.monotonic()
    cache = Cache(cache_name, capacity="1MiB", shards=SHARDS)
    stop = StopFlag()
    readers: list[ForkedChild] = []
    try:
        writer_loop(cache, KEYS, seed, max_ops=500)  # fill: eviction from the start
        readers = [ForkedChild(reader_loop, cache, KEYS, seed + 1000 + i, stop) for i in range(2)]

        # way 1: random timing
        random_kills = 0
        for i in range(N_RANDOM_KILLS):
            status = kill_random_writer(cache, seed + i, rng.uniform(0, 0.005))
            assert status is not None and os.WIFSIGNALED(status), (
                f"random round {i}: writer {status_text(status)} before the kill"
            )
            random_kills += 1
        random_seconds = time.monotonic() - started

        # way 2: labelled crash points
        hits: dict[int, list[int]] = {p: [] for p in range(1, n_points + 1)}
        for point in range(1, n_points + 1):
            for after in AFTERS:
                status = run_crash_point_writer(cache, seed + point * 100 + after, point, after)
                assert status is not None, f"point {point} after {after}: writer hung"
                if os.WIFSIGNALED(status):
                    assert os.WTERMSIG(status) == signal.SIGKILL, status_text(status)
                    hits[point].append(after)
                else:
                    assert os.WEXITSTATUS(status) == 0, (
                        f"point {point} after {after}: writer {status_text(status)}"
                    )
            # right after the crashes at this point, every shard must still take writes
            probe = run_in_fork(probe_shards, cache, timeout=30)
            assert probe["check"] == [], f"after crash point {point}: {probe['check']}"
        never = [p for p, a in hits.items() if not a]
        assert not never, f"crash points never reached by the writers: {never}"
        point_kills = sum(len(a) for a in hits.values())

        stop.set()
        results = [r.join(timeout=60) for r in readers]
        readers = []
    finally:
        stop.set()
        for r in readers:
            r.kill()
    try:
        probe = run_in_fork(probe_shards, cache, timeout=30)
        stats = cache.stats()
        problems = cache.check()
        bad_values = verify_contents(cache)
    finally:
        cache.close()

    counts = {k: sum(r["counts"][k] for r in results) for k in results[0]["counts"]}
    bad = [b for r in results for b in r["bad"]]
    print(
        f"kills: random={random_kills} ({random_seconds:.1f} s) points={point_kills} "
        f"of {n_points} points; readers: {counts}; lock_recoveries={stats.lock_recoveries} "
        f"read_retries={stats.read_retries}; total {time.monotonic() - started:.1f} s"
    )
    assert random_kills + point_kills >= N_RANDOM_KILLS
    assert counts["torn"] == 0, bad
    assert counts["foreign"] == 0, bad
    assert counts["reads"] >= 2000, counts
    assert counts["ok"] >= 200, counts
    assert probe["worst"] < 1.0
    assert probe["check"] == []
    assert stats.lock_recoveries > 0
    assert problems == []
    assert bad_values == []
