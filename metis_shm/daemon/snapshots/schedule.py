"""metisd's snapshots: when the daemon reads and writes them.

* at start, a cache metisd created is warmed up from the newest valid
  snapshot (``restore_latest``), with progress on ``STATUS=`` and in the log;
  a stop signal interrupts it; a snapshot whose key is not configured stops
  the start (an older one would bring back older data);
* every ``snapshot.interval``, and at once on ``SIGUSR1``, every cache is
  written (``write_snapshot``) in a thread of its own, so that sweeps and
  heartbeats go on meanwhile; one still running makes the next one skipped;
* at shutdown (``snapshot.on_shutdown``), ``Daemon.shutdown`` calls
  ``snapshot_all`` once more.

An on-demand snapshot (``SIGUSR1``) goes to the audit log. The keys are read
once, at start (``load_keys``). The file format is format.py's, the
encryption crypto.py's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from metis_shm.contrib.opentelemetry import daemon_span
from metis_shm.daemon import audit
from metis_shm.daemon.config import DaemonConfig
from metis_shm.daemon.snapshots.crypto import SnapshotKeys
from metis_shm.daemon.snapshots.format import write_snapshot
from metis_shm.daemon.snapshots.restore import restore_latest
from metis_shm.daemon.state import (
    EXIT_USAGE,
    PROGRESS_EVERY,
    DaemonState,
    Managed,
    StartupError,
)
from metis_shm.errors import CryptoUnavailable, MetisError, SnapshotKeyError
from metis_shm.units import format_size

log = logging.getLogger("metis_shm.daemon")


class _Interrupted(Exception):
    """A stop signal arrived during a warm-up."""


class SnapshotSchedule(DaemonState):
    """The warm-up, the interval and on-demand snapshots of ``Daemon``."""

    def _warm_up(self, managed: Managed) -> None:
        snap = self.config.snapshot
        if not snap.enabled:
            return
        if managed.config.far is not None:
            # A near tier is Redis's copy: restored items could not be
            # vouched for (the tracker's first generation bump kills them).
            log.info("cache %r: a near tier of Redis; no warm-up from snapshots", managed.name)
            return
        name = managed.name
        managed.warm = False
        self.state = "warming_up"
        last = [0.0]

        def progress(done: int, total: int) -> None:
            self._take_signals(0)
            if self._stop:
                raise _Interrupted
            now = time.monotonic()
            if now - last[0] < PROGRESS_EVERY and done < total:
                return
            last[0] = now
            pct = 100.0 * done / total if total else 100.0
            line = f"warming up cache {name!r}: {pct:.0f}% ({done:,} / {total:,} items)"
            log.info("%s", line)
            self.notifier.notify(f"STATUS={line}", "EXTEND_TIMEOUT_USEC=30000000")
            self._watchdog()
            for other in list(self.caches.values()):  # clients see a live daemon meanwhile
                self._heartbeat(other)

        try:
            with daemon_span("restore", cache=name) as span:
                report = restore_latest(managed.cache, snap.path, progress=progress, keys=self.keys)
                span.set("items", report.restored)
        except (SnapshotKeyError, CryptoUnavailable) as exc:
            raise StartupError(
                f"cache {name!r}: cannot warm up: {exc}. metisd does not start without the "
                f"key of its newest snapshot (an older one would bring back older data); "
                f"configure the key, or move the snapshot away",
                EXIT_USAGE,
            ) from exc
        except _Interrupted:
            log.warning(
                "cache %r: warm-up interrupted by a stop signal: the cache holds %s of the "
                "snapshot's items and gets no shutdown snapshot (the snapshots stay as they "
                "are). The segment stays for the workers; to warm it up fully at the next "
                "start, remove it first with `metisd --destroy %s`",
                name,
                f"{len(managed.cache):,}",
                name,
            )
            return
        except (OSError, MetisError) as exc:
            managed.warm = True
            self._count_error(managed, "warm-up", exc)
            return
        c = managed.counters
        c.restore_path = report.path
        c.restored_items = report.restored
        c.restore_expired_items = report.expired
        c.restore_rejected_items = report.rejected
        c.restore_seconds = report.seconds
        c.restore_skipped = list(report.skipped)
        managed.warm = True
        for path, reason in report.skipped:
            log.warning("cache %r: warm-up skipped snapshot %s: %s", name, path, reason)
        if report.path is None:
            log.info("cache %r: no usable snapshot in %s; starting empty", name, snap.path)
        else:
            log.info(
                "cache %r: warmed up from %s: %s items restored, %s expired (not restored), "
                "%s refused, %d newer snapshot(s) skipped, in %.2f s",
                name,
                report.path,
                f"{report.restored:,}",
                f"{report.expired:,}",
                f"{report.rejected:,}",
                len(report.skipped),
                report.seconds,
            )

    def _next_snapshot_time(self, now: float) -> float | None:
        snap = self.config.snapshot
        if not snap.enabled or snap.interval <= 0:
            return None
        return now + snap.interval

    def start_snapshots(self, trigger: str | None = None) -> None:
        """Snapshot every cache in a thread (skipped if the last one still runs).
        ``trigger`` names what asked for it on demand (``"SIGUSR1"``): such a
        snapshot is recorded in the audit log."""
        if not self.config.snapshot.enabled:
            log.warning("snapshot asked for, but snapshots are disabled in the configuration")
            _audit_unstarted(trigger, "refused", "snapshots are disabled")
            return
        if self._snapshot_thread is not None and self._snapshot_thread.is_alive():
            for managed in self.caches.values():
                managed.counters.snapshots_skipped += 1
            log.warning("a snapshot is still being written; skipping this one")
            _audit_unstarted(trigger, "skipped", "one is being written")
            return
        self._snapshot_thread = threading.Thread(
            target=self.snapshot_all,
            kwargs={"trigger": trigger},
            name="metisd-snapshot",
            daemon=True,
        )
        self._snapshot_thread.start()

    def snapshot_all(
        self,
        progress: Callable[[str, int, int], None] | None = None,
        trigger: str | None = None,
    ) -> None:
        """Snapshot every cache whose warm-up finished, one after the other;
        ``progress(name, done, total)`` as each is written. On demand
        (``trigger`` set), each goes to the audit log."""
        for managed in list(self.caches.values()):
            if managed.warm and managed.config.far is None:  # a near tier is not persisted
                ok = self.snapshot(managed, progress)
                if trigger:
                    c = managed.counters
                    details: dict[str, Any] = {"trigger": trigger}
                    if ok:
                        details.update(path=c.last_snapshot_path, items=c.last_snapshot_items)
                    else:
                        details["error"] = c.last_snapshot_error
                    audit.record(
                        "snapshot", managed.name, outcome="ok" if ok else "failed", details=details
                    )

    def snapshot(
        self, managed: Managed, progress: Callable[[str, int, int], None] | None = None
    ) -> bool:
        """Write one snapshot of ``managed`` (counted, logged); False if it failed."""
        snap = self.config.snapshot
        c = managed.counters
        name = managed.name
        t0 = time.monotonic()

        def report(done: int, total: int) -> None:
            if progress is not None:
                progress(name, done, total)

        try:
            with daemon_span("snapshot", cache=name) as span:
                info = write_snapshot(
                    managed.cache,
                    snap.path,
                    retention=snap.retention,
                    progress=report,
                    keys=self.keys,
                    group=snap.group,
                )
                span.set("items", info.items)
        except Exception as exc:
            c.snapshots_failed += 1
            c.last_snapshot_error = f"{type(exc).__name__}: {exc}"
            log.error("cache %r: snapshot to %s failed: %s", name, snap.path, exc)
            return False
        dt = time.monotonic() - t0
        c.snapshots_written += 1
        c.last_snapshot_seconds = dt
        c.last_snapshot_at = time.time()
        c.last_snapshot_items = info.items
        c.last_snapshot_file_bytes = info.file_size
        c.last_snapshot_path = info.path
        c.last_snapshot_error = None
        log.info(
            "cache %r: snapshot %s written: %s items, %s, in %.2f s",
            name,
            info.path,
            f"{info.items:,}",
            format_size(info.file_size),
            dt,
        )
        return True


def load_keys(cfg: DaemonConfig) -> SnapshotKeys | None:
    """The snapshot keys of the configuration (None: plain snapshots)."""
    snap = cfg.snapshot
    if not snap.enabled:
        return None
    try:
        keys = SnapshotKeys.load(snap.key_file, snap.read_key_files)
    except (SnapshotKeyError, CryptoUnavailable) as exc:
        raise StartupError(f"snapshot keys: {exc}", EXIT_USAGE) from exc
    if keys is not None:
        log.info(
            "snapshots: %s; keys that read: %s",
            f"encrypted with key id {keys.write_key_id}" if keys.write_key else "written plain",
            ", ".join(keys.key_ids),
        )
    return keys


def _audit_unstarted(trigger: str | None, outcome: str, reason: str) -> None:
    """An on-demand snapshot (``trigger`` set) that did not start goes to the audit log."""
    if trigger:
        details = {"trigger": trigger, "reason": reason}
        audit.record("snapshot", None, outcome=outcome, details=details)


__all__ = ["SnapshotSchedule", "load_keys"]
