"""TTL: expiry on read, touch, default_ttl, ttl <= 0, sweep."""

from __future__ import annotations

import time

import pytest

from metis_shm import Cache, KeyNotFound

SHORT = 0.2
PAST_SHORT = 0.3


def test_expired_item_never_returned(cache: Cache) -> None:
    cache.set("k", b"v", ttl=SHORT)
    cache.set("stay", b"s")
    assert cache.get("k") == b"v"
    assert "k" in cache
    time.sleep(PAST_SHORT)
    assert cache.get("k") is None
    assert cache.get("k", "dflt") == "dflt"
    assert "k" not in cache
    assert cache.get_many(["k", "stay"]) == {"stay": b"s"}
    with pytest.raises(KeyNotFound):
        cache["k"]
    with pytest.raises(KeyNotFound):
        cache.pop("k")
    assert cache.pop("k", None) is None
    assert cache.get("stay") == b"s"


def test_expired_item_counts_as_absent_for_writes(cache: Cache) -> None:
    cache.set("a", b"old", ttl=SHORT)
    cache.set("r", b"old", ttl=SHORT)
    cache.set("t", b"old", ttl=SHORT)
    cache.set("n", 5, ttl=SHORT)
    time.sleep(PAST_SHORT)
    assert cache.add("a", b"new") is True
    assert cache.get("a") == b"new"
    assert cache.replace("r", b"new") is False
    assert "r" not in cache
    assert cache.touch("t", ttl=10) is False
    assert "t" not in cache
    with pytest.raises(KeyNotFound):
        cache.incr("n")
    assert cache.incr("n", default=100) == 101


def test_expiry_seen_by_other_object(cache: Cache, cache_name: str) -> None:
    cache.set("k", b"v", ttl=SHORT)
    with Cache(cache_name) as other:
        assert other.get("k") == b"v"
        time.sleep(PAST_SHORT)
        assert other.get("k") is None


def test_ttl_none_means_no_expiry(cache: Cache) -> None:
    cache.set("k", b"v", ttl=None)
    cache.set("s", b"v")
    time.sleep(PAST_SHORT)
    assert cache.get("k") == b"v"
    assert cache.get("s") == b"v"


def test_overwrite_resets_ttl(cache: Cache) -> None:
    cache.set("k", b"v1", ttl=SHORT)
    cache.set("k", b"v2")
    time.sleep(PAST_SHORT)
    assert cache.get("k") == b"v2"


def test_touch_extends(cache: Cache) -> None:
    cache.set("k", b"v", ttl=0.4)
    time.sleep(0.25)
    assert cache.touch("k", ttl=1.0) is True
    time.sleep(0.3)  # 0.55 s after the set: past the first ttl
    assert cache.get("k") == b"v"


def test_touch_shortens(cache: Cache) -> None:
    cache.set("k", b"v")
    assert cache.touch("k", ttl=SHORT) is True
    assert cache.get("k") == b"v"
    time.sleep(PAST_SHORT)
    assert cache.get("k") is None


def test_touch_missing(cache: Cache) -> None:
    assert cache.touch("nope", ttl=1) is False
    assert "nope" not in cache


def test_default_ttl(cache_name: str) -> None:
    with Cache(cache_name, capacity="8MiB", default_ttl=SHORT) as c:
        c.set("default", b"v")
        c["item"] = b"v"
        c.set("long", b"v", ttl=30)
        c.set_many({"m1": 1, "m2": 2})
        c.add("added", b"v")
        assert c.get("default") == b"v"
        time.sleep(PAST_SHORT)
        assert c.get("default") is None
        assert "item" not in c
        assert c.get_many(["m1", "m2"]) == {}
        assert c.get("added") is None
        assert c.get("long") == b"v"


def test_default_ttl_touch(cache_name: str) -> None:
    """touch(key) with ttl=None uses default_ttl."""
    with Cache(cache_name, capacity="8MiB", default_ttl=SHORT) as c:
        c.set("k", b"v", ttl=60)
        assert c.touch("k") is True
        time.sleep(PAST_SHORT)
        assert c.get("k") is None


@pytest.mark.parametrize("ttl", [0, 0.0, -1, -0.5])
def test_ttl_not_positive_removes(cache: Cache, ttl: float) -> None:
    cache.set("k", b"old")
    assert cache.set("k", b"new", ttl=ttl) is None
    assert cache.get("k") is None
    assert "k" not in cache
    assert len(cache) == 0
    cache.set("fresh", b"new", ttl=ttl)
    assert "fresh" not in cache


def test_ttl_not_positive_set_many(cache: Cache) -> None:
    cache.set_many({"a": 1, "b": 2})
    cache.set_many({"a": 10, "b": 20}, ttl=0)
    assert cache.get_many(["a", "b"]) == {}


def test_touch_not_positive_removes(cache: Cache) -> None:
    cache.set("k", b"v")
    cache.touch("k", ttl=0)
    assert "k" not in cache


def test_ttl_on_add_replace_incr(cache: Cache) -> None:
    assert cache.add("a", b"v", ttl=SHORT) is True
    cache.set("r", b"old")
    assert cache.replace("r", b"v", ttl=SHORT) is True
    assert cache.incr("n", default=0, ttl=SHORT) == 1
    time.sleep(PAST_SHORT)
    assert cache.get_many(["a", "r", "n"]) == {}


def test_sweep(cache: Cache) -> None:
    for i in range(50):
        cache.set(f"short-{i}", b"x" * i, ttl=SHORT)
    for i in range(10):
        cache.set(f"long-{i}", b"y" * i)
    assert cache.stats().expirations == 0
    time.sleep(PAST_SHORT)
    assert len(cache) == 60  # expired items not yet swept are counted
    removed = 0
    for _ in range(100):
        n = cache.sweep(max_items=10)  # a bounded slice: about 10 items looked at per shard
        assert n >= 0
        removed += n
        if len(cache) == 10:
            break
    assert removed == 50
    assert len(cache) == 10
    assert cache.sweep() == 0
    s = cache.stats()
    assert s.expirations == 50
    assert s.items == 10
    assert sorted(cache.keys()) == sorted(f"long-{i}" for i in range(10))
    assert cache.check() == []


def test_sweep_default(cache: Cache) -> None:
    for i in range(200):
        cache.set(f"k{i}", i, ttl=SHORT)
    time.sleep(PAST_SHORT)
    total = 0
    for _ in range(10):
        total += cache.sweep()
        if len(cache) == 0:
            break
    assert total == 200
    assert len(cache) == 0


def test_sweep_keeps_live_items(cache: Cache) -> None:
    for i in range(100):
        cache.set(f"k{i}", i, ttl=30)
    assert cache.sweep() == 0
    assert len(cache) == 100
    assert cache.stats().expirations == 0


def test_huge_ttl_means_practically_never(cache) -> None:  # type: ignore[no-untyped-def]
    cache.set("far", b"v", ttl=1e12)  # beyond int64 nanoseconds: clamped, not wrapped
    assert cache.get("far") == b"v"
