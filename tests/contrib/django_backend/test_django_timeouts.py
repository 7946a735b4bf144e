"""Timeouts on ``MetisCache`` as Django defines them.

``None`` caches forever, ``0`` (and a negative timeout) does not cache,
fractions of a second and timeouts of years work, ``touch`` renews an
expiry, and ``TIMEOUT`` in the settings is the default of every write.
"""

from __future__ import annotations

import time

from _django_backend import Factory
from _workers import new_name
from django.core.cache.backends.base import DEFAULT_TIMEOUT

from metis_shm import Cache
from metis_shm.contrib.django import MetisCache

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
