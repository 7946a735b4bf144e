"""What the ``metis`` commands share: exit codes, usage errors, opening a cache, JSON output.

Every command module has ``register(subparsers)``, which adds its commands
to the ``metis`` parser (``metis_shm.cli.build_parser``) with a handler that
takes the parsed arguments and returns the exit code. A handler raises
``UsageError`` for bad input found after parsing (exit 2); ``main`` prints a
``MetisError`` the same way, with its code.
"""

from __future__ import annotations

import argparse
import base64
from typing import Any, TypeAlias

from metis_shm.cache import Cache, attach_existing

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What ``register(subparsers)`` gets: ``ArgumentParser.add_subparsers()``."""


class UsageError(Exception):
    """Bad command-line input found after parsing (exit code 2)."""


def open_existing(name: str, *, reads_values: bool = False, pickle: bool = False) -> Cache:
    """Attach to the existing cache ``name`` (``SegmentNotFound`` if there is none)."""
    # Only `get` decodes values; it unpickles a pickle cache's values only
    # when asked with --pickle (docs/security.md).
    return attach_existing(name, accept_pickle=pickle or not reads_values)


def jsonable(value: Any) -> Any:
    """``value`` as JSON can hold it: bytes as text when UTF-8 (else
    ``{"base64": ...}``), containers element by element, other objects as ``repr``."""
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Subparsers",
    "UsageError",
    "jsonable",
    "open_existing",
]
