"""``metis_shm.contrib.django.MetisCache`` against Django's documented cache API.

A port of the checks Django applies to its built-in backends (its
``BaseCacheTests``), written from the documentation "Django's cache
framework": configuration through ``CACHES`` (LOCATION, TIMEOUT, KEY_PREFIX,
VERSION, KEY_FUNCTION, OPTIONS), the low-level API (get, set, add, get_or_set,
get_many, set_many, delete, delete_many, has_key/``in``, touch, incr, decr,
clear, close), timeouts (``None`` = forever, ``0`` = do not cache, the
default), versioning (``version=``, ``incr_version``/``decr_version``), key
validation warnings (``CacheKeyWarning``), the async ``a*`` variants, and the
per-view cache (``cache_page``) on top. Then what Metis adds: the cache is
shared by processes (fork and a fresh interpreter), opened lazily, atomic
``incr`` across processes, and the serializer option.

Every test uses a unique segment name and destroys it at teardown.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import os
import pickle
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import django
import pytest
from _workers import ForkedChild, new_name, run_in_fork  # tests/ is on sys.path (conftest.py)
from django.conf import settings
from django.core.cache import CacheKeyWarning, InvalidCacheBackendError, caches
from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpResponse
from django.test import RequestFactory, override_settings
from django.views.decorators.cache import cache_page

from metis_shm import Cache
from metis_shm.contrib.django import MetisCache

if not settings.configured:
    settings.configure(
        SECRET_KEY="metis-tests",
        USE_TZ=True,
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
    )
    django.setup()

ROOT = Path(__file__).resolve().parents[2]
BACKEND = "metis_shm.contrib.django.MetisCache"

Factory = Callable[..., MetisCache]


@pytest.fixture
def make_cache() -> Iterator[Factory]:
    """Build MetisCache backends the way Django does; detach and destroy them after."""
    made: list[MetisCache] = []

    def factory(location: str | None = None, **params: Any) -> MetisCache:
        params.setdefault("OPTIONS", {}).setdefault("capacity", "8MiB")
        backend = MetisCache(location or new_name(), params)
        made.append(backend)
        return backend

    try:
        yield factory
    finally:
        for backend in made:
            backend.detach()
            Cache.destroy(backend.location)


@pytest.fixture
def cache(make_cache: Factory) -> MetisCache:
    return make_cache()


class Unpicklable:
    def __getstate__(self) -> dict:
        raise pickle.PickleError()


class Point:  # a plain class: pickled like Django pickles model instances
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    __hash__ = None  # type: ignore[assignment]


def custom_key_func(key: str, key_prefix: str, version: int) -> str:
    """A KEY_FUNCTION, importable by dotted path."""
    return f"CUSTOM-{key_prefix}-{version}-{key}"


# --------------------------------------------------------------------------
# Configuration through CACHES
# --------------------------------------------------------------------------


def test_configured_through_caches_setting() -> None:
    name = new_name()
    conf = {
        "default": {
            "BACKEND": BACKEND,
            "LOCATION": name,
            "TIMEOUT": 60,
            "KEY_PREFIX": "site",
            "VERSION": 3,
            "OPTIONS": {"capacity": "4MiB", "policy": "lru", "max_value_size": "64KiB"},
        }
    }
    try:
        with override_settings(CACHES=conf):
            from django.core.cache import cache as default_cache

            backend = caches["default"]
            assert isinstance(backend, MetisCache)
            assert (backend.default_timeout, backend.key_prefix, backend.version) == (
                60,
                "site",
                3,
            )
            assert not Cache.exists(name), "opened lazily, on first use"
            default_cache.set("k", {"v": 1})
            assert default_cache.get("k") == {"v": 1}
            assert Cache.exists(name)
            metis = backend.cache
            assert metis.policy == "lru"
            assert metis.settings["max_value_size"] == 64 * 1024
            assert metis.settings["serializer"] == 1  # pickle, like Django's own backends
            assert list(metis.keys()) == ["site:3:k"]
            backend.detach()
    finally:
        Cache.destroy(name)


def test_missing_location_is_improperly_configured() -> None:
    with pytest.raises(ImproperlyConfigured, match="LOCATION"):
        MetisCache("", {})
    with pytest.raises(ImproperlyConfigured, match="LOCATION"):
        MetisCache("bad name/with slash", {})


def test_unknown_option_is_improperly_configured() -> None:
    with pytest.raises(ImproperlyConfigured, match="unknown"):
        MetisCache(new_name(), {"OPTIONS": {"capcity": "8MiB"}})
    with pytest.raises(ImproperlyConfigured, match="TIMEOUT"):
        MetisCache(new_name(), {"OPTIONS": {"default_ttl": 10}})
    with pytest.raises(ImproperlyConfigured, match="serializer"):
        MetisCache(new_name(), {"OPTIONS": {"serializer": "json"}})


def test_bad_option_value_is_improperly_configured(make_cache: Factory) -> None:
    backend = make_cache(OPTIONS={"policy": "random"})
    with pytest.raises(ImproperlyConfigured, match="policy"):
        backend.get("k")


def test_invalid_backend_path_is_djangos_error() -> None:
    with (
        override_settings(CACHES={"x": {"BACKEND": "metis_shm.contrib.django.Nope"}}),
        pytest.raises(InvalidCacheBackendError),
    ):
        caches["x"]


def test_max_entries_option_maps_to_metis(make_cache: Factory) -> None:
    backend = make_cache(OPTIONS={"capacity": "8MiB", "MAX_ENTRIES": 500, "CULL_FREQUENCY": 3})
    backend.set("k", 1)
    assert backend.cache.settings["max_entries"] == 500


def test_serializer_mismatch_with_existing_segment(make_cache: Factory) -> None:
    name = new_name()
    Cache(name, capacity="4MiB").close()  # msgpack, created by someone else
    backend = make_cache(name)
    with pytest.raises(ImproperlyConfigured, match="serializer"):
        backend.get("k")
    ok = make_cache(name, OPTIONS={"serializer": "msgpack"})
    ok.set("k", [1, 2])
    assert ok.get("k") == [1, 2]


def test_msgpack_option_stores_plain_data_only(make_cache: Factory) -> None:
    backend = make_cache(OPTIONS={"capacity": "8MiB", "serializer": "msgpack"})
    backend.set("data", {"a": [1, 2.5, None, True], "b": "x"})
    assert backend.get("data") == {"a": [1, 2.5, None, True], "b": "x"}
    backend.set("t", (1, 2))
    assert backend.get("t") == (1, 2)
    with pytest.raises(TypeError):
        backend.set("p", Point(1, 2))


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
# Timeouts
# --------------------------------------------------------------------------


def test_expiration(cache: MetisCache) -> None:
    cache.set("expire1", "very quickly", 1)
    cache.set("expire2", "very quickly", 1)
    cache.set("expire3", "very quickly", 1)
    time.sleep(1.1)
    assert cache.get("expire1") is None
    assert cache.add("expire2", "newvalue") is True
    assert cache.get("expire2") == "newvalue"
    assert not cache.has_key("expire3")


def test_float_timeout(cache: MetisCache) -> None:
    cache.set("key1", "spam", 100.2)
    assert cache.get("key1") == "spam"
    cache.set("key2", "eggs", 0.15)
    time.sleep(0.25)
    assert cache.get("key2") is None


def test_touch(cache: MetisCache) -> None:
    cache.set("expire1", "very quickly", timeout=0.5)
    assert cache.touch("expire1", timeout=4) is True
    time.sleep(0.7)
    assert cache.has_key("expire1")
    assert cache.get("expire1") == "very quickly"
    # touch() with timeout=None makes the key live forever
    cache.set("expire2", "v", timeout=0.3)
    assert cache.touch("expire2", timeout=None) is True
    time.sleep(0.4)
    assert cache.get("expire2") == "v"
    # touch() on a missing key
    assert cache.touch("nonexistent") is False


def test_touch_default_timeout(make_cache: Factory) -> None:
    backend = make_cache(TIMEOUT=1)  # Django makes TIMEOUT an int
    backend.set("k", "v", None)
    assert backend.touch("k") is True  # default TIMEOUT: expires again
    time.sleep(1.1)
    assert backend.get("k") is None


def test_forever_timeout(cache: MetisCache) -> None:
    """Passing None as timeout caches the value forever."""
    cache.set("key1", "eggs", None)
    assert cache.get("key1") == "eggs"
    assert cache.add("key2", "ham", None) is True
    assert cache.get("key2") == "ham"
    assert cache.add("key1", "new eggs", None) is False
    assert cache.get("key1") == "eggs"
    cache.set_many({"key3": "sausage", "key4": "lobster bisque"}, None)
    assert cache.get("key3") == "sausage"
    cache.set("key5", "belgian fries", timeout=1)
    assert cache.touch("key5", timeout=None) is True
    assert cache.cache.stats().items >= 5


def test_forever_ignores_a_segment_default_ttl(make_cache: Factory) -> None:
    name = new_name()
    Cache(name, capacity="4MiB", serializer="pickle", default_ttl=0.2).close()
    backend = make_cache(name, TIMEOUT=None)
    backend.set("forever", 1)
    backend.set("explicit", 2, None)
    time.sleep(0.3)
    assert backend.get_many(["forever", "explicit"]) == {"forever": 1, "explicit": 2}


def test_zero_timeout(cache: MetisCache) -> None:
    """A timeout of 0 does not cache (Django: "expire the value immediately")."""
    cache.set("key1", "eggs", 0)
    assert cache.get("key1") is None
    assert cache.add("key2", "ham", 0) is True
    assert cache.get("key2") is None
    cache.set_many({"key3": "sausage", "key4": "lobster bisque"}, 0)
    assert cache.get("key3") is None
    assert cache.get("key4") is None
    cache.set("key5", "belgian fries", timeout=5)
    assert cache.touch("key5", timeout=0) is True
    assert cache.get("key5") is None
    # set() with 0 removes a previous value
    cache.set("key6", "old")
    cache.set("key6", "new", 0)
    assert cache.get("key6") is None
    # add() with 0 on a present key: not added
    cache.set("key7", "here")
    assert cache.add("key7", "other", 0) is False
    assert cache.get("key7") == "here"


def test_negative_timeout(cache: MetisCache) -> None:
    cache.set("key1", "eggs", -1)
    assert cache.get("key1") is None
    cache.set("key2", "eggs")
    cache.set("key2", "eggs", -5)
    assert not cache.has_key("key2")


def test_long_timeout(cache: MetisCache) -> None:
    """Timeouts of years (past memcached's 30-day limit) and beyond int64 ns work."""
    year = 60 * 60 * 24 * 365
    cache.set("key1", "eggs", year)
    assert cache.get("key1") == "eggs"
    assert cache.add("key2", "ham", year) is True
    assert cache.get("key2") == "ham"
    cache.set_many({"key3": "sausage", "key4": "lobster bisque"}, year)
    assert cache.get("key3") == "sausage"
    cache.set("key5", "spam", 10**12)  # a timeout no clock reaches: forever
    assert cache.get("key5") == "spam"
    assert cache.touch("key5", 10**15) is True
    assert cache.get("key5") == "spam"


def test_default_timeout_from_settings(make_cache: Factory) -> None:
    backend = make_cache(TIMEOUT=1)  # Django makes TIMEOUT an int
    backend.set("k", "v")
    backend.add("a", "v")
    backend.set_many({"m": 1})
    backend.set("explicit", "v", timeout=DEFAULT_TIMEOUT)
    backend.set("forever", "v", None)
    assert backend.get_many(["k", "a", "m", "explicit", "forever"]) == {
        "k": "v",
        "a": "v",
        "m": 1,
        "explicit": "v",
        "forever": "v",
    }
    time.sleep(1.1)
    assert backend.get_many(["k", "a", "m", "explicit", "forever"]) == {"forever": "v"}


def test_timeout_none_in_settings_caches_forever(make_cache: Factory) -> None:
    backend = make_cache(TIMEOUT=None)
    assert backend.default_timeout is None
    backend.set("k", "v")
    assert backend.cache.settings["default_ttl_ns"] == 0
    assert backend.get("k") == "v"


def test_timeout_zero_in_settings_caches_nothing(make_cache: Factory) -> None:
    backend = make_cache(TIMEOUT=0)
    backend.set("k", "v")
    assert backend.get("k") is None
    backend.set("k2", "v", 10)
    assert backend.get("k2") == "v"


# --------------------------------------------------------------------------
# Keys: prefixes, KEY_FUNCTION, validation
# --------------------------------------------------------------------------


def test_key_prefix_separates_caches_on_one_segment(make_cache: Factory) -> None:
    name = new_name()
    a = make_cache(name, KEY_PREFIX="a")
    b = make_cache(name, KEY_PREFIX="b")
    a.set("somekey", "value")
    assert b.has_key("somekey") is False
    b.set("somekey", "other")
    assert a.get("somekey") == "value"
    assert sorted(a.cache.keys()) == ["a:1:somekey", "b:1:somekey"]


def test_custom_key_func(make_cache: Factory) -> None:
    name = new_name()
    by_callable = make_cache(name, KEY_FUNCTION=custom_key_func)
    by_path = make_cache(name, KEY_FUNCTION=f"{__name__}.custom_key_func")
    default = make_cache(name)
    by_callable.set("answer1", 42)
    assert by_callable.get("answer1") == 42
    assert by_path.get("answer1") == 42
    assert default.get("answer1") is None
    assert "CUSTOM--1-answer1" in set(default.cache.keys())


def test_make_key_and_make_and_validate_key(make_cache: Factory) -> None:
    backend = make_cache(KEY_PREFIX="p", VERSION=7)
    assert backend.make_key("k") == "p:7:k"
    assert backend.make_key("k", version=2) == "p:2:k"
    assert backend.make_and_validate_key("k") == "p:7:k"


def _key_warning_ops(cache: MetisCache, key: str) -> list[Callable[[], Any]]:
    return [
        lambda: cache.add(key, 1),
        lambda: cache.get(key),
        lambda: cache.set(key, 1),
        lambda: cache.touch(key),
        lambda: cache.delete(key),
        lambda: cache.get_many([key]),
        lambda: cache.set_many({key: 1}),
        lambda: cache.delete_many([key]),
        lambda: cache.has_key(key),
        lambda: cache.get_or_set(key, 1),
        lambda: cache.incr_version(key) if cache.set(key, 1) is None else None,
    ]


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("key with spaces and 清", "characters that will cause errors"),
        ("key\x00ctrl", "characters that will cause errors"),
        ("a" * 251, "longer than 250"),
    ],
    ids=["space", "control", "too-long-for-memcached"],
)
def test_invalid_keys_warn_like_memcached(cache: MetisCache, key: str, message: str) -> None:
    """Django warns (CacheKeyWarning) about keys memcached would reject; they still work."""
    for op in _key_warning_ops(cache, key):
        with pytest.warns(CacheKeyWarning, match=message):
            op()
    with pytest.warns(CacheKeyWarning):
        cache.set(key, "v")
    with pytest.warns(CacheKeyWarning):
        assert cache.get(key) == "v"
    with pytest.warns(CacheKeyWarning), pytest.raises(ValueError):
        cache.incr(key + "missing")


def test_valid_keys_do_not_warn(cache: MetisCache) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache.set("a-valid:key_1.2", 1)
        assert cache.get("a-valid:key_1.2") == 1


def test_keys_longer_than_the_segment_limit_are_hashed(make_cache: Factory) -> None:
    backend = make_cache(OPTIONS={"capacity": "8MiB", "max_key_size": 300})
    long_key = "k" * 2000
    other = "k" * 1999 + "j"
    with pytest.warns(CacheKeyWarning):
        backend.set(long_key, "v1")
    with pytest.warns(CacheKeyWarning):
        backend.set(other, "v2")
    with pytest.warns(CacheKeyWarning):
        assert backend.get(long_key) == "v1"
    with pytest.warns(CacheKeyWarning):
        assert backend.get_many([long_key, other]) == {long_key: "v1", other: "v2"}
    assert all(len(k) <= 300 for k in backend.cache.keys(prefix=None))


# --------------------------------------------------------------------------
# Versions
# --------------------------------------------------------------------------


def test_cache_versioning_get_set(make_cache: Factory) -> None:
    name = new_name()
    v1 = make_cache(name)
    v2 = make_cache(name, VERSION=2)
    # set, using default version = 1
    v1.set("answer1", 42)
    assert v1.get("answer1") == 42
    assert v1.get("answer1", version=1) == 42
    assert v1.get("answer1", version=2) is None
    assert v2.get("answer1") is None
    assert v2.get("answer1", version=1) == 42
    # set, default version = 1, but manually override version = 2
    v1.set("answer2", 42, version=2)
    assert v1.get("answer2") is None
    assert v1.get("answer2", version=2) == 42
    assert v2.get("answer2") == 42
    # v2 set, using default version = 2
    v2.set("answer3", 42)
    assert v1.get("answer3") is None
    assert v2.get("answer3", version=2) == 42


def test_cache_versioning_add_delete_has_key_touch(make_cache: Factory) -> None:
    name = new_name()
    v1 = make_cache(name)
    v2 = make_cache(name, VERSION=2)
    assert v1.add("answer1", 42, version=2) is True
    assert v1.add("answer1", 37, version=2) is False
    assert v1.add("answer1", 37, version=1) is True
    assert v1.get("answer1", version=1) == 37
    assert v2.get("answer1") == 42
    assert v1.has_key("answer1") and v1.has_key("answer1", version=2)
    assert v1.touch("answer1", 10, version=2) is True
    assert v1.delete("answer1", version=2) is True
    assert v2.get("answer1") is None
    assert v1.get("answer1") == 37


def test_cache_versioning_many_and_incr(make_cache: Factory) -> None:
    name = new_name()
    v1 = make_cache(name)
    v2 = make_cache(name, VERSION=2)
    v1.set_many({"ford1": 37, "arthur1": 42}, version=2)
    assert v1.get_many(["ford1", "arthur1"]) == {}
    assert v1.get_many(["ford1", "arthur1"], version=2) == {"ford1": 37, "arthur1": 42}
    assert v2.get_many(["ford1", "arthur1"]) == {"ford1": 37, "arthur1": 42}
    v1.delete_many(["ford1"], version=2)
    assert v2.get_many(["ford1", "arthur1"]) == {"arthur1": 42}
    v1.set("answer", 1, version=1)
    v1.set("answer", 2, version=2)
    assert v1.incr("answer", version=2) == 3
    assert v1.get("answer") == 1
    assert v1.decr("answer", version=1) == 0
    assert v2.get("answer") == 3


def test_incr_version(make_cache: Factory) -> None:
    name = new_name()
    cache = make_cache(name)
    v2 = make_cache(name, VERSION=2)
    cache.set("answer", 42, version=2)
    assert cache.get("answer") is None
    assert cache.get("answer", version=2) == 42
    assert cache.incr_version("answer", version=2) == 3
    assert cache.get("answer", version=2) is None
    assert cache.get("answer", version=3) == 42
    v2.set("answer2", 42)
    assert v2.incr_version("answer2") == 3
    assert v2.get("answer2") is None
    assert v2.get("answer2", version=3) == 42
    assert v2.incr_version("answer2", delta=2, version=3) == 5
    assert v2.get("answer2", version=5) == 42
    with pytest.raises(ValueError):
        cache.incr_version("does_not_exist")
    cache.set("null", None)
    assert cache.incr_version("null") == 2
    assert cache.get("null", self_missing := object(), version=2) is None
    assert self_missing is not None


def test_decr_version(make_cache: Factory) -> None:
    name = new_name()
    cache = make_cache(name)
    v2 = make_cache(name, VERSION=2)
    cache.set("answer", 42, version=2)
    assert cache.decr_version("answer", version=2) == 1
    assert cache.get("answer") == 42
    assert cache.get("answer", version=2) is None
    v2.set("answer2", 42)
    assert v2.decr_version("answer2") == 1
    assert v2.get("answer2", version=1) == 42
    assert v2.get("answer2") is None
    with pytest.raises(ValueError):
        cache.decr_version("does_not_exist", version=2)


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


# --------------------------------------------------------------------------
# Per-view cache on top of the backend
# --------------------------------------------------------------------------


def test_cache_page_serves_the_cached_response() -> None:
    name = new_name()
    conf = {"default": {"BACKEND": BACKEND, "LOCATION": name, "OPTIONS": {"capacity": "4MiB"}}}
    calls = []

    @cache_page(60)
    def view(request: Any) -> HttpResponse:
        calls.append(1)
        return HttpResponse(f"computed {len(calls)}")

    try:
        with override_settings(CACHES=conf, ALLOWED_HOSTS=["testserver"]):
            factory = RequestFactory()
            first = view(factory.get("/page"))
            second = view(factory.get("/page"))
            assert first.content == second.content == b"computed 1"
            assert calls == [1]
            assert "max-age=60" in second["Cache-Control"]
            other = view(factory.get("/page?x=1"))
            assert other.content == b"computed 2"
            caches["default"].clear()
            assert view(factory.get("/page")).content == b"computed 3"
            caches["default"].detach()
    finally:
        Cache.destroy(name)


# --------------------------------------------------------------------------
# Shared between processes
# --------------------------------------------------------------------------


def _child_reads_and_writes(backend: MetisCache) -> Any:
    seen = backend.get("from-parent")
    backend.set("from-child", {"pid": os.getpid()})
    return seen, backend.incr("hits")


def test_forked_child_shares_the_cache(cache: MetisCache) -> None:
    cache.set("from-parent", [1, 2])
    cache.set("hits", 0)
    seen, hits = run_in_fork(_child_reads_and_writes, cache)
    assert seen == [1, 2]
    assert hits == 1
    child = cache.get("from-child")
    assert child["pid"] != os.getpid()
    assert cache.get("hits") == 1


def test_backend_first_used_in_the_child(make_cache: Factory) -> None:
    backend = make_cache()
    assert backend._metis is None  # not opened yet: the child opens its own
    assert run_in_fork(lambda: backend.set("k", "child") or os.getpid()) != os.getpid()
    assert backend.get("k") == "child"


def _incr_loop(backend: MetisCache, n: int) -> int:
    for _ in range(n):
        backend.incr("counter")
    return n


def test_incr_is_atomic_across_processes(cache: MetisCache) -> None:
    cache.set("counter", 0)
    children = [ForkedChild(_incr_loop, cache, 500) for _ in range(4)]
    assert [c.join(timeout=60) for c in children] == [500] * 4
    assert cache.get("counter") == 2000


def test_add_is_atomic_across_processes(cache: MetisCache) -> None:
    cache.get("warm")  # opened before fork: children inherit the mapping
    children = [ForkedChild(lambda i=i: cache.add("lock", i, timeout=30)) for i in range(6)]
    won = [c.join(timeout=30) for c in children]
    assert won.count(True) == 1
    assert cache.get("lock") == won.index(True)


def test_another_interpreter_configured_with_caches_shares_data(cache: MetisCache) -> None:
    cache.set("greeting", {"text": "hello"})
    code = f"""
import django
from django.conf import settings
settings.configure(CACHES={{"default": {{
    "BACKEND": "{BACKEND}", "LOCATION": "{cache.location}",
    "OPTIONS": {{"capacity": "8MiB"}}}}}})
django.setup()
from django.core.cache import cache
got = cache.get("greeting")
assert got == {{"text": "hello"}}, (got, list(cache.cache.keys()), cache.cache.stats())
cache.set("reply", ("from", "subprocess"))
"""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, (proc.stderr, list(cache.cache.keys()), cache.cache.stats())
    assert cache.get("reply") == ("from", "subprocess")


def test_clear_is_seen_by_every_process(cache: MetisCache) -> None:
    cache.set("k", "v")
    assert run_in_fork(lambda: cache.clear() or cache.get("k")) is None
    assert cache.get("k") is None


def test_detach_and_reopen(cache: MetisCache) -> None:
    cache.set("k", "v")
    cache.detach()
    assert cache._metis is None
    assert cache.get("k") == "v"  # reopened on use; the segment kept the data
    assert "open" in repr(cache)
