"""Values: each row of the values table of docs/api.md, compression, serializers."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import math
import os
import uuid
from typing import Any

import msgspec
import pytest

from metis_shm import Cache, SerializationFailed, register_type

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


def msgpack_form(value: Any) -> Any:
    """What MessagePack makes of ``value``: the documented read-back of the 'anything else' row."""
    return msgspec.msgpack.decode(msgspec.msgpack.encode(value))


class Plain(msgspec.Struct):
    a: int
    b: str


@dataclasses.dataclass
class PlainData:
    a: int
    b: list[int]


class Point(msgspec.Struct):
    x: int
    y: int
    label: str = ""


@dataclasses.dataclass
class Money:
    amount: int
    currency: str


class Opaque:
    """Something msgspec cannot encode; pickle can."""

    def __init__(self, payload: Any) -> None:
        self.payload = payload

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.payload == self.payload

    __hash__ = None  # type: ignore[assignment]


# --------------------------------------------------------------------------
# the table, row by row
# --------------------------------------------------------------------------

SAME_TYPE = [
    pytest.param(b"", id="bytes-empty"),
    pytest.param(b"\x00\x01\xfe\xff" * 10, id="bytes"),
    pytest.param(bytearray(b"abc\x00"), id="bytearray"),
    pytest.param(bytearray(), id="bytearray-empty"),
    pytest.param("", id="str-empty"),
    pytest.param("hello", id="str"),
    pytest.param("héllo wörld ✓ 🔑 \x00", id="str-unicode"),
    pytest.param(0, id="int-0"),
    pytest.param(1, id="int-1"),
    pytest.param(-1, id="int-neg"),
    pytest.param(INT64_MAX, id="int64-max"),
    pytest.param(INT64_MIN, id="int64-min"),
    pytest.param((), id="tuple-empty"),
    pytest.param((1, "a", b"b", 2.5, None), id="tuple"),
    pytest.param({1, 2, 3}, id="set"),
    pytest.param({"a", "b"}, id="set-str"),
    pytest.param(set(), id="set-empty"),
    pytest.param(frozenset({1, "x"}), id="frozenset"),
    pytest.param(frozenset(), id="frozenset-empty"),
]


@pytest.mark.parametrize("value", SAME_TYPE)
def test_round_trip_same_type(cache: Cache, value: Any) -> None:
    cache.set("k", value)
    got = cache.get("k")
    assert type(got) is type(value)
    assert got == value


def test_memoryview_reads_back_as_bytes(cache: Cache) -> None:
    data = bytearray(b"0123456789")
    cache.set("k", memoryview(data)[2:8])
    got = cache.get("k")
    assert type(got) is bytes
    assert got == b"234567"
    data[3] = ord("X")  # the cache holds a copy
    assert cache.get("k") == b"234567"


def test_bytes_is_a_copy(cache: Cache) -> None:
    cache.set("k", b"abc")
    first = cache.get("k")
    second = cache.get("k")
    assert first == second == b"abc"
    ba = bytearray(b"xyz")
    cache.set("b", ba)
    got = cache.get("b")
    got[0] = ord("Q")
    assert cache.get("b") == bytearray(b"xyz")


def test_int_is_raw_counter(cache: Cache) -> None:
    """An int within 64 bits is stored raw: incr works on it, and it reads back as int."""
    for v in (0, 7, -7, INT64_MAX - 1):
        cache.set("n", v)
        assert cache.incr("n") == v + 1
        got = cache.get("n")
        assert type(got) is int and got == v + 1


def test_bool_is_not_int(cache: Cache) -> None:
    cache.set("t", True)
    cache.set("f", False)
    assert cache.get("t") is True
    assert cache.get("f") is False


def test_none_value(cache: Cache) -> None:
    cache.set("k", None)
    assert "k" in cache
    assert cache.get("k", "default") is None
    assert cache["k"] is None
    assert cache.get_many(["k"]) == {"k": None}


def test_tuple_contents_through_msgpack(cache: Cache) -> None:
    value = (1, (2, 3), {"a": (4,)}, [5, 6])
    cache.set("k", value)
    got = cache.get("k")
    assert type(got) is tuple
    assert got == (1, [2, 3], {"a": [4]}, [5, 6])


def test_set_contents(cache: Cache) -> None:
    value = frozenset({1, "a", b"b", 2.5, None})
    cache.set("k", value)
    got = cache.get("k")
    assert type(got) is frozenset
    assert got == value


MSGPACK_ROWS = [
    pytest.param({"a": 1, "b": [1, 2, {"c": None}]}, id="dict"),
    pytest.param({}, id="dict-empty"),
    pytest.param([1, "two", b"three", 4.0, None, True], id="list"),
    pytest.param([], id="list-empty"),
    pytest.param(1.5, id="float"),
    pytest.param(-0.0, id="float-negzero"),
    pytest.param(float("inf"), id="float-inf"),
    pytest.param(True, id="bool"),
    pytest.param(2**63, id="bigint-2^63"),
    pytest.param(2**64 - 1, id="bigint-2^64-1"),
    pytest.param(
        datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.UTC),
        id="datetime-utc",
    ),
    pytest.param(datetime.datetime(2024, 5, 6, 7, 8, 9), id="datetime-naive"),
    pytest.param(datetime.date(2024, 5, 6), id="date"),
    pytest.param(uuid.UUID(int=12345), id="uuid"),
    pytest.param(decimal.Decimal("1.25"), id="decimal"),
    pytest.param(Plain(1, "x"), id="struct"),
    pytest.param(PlainData(1, [2, 3]), id="dataclass"),
    pytest.param({"nested": Plain(2, "y"), "t": (1, 2)}, id="nested"),
]


@pytest.mark.parametrize("value", MSGPACK_ROWS)
def test_round_trip_msgpack_form(cache: Cache, value: Any) -> None:
    cache.set("k", value)
    got = cache.get("k")
    expected = msgpack_form(value)
    assert type(got) is type(expected)
    assert got == expected


def test_nan(cache: Cache) -> None:
    cache.set("k", float("nan"))
    got = cache.get("k")
    assert isinstance(got, float)
    assert math.isnan(got)


@pytest.mark.parametrize("size", [1, 100, 16 * 1024 - 1, 16 * 1024, 200_000, 1_000_000])
def test_sizes(cache: Cache, size: int) -> None:
    data = os.urandom(size)
    cache.set("k", data)
    assert cache.get("k") == data


def test_max_value_size_exact(cache_name: str) -> None:
    """A value whose stored size is just at max_value_size is accepted."""
    with Cache(cache_name, capacity="8MiB", max_value_size="64KiB") as c:
        data = os.urandom(60_000)
        c.set("k", data)
        assert c.get("k") == data


def test_values_visible_through_other_object(cache: Cache, cache_name: str) -> None:
    values = {
        "b": b"bytes",
        "ba": bytearray(b"ba"),
        "s": "str",
        "i": -5,
        "t": (1, 2),
        "st": {1},
        "fs": frozenset({2}),
        "d": {"x": [1]},
        "big": "z" * 100_000,
    }
    cache.set_many(values)
    with Cache(cache_name) as other:
        got = other.get_many(list(values))
    assert got == values
    assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in values.items()}


# --------------------------------------------------------------------------
# compression
# --------------------------------------------------------------------------


def test_compression_saves_space(cache: Cache) -> None:
    raw = "the quick brown fox jumps over the lazy dog " * 20_000  # ~880 KB
    assert len(raw) > 16 * 1024
    cache.set("big", raw)
    got = cache.get("big")
    assert type(got) is str
    assert got == raw
    assert cache.stats().bytes_used < len(raw) // 4


def test_compression_bytes_and_other_types(cache: Cache) -> None:
    values = {
        "bytes": b"abcd" * 50_000,
        "bytearray": bytearray(b"0123" * 50_000),
        "list": list(range(20_000)),
        "tuple": tuple("x" * 10 for _ in range(5_000)),
    }
    cache.set_many(values)
    for k, v in values.items():
        got = cache.get(k)
        assert type(got) is type(v), k
        assert got == v, k
    assert cache.stats().bytes_used < 200_000


def test_compress_threshold_none(cache_name: str) -> None:
    raw = "abc" * 100_000
    with Cache(cache_name, capacity="8MiB", compress_threshold=None) as c:
        c.set("big", raw)
        assert c.get("big") == raw
        assert c.stats().bytes_used >= len(raw)


def test_compress_threshold_custom(cache_name: str) -> None:
    with Cache(cache_name, capacity="8MiB", compress_threshold="1KiB") as c:
        c.set("small", "a" * 2000)
        assert c.get("small") == "a" * 2000
        assert c.stats().bytes_used < 2000


def test_incompressible_above_threshold(cache: Cache) -> None:
    data = os.urandom(100_000)
    cache.set("k", data)
    assert cache.get("k") == data
    assert cache.stats().bytes_used >= len(data)


def test_compressed_value_read_by_other_object(cache: Cache, cache_name: str) -> None:
    raw = b"repeat me " * 30_000
    cache.set("k", raw)
    with Cache(cache_name, compress_threshold=None) as other:
        assert other.get("k") == raw


def test_compressed_item_above_max_value_size_raw(cache_name: str) -> None:
    """The limit is on the stored size: a compressible value larger than the limit fits."""
    with Cache(cache_name, capacity="8MiB", max_value_size="64KiB") as c:
        raw = b"a" * 500_000
        c.set("k", raw)
        assert c.get("k") == raw


# --------------------------------------------------------------------------
# serializers and registered types
# --------------------------------------------------------------------------


def test_default_serializer_rejects_unknown_object(cache: Cache) -> None:
    cache.set("k", b"before")
    with pytest.raises(SerializationFailed) as info:
        cache.set("k", Opaque(1))
    assert isinstance(info.value, TypeError)
    assert info.value.code == "SERIALIZATION_FAILED"
    assert cache.get("k") == b"before"
    with pytest.raises(SerializationFailed):
        cache.set("k", [1, Opaque(2)])
    assert cache.get("k") == b"before"
    assert len(cache) == 1


def test_pickle_serializer(cache_name: str) -> None:
    with Cache(cache_name, capacity="8MiB", serializer="pickle") as c:
        obj = Opaque({"nested": [1, 2, (3, 4)]})
        c.set("k", obj)
        got = c.get("k")
        assert type(got) is Opaque
        assert got == obj
        c.set("l", [Opaque(1), Opaque(2)])
        assert c.get("l") == [Opaque(1), Opaque(2)]
        c.set("t", (1, 2))
        assert c.get("t") == (1, 2)
        c.set("b", b"raw")
        assert c.get("b") == b"raw"
        c.set("s", "text")
        assert c.get("s") == "text"
        c.set("big", Opaque("x" * 100_000))
        assert c.get("big") == Opaque("x" * 100_000)


@pytest.fixture(scope="module")
def registered() -> None:
    """register_type is process-wide: register the test types once."""
    register_type(Point, 101)
    register_type(Money, 102)


@pytest.mark.usefixtures("registered")
def test_registered_struct_round_trips(cache: Cache) -> None:
    p = Point(3, -4, "here")
    cache.set("p", p)
    got = cache.get("p")
    assert type(got) is Point
    assert got == p
    # an unregistered Struct still comes back as its MessagePack form
    cache.set("q", Plain(1, "x"))
    assert cache.get("q") == {"a": 1, "b": "x"}


@pytest.mark.usefixtures("registered")
def test_registered_dataclass_round_trips(cache: Cache) -> None:
    m = Money(1250, "EUR")
    cache.set("m", m)
    got = cache.get("m")
    assert type(got) is Money
    assert got == m
