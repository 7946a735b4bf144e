"""Keys on ``MetisCache``: prefixes, KEY_FUNCTION, validation and versions.

KEY_PREFIX separates caches that share a segment; KEY_FUNCTION is used by
callable or dotted path; keys memcached would reject raise Django's
``CacheKeyWarning`` and still work, keys past the segment's limit are
hashed; ``version=`` and ``VERSION`` pick the version a key is stored under,
``incr_version``/``decr_version`` move a value between versions.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
from _django_backend import Factory, custom_key_func
from _workers import new_name
from django.core.cache import CacheKeyWarning

from metis_shm.contrib.django import MetisCache

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
    by_path = make_cache(name, KEY_FUNCTION=f"{custom_key_func.__module__}.custom_key_func")
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
