# Coherence: how a tier in front of this one (Redis, metis_shm/far) keeps
# the segment from serving what it can no longer vouch for, without a lock
# and without a slow clear.
#
# Every item carries a stamp: the segment's generation (high 32 bits) and the
# stamp counter of its index bucket (low 32), taken when it was written. An
# item is live only while its stamp equals the current one, so
#   * invalidate(key) bumps the key's bucket counter: every copy written
#     before is dead at once, for every reader, with no lock (the unlink can
#     wait for a free lock or a sweep);
#   * a generation bump kills every item at once (a lost connection, FLUSHALL);
#   * a fill carries the stamp read *before* its value was fetched: if an
#     invalidation came in between, the stamp moved and the fill is dead on
#     arrival (the read/invalidate race Redis's docs describe).
# A bucket counter shared by several keys only makes invalidations spread to
# neighbours: a spurious miss, never a stale hit.
#
# The gate: a gated segment serves reads only until vouch_until_ns, which
# the tracker pushes forward while it knows it has seen every invalidation.
# A dead tracker stops pushing, so nothing is served past the bound.
from libc.stdint cimport uint32_t, uint64_t
from layout cimport ShardRef, Coherence, Item
from includes.sync cimport (metis_load_acquire_u64, metis_load_acquire_u32,
                            metis_load_relaxed_u64, metis_load_relaxed_u32)

cdef extern from *:
    """
    #include <time.h>
    /* The gate's clock: CLOCK_MONOTONIC is one clock for every process of
       the machine (time.monotonic_ns() in Python). The coarse variant costs
       a few ns and lags by at most a tick; the tracker's deadline leaves a
       margin for it. */
    static inline uint64_t metis_mono_coarse_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    }
    """
    uint64_t metis_mono_coarse_ns() nogil


cdef inline uint64_t coh_stamp(ShardRef *s, uint64_t h) noexcept nogil:
    """The stamp an item of hash h must carry to be live now."""
    cdef uint64_t g = metis_load_acquire_u64(&s.coh.generation) & <uint64_t>0xFFFFFFFF
    cdef uint64_t b = metis_load_acquire_u32(&s.stamps[h & s.bucket_mask])
    return (g << 32) | b

cdef inline bint coh_gate_open(Coherence *c) noexcept nogil:
    """False if the segment is gated and no tracker vouches for it now."""
    if not metis_load_relaxed_u32(&c.gated):
        return True
    return metis_mono_coarse_ns() < metis_load_acquire_u64(&c.vouch_until_ns)

cdef inline bint item_stamp_dead(ShardRef *s, Item *it) noexcept nogil:
    """Invalidated since it was written (by key or by generation)."""
    return it.stamp != coh_stamp(s, it.hash)
