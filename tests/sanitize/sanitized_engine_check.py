"""A pytest plugin for the sanitized run (``-p sanitized_engine_check``):
before any test, prove that the engine this pytest imports is the sanitized
build and that both sanitizer runtimes are loaded; stop the run otherwise.

It is loaded by ``test_sanitized_build.py`` in the pytest it starts, which
sets ``METIS_SANITIZED_TREE`` to the directory the sanitized build is in.
"""

from __future__ import annotations

import os

import pytest

TREE_ENV = "METIS_SANITIZED_TREE"
MARKER = "sanitized engine loaded from"


def _loaded_libraries() -> str:
    with open("/proc/self/maps") as maps:
        return maps.read()


def pytest_sessionstart(session: pytest.Session) -> None:
    """Check the engine's origin and the runtimes; print one line saying so."""
    tree = os.environ.get(TREE_ENV)
    if not tree:
        pytest.exit(f"{TREE_ENV} is not set: run through test_sanitized_build.py", returncode=3)
    from metis_shm import _engine

    engine = os.path.realpath(_engine.__file__ or "")
    if not engine.startswith(os.path.realpath(tree) + os.sep):
        pytest.exit(f"the engine is {engine}, not the sanitized build in {tree}", returncode=3)
    maps = _loaded_libraries()
    missing = [lib for lib in ("libasan", "libubsan") if lib not in maps]
    if missing:
        pytest.exit(f"{', '.join(missing)} not loaded: is the engine sanitized?", returncode=3)
    print(f"\n{MARKER} {engine} (libasan and libubsan mapped)")
