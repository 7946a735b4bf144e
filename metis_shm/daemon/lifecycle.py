"""metisd's lifecycle: ``Daemon``, from start to stop.

``Daemon.run()`` starts, serves until a stop signal, and stops:

* start (``start``): the audit file and the snapshot keys, the health
  endpoints, then each cache opened: the segment created, or re-attached to
  a compatible one (a restart loses nothing). A segment it cannot read
  (another layout version, corrupt, not a Metis segment) stops the start
  unless ``replace_incompatible`` says to replace it; so does a segment
  whose heartbeat another live metisd beats. An attached segment whose
  settings differ from the configuration is kept as it is (a warning), or
  with ``replace_incompatible`` replaced, its items carried over through a
  snapshot. A cache it created is warmed up from the newest valid snapshot.
* then ``READY=1`` and the loop, in the main thread, until ``SIGTERM`` or
  ``SIGINT``: each maintenance step when it is due (maintenance.py), the
  interval snapshots (snapshots/schedule.py), ``WATCHDOG=1`` at half of
  systemd's ``WATCHDOG_USEC``, and the signals. Signals only wake the loop
  (``signal.set_wakeup_fd``); the loop does the work: ``SIGHUP`` reloads
  (reload.py), ``SIGUSR1`` writes a snapshot now.
* stop (``shutdown``): the snapshot thread finished, a last snapshot if
  ``snapshot.on_shutdown``, the endpoints closed, every segment detached
  from (and left for the workers).

``Daemon`` is this module's methods plus the mixins of the other concerns,
each a subclass of ``DaemonState`` (state.py), which holds what they share.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import time
from typing import Any

import psutil

from metis_shm import _engine, segment
from metis_shm.cache import Cache, _setting_name, _settings
from metis_shm.daemon import audit
from metis_shm.daemon.config import CacheConfig
from metis_shm.daemon.far import FarTracking
from metis_shm.daemon.health import HealthServer
from metis_shm.daemon.maintenance import Maintenance
from metis_shm.daemon.reload import ConfigReload
from metis_shm.daemon.snapshots.format import write_snapshot
from metis_shm.daemon.snapshots.schedule import SnapshotSchedule, load_keys
from metis_shm.daemon.state import (
    EXIT_OK,
    EXIT_REFUSED,
    PROGRESS_EVERY,
    Managed,
    StartupError,
)
from metis_shm.daemon.status import StatusReports
from metis_shm.errors import (
    MetisError,
    SegmentCorrupt,
    SegmentForeign,
    SegmentPermission,
    SegmentVersionMismatch,
)
from metis_shm.units import format_size

log = logging.getLogger("metis_shm.daemon")

HEARTBEAT_FRESH_NS = 10 * 10**9  # what Cache.daemon_alive calls alive
INCOMPATIBLE = (SegmentVersionMismatch, SegmentCorrupt, SegmentForeign)


# ---- opening caches --------------------------------------------------------------


def owning_daemon(header: dict[str, Any]) -> int | None:
    """The pid of another live metisd beating this segment's heartbeat, if any."""
    pid = int(header.get("daemon_pid", 0))
    beat = int(header.get("daemon_heartbeat_ns", 0))
    if not pid or pid == os.getpid() or time.time_ns() - beat > HEARTBEAT_FRESH_NS:
        return None
    return pid if psutil.pid_exists(pid) else None


def settings_mismatch(cache: Cache, cc: CacheConfig) -> dict[str, tuple[Any, Any]]:
    """Settings of an existing segment that differ from the configuration:
    {field: (segment's, config's)}. ``shards`` left to "auto" accepts any."""
    header = cache.settings
    want = _settings(
        capacity=cc.capacity, policy=cc.policy, max_key_size=cc.max_key_size,
        max_value_size=cc.max_value_size, compress_threshold=cc.compress_threshold,
        serializer=cc.serializer, default_ttl=cc.default_ttl, max_entries=cc.max_entries,
    )  # fmt: skip
    differ: dict[str, tuple[Any, Any]] = {}
    for key, value in want.items():
        if header.get(key) != value:
            differ[key] = (_setting_name(key, header.get(key)), _setting_name(key, value))
    if cc.shards is not None and header["n_shards"] != cc.shards:
        differ["shards"] = (header["n_shards"], cc.shards)
    if (header["max_entries"] or None) != cc.max_entries:
        differ["max_entries"] = (header["max_entries"] or None, cc.max_entries)
    n_shards = cc.shards or int(header["n_shards"])
    policy = _engine.POLICIES[cc.policy]
    try:
        plan = _engine.plan_layout(cc.capacity, n_shards, cc.max_entries or 0, policy=policy)
        capacity_differs = plan["capacity"] != header["capacity"]
    except ValueError:
        capacity_differs = True
    if capacity_differs:
        differ["capacity"] = (header["capacity"], cc.capacity)
    return differ


def _create(cc: CacheConfig) -> Cache:
    """Create or attach; errors other than an incompatible segment end the start."""
    try:
        return Cache(cc.name, **cc.cache_kwargs(), create=True)
    except INCOMPATIBLE:
        raise
    except SegmentPermission as exc:  # another user's segment: an operator must act
        raise StartupError(f"cannot open cache {cc.name!r}: {exc}", EXIT_REFUSED) from exc
    except MetisError as exc:
        raise StartupError(f"cannot open cache {cc.name!r}: {exc}") from exc


def _apply_mode(cc: CacheConfig) -> None:
    """Give an existing segment the configured group and permission bits (a
    chown and a chmod: no need to recreate it for that)."""
    path = segment.shm_path(cc.name)
    try:
        gid = segment.resolve_group(cc.group)
        mode = segment.effective_mode(cc.mode, gid)
        st = os.stat(path)
        if gid is not None and st.st_gid != gid:
            os.chown(path, -1, gid)
            log.info("cache %r: segment group %s -> %s (as configured)", cc.name,
                     segment.group_name(st.st_gid), segment.group_name(gid))  # fmt: skip
        current = st.st_mode & 0o777
        if current != mode:
            os.chmod(path, mode)
            log.info("cache %r: segment mode %s -> %s (as configured)", cc.name,
                     oct(current), oct(mode))  # fmt: skip
    except (OSError, MetisError) as exc:
        log.warning("cache %r: cannot give the segment the configured group/mode: %s",
                    cc.name, exc)  # fmt: skip


def _describe_mismatch(differ: dict[str, tuple[Any, Any]]) -> str:
    parts = []
    for key, (have, want) in differ.items():
        if key == "capacity":
            parts.append(f"capacity {format_size(have)} (config: {format_size(want)})")
        else:
            parts.append(f"{key} {have!r} (config: {want!r})")
    return ", ".join(parts)


def _destroy_for_replace(name: str, reason: str) -> None:
    with audit.operation("destroy", name, reason=f"replace_incompatible: {reason}"):
        segment.destroy(name)


# ---- the daemon ------------------------------------------------------------------


class Daemon(Maintenance, SnapshotSchedule, ConfigReload, StatusReports, FarTracking):
    """One metisd: its configuration, caches, loop and endpoints."""

    # ---- signals -------------------------------------------------------------

    def install_signals(self) -> None:
        """Handlers that do nothing; the wakeup fd tells the loop which signal came."""
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wakeup_r, self._wakeup_w = r, w
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            self._old_handlers[signum] = signal.signal(signum, _wake_only)

    def restore_signals(self) -> None:
        """The handlers and the wakeup fd as they were before ``install_signals``."""
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        self._old_handlers.clear()
        if self._wakeup_w >= 0:
            signal.set_wakeup_fd(-1)
            os.close(self._wakeup_r)
            os.close(self._wakeup_w)
            self._wakeup_r = self._wakeup_w = -1

    def _take_signals(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for a signal; note the ones that came."""
        if self._wakeup_r < 0:
            if timeout > 0:
                time.sleep(timeout)
            return
        try:
            ready, _, _ = select.select([self._wakeup_r], [], [], max(0.0, timeout))
        except InterruptedError:  # pragma: no cover - PEP 475 retries select
            ready = [self._wakeup_r]
        if not ready:
            return
        try:
            data = os.read(self._wakeup_r, 512)
        except BlockingIOError:
            return
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT):
                if not self._stop:
                    log.info("%s received: stopping", signal.Signals(signum).name)
                self._stop = True
            elif signum == signal.SIGHUP:
                self._reload = True
            elif signum == signal.SIGUSR1:
                self._snapshot_now = True

    # ---- start ---------------------------------------------------------------

    def start(self) -> None:
        """Health endpoints, then every cache opened (and warmed up)."""
        cfg = self.config
        self.notifier.status("starting")
        audit.set_audit_file(cfg.audit_file)
        self.keys = load_keys(cfg)
        if cfg.health.enabled:
            self.http = HealthServer(self, cfg.health.address, cfg.health.unix_socket)
            try:
                self.http.start()
            except OSError as exc:
                self.http = None
                raise StartupError(
                    f"cannot serve the health endpoints on {cfg.health.address}"
                    f"{' / ' + cfg.health.unix_socket if cfg.health.unix_socket else ''}: "
                    f"{exc} (another metisd running? pick another health.address, "
                    f"or --health-address)"
                ) from exc
            where = [u for u in (self.http.url, self.http.unix_socket) if u]
            log.info("health endpoints on %s (/healthz, /stats, /metrics)", " and ".join(where))
        for cc in cfg.caches:
            self._open(cc)
            if self._stop:
                return

    def _open(self, cc: CacheConfig) -> None:
        name = cc.name
        replace = self.config.replace_incompatible
        self.notifier.status(f"opening cache {name!r}")
        how = "attached"
        try:
            cache = _create(cc)
        except INCOMPATIBLE as exc:
            if not replace:
                raise StartupError(
                    f"cache {name!r}: {exc}. metisd does not replace a segment it cannot "
                    f"read: start it with --replace-incompatible (or replace_incompatible = "
                    f"true) to destroy the segment and create a new one (its items are "
                    f"lost), or remove it with `metisd --destroy {name}`",
                    EXIT_REFUSED,
                ) from exc
            log.warning(
                "cache %r: %s; replacing it (replace_incompatible): its items are lost", name, exc
            )
            _destroy_for_replace(name, str(exc))
            cache = _create(cc)
            how = "replaced"
        if cache.created and how != "replaced":
            how = "created"
        try:
            other = owning_daemon(cache.settings)
            if other is not None:
                raise StartupError(
                    f"cache {name!r} is already supervised by metisd pid {other} (its "
                    f"heartbeat is fresh); stop that one first",
                    EXIT_REFUSED,
                )
            if how == "attached":
                differ = settings_mismatch(cache, cc)
                if differ and replace:
                    cache = self._migrate(cache, cc, differ)
                    how = "replaced"
                else:
                    _apply_mode(cc)
                    if differ:
                        log.warning(
                            "cache %r exists with other settings than the configuration: %s. "
                            "metisd keeps the segment's settings; to apply the configuration, "
                            "restart metisd with --replace-incompatible (a snapshot carries "
                            "the items over) once the workers can reattach",
                            name,
                            _describe_mismatch(differ),
                        )
        except BaseException:
            cache.close()
            raise
        managed = Managed(config=cc, cache=cache)
        managed.counters.opened = how
        managed.counters.opened_at = time.time()
        self.caches[name] = managed
        self._heartbeat(managed)
        self.start_tracker(managed)
        if how == "attached":
            log.info(
                "cache %r: re-attached to the existing segment (%s items, %s, %d shards, %s)",
                name,
                f"{len(cache):,}",
                format_size(cache.capacity),
                cache.n_shards,
                cache.policy,
            )
        else:
            log.info(
                "cache %r: %s the segment %s (%s, %d shards, %s)",
                name,
                how,
                segment.shm_path(name),
                format_size(cache.capacity),
                cache.n_shards,
                cache.policy,
            )
            self._warm_up(managed)

    def _migrate(self, cache: Cache, cc: CacheConfig, differ: dict[str, tuple[Any, Any]]) -> Cache:
        """Replace a segment whose settings differ from the config; carry the
        items over through a snapshot when snapshots are enabled."""
        name = cc.name
        snap = self.config.snapshot
        log.warning(
            "cache %r exists with other settings than the configuration: %s; replacing it "
            "(replace_incompatible)",
            name,
            _describe_mismatch(differ),
        )
        if snap.enabled:
            info = write_snapshot(
                cache, snap.path, retention=snap.retention, keys=self.keys, group=snap.group
            )
            log.info("cache %r: %s items saved to %s before replacing", name, info.items, info.path)
        else:
            log.warning("cache %r: snapshots are disabled: its items are lost", name)
        cache.close()
        _destroy_for_replace(name, "settings differ: " + _describe_mismatch(differ))
        return _create(cc)

    # ---- the loop --------------------------------------------------------------

    def run(self) -> int:
        """Start, serve until a stop signal, stop. The exit status."""
        try:
            self.start()
        except BaseException:
            self.shutdown(snapshot=False)
            raise
        if not self._stop:
            self.state = "ready"
            summary = self._summary()
            log.info("ready (pid %d): %s", self.pid, summary)
            self.notifier.ready(f"ready: {summary}")
            self._last_status = time.monotonic()
            self._loop()
        self.shutdown(snapshot=True)
        return EXIT_OK

    def _loop(self) -> None:
        now = time.monotonic()
        next_sweep = now
        next_beat = now + self.config.heartbeat_interval
        next_watchdog = now
        next_snapshot = self._next_snapshot_time(now)
        while not self._stop:
            wd = self.notifier.watchdog_interval
            due = [next_sweep, next_beat]
            if wd:
                due.append(next_watchdog)
            if next_snapshot is not None:
                due.append(next_snapshot)
            self._take_signals(min(due) - time.monotonic())
            if self._stop:
                break
            now = time.monotonic()
            if self._reload:
                self._reload = False
                before = self.config
                self.reload()
                now = time.monotonic()
                if self.config.sweep.interval != before.sweep.interval:
                    next_sweep = min(next_sweep, now + self.config.sweep.interval)
                if self.config.heartbeat_interval != before.heartbeat_interval:
                    next_beat = min(next_beat, now + self.config.heartbeat_interval)
                if self.config.snapshot.interval != before.snapshot.interval:
                    next_snapshot = self._next_snapshot_time(now)
            if wd and now >= next_watchdog:
                self._watchdog()
                next_watchdog = now + wd
            if now >= next_beat:
                self.heartbeat_all()
                next_beat = now + self.config.heartbeat_interval
            if now >= next_sweep:
                interval = self.config.sweep.interval
                self.tick()
                next_sweep += interval
                end = time.monotonic()
                if next_sweep < end:
                    self.loop["overruns"] += 1
                    next_sweep = end + interval
            if self._snapshot_now or (next_snapshot is not None and now >= next_snapshot):
                self.start_snapshots(trigger="SIGUSR1" if self._snapshot_now else None)
                self._snapshot_now = False
                next_snapshot = self._next_snapshot_time(time.monotonic())

    # ---- stop ------------------------------------------------------------------

    def shutdown(self, *, snapshot: bool) -> None:
        """Last snapshot (if configured), then detach from every segment."""
        self.state = "stopping"
        self.notifier.stopping("stopping")
        thread = self._snapshot_thread
        while thread is not None and thread.is_alive():
            self._watchdog()
            self.notifier.extend_timeout(30)
            thread.join(timeout=1.0)
        snap = self.config.snapshot
        if snapshot and snap.enabled and snap.on_shutdown and self.caches:
            last = [0.0]

            def progress(name: str, done: int, total: int) -> None:
                now = time.monotonic()
                if now - last[0] < PROGRESS_EVERY and done < total:
                    return
                last[0] = now
                pct = 100.0 * done / total if total else 100.0
                line = f"stopping: snapshot of cache {name!r}: {pct:.0f}%"
                self.notifier.notify(f"STATUS={line}", "EXTEND_TIMEOUT_USEC=30000000")
                self._watchdog()

            self.snapshot_all(progress)
        if self.http is not None:
            self.http.close()
            self.http = None
        with self._access:
            self._detached = True
            for managed in self.caches.values():
                with contextlib.suppress(Exception):
                    self.stop_tracker(managed)
                with contextlib.suppress(Exception):
                    if managed.cache.settings.get("daemon_pid") == self.pid:
                        managed.cache._set_daemon(0, 0)
                managed.cache.close()
            self.caches.clear()
        log.info("stopped; the segments stay for the workers")


def _wake_only(signum: int, frame: object) -> None:
    """Signal handler: nothing. ``set_wakeup_fd`` already told the loop."""


__all__ = ["Daemon", "owning_daemon", "settings_mismatch"]
