# Shards: the writer lock, the seqlock word, and repair after a writer died.
#
# Writers:  shard_lock(s); do_write_begin(s); ...changes...; do_write_end(s);
#           shard_unlock(s)
# Readers:  s1 = seq (acquire); copy; fence (acquire); s2 = seq; trust the
#           copy only if s1 == s2 and s1 is even (see engine.pyx).
#
# The lock is a process-shared robust pthread mutex. When its owner dies,
# the next locker gets EOWNERDEAD: the shard may be half-changed, so it is
# repaired (do_shard_repair) before the mutex is marked consistent. Repair
# trusts the index (index.pxd: one store commits each change) and rebuilds
# everything else from a walk of the arena (allocator.pxd: headers always
# tile the arena).
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset
from layout cimport (ShardRef, Item, item_at, ARENA_RESERVED, ITEM_HEADER_SIZE, MAX_CHAIN,
                     BLOCK_USED, BLOCK_PREV_FREE, BLOCK_MARK, MIN_BLOCK)
from allocator cimport hdr_word, alloc_init, alloc_rebuild, block_header_ok
from policy cimport do_policy_reset, do_queue_push_head, policy_rebuild_queue
from includes.sync cimport (metis_mutex_lock, metis_mutex_trylock, metis_mutex_unlock,
                            metis_mutex_consistent, metis_load_relaxed_u64,
                            metis_store_relaxed_u64, metis_store_release_u64,
                            metis_fence_release)
from includes.posix cimport EBUSY, EOWNERDEAD


cdef inline void do_write_begin(ShardRef *s) noexcept nogil:
    """Make the sequence word odd: optimistic readers of this shard retry."""
    cdef uint64_t seq = metis_load_relaxed_u64(&s.sh.seq)
    metis_store_relaxed_u64(&s.sh.seq, seq + 1)
    metis_fence_release()

cdef inline void do_write_end(ShardRef *s) noexcept nogil:
    """Make the sequence word even again, publishing every change before it."""
    cdef uint64_t seq = metis_load_relaxed_u64(&s.sh.seq)
    metis_store_release_u64(&s.sh.seq, seq + 1)


cdef inline int shard_lock(ShardRef *s) noexcept:
    """Take the shard's writer lock (repairing after a dead owner).

    Returns 0, or the pthread error code if the lock cannot be had. Waits with
    the GIL released, so other threads of this process keep running.
    """
    cdef int rc = metis_mutex_trylock(s.sh.lock)
    cdef bint waited = False
    if rc == EBUSY:
        waited = True
        with nogil:
            rc = metis_mutex_lock(s.sh.lock)
    if rc == EOWNERDEAD:
        do_shard_repair(s)
        metis_mutex_consistent(s.sh.lock)
        s.sh.lock_recoveries += 1
        rc = 0
    if rc == 0 and waited:
        s.sh.lock_waits += 1
    return rc

cdef inline void shard_unlock(ShardRef *s) noexcept nogil:
    metis_mutex_unlock(s.sh.lock)


cdef inline void do_shard_reset(ShardRef *s) noexcept nogil:
    """Empty the shard (clear): one free block, empty index and queue."""
    memset(s.buckets, 0, (<size_t>s.bucket_mask + 1) * sizeof(uint32_t))
    memset(s.hints, 0, <size_t>(s.arena_size >> 6) + 1)
    alloc_init(s)
    do_policy_reset(s)
    s.sh.items = 0


cdef inline void do_shard_repair(ShardRef *s) noexcept nogil:
    """Bring a shard whose writer died mid-change back to a consistent state.

    1. walk the arena and note every block start;
    2. follow every index chain, cutting it at the first entry that is not a
       used, unmarked block start whose hash belongs to that bucket; mark the
       rest as reachable;
    3. free every used block the index does not reach (a half-written item,
       or one unlinked but not yet freed);
    4. rebuild free lists, footers and counters, and the policy queue.
    Items lose their queue order and segment (they all go to the policy's
    main queue) and ghosts are forgotten; hint bytes stay.
    """
    cdef uint64_t nbuckets = <uint64_t>s.bucket_mask + 1
    cdef uint64_t nstart_bytes = (s.arena_size >> 6) + 1
    cdef uint8_t *starts
    cdef uint32_t off, size, hdr, steps
    cdef uint32_t *link
    cdef uint64_t b, items = 0
    cdef Item *it
    cdef uint64_t seq = metis_load_relaxed_u64(&s.sh.seq)
    if not (seq & 1):
        metis_store_relaxed_u64(&s.sh.seq, seq + 1)
        metis_fence_release()
    starts = <uint8_t *>calloc(nstart_bytes, 1)
    if starts == NULL:
        do_shard_reset(s)
        do_write_end(s)
        return
    # 1.
    off = ARENA_RESERVED
    while off < s.arena_size:
        size = hdr_word(s, off)[0] & ~(<uint32_t>7)
        if not block_header_ok(s, off, size):
            hdr_word(s, off)[0] = <uint32_t>(s.arena_size - off)
            break
        starts[off >> 6] |= <uint8_t>(1 << ((off >> 3) & 7))
        off += size
    # 2.
    for b in range(nbuckets):
        link = &s.buckets[b]
        steps = 0
        while link[0]:
            off = link[0]
            hdr = 0
            if off >= ARENA_RESERVED and (off & 7) == 0 and off < s.arena_size and \
                    (starts[off >> 6] & (1 << ((off >> 3) & 7))):
                hdr = hdr_word(s, off)[0]
            it = item_at(s, off)
            if not (hdr & BLOCK_USED) or (hdr & BLOCK_MARK) or steps >= MAX_CHAIN or \
                    (it.hash & s.bucket_mask) != b or \
                    <uint64_t>ITEM_HEADER_SIZE + it.key_len + it.value_len > \
                    (hdr & ~(<uint32_t>7)):
                link[0] = 0
                break
            hdr_word(s, off)[0] = hdr | BLOCK_MARK
            items += 1
            steps += 1
            link = &it.hnext
    free(starts)
    # 3.
    off = ARENA_RESERVED
    while off < s.arena_size:
        hdr = hdr_word(s, off)[0]
        size = hdr & ~(<uint32_t>7)
        if hdr & BLOCK_MARK:
            hdr_word(s, off)[0] = hdr & ~(<uint32_t>BLOCK_MARK)
        elif hdr & BLOCK_USED:
            hdr_word(s, off)[0] = size
        off += size
    # 4.
    alloc_rebuild(s)
    do_policy_reset(s)
    off = ARENA_RESERVED
    while off < s.arena_size:
        hdr = hdr_word(s, off)[0]
        if hdr & BLOCK_USED:
            do_queue_push_head(s, policy_rebuild_queue(s), off)
        off += hdr & ~(<uint32_t>7)
    s.sh.items = items
    do_write_end(s)
