"""numpy arrays: stored raw, read back by get (a copy) or view_array (in place).

What the mechanism assumes, and the tests that break it: every dtype numpy
has a raw form for (and the ones it has not), every order and rank
including 0-d and empty, keys of every length (the data's alignment
depends on it), overwrites under a held array, pins outliving the array
that made them, caches that compress or pickle, another process writing,
and payloads planted by something other than our encoder.
"""

from __future__ import annotations

import gc
import multiprocessing
import random
import struct

import msgspec
import numpy as np
import pytest

from metis_shm import Cache, InvalidArgument, SerializationFailed
from metis_shm.arrays import array_from_buffer
from metis_shm.codec import KIND_NDARRAY

ARRAYS = {
    "f8 2d": np.arange(12, dtype="f8").reshape(3, 4),
    "i4 fortran": np.asfortranarray(np.arange(24, dtype="i4").reshape(2, 3, 4)),
    "strided": np.arange(20)[::3],
    "transposed view": np.arange(6, dtype="u2").reshape(2, 3).T[::-1],
    "0-d": np.array(3.5),
    "empty": np.zeros((0, 5)),
    "unicode": np.array(["x", "yy", "zzz"]),
    "bytes": np.array([b"ab", b"c"]),
    "datetime": np.arange(4).astype("M8[s]"),
    "timedelta": np.arange(3).astype("m8[ms]"),
    "structured": np.zeros(3, dtype=[("a", "<f8"), ("b", "<i4", (2,)), ("c", "S3")]),
    "nested": np.zeros(2, dtype=[("p", [("x", "<f4"), ("y", "<f4")]), ("n", "u1")]),
    "complex": np.arange(5) * (1 + 2j),
    "float128": np.arange(3, dtype=np.longdouble),
    "bool": np.array([True, False, True]),
    "big-endian": np.arange(4, dtype=">i8"),
    "float16": np.arange(7, dtype="f2"),
}


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("name", sorted(ARRAYS))
@pytest.mark.parametrize("key_len", range(1, 10))
def test_round_trip_every_kind_and_key_length(cache: Cache, name: str, key_len: int) -> None:
    a = ARRAYS[name]
    key = "k" * key_len
    cache.set(key, a)
    got = cache.get(key)
    assert type(got) is np.ndarray and _same(got, a) and got.flags.writeable
    view = cache.view_array(key)
    assert _same(view, a) and not view.flags.writeable
    if a.size and a.dtype.alignment <= 8:
        # The encoder padded the header for this key: aligned in the segment.
        assert view.flags.aligned
    if a.ndim > 1 and a.flags.f_contiguous and not a.flags.c_contiguous:
        assert view.flags.f_contiguous


def test_get_is_a_private_writable_copy(cache: Cache) -> None:
    cache.set("a", np.arange(10))
    got = cache.get("a")
    got[:] = -1
    assert (cache.get("a") == np.arange(10)).all()
    assert (cache.view_array("a") == np.arange(10)).all()


def test_view_array_is_the_segment_itself(cache: Cache) -> None:
    cache.set("a", np.arange(1000, dtype="f8"))
    one, two = cache.view_array("a"), cache.view_array("a")
    assert one.__array_interface__["data"][0] == two.__array_interface__["data"][0]
    assert cache.get("a").__array_interface__["data"][0] != one.__array_interface__["data"][0]
    with pytest.raises(ValueError):
        one[0] = 1.0


def test_the_pin_lives_as_long_as_any_array_made_from_it(cache: Cache) -> None:
    cache.set("a", np.arange(1000, dtype="f8"))
    arr = cache.view_array("a")
    assert cache.stats().pins == 1
    part = arr[10:20].reshape(2, 5)
    del arr
    gc.collect()
    assert cache.stats().pins == 1
    assert (part.ravel() == np.arange(10, 20)).all()
    del part
    gc.collect()
    assert cache.stats().pins == 0
    cache.set("e", np.zeros((0, 3)))
    empty = cache.view_array("e")
    assert empty.shape == (0, 3) and cache.stats().pins == 0  # nothing to pin


def test_an_ndarray_constructed_over_a_view_does_not_hold_its_pin(cache: Cache) -> None:
    # What docs/api.md warns of: numpy's constructor gives the buffer back and
    # keeps only its exporter, so the pin goes with the block (frombuffer and
    # view_array, above, keep it).
    cache.set("a", np.arange(100, dtype="f8"))
    with cache.view("a") as mv:
        unsafe = np.ndarray((len(mv),), np.uint8, buffer=mv)
        assert cache.stats().pins == 1
    assert cache.stats().pins == 0
    del unsafe


def test_writer_moves_the_key_on_while_an_array_is_held(names, rng: random.Random) -> None:
    with Cache(names(), "64MiB") as cache:
        _overwrite_under_a_held_array(cache, rng)


def _overwrite_under_a_held_array(cache: Cache, rng: random.Random) -> None:
    old = np.arange(50_000, dtype="f8")
    cache.set("a", old)
    held = cache.view_array("a")
    for i in range(50):
        new = np.full(rng.randint(1, 60_000), float(i))
        cache.set("a", new)
        # churn that would reuse the old block if it were free
        for j in range(20):
            cache.set(f"churn{j}", rng.randbytes(rng.randint(1, 100_000)))
        assert _same(cache.get("a"), new)
    cache.delete("a")
    cache.clear()
    assert _same(held, old)
    del held
    gc.collect()
    assert cache.stats().held_blocks == 0
    assert cache.check() == []


def test_miss_and_other_kinds(cache: Cache) -> None:
    assert cache.view_array("nope") is None
    assert cache.view_array("nope", default=7) == 7
    cache.set("b", b"bytes")
    with pytest.raises(InvalidArgument, match="not a numpy array"):
        cache.view_array("b")
    assert cache.stats().pins == 0


def test_arrays_of_objects_are_refused(cache: Cache) -> None:
    for bad in (np.array([object(), 1], dtype=object), np.zeros(2, dtype=[("o", "O")])):
        with pytest.raises(SerializationFailed, match="Python objects"):
            cache.set("o", bad)
    assert "o" not in cache
    # A subclass that carries more than dtype, shape and data is not stored
    # as if it were a plain array (its mask would be lost).
    with pytest.raises(SerializationFailed):
        cache.set("m", np.ma.masked_array([1, 2], mask=[0, 1]))


def test_arrays_stay_raw_in_a_compressing_or_pickling_cache(names) -> None:
    zeros = np.zeros(100_000)
    with Cache(names(), "16MiB", compress_threshold=64) as c:
        c.set("z", zeros)
        view = c.view_array("z")
        assert c.stats().pins == 1 and _same(view, zeros)  # in place: not compressed
        del view
    with Cache(names(), "16MiB", serializer="pickle") as c:
        c.set("z", zeros)
        assert _same(c.view_array("z"), zeros) and _same(c.get("z"), zeros)


def test_memmap_is_stored_as_its_array(cache: Cache, tmp_path) -> None:
    m = np.memmap(tmp_path / "m.bin", dtype="i2", mode="w+", shape=(4, 4))
    m[:] = np.arange(16).reshape(4, 4)
    cache.set("m", m)
    got = cache.get("m")
    assert type(got) is np.ndarray and _same(got, np.asarray(m))


def test_large_random_arrays(cache_name: str, rng: random.Random) -> None:
    with Cache(cache_name, "64MiB", max_pinned="32MiB") as c:
        held = []
        for _ in range(40):
            ndim = rng.randint(1, 4)
            shape = tuple(rng.randint(0, (20_000, 200, 40, 16)[ndim - 1]) for _ in range(ndim))
            dtype = rng.choice(["f8", "f4", "i8", "u1", "c8", "i2"])
            a = np.frombuffer(rng.randbytes(int(np.prod(shape)) * np.dtype(dtype).itemsize), dtype)
            a = a.reshape(shape)
            key = "x" * rng.randint(1, 30)
            c.set(key, a)
            held.append((c.view_array(key), a.copy()))
        for view, want in held:
            assert _same(view, want)


def _child_writes(name: str) -> None:
    with Cache(name) as c:
        c.set("from-child", np.arange(100, dtype="f4").reshape(10, 10))


def test_another_process_writes(cache: Cache) -> None:
    ctx = multiprocessing.get_context("spawn")
    p = ctx.Process(target=_child_writes, args=(cache.name,))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    assert _same(cache.view_array("from-child"), np.arange(100, dtype="f4").reshape(10, 10))


# ---- payloads planted by something other than the encoder --------------------


def _payload(descr, shape, fortran=False, data=b"", pad=None) -> bytes:
    header = msgspec.msgpack.encode([descr, shape, fortran])
    if pad is None:
        pad = 0
    return struct.pack("<H", len(header)) + header + bytes(pad) + data


HOSTILE = {
    "object dtype": _payload("|O", [2], data=bytes(16)),
    "object field": _payload([["o", "|O"]], [1], data=bytes(8)),
    "too few bytes": _payload("<f8", [10], data=bytes(79)),
    "too many bytes": _payload("<f8", [1], data=bytes(64)),
    "negative dim": _payload("<f8", [-1], data=b""),
    "float dim": _payload("<f8", [1.5], data=bytes(8)),
    "huge dims": _payload("<f8", [2**40, 2**40], data=bytes(8)),
    "too many dims": _payload("<u1", [1] * 65, data=b"\0"),
    "bad dtype": _payload("<q9", [1], data=bytes(8)),
    "dtype not text": _payload(12, [1], data=bytes(8)),
    "order not bool": _payload("<f8", [1], fortran=1, data=bytes(8)),
    "header past the end": struct.pack("<H", 500) + b"\x93",
    "no header": b"\x01",
    "empty": b"",
    "header not msgpack": struct.pack("<H", 3) + b"\xc1\xc1\xc1",
    "header not a triple": struct.pack("<H", 1) + b"\x90",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_payloads_raise_never_read_outside(cache: Cache, name: str) -> None:
    payload = HOSTILE[name]
    with pytest.raises(SerializationFailed):
        array_from_buffer(payload, copy=True)
    # The same through the cache, as a crafted snapshot would plant it.
    cache._import_item(b"h", KIND_NDARRAY, 0, payload)
    with pytest.raises(SerializationFailed):
        cache.get(b"h")
    with pytest.raises(SerializationFailed):
        cache.view_array(b"h")
    gc.collect()
    assert cache.stats().pins == 0


def test_a_planted_well_formed_payload_reads(cache: Cache) -> None:
    payload = _payload("<i8", [2, 2], data=struct.pack("<4q", 1, 2, 3, 4), pad=3)
    cache._import_item(b"p", KIND_NDARRAY, 0, payload)
    assert (cache.get(b"p") == np.array([[1, 2], [3, 4]])).all()
