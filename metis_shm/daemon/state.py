"""What the parts of ``metisd`` share: the state of one daemon and how a start fails.

``Daemon`` (lifecycle.py) is one object whose methods are grouped by concern
into mixins: ``Maintenance`` (maintenance.py), ``SnapshotSchedule``
(snapshots/schedule.py), ``ConfigReload`` (reload.py) and ``StatusReports``
(status.py). Each of them subclasses ``DaemonState``, which declares, once and
with types, everything they share (the configuration a ``SIGHUP`` replaces,
the caches, the notifier, the loop's counters, the signal flags) and the few
helpers every part calls: a cache's heartbeat, the watchdog ping, error
accounting and the one-line summary.

Also here: the exit statuses of ``metisd``, ``StartupError`` (a start that
cannot go on, with its exit status), ``Managed`` (a cache the daemon owns)
and ``CacheCounters`` (what the daemon did to it: the "daemon" section of
``/stats``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from metis_shm.cache import Cache
from metis_shm.daemon.config import CacheConfig, DaemonConfig, LoadedConfig
from metis_shm.daemon.health import HealthServer
from metis_shm.daemon.snapshots.crypto import SnapshotKeys
from metis_shm.daemon.systemd import Notifier
from metis_shm.stats import Stats
from metis_shm.units import format_size

log = logging.getLogger("metis_shm.daemon")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3

PROGRESS_EVERY = 1.0  # seconds between progress lines of a warm-up or snapshot
ERROR_LOG_EVERY = 60.0  # the same maintenance error is logged at most this often


class StartupError(Exception):
    """metisd cannot start; ``exit_code`` says how it ends."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


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
    held_blocks_freed: int = 0  # blocks views held back, freed by a tick
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
    tracker: Any = None  # metis_shm.far.tracker.Tracker of a near cache (daemon/far.py)

    @property
    def name(self) -> str:
        return self.config.name


# ---- the shared state ------------------------------------------------------------


class DaemonState:
    """The state of one metisd, shared by every part of ``Daemon``, and the
    helpers they all call."""

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

    # ---- helpers every part calls ----------------------------------------------

    def _take_signals(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for a signal; note the ones that came."""
        raise NotImplementedError  # Daemon (lifecycle.py) implements it

    def _heartbeat(self, managed: Managed) -> None:
        try:
            managed.cache._set_daemon(self.pid, time.time_ns())
        except Exception as exc:
            self._count_error(managed, "heartbeat", exc)
            return
        managed.counters.heartbeats += 1
        managed.counters.last_heartbeat = time.time()

    def _watchdog(self) -> None:
        if self.notifier.watchdog_interval and self.notifier.watchdog():
            self.loop["watchdog_pings"] += 1

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


__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_USAGE",
    "CacheCounters",
    "DaemonState",
    "Managed",
    "StartupError",
]
