"""A segment written by something other than the engine must not crash readers.

These tests overwrite item headers in a live segment the way a hostile (or
buggy) process with write access could, then use the cache: the engine must
raise SegmentCorrupt instead of reading outside the segment, allocating
gigabytes or looping forever. docs/security.md states what is and is not
checked.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator

import pytest
from _workers import shm_path, wait_status

from metis_shm import Cache, SegmentCorrupt, _engine

ITEM_HEADER_SIZE = 56
HNEXT = 4  # Item.hnext: the next item in the bucket's chain
VALUE_LEN = 36  # Item.value_len
PROBES = 6000  # absent keys looked up: enough to land in every damaged bucket


@pytest.fixture
def one_shard(cache_name: str) -> Iterator[Cache]:
    c = Cache(cache_name, capacity="1MiB", shards=1)
    try:
        yield c
    finally:
        c.close()


def _open_segment(name: str) -> tuple[object, mmap.mmap]:
    f = open(shm_path(name), "r+b")  # noqa: SIM115 - closed with the map below
    return f, mmap.mmap(f.fileno(), 0)


def _item_start(seg: mmap.mmap, key: bytes) -> int:
    pos = seg.find(key)
    assert pos >= ITEM_HEADER_SIZE, f"{key!r} not found in the segment"
    return pos - ITEM_HEADER_SIZE


def _poke_item(name: str, key: bytes, field: int, value: int) -> None:
    f, seg = _open_segment(name)
    with f, seg:  # type: ignore[attr-defined]
        struct.pack_into("<I", seg, _item_start(seg, key) + field, value)


def _probe_absent(cache: Cache) -> dict[str, int]:
    """Look up many absent keys; count the lookups that reported corruption."""
    outcomes = {"miss": 0, "corrupt": 0}
    for i in range(PROBES):
        try:
            assert cache.get(f"absent-{i}".encode()) is None
            outcomes["miss"] += 1
        except SegmentCorrupt:
            outcomes["corrupt"] += 1
    return outcomes


def test_a_huge_value_length_is_corruption_not_a_huge_copy(one_shard: Cache) -> None:
    one_shard.set(b"victim-key-0001", b"v" * 100)
    _poke_item(one_shard.name, b"victim-key-0001", VALUE_LEN, 0xFFFFFFFF)
    with pytest.raises(SegmentCorrupt, match="shard 0"):
        one_shard.get(b"victim-key-0001")
    with pytest.raises(SegmentCorrupt):
        one_shard.pop(b"victim-key-0001")


def test_a_chain_pointing_outside_the_arena_is_corruption(one_shard: Cache) -> None:
    keys = [f"chain-key-{i:05d}".encode() for i in range(64)]
    for k in keys:
        one_shard.set(k, k)
    for k in keys:
        _poke_item(one_shard.name, k, HNEXT, 0xFFFFFFF8)
    outcomes = _probe_absent(one_shard)
    assert outcomes["corrupt"] > 0, outcomes
    # Writers walk the same chains: a set, delete or incr of a key in a damaged
    # bucket raises too, and leaves the rest of the cache usable.
    for op in (
        lambda k: one_shard.set(k, b"x"),
        one_shard.delete,
        lambda k: one_shard.incr(k, default=0),
    ):
        raised = 0
        for i in range(PROBES):
            try:
                op(f"absent-{i}".encode())
            except SegmentCorrupt:
                raised += 1
        assert raised > 0
    assert one_shard.check(), "check() must report the damaged chains"


def test_a_chain_that_loops_is_corruption_not_a_hang(one_shard: Cache) -> None:
    one_shard.set(b"loop-key-first", b"a")
    with open(shm_path(one_shard.name), "rb") as raw:
        header = _engine.read_header(raw.read(4096))
    f, seg = _open_segment(one_shard.name)
    with f, seg:  # type: ignore[attr-defined]
        heads = struct.unpack_from(f"<{header['index_buckets']}I", seg, header["index_offset"])
        (own,) = [h for h in heads if h]  # the lone item's offset in the arena
        arena_base = _item_start(seg, b"loop-key-first") - own  # file position of offset 0
    keys = [f"loop-key-{i:03d}".encode() for i in range(64)]
    for k in keys:
        one_shard.set(k, k)
    f, seg = _open_segment(one_shard.name)
    with f, seg:  # type: ignore[attr-defined]
        for k in keys:  # each item's successor is itself: 64 chains that never end
            start = _item_start(seg, k)
            struct.pack_into("<I", seg, start + HNEXT, start - arena_base)
    pid = os.fork()
    if pid == 0:  # a hang is killed by the parent's timeout below
        try:
            outcomes = _probe_absent(Cache(one_shard.name, create=False))
            os._exit(0 if outcomes["corrupt"] > 0 else 3)
        except BaseException:
            os._exit(2)
    status = wait_status(pid, timeout=60.0)
    if status is None:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("lookups on a looping chain did not return within 60 s")
    assert os.waitstatus_to_exitcode(status) == 0, "a lookup failed or never met the loop"


def test_attaching_to_a_pickle_segment_needs_an_explicit_opt_in(cache_name: str) -> None:
    """A header's serializer can be flipped by any writer: pickle is never inherited."""
    from metis_shm import InvalidConfig
    from metis_shm.cache import attach_existing

    with Cache(cache_name, capacity="1MiB", serializer="pickle") as owner:
        owner.set("k", {"a": 1})
        with pytest.raises(InvalidConfig, match="serializer='pickle'"):
            Cache(cache_name, create=False)
        with Cache(cache_name, create=False, serializer="pickle") as opted_in:
            assert opted_in.get("k") == {"a": 1}
        # Tools that read no values (stats, check, snapshot) attach as they are.
        with attach_existing(cache_name, accept_pickle=True) as tool:
            assert tool.check() == []
        with pytest.raises(InvalidConfig):
            attach_existing(cache_name, accept_pickle=False)


def _bucket_heads(name: str) -> list[int]:
    with open(shm_path(name), "rb") as raw:
        data = raw.read()
    header = _engine.read_header(data[:4096])
    n = header["index_buckets"]
    return list(struct.unpack_from(f"<{n}I", data, header["index_offset"]))


def test_each_segment_hashes_keys_with_its_own_secret_seed() -> None:
    """Which keys share a bucket differs between segments: no offline flooding."""
    from _workers import new_name

    keys = [f"user:{i}" for i in range(200)]
    names = [new_name(), new_name()]
    occupied = []
    try:
        for name in names:
            with Cache(name, capacity="1MiB", shards=1) as c:
                for k in keys:
                    c.set(k, 1)
                assert "hash_seed" not in c._header(), "the seed stays out of stats"
            occupied.append({i for i, head in enumerate(_bucket_heads(name)) if head})
    finally:
        for name in names:
            Cache.destroy(name)
    assert occupied[0] != occupied[1]


def test_a_snapshot_of_a_damaged_shard_is_refused_not_a_crash(one_shard: Cache) -> None:
    keys = [f"snap-key-{i:03d}".encode() for i in range(32)]
    for k in keys:
        one_shard.set(k, k)
    _poke_item(one_shard.name, keys[7], HNEXT, 0xFFFFFFF8)
    with pytest.raises(SegmentCorrupt, match="shard 0"):
        one_shard._export_shard(0)
