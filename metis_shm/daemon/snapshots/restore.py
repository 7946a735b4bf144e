"""Restoring: a snapshot's items loaded into a cache.

``restore(cache, path)`` loads one snapshot file; ``restore_latest(cache,
directory)`` the newest of that cache that passes its checksum, skipping
(and reporting) corrupt or truncated ones. A snapshot is checked from end to
end before the first item is stored, so a bad file is never half-loaded.
Items are stored as the engine keeps them (``Cache._import_item``): the same
bytes, flags and wall-clock expiry; expired items are counted, not stored;
an item this cache refuses (over its key or value limits, a pickled value in
a cache not opened with ``serializer="pickle"``, text that is not UTF-8) is
counted as rejected. Both record the restore in the audit log.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import msgspec

from metis_shm.cache import Cache
from metis_shm.codec import CODEC_MASK, KIND_MASK, KIND_PICKLE, KIND_STR, SERIALIZERS
from metis_shm.daemon import audit
from metis_shm.daemon.snapshots.crypto import SnapshotKeys
from metis_shm.daemon.snapshots.format import (
    Item,
    Progress,
    SnapshotInfo,
    _open_verified,
    _scan,
    _Source,
    list_snapshots,
    read_snapshot_info,
)
from metis_shm.errors import KeyTooLarge, SnapshotCorrupt, SnapshotNotFound, ValueTooLarge

log = logging.getLogger("metis_shm")


class RestoreReport(msgspec.Struct):
    """What a restore did.

    ``path`` is the snapshot loaded (None: there was none to load);
    ``restored`` items were stored, ``expired`` ones had expired by then,
    ``rejected`` ones this cache refused (a key or value over its limits,
    a pickled value in a cache not opened with ``serializer="pickle"``).
    ``skipped`` lists the newer snapshots passed over, as (path, reason).
    """

    path: str | None
    restored: int
    expired: int
    skipped: list[tuple[str, str]]
    rejected: int = 0
    seconds: float = 0.0


def restore(
    cache: Cache,
    path: str | os.PathLike[str],
    *,
    progress: Progress | None = None,
    keys: SnapshotKeys | None = None,
) -> RestoreReport:
    """Load the snapshot at ``path`` into ``cache`` (an existing cache: items
    with the same key are overwritten; others stay).

    The whole file is checked first (``SnapshotCorrupt`` before anything is
    stored); expired items are counted, not stored. ``progress(done, total)``
    is called with ``(0, total)`` before the check and then about every 1% of
    the ``total`` items loaded. An encrypted snapshot needs its key in
    ``keys``. Recorded in the audit log.
    """
    with audit.operation("restore", cache.name, path=os.fspath(path)) as details:
        t0 = time.monotonic()
        if progress is not None:
            info = read_snapshot_info(path, keys=keys)
            progress(0, info.items)
        f, src, info = _open_verified(path, keys)
        with f:
            report = _load(cache, src, info, progress, t0)
        _audit_details(details, report)
        return report


def _audit_details(details: dict[str, Any], report: RestoreReport) -> None:
    details.update(
        path=report.path,
        restored=report.restored,
        expired=report.expired,
        rejected=report.rejected,
        skipped=len(report.skipped),
    )
    if report.path is None:
        details["outcome"] = "nothing_to_restore"


def restore_latest(
    cache: Cache,
    directory: str | os.PathLike[str],
    *,
    progress: Progress | None = None,
    keys: SnapshotKeys | None = None,
) -> RestoreReport:
    """Load the newest valid snapshot of ``cache.name`` in ``directory``.

    Snapshots that are corrupt, truncated or unreadable (an encrypted one
    that fails authentication too) are passed over (each listed in
    ``.skipped`` with the reason, and logged as a warning) and the next older
    one is tried. With no usable snapshot, ``.path`` is None. An encrypted
    snapshot whose key is not in ``keys`` raises ``SnapshotKeyError``.
    Recorded in the audit log.
    """
    with audit.operation("restore", cache.name, directory=os.fspath(directory)) as details:
        report = _restore_latest(cache, directory, progress, keys)
        _audit_details(details, report)
        return report


def _restore_latest(
    cache: Cache,
    directory: str | os.PathLike[str],
    progress: Progress | None,
    keys: SnapshotKeys | None,
) -> RestoreReport:
    t0 = time.monotonic()
    skipped: list[tuple[str, str]] = []
    for path in list_snapshots(directory, cache.name):
        try:
            if progress is not None:
                progress(0, read_snapshot_info(path, keys=keys).items)
            f, src, info = _open_verified(path, keys)
        except (SnapshotCorrupt, SnapshotNotFound, OSError) as exc:
            if isinstance(exc, SnapshotCorrupt):
                reason = str(exc.context.get("reason", exc))
            elif isinstance(exc, SnapshotNotFound):
                reason = "removed while restoring"
            else:
                reason = f"{type(exc).__name__}: {exc.strerror or exc}"
            log.warning("skipping snapshot %s: %s", path, reason)
            skipped.append((str(path), reason))
            continue
        with f:
            report = _load(cache, src, info, progress, t0)
        report.skipped = skipped
        return report
    return RestoreReport(
        path=None, restored=0, expired=0, skipped=skipped, seconds=time.monotonic() - t0
    )


_KEY_IS_STR = 0x1000  # the engine's flag bit (codec.py, "bit 12")


def _text_is_utf8(key: bytes, value: bytes, flags: int) -> bool:
    """A str key or an uncompressed str value must be UTF-8, as the engine stored it.

    The engine hands these bytes to PyUnicode_DecodeUTF8 on every get without
    checking again; only a crafted snapshot (its checksum correct) can hold
    anything else, and such an item is refused rather than made unreadable.
    """
    try:
        if flags & _KEY_IS_STR:
            key.decode("utf-8")
        if flags & (KIND_MASK | CODEC_MASK) == KIND_STR:
            value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _load(
    cache: Cache, f: _Source, info: SnapshotInfo, progress: Progress | None, t0: float
) -> RestoreReport:
    path = Path(info.path)
    total = info.items
    step = max(1, total // 100)
    pickle_ok = cache.settings["serializer"] == SERIALIZERS["pickle"]
    import_item = cache._import_item
    counts = [0, 0, 0]  # restored, expired, rejected
    next_report = [step]
    done = [0]

    def load(items: list[Item]) -> None:
        restored = expired = rejected = 0
        for key, flags, expire_ns, value in items:
            if not pickle_ok and flags & KIND_MASK == KIND_PICKLE:
                rejected += 1
                continue
            if not _text_is_utf8(key, value, flags):
                rejected += 1
                continue
            try:
                if import_item(key, flags, expire_ns, value):
                    restored += 1
                else:
                    expired += 1
            except (KeyTooLarge, ValueTooLarge):
                rejected += 1
        counts[0] += restored
        counts[1] += expired
        counts[2] += rejected
        done[0] += len(items)
        if progress is not None and done[0] >= next_report[0] and done[0] < total:
            progress(done[0], total)
            next_report[0] = done[0] + step

    _scan(f, path, info, load)
    if progress is not None:
        progress(total, total)
    restored, expired, rejected = counts
    if rejected:
        log.warning(
            "restore of %s into cache %r: %d items refused (over this cache's key/value "
            "limits, pickled values in a cache not opened with serializer='pickle', or text "
            "that is not UTF-8)",
            path, cache.name, rejected,
        )  # fmt: skip
    return RestoreReport(
        path=str(path),
        restored=restored,
        expired=expired,
        skipped=[],
        rejected=rejected,
        seconds=time.monotonic() - t0,
    )


__all__ = ["RestoreReport", "restore", "restore_latest"]
