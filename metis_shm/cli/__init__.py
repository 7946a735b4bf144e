"""The ``metis`` command line (``python -m metis_shm``): ``main`` and the parser.

Subcommands (and ``metis --version``: the package version and the segment
layout version this metis_shm reads and writes):

* ``metis ls [--json]``: every cache segment on the machine: capacity, used,
  creator, daemon, attached processes, and processes left on a destroyed
  segment of the name (stale).
* ``metis simulate TRACE... --sizes 100,1000 [--policies lru,sieve]``: replay
  traces through the engine's eviction policies and print their hit ratios
  (see docs/policies.md).
* ``metis stats NAME [--json]``: a cache's counters, totals and per shard.
* ``metis check NAME [--json]``: the full consistency check of a segment.
* ``metis snapshot NAME --dir DIR`` / ``metis restore NAME --dir DIR``: write a
  snapshot of a cache, or load the newest valid one (docs/persistence.md).
* ``metis config check FILE`` / ``metis config show``: validate a metisd
  configuration, or print the effective one with each value's source.
* ``metis get NAME KEY [--json]`` / ``metis set NAME KEY VALUE [--type T]
  [--ttl S]`` / ``metis delete NAME KEY``: one item by hand.
* ``metis keys NAME [--prefix P] [--limit N] [--json]``: list keys.
* ``metis inspect NAME [--json]``: header fields, layout, per-shard memory
  (items, bytes, free, largest free block, fragmentation), policy state.
* ``metis top NAME [--interval S] [--once]``: a live view (ops/s, hit ratio,
  memory by shard, items, evictions); q or Ctrl-C quits.
* ``metis bench NAME|temp [--seconds S]``: a quick get/set benchmark (ns/op).

See docs/cli.md for each command's output.

Exit codes:

* 0: success (``top``: quit with q or Ctrl-C);
* 1: the command ran and the answer is "no": ``check`` found problems,
  ``get``/``delete`` found no such key (``[KEY_NOT_FOUND]`` on stderr),
  ``snapshot``/``restore`` failed (anything else that went wrong, too);
* 2: bad usage or bad input, including a missing cache
  (``[SEGMENT_NOT_FOUND]``): the error's code is printed on stderr;
* 130: interrupted (Ctrl-C) outside ``top``; ``top`` ends with 128 + the
  signal's number on SIGTERM or SIGHUP (the terminal restored first).

The commands live in one module each, by group: ``ls``, ``simulate`` (simulate),
``inspect`` (stats, check, inspect, top), ``data`` (get, set, delete, keys),
``bench``, ``snapshot`` (snapshot, restore) and ``config``; ``common`` holds
what they share, ``progress`` the progress line of long commands.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from collections.abc import Sequence

from metis_shm import _engine
from metis_shm.cli import bench, config, data, inspect, ls, simulate, snapshot
from metis_shm.cli.common import EXIT_USAGE, UsageError
from metis_shm.errors import MetisError


def build_parser() -> argparse.ArgumentParser:
    """The ``metis`` parser: every command module's ``register``, in the order of ``--help``."""
    parser = argparse.ArgumentParser(
        prog="metis",
        description="Metis: a cache shared by Python processes through POSIX shared memory.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=version_text(),
        help="print the version and the segment layout version, and exit",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in (ls, simulate, inspect, data, bench, snapshot, config):
        module.register(sub)
    return parser


def version_text() -> str:
    """What ``metis --version`` prints: the installed package's version (its
    metadata) and the segment layout version of the engine."""
    try:
        version = importlib.metadata.version("metis-shm")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        from metis_shm import __version__ as version
    return f"metis {version} (metis-shm; segment layout version {_engine.LAYOUT})"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``metis`` command; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    try:
        code: int = args.handler(args)
        return code
    except UsageError as exc:
        print(f"metis {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MetisError as exc:
        # str(exc) starts with the error's code: "[TRACE_FORMAT] ..."
        print(f"metis {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"metis {args.command}: interrupted", file=sys.stderr)
        return 130


__all__ = ["build_parser", "main", "version_text"]
