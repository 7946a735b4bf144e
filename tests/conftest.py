"""Fixtures shared by the unit, multi-process, crash and fork tests.

* ``cache_name``: a unique segment name, destroyed at teardown even when the
  test failed.
* ``cache``: ``Cache(cache_name, capacity="8MiB")``, closed and destroyed after.
* ``seed`` / ``rng``: a random seed, from ``METIS_TEST_SEED`` when set, printed
  and added to the report of a failing test so the failure can be replayed.
* ``names``: hands out unique cache names, all destroyed at teardown.
* ``daemons``: starts metisd processes (tests/daemon/_metisd.py), all killed
  at teardown.
"""

from __future__ import annotations

import glob
import os
import random
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "daemon"))

from _metisd import Metisd
from _workers import SEGMENT_PREFIX, SHM_DIR, new_name

from metis_shm import Cache


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes seconds (stress, crash); -m 'not slow' skips")


@pytest.fixture
def cache_name() -> Iterator[str]:
    name = new_name()
    try:
        yield name
    finally:
        Cache.destroy(name)


@pytest.fixture
def cache(cache_name: str) -> Iterator[Cache]:
    c = Cache(cache_name, capacity="8MiB")
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def names() -> Iterator[Any]:
    """``names()`` hands out unique cache names; each is destroyed at teardown."""
    made: list[str] = []

    def make() -> str:
        name = new_name()
        made.append(name)
        return name

    try:
        yield make
    finally:
        for name in made:
            Cache.destroy(name)


@pytest.fixture
def daemons() -> Iterator[Any]:
    """``daemons(config, args=(), env=None)`` starts a metisd; all are killed at teardown."""
    started: list[Metisd] = []

    def start(config: Path, args: Sequence[str] = (), env: dict[str, str] | None = None) -> Metisd:
        d = Metisd(config, args, env).start()
        started.append(d)
        return d

    try:
        yield start
    finally:
        for d in started:
            d.kill()


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    env = os.environ.get("METIS_TEST_SEED")
    value = int(env) if env else random.SystemRandom().randrange(2**32)
    print(f"METIS_TEST_SEED={value}")
    request.node.metis_seed = value
    return value


@pytest.fixture
def rng(seed: int) -> random.Random:
    return random.Random(seed)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    report = yield
    seed_value = getattr(item, "metis_seed", None)
    if report.failed and seed_value is not None:
        report.sections.append(("random seed", f"rerun with METIS_TEST_SEED={seed_value}"))
    return report


@pytest.fixture(scope="session", autouse=True)
def _no_segments_left() -> Iterator[None]:
    """At the end of the session, unlink and report segments this run left behind."""
    yield
    left = sorted(glob.glob(os.path.join(SHM_DIR, f"metis.{SEGMENT_PREFIX}*")))
    for path in left:
        name = os.path.basename(path)[len("metis.") :]
        Cache.destroy(name)
    if left:
        warnings.warn(f"tests left {len(left)} segments behind: {left[:5]}", stacklevel=1)
