"""``metisd``: the supervisor daemon that owns the segments of Metis caches.

    metisd --config /etc/metis/metisd.toml

At start it loads the configuration (defaults < file < ``METIS_*``
environment < arguments), starts the health endpoints, and opens each cache:
it creates the segment, or re-attaches to a compatible one (a restart loses
nothing). A segment it cannot read (another layout version, corrupt, not a
Metis segment) stops the start unless ``replace_incompatible`` says to
replace it. A cache it created is warmed up from the newest valid snapshot.
Then it tells systemd ``READY=1`` and runs the maintenance loop in the main
thread:

* every ``sweep.interval``: a TTL sweep of ``sweep.budget`` items per cache,
  in slices of ``SWEEP_SLICE`` items (no shard lock is held for more than
  one slice), and an access-buffer drain;
* every ``heartbeat_interval``: the heartbeat in each segment's header (what
  ``Cache.daemon_alive`` reads) and a stats roll-up, which takes every
  shard's lock and so repairs a shard whose lock holder died;
* every ``snapshot.interval``: a snapshot of each cache, in a thread of its
  own so that sweeps and heartbeats go on meanwhile;
* ``WATCHDOG=1`` at half of systemd's ``WATCHDOG_USEC``.

Signals only wake the loop (``signal.set_wakeup_fd``); the loop does the
work: ``SIGTERM``/``SIGINT`` stop (a last snapshot if
``snapshot.on_shutdown``; segments are left for the workers), ``SIGHUP``
reloads the file (live settings apply, the rest are logged as needing a
restart, an invalid file is refused and the running configuration kept),
``SIGUSR1`` writes a snapshot now.

Admin operations (reload, the configuration changes it applies, a snapshot
on demand, a segment destroyed or replaced, the warm-up restore) go to the
audit log (``metis_shm.audit``; ``audit_file`` for a JSON-lines file).
Snapshots are encrypted when ``snapshot.key_file`` (or
``METIS_SNAPSHOT_KEY``) gives a key; the keys are read at start, and a key
that cannot be read stops the start (exit 2).

Exit status: 0 stopped cleanly; 1 failure; 2 bad configuration or usage;
3 refused to start (an incompatible segment, or another metisd owns a cache).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import msgspec
import psutil

from metis_shm import __version__, _engine, audit, segment
from metis_shm.cache import Cache, _setting_name, _settings
from metis_shm.config import CacheConfig, DaemonConfig, LoadedConfig, diff_config, load_config
from metis_shm.errors import (
    CryptoUnavailable,
    InvalidConfig,
    MetisError,
    SegmentCorrupt,
    SegmentForeign,
    SegmentNotFound,
    SegmentPermission,
    SegmentVersionMismatch,
    SnapshotKeyError,
)
from metis_shm.health import HealthServer, render_metrics
from metis_shm.snapshot import restore_latest, write_snapshot
from metis_shm.snapshot_crypto import SnapshotKeys
from metis_shm.stats import Stats
from metis_shm.systemd import Notifier
from metis_shm.telemetry import daemon_span
from metis_shm.units import format_size

log = logging.getLogger("metis_shm.daemon")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3

SWEEP_SLICE = 1024
"""Items one ``Cache.sweep`` call examines: the most a shard lock is held for."""
HEARTBEAT_FRESH_NS = 10 * 10**9  # what Cache.daemon_alive calls alive
STATUS_EVERY = 10.0  # seconds between STATUS= summaries while running
PROGRESS_EVERY = 1.0  # seconds between progress lines of a warm-up or snapshot
STALL_SECONDS = 10.0  # a loop silent for max(this, 5 intervals) makes /healthz fail
ERROR_LOG_EVERY = 60.0  # the same maintenance error is logged at most this often
INCOMPATIBLE = (SegmentVersionMismatch, SegmentCorrupt, SegmentForeign)


class StartupError(Exception):
    """metisd cannot start; ``exit_code`` says how it ends."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Interrupted(Exception):
    """A stop signal arrived during a warm-up."""


# ---- counters ------------------------------------------------------------------


@dataclass
class CacheCounters:
    """What metisd did to one cache: the "daemon" section of /stats."""

    opened: str = ""  # "created", "attached" or "replaced"
    opened_at: float = 0.0
    sweeps: int = 0
    sweep_slices: int = 0
    swept_items: int = 0
    sweep_seconds_total: float = 0.0
    last_sweep_seconds: float = 0.0
    last_sweep_items: int = 0
    sweeps_cut_short: int = 0
    drains: int = 0
    drained_shards: int = 0
    drain_seconds_total: float = 0.0
    last_drain_seconds: float = 0.0
    heartbeats: int = 0
    last_heartbeat: float = 0.0
    rollups: int = 0
    last_rollup_seconds: float = 0.0
    lock_recoveries: int = 0
    slots_reclaimed: int = 0
    attached_processes: int = 0
    snapshots_written: int = 0
    snapshots_failed: int = 0
    snapshots_skipped: int = 0
    last_snapshot_seconds: float = 0.0
    last_snapshot_at: float = 0.0
    last_snapshot_items: int = 0
    last_snapshot_file_bytes: int = 0
    last_snapshot_path: str | None = None
    last_snapshot_error: str | None = None
    restore_path: str | None = None
    restored_items: int = 0
    restore_expired_items: int = 0
    restore_rejected_items: int = 0
    restore_seconds: float = 0.0
    restore_skipped: list[tuple[str, str]] = field(default_factory=list)
    errors: int = 0
    last_error: str | None = None
    last_error_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["restore_skipped"] = [list(pair) for pair in self.restore_skipped]
        return d


@dataclass
class Managed:
    """A cache metisd owns."""

    config: CacheConfig
    cache: Cache
    counters: CacheCounters = field(default_factory=CacheCounters)
    warm: bool = True  # False while (or if) its warm-up did not finish
    last_stats: Stats | None = None
    recoveries_base: int | None = None
    problem: str | None = None  # set by the roll-up: why /healthz fails
    error_logged: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.name


# ---- logging -------------------------------------------------------------------

_JOURNAL_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class _JournalFormatter(logging.Formatter):
    """``<priority>`` prefixes (sd-daemon(3)): journald files each line at its
    level; it adds the time itself."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _JOURNAL_PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


def _stderr_is_journal() -> bool:
    stream = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = stream.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


def setup_logging(level: str) -> logging.Handler:
    """One stderr handler on the root logger; the ``metis_shm`` loggers at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    if _stderr_is_journal():
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    set_log_level(level)
    return handler


def set_log_level(level: str) -> None:
    logging.getLogger("metis_shm").setLevel(level.upper())


# ---- opening caches --------------------------------------------------------------


def _process_gone(pid: int, claimed_ns: int) -> bool:
    """Has the process that claimed a slot at claimed_ns exited?"""
    try:
        started = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:  # another user's live process
        return False
    # create_time has ~10 ms resolution: a process started a second after the
    # claim cannot be the claimer.
    return started > claimed_ns / 1e9 + 1.0


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


# ---- the daemon ------------------------------------------------------------------


class Daemon:
    """One metisd: its configuration, caches, loop and endpoints."""

    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        overrides: dict[str, Any] | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.loaded = loaded
        self.config: DaemonConfig = loaded.config
        self.config_path = loaded.path
        self.overrides = dict(overrides or {})
        self.notifier = notifier if notifier is not None else Notifier()
        self.pid = os.getpid()
        self.state = "starting"
        self.started_at = time.time()
        self.caches: dict[str, Managed] = {}
        self.http: HealthServer | None = None
        self.loop: dict[str, Any] = {
            "ticks": 0,
            "overruns": 0,
            "tick_seconds_total": 0.0,
            "last_tick_seconds": 0.0,
            "last_tick_end": time.monotonic(),
            "watchdog_pings": 0,
        }
        self.reloads: dict[str, Any] = {"ok": 0, "failed": 0, "last_error": None, "last_at": None}
        self._wakeup_r = -1
        self._wakeup_w = -1
        self._old_handlers: dict[int, Any] = {}
        self._stop = False
        self._reload = False
        self._snapshot_now = False
        self._snapshot_thread: threading.Thread | None = None
        self._last_status = 0.0
        # HTTP threads read the segments; shutdown unmaps them: never both at once.
        self._access = threading.Lock()
        self._detached = False
        self.keys: SnapshotKeys | None = None

    # ---- signals -------------------------------------------------------------

    def install_signals(self) -> None:
        """Handlers that do nothing; the wakeup fd tells the loop which signal came."""
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wakeup_r, self._wakeup_w = r, w
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            self._old_handlers[signum] = signal.signal(signum, _wake_only)

    def restore_signals(self) -> None:
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
        self.keys = _load_keys(cfg)
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

    def _warm_up(self, managed: Managed) -> None:
        snap = self.config.snapshot
        if not snap.enabled:
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

    def _next_snapshot_time(self, now: float) -> float | None:
        snap = self.config.snapshot
        if not snap.enabled or snap.interval <= 0:
            return None
        return now + snap.interval

    def _watchdog(self) -> None:
        if self.notifier.watchdog_interval and self.notifier.watchdog():
            self.loop["watchdog_pings"] += 1

    def tick(self) -> None:
        """One maintenance tick: sweep and drain every cache."""
        t0 = time.monotonic()
        interval = self.config.sweep.interval
        budget = self.config.sweep.budget
        deadline = t0 + max(interval / 2, 0.005)
        for managed in list(self.caches.values()):
            self._sweep(managed, budget, deadline)
            self._drain(managed)
        t1 = time.monotonic()
        self.loop["ticks"] += 1
        self.loop["last_tick_seconds"] = t1 - t0
        self.loop["tick_seconds_total"] += t1 - t0
        self.loop["last_tick_end"] = t1

    def _sweep(self, managed: Managed, budget: int, deadline: float) -> None:
        c = managed.counters
        cache = managed.cache
        t0 = time.monotonic()
        removed = 0
        try:
            # No use examining more items than the cache holds (an empty one
            # still gets one pass).
            left = min(budget, max(len(cache), 1))
            c.sweeps += 1
            with daemon_span("sweep", cache=managed.name) as span:
                while left > 0:
                    n = min(left, SWEEP_SLICE)
                    removed += cache.sweep(max_items=n)
                    c.sweep_slices += 1
                    left -= n
                    if left and time.monotonic() > deadline:
                        c.sweeps_cut_short += 1
                        break
                span.set("removed", removed)
        except Exception as exc:
            self._count_error(managed, "sweep", exc)
        dt = time.monotonic() - t0
        c.swept_items += removed
        c.last_sweep_items = removed
        c.last_sweep_seconds = dt
        c.sweep_seconds_total += dt
        if removed:
            log.debug(
                "cache %r: swept %d expired items in %.1f ms", managed.name, removed, dt * 1e3
            )

    def _drain(self, managed: Managed) -> None:
        c = managed.counters
        t0 = time.monotonic()
        try:
            c.drained_shards += managed.cache.drain()
            c.drains += 1
        except Exception as exc:
            self._count_error(managed, "drain", exc)
        dt = time.monotonic() - t0
        c.last_drain_seconds = dt
        c.drain_seconds_total += dt

    def heartbeat_all(self) -> None:
        for managed in list(self.caches.values()):
            self._heartbeat(managed)
            self._rollup(managed)
        now = time.monotonic()
        if now - self._last_status >= STATUS_EVERY:
            self._last_status = now
            self.notifier.status(f"ready: {self._summary()}")

    def _heartbeat(self, managed: Managed) -> None:
        try:
            managed.cache._set_daemon(self.pid, time.time_ns())
        except Exception as exc:
            self._count_error(managed, "heartbeat", exc)
            return
        managed.counters.heartbeats += 1
        managed.counters.last_heartbeat = time.time()

    def _rollup(self, managed: Managed) -> None:
        """Stats of every shard (each lock taken: a dead holder's shard is
        repaired now), the segment still there and still ours."""
        name = managed.name
        t0 = time.monotonic()
        try:
            stats = managed.cache.stats()
            header = managed.cache.settings
        except Exception as exc:
            self._count_error(managed, "stats roll-up", exc)
            return
        c = managed.counters
        c.rollups += 1
        c.last_rollup_seconds = time.monotonic() - t0
        managed.last_stats = stats
        self._reclaim_dead_slots(managed)
        if managed.recoveries_base is None:
            managed.recoveries_base = stats.lock_recoveries
        seen = stats.lock_recoveries - managed.recoveries_base
        if seen > c.lock_recoveries:
            log.warning(
                "cache %r: %d shard(s) repaired after their lock holder died (%d in all)",
                name,
                seen - c.lock_recoveries,
                stats.lock_recoveries,
            )
            c.lock_recoveries = seen
        problem = None
        if not segment.exists(name):
            problem = (
                f"cache {name!r}: its segment {segment.shm_path(name)} was removed; "
                f"processes opening the name get a new segment this metisd does not "
                f"maintain: restart metisd"
            )
        elif header.get("daemon_pid") not in (self.pid, 0):
            problem = (
                f"cache {name!r}: another metisd (pid {header['daemon_pid']}) beats the "
                f"heartbeat of this segment"
            )
        if problem != managed.problem:
            if problem:
                log.error("%s", problem)
            managed.problem = problem

    def _reclaim_dead_slots(self, managed: Managed) -> None:
        """Free the stats slots of processes that are gone (their counts stay
        in the totals), and count the processes still attached. A pid that
        now names a process started after the slot was claimed was reused:
        that owner is gone too."""
        alive = 0
        try:
            owners = managed.cache._slot_owners()
        except Exception as exc:
            self._count_error(managed, "slot reclaim", exc)
            return
        for index, pid, claimed_ns in owners:
            if pid == self.pid:
                continue
            if _process_gone(pid, claimed_ns):
                if managed.cache._reclaim_slot(index, pid):
                    managed.counters.slots_reclaimed += 1
            else:
                alive += 1
        managed.counters.attached_processes = alive

    def _count_error(self, managed: Managed, step: str, exc: BaseException) -> None:
        c = managed.counters
        text = f"{step}: {type(exc).__name__}: {exc}"
        c.errors += 1
        c.last_error = text
        c.last_error_at = time.time()
        now = time.monotonic()
        if now - managed.error_logged.get(text, -1e9) >= ERROR_LOG_EVERY:
            managed.error_logged[text] = now
            log.error("cache %r: %s", managed.name, text)

    # ---- snapshots -------------------------------------------------------------

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
        for managed in list(self.caches.values()):
            if managed.warm:
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

    # ---- reload ----------------------------------------------------------------

    def reload(self) -> bool:
        """SIGHUP: read the configuration again; apply what can change live.
        Recorded in the audit log (``reload``, and ``config_change`` for the
        settings it changed)."""
        with daemon_span("reload") as span:
            ok = self._reload_config()
            span.set("ok", ok)
            return ok

    def _reload_config(self) -> bool:
        where = self.config_path or "the environment"
        log.info("SIGHUP received: reloading the configuration from %s", where)
        self.notifier.reloading()
        self.reloads["last_at"] = time.time()
        try:
            loaded = load_config(self.config_path, overrides=self.overrides)
        except (InvalidConfig, OSError) as exc:
            self.reloads["failed"] += 1
            self.reloads["last_error"] = str(exc)
            audit.record(
                "reload", None, outcome="refused", details={"config": where, "error": str(exc)}
            )
            log.error(
                "reload refused, the running configuration stays: %s",
                exc if isinstance(exc, MetisError) else f"{type(exc).__name__}: {exc}",
            )
            self.notifier.ready("ready: reload refused (see the log)")
            return False
        live, restart = diff_config(self.config, loaded.config)
        audit.record(
            "reload",
            None,
            outcome="ok",
            details={"config": where, "live": sorted(live), "need_restart": restart},
        )
        if live:
            audit.record(
                "config_change",
                None,
                details={k: {"old": old, "new": new} for k, (old, new) in live.items()},
            )
        self.config = apply_live(self.config, loaded.config, live)
        if "log_level" in live:
            set_log_level(self.config.log_level)
        self.reloads["ok"] += 1
        self.reloads["last_error"] = None
        if live:
            log.info(
                "reloaded: %s",
                ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in live.items()),
            )
        else:
            log.info("reloaded: no live setting changed")
        if restart:
            log.warning(
                "changed in the configuration but only applied by a restart of metisd "
                "(the running values stay): %s",
                ", ".join(restart),
            )
        self.notifier.ready(f"ready: {self._summary()}")
        return True

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
                    if managed.cache.settings.get("daemon_pid") == self.pid:
                        managed.cache._set_daemon(0, 0)
                managed.cache.close()
            self.caches.clear()
        log.info("stopped; the segments stay for the workers")

    # ---- what the endpoints see --------------------------------------------------

    def _summary(self) -> str:
        parts = []
        for managed in self.caches.values():
            st = managed.last_stats
            if st is None:
                parts.append(managed.name)
            else:
                parts.append(
                    f"{managed.name}: {st.items:,} items, {format_size(st.bytes_used)} used, "
                    f"hit ratio {st.hit_ratio:.2f}"
                )
        n = len(self.caches)
        url = self.http.url if self.http is not None else None
        text = f"{n} cache{'s' if n != 1 else ''} ({'; '.join(parts)})"
        return text + (f"; health on {url}" if url else "")

    def daemon_section(self) -> dict[str, Any]:
        cfg = self.config
        now = time.monotonic()
        loop = {k: v for k, v in self.loop.items() if k != "last_tick_end"}
        loop["last_tick_age_seconds"] = now - self.loop["last_tick_end"]
        loop["watchdog_interval"] = self.notifier.watchdog_interval
        return {
            "pid": self.pid,
            "version": __version__,
            "state": self.state,
            "started_at": self.started_at,
            "uptime_seconds": time.time() - self.started_at,
            "config_path": self.config_path,
            "config": {
                "log_level": cfg.log_level,
                "heartbeat_interval": cfg.heartbeat_interval,
                "replace_incompatible": cfg.replace_incompatible,
                "sweep": msgspec.structs.asdict(cfg.sweep),
                "snapshot": msgspec.structs.asdict(cfg.snapshot),
                "health": msgspec.structs.asdict(cfg.health),
            },
            "loop": loop,
            "reloads": dict(self.reloads),
            "caches": {name: m.counters.to_dict() for name, m in list(self.caches.items())},
        }

    def _fresh_stats(self) -> dict[str, Stats]:
        out: dict[str, Stats] = {}
        with self._access:
            if self._detached:
                return out
            for name, managed in list(self.caches.items()):
                try:
                    out[name] = managed.cache.stats()
                except Exception:
                    if managed.last_stats is not None:
                        out[name] = managed.last_stats
        return out

    def stats(self, *, shards: bool = True) -> dict[str, Any]:
        caches = {}
        for name, st in self._fresh_stats().items():
            d = st.to_dict()
            if not shards:
                d.pop("shards", None)
            caches[name] = d
        return {"caches": caches, "daemon": self.daemon_section()}

    def metrics(self) -> str:
        return render_metrics(self._fresh_stats(), self.daemon_section())

    def health(self) -> tuple[bool, dict[str, Any]]:
        reasons: list[str] = []
        warnings: list[str] = []
        if self.state == "starting":
            reasons.append("starting: opening caches")
        elif self.state == "warming_up":
            reasons.append("starting: warming up from a snapshot")
        elif self.state == "stopping":
            reasons.append("stopping")
        else:
            age = time.monotonic() - self.loop["last_tick_end"]
            limit = max(STALL_SECONDS, 5 * self.config.sweep.interval)
            if age > limit:
                reasons.append(f"the maintenance loop has not run for {age:.1f} s")
        caches: dict[str, Any] = {}
        for name, managed in list(self.caches.items()):
            c = managed.counters
            if managed.problem:
                reasons.append(managed.problem)
            if c.last_error and time.time() - c.last_error_at < 3 * self.config.heartbeat_interval:
                reasons.append(f"cache {name!r}: {c.last_error}")
            if c.last_snapshot_error:
                warnings.append(f"cache {name!r}: last snapshot failed: {c.last_snapshot_error}")
            for path, why in c.restore_skipped:
                warnings.append(f"cache {name!r}: warm-up skipped snapshot {path}: {why}")
            st = managed.last_stats
            caches[name] = {
                "items": st.items if st else None,
                "bytes_used": st.bytes_used if st else None,
                "capacity": st.capacity if st else None,
                "last_heartbeat": c.last_heartbeat,
                "warm": managed.warm,
            }
        with contextlib.suppress(OSError):
            vfs = os.statvfs(segment.SHM_DIR)
            if vfs.f_blocks and vfs.f_bavail / vfs.f_blocks < 0.05:
                warnings.append(
                    f"{segment.SHM_DIR} is {100 - 100 * vfs.f_bavail / vfs.f_blocks:.0f}% full"
                )
        ok = not reasons
        body = {
            "status": "ok" if ok else "unavailable",
            "state": self.state,
            "pid": self.pid,
            "reasons": reasons,
            "warnings": warnings,
            "caches": caches,
        }
        return ok, body


def _load_keys(cfg: DaemonConfig) -> SnapshotKeys | None:
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


def _destroy_for_replace(name: str, reason: str) -> None:
    with audit.operation("destroy", name, reason=f"replace_incompatible: {reason}"):
        segment.destroy(name)


def apply_live(
    old: DaemonConfig, new: DaemonConfig, live: dict[str, tuple[Any, Any]]
) -> DaemonConfig:
    """``old`` with the ``live`` fields (from ``diff_config``) taken from ``new``."""
    sections: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for dotted in live:
        section, dot, key = dotted.partition(".")
        if dot:
            sections.setdefault(section, {})[key] = getattr(getattr(new, section), key)
        else:
            top[section] = getattr(new, section)
    for section, changes in sections.items():
        top[section] = msgspec.structs.replace(getattr(old, section), **changes)
    return msgspec.structs.replace(old, **top) if top else old


def _wake_only(signum: int, frame: object) -> None:
    """Signal handler: nothing. ``set_wakeup_fd`` already told the loop."""


# ---- command line ----------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="metisd",
        description="The Metis supervisor: owns the shared-memory segments of the configured "
        "caches, sweeps expired items, writes snapshots, serves /healthz, /stats and /metrics.",
        epilog="Signals: SIGTERM/SIGINT stop (snapshot first if snapshot.on_shutdown), SIGHUP "
        "reloads the configuration, SIGUSR1 writes a snapshot now. See docs/daemon.md.",
    )
    p.add_argument("--config", metavar="FILE", help="TOML or JSON file (default: $METIS_CONFIG)")
    p.add_argument("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING, ERROR, CRITICAL")
    p.add_argument("--health-address", metavar="HOST:PORT", help="where to serve the endpoints")
    p.add_argument(
        "--replace-incompatible",
        action="store_true",
        help="replace a segment metisd cannot read or whose settings differ (items are lost "
        "unless a snapshot carries them over)",
    )
    p.add_argument("--destroy", metavar="NAME", help="remove the segment of cache NAME and exit")
    p.add_argument(
        "--force",
        action="store_true",
        help="with --destroy: even if a live metisd supervises the cache",
    )
    p.add_argument("--version", action="version", version=f"metisd {__version__}")
    return p


def destroy(name: str, *, force: bool = False) -> int:
    """``metisd --destroy NAME``."""
    try:
        segment.validate_name(name)
        try:
            # Only its daemon pid is read: whoever owns it, it may be removed.
            opened = segment.attach(name, segment.OwnerCheck(allow_any=True))
        except SegmentNotFound:
            print(f"metisd: no cache named {name!r} ({segment.shm_path(name)} does not exist)",
                  file=sys.stderr)  # fmt: skip
            return EXIT_FAILURE
        except INCOMPATIBLE:
            opened = None  # not readable: nobody supervises it
        if opened is not None:
            os.close(opened.fd)
            other = owning_daemon(opened.header or {})
            if other is not None and not force:
                print(
                    f"metisd: cache {name!r} is supervised by a running metisd (pid {other}); "
                    f"stop it first, or add --force",
                    file=sys.stderr,
                )
                audit.record(
                    "destroy",
                    name,
                    outcome="refused",
                    details={"via": "metisd --destroy", "daemon_pid": other},
                )
                return EXIT_FAILURE
        with audit.operation("destroy", name, via="metisd --destroy", force=force):
            segment.destroy(name)
    except MetisError as exc:
        print(f"metisd: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, InvalidConfig | ValueError) else EXIT_FAILURE
    print(f"destroyed cache {name!r} ({segment.shm_path(name)}); processes that have it open "
          f"keep their mapping until they close it; snapshots are not touched")  # fmt: skip
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """The ``metisd`` console script."""
    args = _parser().parse_args(argv)
    if args.destroy:
        return destroy(args.destroy, force=args.force)
    overrides: dict[str, Any] = {}
    if args.log_level:
        overrides["log_level"] = args.log_level
    if args.health_address:
        overrides["health.address"] = args.health_address
    if args.replace_incompatible:
        overrides["replace_incompatible"] = True
    try:
        loaded = load_config(args.config, overrides=overrides)
    except InvalidConfig as exc:
        print(f"metisd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"metisd: cannot read the configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    handler = setup_logging(loaded.config.log_level)
    log.info(
        "metisd %s starting (pid %d), configuration from %s",
        __version__,
        os.getpid(),
        loaded.path or "the environment and defaults",
    )
    daemon = Daemon(loaded, overrides=overrides)
    daemon.install_signals()
    try:
        return daemon.run()
    except StartupError as exc:
        log.error("%s", exc)
        daemon.notifier.status(f"failed: {exc}")
        return exc.exit_code
    except Exception:
        log.exception("metisd failed")
        return EXIT_FAILURE
    finally:
        daemon.restore_signals()
        daemon.notifier.close()
        logging.getLogger().removeHandler(handler)


def _audit_unstarted(trigger: str | None, outcome: str, reason: str) -> None:
    """An on-demand snapshot (``trigger`` set) that did not start goes to the audit log."""
    if trigger:
        details = {"trigger": trigger, "reason": reason}
        audit.record("snapshot", None, outcome=outcome, details=details)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["Daemon", "StartupError", "apply_live", "destroy", "main", "settings_mismatch"]
