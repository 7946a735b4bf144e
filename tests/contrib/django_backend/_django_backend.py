"""What the MetisCache tests share besides their fixtures (conftest.py): the
backend's dotted path, the type of ``make_cache``, and values and a
KEY_FUNCTION that Django's cache tests use."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from metis_shm.contrib.django import MetisCache

ROOT = Path(__file__).resolve().parents[3]
BACKEND = "metis_shm.contrib.django.MetisCache"

Factory = Callable[..., MetisCache]


class Point:  # a plain class: pickled like Django pickles model instances
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    __hash__ = None  # type: ignore[assignment]


def custom_key_func(key: str, key_prefix: str, version: int) -> str:
    """A KEY_FUNCTION, importable by dotted path."""
    return f"CUSTOM-{key_prefix}-{version}-{key}"
