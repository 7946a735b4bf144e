"""The far tier's words in the segment's coherence block (cython_src/
coherence.pxd): shared atomics that the engine never interprets. Workers,
metisd's tracker, ``metis top`` and /metrics all read the same numbers.

Counters are bumped at far-tier speed (a Redis round trip each), so one
shared cache line costs nothing measurable.
"""

from __future__ import annotations

# Who vouches: written by the tracker.
TRACKER_ID = 0  # the Redis client id workers REDIRECT to (default mode); 0 = none
TRACKER_PID = 1
TRACKER_STATE = 2  # TRACKER_STATES below
LAST_VOUCH_NS = 3  # the newest vouch deadline, never reset (serve-stale mode measures from it)
# Counters.
FAR_HITS = 4
FAR_MISSES = 5
FILLS = 6
FILLS_DROPPED = 7  # a fill that lost the read/invalidate race
INVALIDATIONS = 8
GENERATION_BUMPS = 9
FLUSHES = 10
RECONNECTS = 11
FAR_ERRORS = 12
SINGLE_FLIGHT_WAITS = 13  # misses that waited for another process's fetch
STALE_SERVED = 14
FAR_WRITES = 15
# Default tracking's connection registry (CONN_SLOTS below).
CONN_POLLS = 16  # registry polls begun by the tracker; a fill checks none began during it
FILLS_UNREGISTERED = 17  # reads not filled: the registry was full
CONNECTIONS_LOST = 18  # registered connections the tracker found gone (one bump each poll)

# The connection registry (default tracking). Redis files what a worker's
# connection read under that connection's client id, and once the
# connection closes, those keys' invalidations are sent to no one. So a
# worker claims a slot for the id of the connection a GET went through
# (CAS 0 -> id) before it fills, and the tracker polls CLIENT LIST for the
# registered ids: one gone means lost invalidations, so it bumps the
# generation and frees the slot (CAS id -> 0). Full: the worker does not fill.
CONN_SLOTS = range(24, 216)

TRACKER_STATES = ("none", "connecting", "subscribed", "down", "stopped")

COUNTERS = {
    "far_hits": FAR_HITS,
    "far_misses": FAR_MISSES,
    "fills": FILLS,
    "fills_dropped": FILLS_DROPPED,
    "invalidations": INVALIDATIONS,
    "generation_bumps": GENERATION_BUMPS,
    "flushes": FLUSHES,
    "reconnects": RECONNECTS,
    "far_errors": FAR_ERRORS,
    "single_flight_waits": SINGLE_FLIGHT_WAITS,
    "stale_served": STALE_SERVED,
    "far_writes": FAR_WRITES,
    "fills_unregistered": FILLS_UNREGISTERED,
    "connections_lost": CONNECTIONS_LOST,
}
