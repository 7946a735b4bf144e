"""metisd's maintenance: what every tick and every heartbeat does to each cache.

* ``tick()`` (every ``sweep.interval``): a TTL sweep of ``sweep.budget`` items
  per cache, in slices of ``SWEEP_SLICE`` items (no shard lock is held for
  more than one slice) and cut short past half the interval, then an
  access-buffer drain;
* ``heartbeat_all()`` (every ``heartbeat_interval``): the heartbeat in each
  segment's header (what ``Cache.daemon_alive`` reads) and a stats roll-up,
  which takes every shard's lock and so repairs a shard whose lock holder
  died, frees the stats slots of processes that are gone, and notices a
  segment removed or taken over by another metisd (``/healthz`` then fails);
  every ``STALE_SCAN_EVERY`` seconds it also looks in ``/proc/*/maps`` for
  processes still attached to a destroyed segment of a cache's name
  (``stale_processes`` in ``/stats``; a warning the first time each is seen).

The loop that calls them is ``Daemon.run`` (lifecycle.py).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import psutil

from metis_shm import segment
from metis_shm.contrib.opentelemetry import daemon_span
from metis_shm.daemon.state import DaemonState, Managed

log = logging.getLogger("metis_shm.daemon")

SWEEP_SLICE = 1024
"""Items one ``Cache.sweep`` call examines: the most a shard lock is held for."""
STATUS_EVERY = 10.0  # seconds between STATUS= summaries while running
STALE_SCAN_EVERY = 10.0
"""Seconds between two scans of ``/proc/*/maps`` for stale processes (every
process's maps are read: not at every heartbeat)."""


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


class Maintenance(DaemonState):
    """The sweeps, drains, heartbeats and roll-ups of ``Daemon``."""

    stale_processes: dict[str, list[int]]
    """Cache name -> pids still attached to a destroyed segment of that name."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stale_processes = {}
        self._attachments: segment.Attachments | None = None
        self._last_stale_scan = float("-inf")

    def tick(self) -> None:
        """One maintenance tick: sweep and drain every cache."""
        t0 = time.monotonic()
        interval = self.config.sweep.interval
        budget = self.config.sweep.budget
        deadline = t0 + max(interval / 2, 0.005)
        for managed in list(self.caches.values()):
            self._sweep(managed, budget, deadline)
            self._drain(managed)
            self._reap_held(managed)
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

    def _reap_held(self, managed: Managed) -> None:
        """Give back the blocks views held out of the cache, once their views
        are closed or their processes gone (dead processes' slots first, so
        their pins go with them): within one tick of the process's death."""
        cache = managed.cache
        try:
            if not cache._held_blocks():
                return
            self._reclaim_dead_slots(managed)
            managed.counters.held_blocks_freed += cache._reap_pins()
        except Exception as exc:
            self._count_error(managed, "reap held blocks", exc)

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
        """Every cache's heartbeat and stats roll-up; a ``STATUS=`` line every
        ``STATUS_EVERY`` seconds."""
        now = time.monotonic()
        if now - self._last_stale_scan >= STALE_SCAN_EVERY:
            self._last_stale_scan = now
            self._attachments = segment.scan_attachments()
        else:
            self._attachments = None  # the roll-ups keep what they found last
        for managed in list(self.caches.values()):
            self._heartbeat(managed)
            self._rollup(managed)
        now = time.monotonic()
        if now - self._last_status >= STATUS_EVERY:
            self._last_status = now
            self.notifier.status(f"ready: {self._summary()}")

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
        self._note_stale(managed)

    def _note_stale(self, managed: Managed) -> None:
        """The processes still attached to a destroyed segment of this cache's
        name (this metisd left out: its own loss is ``problem``); a warning for
        each one the first time it is seen."""
        if self._attachments is None:
            return
        name = managed.name
        before = set(self.stale_processes.get(name, []))
        stale = [p for p in self._attachments.stale.get(name, []) if p != self.pid]
        self.stale_processes[name] = stale
        new = [p for p in stale if p not in before]
        if new:
            log.warning(
                "cache %r: process%s %s still attached to a destroyed segment of this name "
                "(%s (deleted)): %s on a copy no other process sees; reopen the cache there "
                "or restart %s (metis ls lists them)",
                name,
                "es" if len(new) > 1 else "",
                ", ".join(str(p) for p in new),
                segment.shm_path(name),
                "they work" if len(new) > 1 else "it works",
                "them" if len(new) > 1 else "it",
            )

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


__all__ = ["STALE_SCAN_EVERY", "SWEEP_SLICE", "Maintenance"]
