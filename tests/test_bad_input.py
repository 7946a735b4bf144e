"""Bad input: every failing call raises the documented error and leaves the cache unchanged."""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from _workers import SHM_DIR, shm_path

import metis_shm
from metis_shm import (
    Cache,
    CacheClosed,
    InvalidConfig,
    InvalidKeyType,
    InvalidName,
    KeyTooLarge,
    MetisError,
    SegmentCorrupt,
    SegmentForeign,
    SegmentNotFound,
    SegmentVersionMismatch,
    SerializationFailed,
    ShmNoSpace,
    ValueTooLarge,
)
from metis_shm.errors import ERROR_CLASSES

# the table of docs/api.md: code, class name, built-in
ERROR_TABLE = [
    ("INVALID_NAME", "InvalidName", ValueError),
    ("INVALID_CONFIG", "InvalidConfig", ValueError),
    ("INVALID_ARGUMENT", "InvalidArgument", TypeError),
    ("INVALID_ARGUMENT", "InvalidArgument", ValueError),
    ("INVALID_KEY_TYPE", "InvalidKeyType", TypeError),
    ("KEY_TOO_LARGE", "KeyTooLarge", ValueError),
    ("VALUE_TOO_LARGE", "ValueTooLarge", ValueError),
    ("KEY_NOT_FOUND", "KeyNotFound", KeyError),
    ("NOT_A_COUNTER", "NotACounter", TypeError),
    ("COUNTER_OVERFLOW", "CounterOverflow", OverflowError),
    ("SERIALIZATION_FAILED", "SerializationFailed", TypeError),
    ("SEGMENT_NOT_FOUND", "SegmentNotFound", FileNotFoundError),
    ("SEGMENT_FOREIGN", "SegmentForeign", OSError),
    ("SEGMENT_CORRUPT", "SegmentCorrupt", OSError),
    ("SEGMENT_VERSION", "SegmentVersionMismatch", OSError),
    ("SEGMENT_PERMISSION", "SegmentPermission", PermissionError),
    ("SEGMENT_OWNER", "SegmentOwner", PermissionError),
    ("SHM_NO_SPACE", "ShmNoSpace", OSError),
    ("CACHE_CLOSED", "CacheClosed", ValueError),
    ("LOCK_UNRECOVERABLE", "LockUnrecoverable", OSError),
    ("TRACE_FORMAT", "TraceFormatError", ValueError),
    ("TRACE_NOT_FOUND", "TraceNotFound", FileNotFoundError),
    ("SNAPSHOT_CORRUPT", "SnapshotCorrupt", ValueError),
    ("SNAPSHOT_NOT_FOUND", "SnapshotNotFound", FileNotFoundError),
    ("SNAPSHOT_KEY", "SnapshotKeyError", ValueError),
    ("CRYPTO_UNAVAILABLE", "CryptoUnavailable", ImportError),
    ("FAR_UNAVAILABLE", "FarUnavailable", ConnectionError),
    ("FAR_ERROR", "FarError", RuntimeError),
    ("PIN_LIMIT", "PinLimit", MemoryError),
]


@pytest.mark.parametrize(("code", "cls_name", "builtin"), ERROR_TABLE)
def test_error_table(code: str, cls_name: str, builtin: type[BaseException]) -> None:
    cls = getattr(metis_shm, cls_name)
    assert ERROR_CLASSES[code] is cls
    assert cls.code == code
    assert issubclass(cls, MetisError)
    assert issubclass(cls, builtin)
    assert getattr(metis_shm.errors, cls_name) is cls


def test_error_table_complete() -> None:
    assert set(ERROR_CLASSES) == {row[0] for row in ERROR_TABLE}


def expect(cls: type[MetisError], fn: Callable[[], Any]) -> MetisError:
    """Call ``fn``; it must raise ``cls`` with the right code, a context dict and a message."""
    with pytest.raises(cls) as info:
        fn()
    exc = info.value
    assert isinstance(exc, MetisError)
    assert exc.code == cls.code
    assert isinstance(exc.context, dict)
    assert str(exc)
    return exc


# --------------------------------------------------------------------------
# a populated cache and a snapshot of its contents
# --------------------------------------------------------------------------

BASE = {"a": b"1", b"b": "two", "n": 7, "l": [1, 2], "big": "x" * 50_000}


@pytest.fixture
def full(cache: Cache) -> Iterator[Cache]:
    cache.set_many(BASE)
    before = snapshot(cache)
    yield cache
    assert snapshot(cache) == before, "a failing call changed the cache"
    assert cache.check() == []


def snapshot(c: Cache) -> tuple[int, dict[Any, Any], set[Any]]:
    return len(c), c.get_many(list(BASE)), set(c.keys())


# --------------------------------------------------------------------------
# keys
# --------------------------------------------------------------------------

BAD_KEYS = [
    pytest.param(1, id="int"),
    pytest.param(None, id="None"),
    pytest.param(1.5, id="float"),
    pytest.param(("a",), id="tuple"),
    pytest.param(bytearray(b"a"), id="bytearray"),
    pytest.param(memoryview(b"a"), id="memoryview"),
    pytest.param(True, id="bool"),
]


class OneItem(Mapping[Any, Any]):
    """A mapping of one item that takes any key, even an unhashable one."""

    def __init__(self, key: Any, value: Any) -> None:
        self.key, self.value = key, value

    def __getitem__(self, key: Any) -> Any:
        if key is self.key:
            return self.value
        raise KeyError(key)

    def __iter__(self) -> Iterator[Any]:
        return iter([self.key])

    def __len__(self) -> int:
        return 1


KEY_CALLS: list[tuple[str, Callable[[Cache, Any], Any]]] = [
    ("get", lambda c, k: c.get(k)),
    ("set", lambda c, k: c.set(k, b"v")),
    ("add", lambda c, k: c.add(k, b"v")),
    ("replace", lambda c, k: c.replace(k, b"v")),
    ("delete", lambda c, k: c.delete(k)),
    ("pop", lambda c, k: c.pop(k, None)),
    ("touch", lambda c, k: c.touch(k, ttl=1)),
    ("incr", lambda c, k: c.incr(k, default=0)),
    ("decr", lambda c, k: c.decr(k, default=0)),
    ("contains", lambda c, k: k in c),
    ("getitem", lambda c, k: c[k]),
    ("setitem", lambda c, k: c.__setitem__(k, b"v")),
    ("delitem", lambda c, k: c.__delitem__(k)),
    ("get_many", lambda c, k: c.get_many(["a", k])),
    ("set_many", lambda c, k: c.set_many(OneItem(k, b"v"))),
    ("delete_many", lambda c, k: c.delete_many([k])),
]


@pytest.mark.parametrize("key", BAD_KEYS)
@pytest.mark.parametrize(("op", "call"), KEY_CALLS, ids=[name for name, _ in KEY_CALLS])
def test_invalid_key_type(
    full: Cache, op: str, call: Callable[[Cache, Any], Any], key: Any
) -> None:
    exc = expect(InvalidKeyType, lambda: call(full, key))
    assert isinstance(exc, TypeError)


@pytest.mark.parametrize(
    ("error", "bad_item"),
    [
        pytest.param(InvalidKeyType, (5, b"v"), id="key-type"),
        pytest.param(KeyTooLarge, ("k" * 2000, b"v"), id="key-size"),
        pytest.param(ValueTooLarge, ("huge", os.urandom(2 << 20)), id="value-size"),
        pytest.param(SerializationFailed, ("obj", object()), id="serialization"),
    ],
)
def test_set_many_failing_item_stores_nothing(
    full: Cache, error: type[MetisError], bad_item: tuple[Any, Any]
) -> None:
    """A bad item anywhere in the mapping: the call fails and nothing of it is stored."""
    mapping = {"ok1": b"v", bad_item[0]: bad_item[1], "ok2": b"v", "a": b"changed"}
    expect(error, lambda: full.set_many(mapping))
    assert "ok1" not in full
    assert "ok2" not in full
    assert full.get("a") == b"1"


LONG_STR = "x" * 1025
LONG_UTF8 = "é" * 513  # 1026 bytes in UTF-8, 513 characters


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(LONG_STR, id="str"),
        pytest.param(LONG_STR.encode(), id="bytes"),
        pytest.param(LONG_UTF8, id="utf8"),
    ],
)
@pytest.mark.parametrize(
    ("op", "call"),
    [kc for kc in KEY_CALLS if kc[0] in ("get", "set", "add", "delete", "contains", "incr")],
    ids=["get", "set", "add", "delete", "contains", "incr"],
)
def test_key_too_large(full: Cache, op: str, call: Callable[[Cache, Any], Any], key: Any) -> None:
    exc = expect(KeyTooLarge, lambda: call(full, key))
    assert isinstance(exc, ValueError)


def test_key_at_limit(cache: Cache) -> None:
    for key in ("k" * 1024, b"k" * 1024, "é" * 512):
        cache.set(key, b"v")
        assert cache.get(key) == b"v"
    assert len(cache) == 3


def test_max_key_size_setting(cache_name: str) -> None:
    with Cache(cache_name, capacity="8MiB", max_key_size=16) as c:
        c.set("k" * 16, b"v")
        expect(KeyTooLarge, lambda: c.set("k" * 17, b"v"))
        assert len(c) == 1


# --------------------------------------------------------------------------
# values
# --------------------------------------------------------------------------


def sizes_in(message: str) -> list[int]:
    return [int(n.replace(",", "").replace("_", "")) for n in re.findall(r"\d[\d,_]*", message)]


def test_value_too_large(cache_name: str) -> None:
    with Cache(cache_name, capacity="8MiB", max_value_size="64KiB") as c:
        c.set("k", b"old")
        data = os.urandom(100_000)
        exc = expect(ValueTooLarge, lambda: c.set("k", data))
        assert isinstance(exc, ValueError)
        numbers = sizes_in(str(exc))
        assert 65536 in numbers, str(exc)
        assert any(n >= 100_000 for n in numbers), str(exc)
        assert c.get("k") == b"old"
        expect(ValueTooLarge, lambda: c.set("new", data))
        assert "new" not in c
        expect(ValueTooLarge, lambda: c.add("new", data))
        expect(ValueTooLarge, lambda: c.replace("k", data))
        assert c.get("k") == b"old"
        assert len(c) == 1
        assert c.check() == []


def test_value_too_large_for_a_shard(cache_name: str) -> None:
    with Cache(cache_name, capacity="1MiB", shards=4, max_value_size="1MiB") as c:
        c.set("k", b"old")
        data = os.urandom(900_000)
        exc = expect(ValueTooLarge, lambda: c.set("k", data))
        numbers = sizes_in(str(exc))
        assert any(n >= 900_000 for n in numbers), str(exc)
        assert c.get("k") == b"old"
        assert len(c) == 1
        assert c.check() == []


def test_serialization_failed(full: Cache) -> None:
    exc = expect(SerializationFailed, lambda: full.set("a", object()))
    assert isinstance(exc, TypeError)
    expect(SerializationFailed, lambda: full.set("new", {"x": object()}))
    expect(SerializationFailed, lambda: full.set("new", 2**64))
    expect(SerializationFailed, lambda: full.set_many({"new": object()}))
    expect(SerializationFailed, lambda: full.add("new", lambda: 1))


def test_not_a_counter(full: Cache) -> None:
    exc = expect(metis_shm.NotACounter, lambda: full.incr("a"))
    assert isinstance(exc, TypeError)
    expect(metis_shm.NotACounter, lambda: full.incr(b"b"))
    expect(metis_shm.NotACounter, lambda: full.decr("l"))


def test_counter_overflow(full: Cache) -> None:
    full.set("max", 2**63 - 1)
    exc = expect(metis_shm.CounterOverflow, lambda: full.incr("max"))
    assert isinstance(exc, OverflowError)
    assert full.get("max") == 2**63 - 1
    full.delete("max")


def test_key_not_found(full: Cache) -> None:
    exc = expect(metis_shm.KeyNotFound, lambda: full["missing"])
    assert isinstance(exc, KeyError)
    expect(metis_shm.KeyNotFound, lambda: full.pop("missing"))
    expect(metis_shm.KeyNotFound, lambda: full.incr("missing"))
    expect(metis_shm.KeyNotFound, lambda: full.__delitem__("missing"))


# --------------------------------------------------------------------------
# names and settings
# --------------------------------------------------------------------------

BAD_NAMES = ["", "a/b", "x" * 65, "spaces no", "../etc", "tab\tname", "nul\x00", "é"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_name(name: str) -> None:
    before = set(os.listdir("/dev/shm"))
    exc = expect(InvalidName, lambda: Cache(name, capacity="8MiB"))
    assert isinstance(exc, ValueError)
    assert set(os.listdir("/dev/shm")) == before


def test_name_at_limit() -> None:
    name = "n" * 64
    Cache.destroy(name)
    try:
        with Cache(name, capacity="8MiB") as c:
            c.set("k", b"v")
            assert os.path.exists(shm_path(name))
    finally:
        Cache.destroy(name)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"shards": 3},
        {"shards": 0},
        {"shards": -4},
        {"policy": "bogus"},
        {"capacity": "lots"},
        {"capacity": -1},
        {"capacity": 0},
        {"serializer": "yaml"},
        {"compress_threshold": "big"},
        {"max_value_size": "huge"},
        {"max_entries": -5},
    ],
    ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()),
)
def test_invalid_config(cache_name: str, kwargs: dict[str, Any]) -> None:
    exc = expect(InvalidConfig, lambda: Cache(cache_name, **{"capacity": "8MiB", **kwargs}))
    assert isinstance(exc, ValueError)
    field = next(iter(kwargs))
    assert field in str(exc), str(exc)
    assert not os.path.exists(shm_path(cache_name))


# --------------------------------------------------------------------------
# segments that are not what they should be
# --------------------------------------------------------------------------


def file_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_segment_not_found(cache_name: str) -> None:
    exc = expect(SegmentNotFound, lambda: Cache(cache_name, create=False))
    assert isinstance(exc, FileNotFoundError)
    assert not os.path.exists(shm_path(cache_name))
    assert not Cache.exists(cache_name)


def test_segment_foreign(cache_name: str) -> None:
    path = shm_path(cache_name)
    garbage = b"this is not a metis segment\n" * 40_000
    with open(path, "wb") as f:
        f.write(garbage)
    exc = expect(SegmentForeign, lambda: Cache(cache_name, capacity="8MiB"))
    assert isinstance(exc, OSError)
    assert file_bytes(path) == garbage, "a foreign file was changed"
    expect(SegmentForeign, lambda: Cache(cache_name, create=False))
    assert file_bytes(path) == garbage


def test_segment_foreign_small(cache_name: str) -> None:
    path = shm_path(cache_name)
    with open(path, "wb") as f:
        f.write(b"\x00garbage")
    expect(SegmentForeign, lambda: Cache(cache_name, capacity="8MiB"))
    assert file_bytes(path) == b"\x00garbage"


def make_segment(name: str) -> str:
    with Cache(name, capacity="8MiB") as c:
        c.set("k", b"v")
    return shm_path(name)


def test_segment_truncated(cache_name: str) -> None:
    path = make_segment(cache_name)
    os.truncate(path, 100)
    before = file_bytes(path)
    exc = expect(SegmentCorrupt, lambda: Cache(cache_name, capacity="8MiB"))
    assert isinstance(exc, OSError)
    assert file_bytes(path) == before, "a corrupt segment was changed"


def test_segment_truncated_halfway(cache_name: str) -> None:
    path = make_segment(cache_name)
    os.truncate(path, os.path.getsize(path) // 2)
    expect(SegmentCorrupt, lambda: Cache(cache_name, capacity="8MiB"))


def test_segment_version_mismatch(cache_name: str) -> None:
    path = make_segment(cache_name)
    with open(path, "r+b") as f:
        head = f.read(12)
        assert head[:8] == b"METISSHM"
        (version,) = struct.unpack("<I", head[8:12])
        f.seek(8)
        f.write(struct.pack("<I", version + 1))
    before = file_bytes(path)
    exc = expect(SegmentVersionMismatch, lambda: Cache(cache_name, capacity="8MiB"))
    assert isinstance(exc, OSError)
    assert str(version) in str(exc) and str(version + 1) in str(exc), str(exc)
    assert file_bytes(path) == before, "a segment of another version was changed"
    # putting the version back makes it usable again, with its data
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(struct.pack("<I", version))
    with Cache(cache_name) as c:
        assert c.get("k") == b"v"


def test_segment_header_is_magic_then_version(cache_name: str) -> None:
    path = make_segment(cache_name)
    with open(path, "rb") as f:
        head = f.read(12)
    assert head[:8] == b"METISSHM"
    assert struct.unpack("<I", head[8:12])[0] >= 1


def _twice_the_free_shm() -> int:
    st = os.statvfs(SHM_DIR)
    return max(2 * st.f_bavail * st.f_frsize, 1 << 30) // (1 << 30) * (1 << 30)


@pytest.mark.parametrize(
    ("capacity", "shards"),
    [
        pytest.param("100TiB", None, id="100TiB"),
        pytest.param(_twice_the_free_shm(), None, id="twice-free-auto-shards"),
        pytest.param("1TiB", 1024, id="1TiB-1024-shards"),
    ],
)
def test_shm_no_space(cache_name: str, capacity: int | str, shards: int | None) -> None:
    exc = expect(ShmNoSpace, lambda: Cache(cache_name, capacity=capacity, shards=shards))
    assert isinstance(exc, OSError)
    assert re.search(r"\d", str(exc)), f"no size in the message: {exc}"
    assert "missing" in str(exc).lower(), f"the message should say how much is missing: {exc}"
    assert not os.path.exists(shm_path(cache_name))
    assert not Cache.exists(cache_name)
    # the name is free for a cache that fits
    with Cache(cache_name, capacity="8MiB") as c:
        c.set("k", b"v")


def test_cache_closed(cache_name: str) -> None:
    c = Cache(cache_name, capacity="8MiB")
    c.set("k", b"v")
    c.close()
    for call in (
        lambda: c.get("k"),
        lambda: c.set("k", b"w"),
        lambda: c.delete("k"),
        lambda: "k" in c,
        lambda: c.stats(),
        lambda: list(c.keys()),
        lambda: c.clear(),
    ):
        exc = expect(CacheClosed, call)
        assert isinstance(exc, ValueError)
    with Cache(cache_name) as again:
        assert again.get("k") == b"v"
