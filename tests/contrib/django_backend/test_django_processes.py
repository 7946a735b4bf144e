"""What Metis adds to Django's cache: one cache shared by processes.

A forked child and a fresh interpreter configured through ``CACHES`` see
the parent's data and it theirs; a backend first used in a child opens the
segment there; ``incr`` and ``add`` are atomic across processes; ``clear``
is seen by all; a detached backend reopens on use.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from _django_backend import BACKEND, ROOT, Factory
from _workers import ForkedChild, run_in_fork

from metis_shm.contrib.django import MetisCache

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
