"""The low-level cache API of Django's cache framework, on ``MetisCache``.

get, set, add, get_or_set, get_many, set_many, delete, delete_many,
has_key/``in``, incr, decr, clear and close; the values Django stores
(pickled: any type, ``None``, responses, large and binary values) and
what a value that cannot be stored does; then the async ``a*`` variants of
the same API.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import os
import pickle
import time
from typing import Any

import pytest
from _django_backend import Factory, Point, custom_key_func
from django.core.cache import CacheKeyWarning
from django.http import HttpResponse

from metis_shm.contrib.django import MetisCache


class Unpicklable:
    def __getstate__(self) -> dict:
        raise pickle.PickleError()


# --------------------------------------------------------------------------
# The low-level API
# --------------------------------------------------------------------------


def test_simple_get_set(cache: MetisCache) -> None:
    cache.set("key", "value")
    assert cache.get("key") == "value"
    cache.set("key", "new value")
    assert cache.get("key") == "new value"


def test_get_missing_returns_default(cache: MetisCache) -> None:
    assert cache.get("does_not_exist") is None
    assert cache.get("does_not_exist", "bang!") == "bang!"


def test_none_can_be_stored_and_told_apart_with_a_sentinel(cache: MetisCache) -> None:
    sentinel = object()
    cache.set("nothing", None)
    assert cache.get("nothing", sentinel) is None
    assert cache.get("missing", sentinel) is sentinel
    assert cache.has_key("nothing")


def test_set_returns_none(cache: MetisCache) -> None:
    assert cache.set("key", "value") is None


def test_add(cache: MetisCache) -> None:
    assert cache.add("addkey1", "value") is True
    assert cache.add("addkey1", "newvalue") is False
    assert cache.get("addkey1") == "value"


def test_add_after_expiry(cache: MetisCache) -> None:
    cache.set("k", "old", timeout=0.2)
    time.sleep(0.3)
    assert cache.add("k", "new") is True
    assert cache.get("k") == "new"


def test_delete(cache: MetisCache) -> None:
    cache.set_many({"key1": "spam", "key2": "eggs"})
    assert cache.delete("key1") is True
    assert cache.get("key1") is None
    assert cache.get("key2") == "eggs"
    assert cache.delete("key1") is False


def test_delete_nonexistent(cache: MetisCache) -> None:
    assert cache.delete("nonexistent_key") is False


def test_has_key_and_in(cache: MetisCache) -> None:
    cache.set("hello1", "goodbye1")
    assert cache.has_key("hello1")
    assert "hello1" in cache
    assert not cache.has_key("goodbye1")
    assert "goodbye1" not in cache
    cache.set("no_expiry", "here", None)
    assert cache.has_key("no_expiry")
    cache.set("null", None)
    assert cache.has_key("null")


def test_get_many(cache: MetisCache) -> None:
    cache.set_many({"a": "a", "b": "b", "c": "c", "d": "d"})
    assert cache.get_many(["a", "c", "d"]) == {"a": "a", "c": "c", "d": "d"}
    assert cache.get_many(["a", "b", "e"]) == {"a": "a", "b": "b"}
    assert cache.get_many(iter(["a", "b", "e"])) == {"a": "a", "b": "b"}
    assert cache.get_many([]) == {}
    cache.set_many({"x": None, "y": 1})
    assert cache.get_many(["x", "y"]) == {"x": None, "y": 1}


def test_set_many(cache: MetisCache) -> None:
    assert cache.set_many({"key1": "spam", "key2": "eggs"}) == []
    assert cache.get("key1") == "spam"
    assert cache.get("key2") == "eggs"
    assert cache.set_many({}) == []


def test_set_many_with_timeout(cache: MetisCache) -> None:
    cache.set_many({"key1": "spam", "key2": "eggs"}, 0.2)
    assert cache.get("key1") == "spam"
    time.sleep(0.3)
    assert cache.get("key1") is None
    assert cache.get("key2") is None


def test_set_many_returns_failed_keys(make_cache: Factory) -> None:
    backend = make_cache(OPTIONS={"capacity": "8MiB", "max_value_size": "4KiB"})
    backend.set("big", "old")
    failed = backend.set_many({"small": "x", "big": os.urandom(64 * 1024), "other": 1})
    assert failed == ["big"]
    assert backend.get_many(["small", "big", "other"]) == {"small": "x", "other": 1}


def test_too_large_value_is_not_stored_like_memcached(make_cache: Factory) -> None:
    backend = make_cache(OPTIONS={"capacity": "8MiB", "max_value_size": "4KiB"})
    big = os.urandom(64 * 1024)
    backend.set("key", "small value")
    backend.set("key", big)  # fails quietly...
    assert backend.get("key") is None  # ...and no stale value is served
    assert backend.add("other", big) is False
    assert backend.get("other") is None


def test_delete_many(cache: MetisCache) -> None:
    cache.set_many({"key1": "spam", "key2": "eggs", "key3": "ham"})
    assert cache.delete_many(["key1", "key2", "missing"]) is None
    assert cache.get("key1") is None
    assert cache.get("key2") is None
    assert cache.get("key3") == "ham"
    cache.delete_many([])


def test_clear(cache: MetisCache) -> None:
    cache.set_many({"key1": "spam", "key2": "eggs"})
    assert cache.clear() is None
    assert cache.get("key1") is None
    assert cache.get("key2") is None


def test_incr(cache: MetisCache) -> None:
    cache.set("answer", 41)
    assert cache.incr("answer") == 42
    assert cache.get("answer") == 42
    assert cache.incr("answer", 10) == 52
    assert cache.get("answer") == 52
    assert cache.incr("answer", -10) == 42
    with pytest.raises(ValueError):
        cache.incr("does_not_exist")
    with pytest.raises(ValueError):
        cache.incr("does_not_exist", -1)
    cache.set("null", None)
    with pytest.raises(TypeError):
        cache.incr("null")


def test_decr(cache: MetisCache) -> None:
    cache.set("answer", 43)
    assert cache.decr("answer") == 42
    assert cache.get("answer") == 42
    assert cache.decr("answer", 10) == 32
    assert cache.get("answer") == 32
    assert cache.decr("answer", -10) == 42
    with pytest.raises(ValueError):
        cache.decr("does_not_exist")
    cache.set("text", "abc")
    with pytest.raises(TypeError):
        cache.decr("text")


def test_incr_non_counter_numbers_follow_python(cache: MetisCache) -> None:
    cache.set("f", 1.5)
    assert cache.incr("f") == 2.5
    assert cache.get("f") == 2.5
    cache.set("d", decimal.Decimal("1.10"))
    assert cache.incr("d", 2) == decimal.Decimal("3.10")
    cache.set("big", 2**63 - 1)
    assert cache.incr("big") == 2**63  # past 64 bits: Python ints, like Django
    assert cache.get("big") == 2**63
    assert cache.decr("big", 2) == 2**63 - 2
    assert cache.incr("big") == 2**63 - 1


def test_incr_keeps_the_expiry(cache: MetisCache) -> None:
    cache.set("n", 1, timeout=0.3)
    assert cache.incr("n") == 2
    time.sleep(0.4)
    assert cache.get("n") is None


def test_close_keeps_working(cache: MetisCache) -> None:
    cache.set("k", "v")
    assert cache.close() is None
    assert cache.get("k") == "v"
    from django.core.signals import request_finished

    request_finished.send(sender=None)  # Django closes caches after each request
    assert cache.get("k") == "v"


def test_data_types(cache: MetisCache) -> None:
    stuff = {
        "string": "this is a string",
        "int": 42,
        "bool": True,
        "list": [1, 2, 3, 4],
        "tuple": (1, 2, 3, 4),
        "dict": {"A": 1, "B": 2, 3: "int key"},
        "function": custom_key_func,
        "class": Point,
        "instance": Point(1, 2),
        "set": {1, 2},
        "frozenset": frozenset({3}),
        "bytes": b"\x00\xff",
        "bytearray": bytearray(b"ab"),
        "float": 1.25,
        "decimal": decimal.Decimal("10.01"),
        "datetime": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
        "date": datetime.date(2024, 1, 2),
        "bigint": 10**30,
        "negative": -(2**63),
    }
    cache.set("stuff", stuff)
    assert cache.get("stuff") == stuff
    for k, v in stuff.items():
        cache.set(k, v)
        got = cache.get(k)
        assert got == v and type(got) is type(v), k


def test_unicode_keys_and_values(cache: MetisCache) -> None:
    stuff = {
        "ascii": "ascii_value",
        "unicode_ascii": "Iñtërnâtiônàlizætiøn1",
        "Iñtërnâtiônàlizætiøn": "Iñtërnâtiônàlizætiøn2",
        "ascii2": {"x": 1},
    }
    for key, value in stuff.items():
        cache.set(key, value)
        assert cache.get(key) == value
        assert cache.delete(key) is True
        assert cache.add(key, value) is True
        assert cache.get(key) == value
    cache.delete_many(stuff)
    cache.set_many(stuff)
    assert cache.get_many(stuff) == stuff


def test_binary_string(cache: MetisCache) -> None:
    import zlib

    value = "value_to_be_compressed" * 1000
    compressed = zlib.compress(value.encode())
    cache.set("binary1", compressed)
    assert zlib.decompress(cache.get("binary1")).decode() == value
    cache.add("binary1-add", compressed)
    assert zlib.decompress(cache.get("binary1-add")).decode() == value
    cache.set_many({"binary1-set_many": compressed})
    assert zlib.decompress(cache.get("binary1-set_many")).decode() == value


def test_large_value_is_compressed_and_round_trips(cache: MetisCache) -> None:
    value = ["x" * 100] * 2000  # ~200 KB pickled, compressible
    cache.set("big", value)
    assert cache.get("big") == value


def test_cache_http_response(cache: MetisCache) -> None:
    response = HttpResponse("content")
    response.cookies["c"] = "value"
    response["X-Header"] = "yes"
    cache.set("response", response)
    got = cache.get("response")
    assert got.content == b"content"
    assert got["X-Header"] == "yes"
    assert got.cookies["c"].value == "value"


def test_set_fail_on_pickleerror(cache: MetisCache) -> None:
    with pytest.raises(pickle.PickleError):
        cache.set("unpicklable", Unpicklable())
    with pytest.raises(pickle.PickleError):
        cache.add("unpicklable", Unpicklable())
    assert cache.get("unpicklable") is None


def test_get_or_set(cache: MetisCache) -> None:
    assert cache.get("projector") is None
    assert cache.get_or_set("projector", 42) == 42
    assert cache.get("projector") == 42
    assert cache.get_or_set("projector", 43) == 42
    assert cache.get_or_set("null", None) is None
    assert cache.has_key("null")  # None is stored, as in Django >= 3.1


def test_get_or_set_callable(cache: MetisCache) -> None:
    calls = []

    def my_callable() -> str:
        calls.append(1)
        return "value"

    assert cache.get_or_set("mykey", my_callable) == "value"
    assert cache.get_or_set("mykey", my_callable) == "value"
    assert calls == [1]
    assert cache.get_or_set("null", lambda: None) is None
    assert cache.get("null", "default") is None


def test_get_or_set_version_and_timeout(cache: MetisCache) -> None:
    assert cache.get_or_set("brian", 1979, version=2) == 1979
    assert cache.get("brian", version=1) is None
    assert cache.get("brian", version=2) == 1979
    assert cache.get_or_set("t", "v", timeout=0.2) == "v"
    time.sleep(0.3)
    assert cache.get("t") is None


# --------------------------------------------------------------------------
# Async API
# --------------------------------------------------------------------------


def test_async_api(cache: MetisCache) -> None:
    async def main() -> None:
        assert await cache.aget("missing") is None
        assert await cache.aget("missing", "d") == "d"
        assert await cache.aset("k", {"v": 1}) is None
        assert await cache.aget("k") == {"v": 1}
        assert await cache.aadd("k", 2) is False
        assert await cache.aadd("k2", 2) is True
        assert await cache.ahas_key("k2") is True
        assert await cache.atouch("k2", 10) is True
        assert await cache.atouch("nope") is False
        assert await cache.aincr("k2", 5) == 7
        assert await cache.adecr("k2") == 6
        with pytest.raises(ValueError):
            await cache.aincr("nope")
        assert await cache.aset_many({"a": 1, "b": 2}) == []
        assert await cache.aget_many(["a", "b", "c"]) == {"a": 1, "b": 2}
        assert await cache.adelete_many(["a"]) is None
        assert await cache.adelete("b") is True
        assert await cache.adelete("b") is False
        assert await cache.aget_or_set("g", lambda: "computed") == "computed"
        assert await cache.aget_or_set("g", "other") == "computed"
        assert await cache.aincr_version("g") == 2
        assert await cache.aget("g", version=2) == "computed"
        assert await cache.adecr_version("g", version=2) == 1
        assert await cache.aget("g") == "computed"
        await cache.aset("z", "v", 0)
        assert await cache.aget("z") is None
        assert await cache.aclose() is None
        assert await cache.aclear() is None
        assert await cache.aget("k") is None

    asyncio.run(main())


def test_async_and_sync_see_the_same_data(cache: MetisCache) -> None:
    cache.set("from-sync", 1)

    async def main() -> Any:
        await cache.aset("from-async", 2)
        return await cache.aget("from-sync")

    assert asyncio.run(main()) == 1
    assert cache.get("from-async") == 2


def test_async_key_warnings(cache: MetisCache) -> None:
    async def main() -> None:
        with pytest.warns(CacheKeyWarning):
            await cache.aset("bad key", 1)

    asyncio.run(main())
