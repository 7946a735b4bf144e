"""Sizes ("64MiB", "1.5GB", 4096) and durations ("5m", "250ms", 30) as the
config, the CLI and ``Cache(...)`` accept them."""

from __future__ import annotations

import re

from metis_shm.errors import InvalidConfig

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1000**4, "tb": 1000**4, "tib": 1024**4,
}  # fmt: skip
_DURATION_UNITS = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER_UNIT = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*$")


def parse_size(value: int | str, field: str = "size") -> int:
    """Bytes from an int or a string such as ``"256MiB"`` (1024-based) or ``"1GB"``."""
    if isinstance(value, bool):
        raise _bad(field, value, "a size such as 4096, '64MiB' or '1GB'")
    if isinstance(value, int):
        if value < 0:
            raise _bad(field, value, "a size of at least 0 bytes")
        return value
    if isinstance(value, str):
        m = _NUMBER_UNIT.match(value)
        if m and m.group(2).lower() in _SIZE_UNITS:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    raise _bad(
        field,
        value,
        "a size such as 4096, '64MiB' or '1GB' (units: B, KB, KiB, MB, MiB, GB, GiB, TB, TiB)",
    )


def parse_duration(value: float | int | str, field: str = "duration") -> float:
    """Seconds from a number or a string such as ``"5m"``, ``"250ms"``, ``"2h"``."""
    if isinstance(value, bool):
        raise _bad(field, value, "a duration such as 30, '250ms', '5m' or '2h'")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = _NUMBER_UNIT.match(value)
        if m and m.group(2).lower() in _DURATION_UNITS:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]
    raise _bad(
        field, value, "a duration such as 30, '250ms', '5m' or '2h' (units: us, ms, s, m, h, d)"
    )


def format_size(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _bad(field: str, value: object, allowed: str) -> InvalidConfig:
    return InvalidConfig(
        f"{field}: {value!r} is not valid; expected {allowed}",
        context={"field": field, "value": value, "allowed": allowed},
    )
