# Expiry sweeps: remove expired (or invalidated, coherence.pxd) items a bounded slice at a time, so no shard
# lock is held long. Each shard keeps a bucket cursor; a sweep resumes where
# the previous one stopped and wraps around. Reads never depend on sweeps:
# an expired item is refused at read time whether or not it was swept.
#
# Functions named do_* expect the shard lock.
from libc.stdint cimport uint32_t, uint64_t
from layout cimport ShardRef, Item, item_at
from item cimport item_dead, do_item_remove


cdef inline uint64_t do_sweep(ShardRef *s, uint64_t budget, uint64_t now_ns,
                              uint64_t *examined_out) noexcept nogil:
    """Look at up to `budget` items; return how many expired items went.

    Stops mid-chain when the budget runs out (the cursor stays on that
    bucket), except in the first bucket of a slice: finishing it keeps the
    sweep moving even past a chain longer than the budget.
    """
    cdef uint64_t examined = 0, removed = 0, visited_buckets = 0
    cdef uint64_t nb = <uint64_t>s.bucket_mask + 1
    cdef uint64_t b = s.sh.sweep_cursor % nb
    cdef uint32_t *link
    cdef uint32_t off
    while examined < budget and visited_buckets < nb:
        link = &s.buckets[b]
        off = link[0]
        while off:
            if examined >= budget and visited_buckets > 0:
                break
            examined += 1
            if item_dead(s, item_at(s, off), now_ns):
                do_item_remove(s, link, off)
                s.sh.expirations += 1
                removed += 1
            else:
                link = &item_at(s, off).hnext
            off = link[0]
        if off:
            break
        b = (b + 1) % nb
        visited_buckets += 1
    s.sh.sweep_cursor = b
    examined_out[0] = examined
    return removed
