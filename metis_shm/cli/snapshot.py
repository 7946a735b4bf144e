"""``metis snapshot`` and ``metis restore``: snapshots by hand.

* ``metis snapshot NAME --dir DIR [--retention N]``: write a snapshot of a
  running cache into DIR, keeping the newest N of that cache.
* ``metis restore NAME --dir DIR [--file F] [--create [--capacity SIZE]]``:
  load the newest valid snapshot (or F) into the cache; ``--create`` creates
  the cache first, with the snapshotted cache's settings.

Encryption: ``--key-file F`` (or ``$METIS_SNAPSHOT_KEY``) encrypts a new
snapshot with that key; for ``restore`` every ``--key-file`` (repeatable)
is a key that may read. ``metis snapshot`` (on demand) and ``metis restore``
are recorded in the audit log (``metis_shm.daemon.audit``, ``$METIS_AUDIT_FILE``).

Progress goes to stderr, the summary to stdout. Exit codes: 0 success, 1 the
snapshot could not be written or no usable snapshot was found (corrupt,
truncated, none at all), 2 bad input (the error's code is printed).
``register(subparsers)`` adds both commands to the ``metis`` parser.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from metis_shm.cache import Cache, attach_existing
from metis_shm.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Subparsers
from metis_shm.cli.progress import ProgressLine
from metis_shm.daemon import audit
from metis_shm.daemon.snapshots.crypto import KEY_ENV, SnapshotKeys, parse_key, read_key_file
from metis_shm.daemon.snapshots.format import (
    SnapshotInfo,
    list_snapshots,
    read_snapshot_info,
    write_snapshot,
)
from metis_shm.daemon.snapshots.restore import restore, restore_latest
from metis_shm.errors import (
    InvalidConfig,
    MetisError,
    SegmentNotFound,
    SnapshotCorrupt,
    SnapshotNotFound,
)
from metis_shm.segment import shm_path
from metis_shm.units import format_size, parse_size

_SNAPSHOT_EXAMPLES = """\
examples:
  metis snapshot app --dir /var/lib/metis
  metis snapshot app --dir /var/lib/metis --retention 5
  metis snapshot app --dir /var/lib/metis --key-file /etc/metis/snapshot.key

The file is DIR/metis.NAME.<UTC time>.snap, written atomically (temp file,
fsync, rename); see docs/persistence.md.
"""

_RESTORE_EXAMPLES = """\
examples:
  metis restore app --dir /var/lib/metis
  metis restore app --file /var/lib/metis/metis.app.20250101T120000.000000Z.snap
  metis restore app --dir /var/lib/metis --create --capacity 512MiB
  metis restore app --dir /var/lib/metis --key-file new.key --key-file old.key

Without --file the newest snapshot of NAME that passes its checksum is loaded;
corrupt or truncated ones are reported and skipped. Nothing is stored before
the whole file has been checked. Items that have expired are not restored.
"""


def register(subparsers: Subparsers) -> None:
    """Add ``snapshot`` and ``restore`` to the ``metis`` command's subparsers."""
    snap = subparsers.add_parser(
        "snapshot",
        help="write a snapshot of a cache's live items to a file",
        description=(
            "Write every live item of cache NAME to a snapshot file in DIR (each shard "
            "is a consistent cut), then keep only the newest --retention snapshots of "
            "NAME there."
        ),
        epilog=_SNAPSHOT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    snap.add_argument("name", help="cache name")
    snap.add_argument("--dir", required=True, metavar="DIR", help="snapshot directory")
    snap.add_argument(
        "--retention",
        type=int,
        default=3,
        metavar="N",
        help="snapshots of this cache to keep, the new one included (default: 3)",
    )
    snap.add_argument(
        "--key-file",
        metavar="F",
        help="encrypt the snapshot (AES-256-GCM) with the key in F: 32 raw bytes, 64 hex "
        "digits or base64 (default: $METIS_SNAPSHOT_KEY if set, else not encrypted)",
    )
    snap.add_argument(
        "--group",
        metavar="GROUP",
        help="give the file to GROUP (mode 0640) instead of mode 0600",
    )
    snap.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    snap.set_defaults(handler=_cmd_snapshot)

    rest = subparsers.add_parser(
        "restore",
        help="load a snapshot into a cache",
        description=(
            "Load the newest valid snapshot of cache NAME from DIR (or the file given "
            "with --file) into the cache. Items with the same key are overwritten; "
            "other items stay."
        ),
        epilog=_RESTORE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rest.add_argument("name", help="cache name")
    rest.add_argument("--dir", metavar="DIR", help="snapshot directory")
    rest.add_argument("--file", metavar="F", help="this snapshot file instead of the newest")
    rest.add_argument(
        "--create",
        action="store_true",
        help="create the cache if it does not exist, with the snapshotted cache's settings",
    )
    rest.add_argument(
        "--capacity",
        metavar="SIZE",
        help="with --create: the new cache's capacity (default: the snapshotted one's)",
    )
    rest.add_argument(
        "--key-file",
        metavar="F",
        action="append",
        default=[],
        help="a key that may read encrypted snapshots (repeat for older keys; "
        "$METIS_SNAPSHOT_KEY is one too)",
    )
    rest.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    rest.set_defaults(handler=_cmd_restore)


def _fail(command: str, exc: BaseException) -> int:
    print(f"metis {command}: error: {exc}", file=sys.stderr)
    if isinstance(exc, SnapshotCorrupt) or not isinstance(exc, MetisError):
        return EXIT_FAILED
    return EXIT_USAGE


def _cmd_snapshot(args: argparse.Namespace) -> int:
    progress = None if args.quiet else ProgressLine(sys.stderr, f"snapshot {args.name}")
    t0 = time.monotonic()
    try:
        with audit.operation("snapshot", args.name, trigger="metis snapshot") as details:
            keys = SnapshotKeys.load(args.key_file)
            with attach_existing(args.name, accept_pickle=True) as cache:
                info = write_snapshot(
                    cache,
                    args.dir,
                    retention=args.retention,
                    progress=progress,
                    keys=keys,
                    group=args.group,
                )
            details.update(path=info.path, items=info.items, key_id=info.key_id)
    except (MetisError, OSError) as exc:
        return _fail("snapshot", exc)
    sealed = f", encrypted with key id {info.key_id}" if info.key_id else ""
    print(
        f"wrote {info.path}: {info.items:,} items, {format_size(info.bytes)} of keys and "
        f"values, {format_size(info.file_size)} file{sealed}, in {time.monotonic() - t0:.2f}s"
    )
    return EXIT_OK


def _settings_source(args: argparse.Namespace, keys: SnapshotKeys | None) -> SnapshotInfo | None:
    """The snapshot whose settings a cache created by --create takes."""
    if args.file:
        return read_snapshot_info(args.file, keys=keys)
    for path in list_snapshots(args.dir, args.name):
        try:
            return read_snapshot_info(path, keys=keys)
        except (SnapshotCorrupt, OSError):
            continue
    return None


def _restore_keys(args: argparse.Namespace) -> SnapshotKeys | None:
    """Every --key-file and $METIS_SNAPSHOT_KEY: keys that read."""
    keys = [read_key_file(path) for path in args.key_file]
    if os.environ.get(KEY_ENV, "").strip():
        keys.append(parse_key(os.environ[KEY_ENV].encode(), f"${KEY_ENV}"))
    return SnapshotKeys(None, keys) if keys else None


def _open_for_restore(args: argparse.Namespace, keys: SnapshotKeys | None) -> Cache | None:
    if not args.create:
        try:
            return attach_existing(args.name, accept_pickle=True)
        except SegmentNotFound as exc:
            raise SegmentNotFound(
                f"no cache named {args.name!r} ({shm_path(args.name)} does not exist); pass "
                f"--create to create it with the snapshotted cache's settings (and "
                f"--capacity SIZE for another size)",
                context={**exc.context, "hint": "--create"},
            ) from None
    if Cache.exists(args.name):
        if args.capacity is not None:
            print(
                f"metis restore: cache {args.name!r} exists: it keeps its own capacity, "
                f"not --capacity {args.capacity}",
                file=sys.stderr,
            )
        return attach_existing(args.name, accept_pickle=True)
    source = _settings_source(args, keys)
    if source is None:
        return None
    options: dict[str, Any] = source.cache_options()
    if args.capacity is not None:
        options["capacity"] = args.capacity
    return Cache(args.name, **options)


def _cmd_restore(args: argparse.Namespace) -> int:
    try:
        if args.capacity is not None:
            if not args.create:
                raise InvalidConfig(
                    "--capacity is for a cache that --create creates",
                    context={"field": "capacity", "value": args.capacity},
                )
            parse_size(args.capacity, "--capacity")
        if args.file is None and args.dir is None:
            raise InvalidConfig(
                "give the snapshot directory (--dir DIR) or a snapshot file (--file F)",
                context={"field": "dir"},
            )
        if args.file is not None and not Path(args.file).exists():
            raise SnapshotNotFound(
                f"snapshot {args.file!r} does not exist", context={"path": args.file}
            )
        keys = _restore_keys(args)
        cache = _open_for_restore(args, keys)
    except (MetisError, OSError) as exc:
        return _fail("restore", exc)
    if cache is None:
        print(f"metis restore: no usable snapshot of {args.name!r} in {args.dir}", file=sys.stderr)
        return EXIT_FAILED
    progress = None if args.quiet else ProgressLine(sys.stderr, f"restore {args.name}")
    try:
        with cache:
            try:
                if args.file is not None:
                    report = restore(cache, args.file, progress=progress, keys=keys)
                else:
                    report = restore_latest(cache, args.dir, progress=progress, keys=keys)
            except BaseException:
                if cache.created:
                    Cache.destroy(args.name)  # created for nothing
                raise
            if report.path is None and cache.created:
                Cache.destroy(args.name)
    except (MetisError, OSError) as exc:
        return _fail("restore", exc)
    for path, reason in report.skipped:
        print(f"metis restore: skipped {path}: {reason}", file=sys.stderr)
    if report.path is None:
        print(f"metis restore: no usable snapshot of {args.name!r} in {args.dir}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"restored {report.restored:,} items into {args.name!r} from {report.path} "
        f"({report.expired:,} expired, {report.rejected:,} refused) in {report.seconds:.2f}s"
    )
    return EXIT_OK


__all__ = ["register"]
