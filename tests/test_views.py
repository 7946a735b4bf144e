"""Views (Cache.view): the bytes in place, pinned while a view is open.

What a pin assumes, and the test that breaks it:

* the key may change under the view in every way a writer changes it:
  overwrite, delete, pop, eviction, expiry, invalidation, clear, repair;
* a buffer taken from the view may outlive the ``with`` block;
* the block a view pins may be the one the next allocation wants;
* the process holding views may close its cache, fork, or die (SIGKILL):
  tests/test_views_processes.py;
* values of every size and kind: random sizes, reused blocks, compressed.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import pytest

from metis_shm import Cache, CacheClosed, InvalidArgument, PinLimit

KIB = 1024


def _bytes(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


def test_view_shows_the_stored_bytes_of_each_kind(cache: Cache) -> None:
    cache.set("b", b"raw bytes")
    cache.set("s", "héllo")
    cache.set("n", 42)
    cache.set("d", {"a": 1})
    with cache.view("b") as mv:
        assert isinstance(mv, memoryview) and mv.readonly
        assert bytes(mv) == b"raw bytes"
    with cache.view("s") as mv:
        assert bytes(mv) == "héllo".encode()
    with cache.view("n") as mv:
        assert int.from_bytes(mv, "little", signed=True) == 42
    with cache.view("d") as mv:
        import msgspec

        assert msgspec.msgpack.decode(mv) == {"a": 1}


def test_a_miss_gives_the_default(cache: Cache) -> None:
    with cache.view("absent") as mv:
        assert mv is None
    marker = object()
    with cache.view("absent", default=marker) as mv:
        assert mv is marker
    cache.set("short", b"x", ttl=0.001)
    import time

    time.sleep(0.01)
    with cache.view("short") as mv:
        assert mv is None


def test_the_view_is_read_only_and_dies_with_its_block(cache: Cache) -> None:
    cache.set("k", b"abc")
    with cache.view("k") as mv, pytest.raises(TypeError):
        mv[0] = 1
    with pytest.raises(ValueError):
        mv[0]
    with pytest.raises(ValueError):
        bytes(mv)


def test_a_view_is_entered_once(cache: Cache) -> None:
    cache.set("k", b"abc")
    ctx = cache.view("k")
    with ctx:
        pass
    with pytest.raises(InvalidArgument):
        ctx.__enter__()


@pytest.mark.parametrize(
    "change",
    ["set", "delete", "pop", "clear", "invalidate", "repair", "expire", "evict"],
)
def test_writers_move_on_while_the_view_keeps_the_old_bytes(
    names: Callable[[], str], change: str, rng: random.Random
) -> None:
    c = Cache(names(), "1MiB", shards=1, compress_threshold=None)
    try:
        old = _bytes(rng, rng.randint(1, 60 * KIB))
        c.set("k", old, ttl=0.05 if change == "expire" else None)
        with c.view("k") as mv:
            if change == "set":
                new = _bytes(rng, rng.randint(1, 60 * KIB))
                c.set("k", new)
                assert c.get("k") == new
            elif change == "delete":
                assert c.delete("k")
            elif change == "pop":
                assert c.pop("k") == old
            elif change == "clear":
                c.clear()
            elif change == "invalidate":
                c.invalidate("k")
            elif change == "repair":
                c._repair_shard(0)
            elif change == "expire":
                import time

                time.sleep(0.06)
                c.sweep()
            elif change == "evict":
                for i in range(200):
                    c.set(f"filler{i}", _bytes(rng, 20 * KIB))
                assert c.stats().evictions > 0
            # Churn that reuses every free block the allocator has.
            for i in range(50):
                c.set(f"churn{i % 7}", _bytes(rng, rng.randint(1, 30 * KIB)))
            assert bytes(mv) == old
            assert c.check() == []
            if change not in ("set", "repair"):
                assert "k" not in c
            if change != "repair":
                assert c.stats().held_blocks >= 1
        # The view closed: its block went back to the allocator at once.
        st = c.stats()
        assert (st.pins, st.pinned_bytes, st.held_blocks, st.held_bytes) == (0, 0, 0, 0)
        assert c.check() == []
    finally:
        c.close()


def test_a_buffer_taken_from_the_view_keeps_the_pin(cache: Cache, rng: random.Random) -> None:
    value = _bytes(rng, 10 * KIB)
    cache.set("k", value)
    with cache.view("k") as mv:
        part = mv[100:200]
        nested = memoryview(mv)
    assert bytes(part) == value[100:200]
    assert bytes(nested) == value
    cache.set("k", b"new")
    assert cache.stats().pins == 1 and cache.stats().held_blocks == 1
    assert bytes(part) == value[100:200] and bytes(nested) == value
    del part
    nested.release()
    st = cache.stats()
    assert st.pins == 0 and st.held_blocks == 0
    assert cache.check() == []


def test_nested_views_of_one_key_pin_once(cache: Cache) -> None:
    cache.set("k", os.urandom(5000))
    with cache.view("k") as a, cache.view("k") as b:
        assert bytes(a) == bytes(b)
        assert cache.stats().pins == 2
        assert cache._pin_stats() == (2, cache.stats().pinned_bytes)
    assert cache.stats().pins == 0


def test_compressed_values_are_private_copies(names: Callable[[], str]) -> None:
    c = Cache(names(), "1MiB", compress_threshold=64)
    try:
        value = b"compressible " * 1000
        c.set("k", value)
        v = c.view("k")
        with v as mv:
            assert bytes(mv) == value
            assert not v.pinned
            assert c.stats().pins == 0
    finally:
        c.close()


def test_pinned_bytes_are_bounded_per_process(names: Callable[[], str]) -> None:
    c = Cache(names(), "1MiB", compress_threshold=None, max_pinned="64KiB")
    try:
        c.set("a", os.urandom(40 * KIB))
        c.set("b", os.urandom(40 * KIB))
        with c.view("a"):
            with pytest.raises(PinLimit) as err, c.view("b"):
                pass
            assert err.value.code == "PIN_LIMIT"
            assert "max_pinned" in str(err.value)
            # The refused view left nothing behind.
            assert c.stats().pins == 1
        with c.view("b") as mv:
            assert len(mv) == 40 * KIB
    finally:
        c.close()


def test_views_are_bounded_in_number(cache: Cache) -> None:
    from metis_shm import _engine

    for i in range(300):
        cache.set(f"k{i}", b"v%d" % i)
    opened = []
    try:
        for i in range(300):
            ctx = cache.view(f"k{i}")
            try:
                opened.append((ctx, ctx.__enter__()))
            except PinLimit:
                break
        assert len(opened) >= 256
        assert cache.stats().pins == len(opened)
        assert all(bytes(mv) == b"v%d" % i for i, (_c, mv) in enumerate(opened))
        assert len(opened) <= _engine.MAX_PINS
    finally:
        for ctx, _mv in opened:
            ctx.__exit__(None, None, None)
    assert cache.stats().pins == 0


@pytest.mark.parametrize("bad", [0, -1, "0B", "lots"])
def test_max_pinned_must_be_a_positive_size(names: Callable[[], str], bad: object) -> None:
    from metis_shm import InvalidConfig

    with pytest.raises(InvalidConfig):
        Cache(names(), "1MiB", max_pinned=bad)  # type: ignore[arg-type]


def test_closing_the_cache_waits_for_its_views(names: Callable[[], str]) -> None:
    name = names()
    c = Cache(name, "1MiB", compress_threshold=None)
    value = os.urandom(3000)
    c.set("k", value)
    other = Cache(name)
    with c.view("k") as mv:
        c.close()
        assert c.closed
        with pytest.raises(CacheClosed):
            c.get("k")
        other.set("k", b"new")
        # Still mapped, still pinned: the bytes did not move.
        assert bytes(mv) == value
        assert other.stats().pins == 1
    st = other.stats()
    assert st.pins == 0 and st.held_blocks == 0
    assert len(other._slot_owners()) == 1  # c let its slot go when the view closed
    other.close()


def test_a_full_cache_of_held_blocks_says_so(names: Callable[[], str]) -> None:
    """Views that pin most of a shard: sets still work in what is left, and
    the held bytes are visible."""
    c = Cache(names(), "256KiB", shards=1, compress_threshold=None, max_pinned="256KiB")
    try:
        views = []
        for i in range(6):
            c.set(f"k{i}", os.urandom(30 * KIB))
            ctx = c.view(f"k{i}")
            views.append((ctx, ctx.__enter__()))
        for i in range(6):
            c.set(f"k{i}", os.urandom(100))  # every pinned block is now held back
        assert c.stats().held_bytes >= 6 * 30 * KIB
        for i in range(100):
            c.set(f"f{i}", os.urandom(500))
        assert c.check() == []
        for ctx, _mv in views:
            ctx.__exit__(None, None, None)
        assert c.stats().held_bytes == 0
    finally:
        c.close()


def test_random_sizes_under_a_few_hot_keys_with_views_held(
    names: Callable[[], str], rng: random.Random
) -> None:
    """The reader-crash shape (mixed sizes, few hot keys, reused blocks),
    with views held across the writes: every view keeps its bytes."""
    c = Cache(names(), "512KiB", shards=1, compress_threshold=None, max_pinned="512KiB")
    try:
        keys = [f"hot{i}" for i in range(4)]
        held: list[tuple[object, memoryview, bytes]] = []
        for step in range(3000):
            key = rng.choice(keys)
            op = rng.random()
            if op < 0.55:
                c.set(key, _bytes(rng, int(2 ** rng.uniform(0, 15))))
            elif op < 0.65:
                c.delete(key)
            elif op < 0.85 and len(held) < 24:
                ctx = c.view(key)
                mv = ctx.__enter__()
                if mv is None:
                    ctx.__exit__(None, None, None)
                else:
                    held.append((ctx, mv, bytes(mv)))
            elif held:
                ctx, mv, first = held.pop(rng.randrange(len(held)))
                assert bytes(mv) == first, f"step {step}: a held view changed"
                ctx.__exit__(None, None, None)  # type: ignore[attr-defined]
            if step % 500 == 0:
                assert c.check() == []
        for ctx, mv, first in held:
            assert bytes(mv) == first
            ctx.__exit__(None, None, None)  # type: ignore[attr-defined]
        assert c.check() == []
        assert c.stats().held_blocks == 0
    finally:
        c.close()
