"""Fixtures of the security tests: ``names`` (cache names destroyed at
teardown) and ``daemons`` (metisd processes killed at teardown)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "daemon")
)

from _metisd import Metisd
from _workers import new_name

from metis_shm import Cache


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
