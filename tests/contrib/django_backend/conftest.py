"""Fixtures of the ``metis_shm.contrib.django.MetisCache`` tests.

Django's settings are process-wide: they are configured here, once, before
any test module of this directory is imported (Django's own suite, which
needs settings of its own, runs in a child process: ``test_django_suite.py``).

* ``make_cache``: builds backends the way Django does, from ``LOCATION`` and
  the ``CACHES`` parameters; each is detached and its segment destroyed at
  teardown.
* ``cache``: one such backend on a unique segment. It stands in for the
  ``cache`` fixture of tests/conftest.py (a plain ``Cache``) in this
  directory only, so that the ported tests read like Django's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import django
import pytest
from _django_backend import Factory
from _workers import new_name  # tests/ is on sys.path (tests/conftest.py)
from django.conf import settings

from metis_shm import Cache
from metis_shm.contrib.django import MetisCache

if not settings.configured:
    settings.configure(
        SECRET_KEY="metis-tests",
        USE_TZ=True,
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
    )
    django.setup()


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
    """A MetisCache with the test's defaults, on a segment of its own."""
    return make_cache()
