"""Each eviction policy's behaviour on small hand-made sequences, in a real
one-shard cache bounded in entries. (Real traces: tests/test_simulate.py.)"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from metis_shm import Cache


def read_through(cache: Cache, key: str) -> bool:
    """A get; on a miss, set the key (what the simulator does). True on a hit."""
    if cache.get(key) is not None:
        return True
    cache.set(key, b"v")
    return False


@pytest.fixture
def make(cache_name: str) -> Iterator[object]:
    opened: list[Cache] = []

    def _make(policy: str, entries: int) -> Cache:
        c = Cache(cache_name, "4MiB", shards=1, policy=policy, max_entries=entries)
        opened.append(c)
        return c

    yield _make
    for c in opened:
        c.close()
    Cache.destroy(cache_name)


@pytest.mark.parametrize("policy", ["wtinylfu", "lru", "sieve", "arc", "2q", "s3fifo"])
def test_entry_bound_holds_and_segment_stays_consistent(make, policy: str) -> None:
    cache = make(policy, 50)
    for i in range(2000):
        read_through(cache, f"k{i % 317}")
        read_through(cache, f"hot{i % 7}")
    assert len(cache) <= 50
    assert cache.stats().evictions > 0
    assert cache.check() == []


def test_wtinylfu_scan_does_not_flush_a_frequent_item(make) -> None:
    cache = make("wtinylfu", 100)
    for _ in range(30):
        read_through(cache, "hot")
    for i in range(1000):  # a scan of one-hit wonders, 10x the capacity
        read_through(cache, f"scan-{i}")
    assert "hot" in cache
    assert cache.check() == []


def test_lru_scan_flushes_what_wtinylfu_keeps(make) -> None:
    cache = make("lru", 100)
    for _ in range(30):
        read_through(cache, "hot")
    for i in range(1000):
        read_through(cache, f"scan-{i}")
    assert "hot" not in cache


def test_lru_evicts_least_recently_used(make) -> None:
    cache = make("lru", 3)
    for key in "abc":
        read_through(cache, key)
    read_through(cache, "a")  # b is now the least recently used
    read_through(cache, "d")
    assert "b" not in cache and all(k in cache for k in "acd")


def test_sieve_keeps_visited_items(make) -> None:
    cache = make("sieve", 4)
    for key in "abcd":
        read_through(cache, key)
    read_through(cache, "a")  # visited: the hand passes it by
    read_through(cache, "e")  # evicts the oldest unvisited item: b
    assert "a" in cache and "b" not in cache
    read_through(cache, "f")  # a's bit was cleared by the pass: next victim is c
    assert "c" not in cache and "a" in cache


def test_arc_adapts_p_both_ways(make) -> None:
    cache = make("arc", 8)
    # Two keys seen twice sit in T2. A loop over 7 keys overflows T1 by one:
    # each key returns right after leaving, from ghost list B1, so ARC grows
    # p (T1's share). Then keys read twice each, cycling over 12, live in T2
    # and come back from B2: p shrinks again.
    seq = ["h1", "h2"] * 3 + [f"r{i % 7}" for i in range(40)]
    seq += [f"f{i}" for _ in range(4) for i in range(12) for _ in range(2)]
    seen = []
    for key in seq:
        read_through(cache, key)
        seen.append(cache._policy_state(0)["target"])
    peak = max(seen)
    assert peak > 0, seen
    assert seen[-1] < peak, seen
    assert min(seen) >= 0 and peak <= 8


def test_2q_second_touch_after_a1in_enters_am(make) -> None:
    cache = make("2q", 8)  # A1in holds 2 (25%), A1out remembers 4
    read_through(cache, "x")
    for i in range(9):  # push x out of A1in into the A1out ghost list
        read_through(cache, f"f{i}")
    assert "x" not in cache
    read_through(cache, "x")  # seen again: straight into Am
    state = cache._policy_state(0)
    assert state["queues"][1] >= 1  # Am
    for i in range(20):  # FIFO traffic through A1in does not touch Am
        read_through(cache, f"g{i}")
    assert "x" in cache


def test_s3fifo_one_hit_wonders_leave_quickly_and_hits_promote(make) -> None:
    cache = make("s3fifo", 20)  # small FIFO: 2 entries
    for i in range(20):
        read_through(cache, f"fill{i}")
    read_through(cache, "pop")
    read_through(cache, "pop")
    read_through(cache, "pop")  # hit twice while in small
    for i in range(30):
        read_through(cache, f"once{i}")
    assert "pop" in cache
    assert sum(f"once{i}" in cache for i in range(30)) <= 3
    assert cache.check() == []
