"""What metisd reports about itself: the answers its endpoints serve.

``health()`` is the body of ``/healthz`` and whether it is ``200``:
unhealthy while starting, warming up or stopping, when the maintenance loop
stalls (silent for ``max(STALL_SECONDS, 5 sweep intervals)``), when a
cache's segment was removed or taken over, or on a recent maintenance error;
a failed snapshot, a skipped one at warm-up and a nearly full ``/dev/shm``
are warnings only. ``stats()`` is ``/stats``: every cache's ``Stats`` and
the daemon's own counters (``daemon_section``; per cache also
``stale_processes``); ``metrics()`` is the same as
Prometheus text (health.py's ``render_metrics``). These three are what the
``HealthServer`` asks of its ``Endpoints``.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

import msgspec

from metis_shm import __version__, segment
from metis_shm.daemon.health import render_metrics
from metis_shm.daemon.state import DaemonState
from metis_shm.far.report import far_report
from metis_shm.stats import Stats

STALL_SECONDS = 10.0  # a loop silent for max(this, 5 intervals) makes /healthz fail


class StatusReports(DaemonState):
    """The ``/healthz``, ``/stats`` and ``/metrics`` answers of ``Daemon``."""

    stale_processes: dict[str, list[int]]
    """Kept by ``Maintenance`` (maintenance.py): cache name -> pids still
    attached to a destroyed segment of that name."""

    def daemon_section(self) -> dict[str, Any]:
        """The daemon's own numbers: the ``daemon`` part of ``/stats`` and of ``/metrics``."""
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
            "caches": {
                name: {
                    **m.counters.to_dict(),
                    "stale_processes": list(self.stale_processes.get(name, [])),
                    **({"far": self._far_section(m)} if m.config.far is not None else {}),
                }
                for name, m in list(self.caches.items())
            },
        }

    def _far_section(self, managed: Any) -> dict[str, Any]:
        """A near cache's far-tier numbers (metis_shm/far/report.py)."""
        with self._access:
            if self._detached:
                return {}
            out = far_report(managed.cache)
        tracker = managed.tracker
        if tracker is not None:
            t = tracker.stats()
            out["last_error"] = t.get("last_error")
            out["connected_since"] = t.get("connected_since")
        return out

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
        """The JSON body of ``/stats`` (``shards=False``: no per-shard lists)."""
        caches = {}
        for name, st in self._fresh_stats().items():
            d = st.to_dict()
            if not shards:
                d.pop("shards", None)
            caches[name] = d
        return {"caches": caches, "daemon": self.daemon_section()}

    def metrics(self) -> str:
        """The body of ``/metrics``: Prometheus text."""
        return render_metrics(self._fresh_stats(), self.daemon_section())

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, the JSON body of ``/healthz``): ``reasons`` why not, ``warnings``."""
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


__all__ = ["StatusReports"]
