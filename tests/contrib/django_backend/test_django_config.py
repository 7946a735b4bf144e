"""``MetisCache`` configured through Django's ``CACHES`` setting.

LOCATION, TIMEOUT, KEY_PREFIX, VERSION and OPTIONS (Metis's own and Django's
MAX_ENTRIES), the errors Django reports for a bad configuration, the
serializer option against an existing segment, and the per-view cache
(``cache_page``) on a backend configured that way. The segment is opened
lazily, on first use.
"""

from __future__ import annotations

from typing import Any

import pytest
from _django_backend import BACKEND, Factory, Point
from _workers import new_name
from django.core.cache import InvalidCacheBackendError, caches
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpResponse
from django.test import RequestFactory, override_settings
from django.views.decorators.cache import cache_page

from metis_shm import Cache
from metis_shm.contrib.django import MetisCache

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
