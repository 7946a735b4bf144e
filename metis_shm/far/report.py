"""What the far tier reports: one dict per near cache (``far_report``) for
``NearCache.far_stats()``, metisd's /stats, ``metis top`` and
OpenTelemetry, and the Prometheus families of /metrics (``FAR_METRICS``).
Near hits and misses are the cache's own hits and misses (Stats).
"""

from __future__ import annotations

import time
from typing import Any

from metis_shm import _engine
from metis_shm.far import words

# (far_report key, metric name, type, help)
FAR_METRICS: tuple[tuple[str, str, str, str], ...] = (
    (
        "far_hits",
        "metis_far_hits_total",
        "counter",
        "Near misses that Redis answered with a value.",
    ),
    ("far_misses", "metis_far_misses_total", "counter", "Near misses that Redis did not have."),
    ("fills", "metis_far_fills_total", "counter", "Values fetched from Redis stored near."),
    (
        "fills_dropped",
        "metis_far_fills_dropped_total",
        "counter",
        "Fills dropped because an invalidation of the key came during the fetch (the race).",
    ),
    (
        "invalidations",
        "metis_far_invalidations_total",
        "counter",
        "Keys invalidated by Redis's tracking messages.",
    ),
    (
        "generation_bumps",
        "metis_far_generation_bumps_total",
        "counter",
        "Whole-tier invalidations (a new subscription, FLUSHALL/FLUSHDB).",
    ),
    ("flushes", "metis_far_flushes_total", "counter", "FLUSHALL/FLUSHDB seen in Redis."),
    (
        "reconnects",
        "metis_far_tracker_reconnects_total",
        "counter",
        "Tracking connections lost and made again.",
    ),
    ("far_errors", "metis_far_errors_total", "counter", "Redis calls that failed (unavailable)."),
    (
        "single_flight_waits",
        "metis_far_single_flight_waits_total",
        "counter",
        "Near misses served by another process's fetch of the same key.",
    ),
    (
        "stale_served",
        "metis_far_stale_served_total",
        "counter",
        "Near entries served while Redis was down (on_down = stale).",
    ),
    ("far_writes", "metis_far_writes_total", "counter", "Writes sent to Redis."),
    (
        "fills_unregistered",
        "metis_far_fills_unregistered_total",
        "counter",
        "Reads not filled because the connection registry was full (default tracking).",
    ),
    (
        "connections_lost",
        "metis_far_connections_lost_total",
        "counter",
        "Registered Redis connections found closed (default tracking; each poll that finds"
        " one bumps the generation).",
    ),
    (
        "tracker_up",
        "metis_far_tracker_up",
        "gauge",
        "1 while the tracking connection is subscribed and vouching.",
    ),
    (
        "vouched_for_seconds",
        "metis_far_vouched_for_seconds",
        "gauge",
        "How long the near tier may still be served without another vouch.",
    ),
    ("generation", "metis_far_generation", "gauge", "The near tier's generation."),
)


def far_report(cache: _engine.Engine) -> dict[str, Any]:
    """The far tier's counters and the tracker's state for one segment."""
    out: dict[str, Any] = {name: cache._word(i) for name, i in words.COUNTERS.items()}
    state = cache._word(words.TRACKER_STATE)
    names = words.TRACKER_STATES
    out["tracker_state"] = names[state] if state < len(names) else str(state)
    out["tracker_pid"] = cache._word(words.TRACKER_PID)
    out["tracker_id"] = cache._word(words.TRACKER_ID)
    out["generation"] = cache.generation
    out["gate_open"] = cache.gate_open
    until = cache.vouch_until_ns
    left = (until - time.monotonic_ns()) / 1e9 if until else 0.0
    out["vouched_for_seconds"] = max(0.0, left)
    out["tracker_up"] = 1 if out["tracker_state"] == "subscribed" and cache.gate_open else 0
    return out
