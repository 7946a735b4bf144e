# Shards: the writer lock, write sections, and repair after a writer died.
#
# Writers:  shard_lock(s); do_write_begin(s); ...changes...; do_write_end(s);
#           shard_unlock(s)
# Readers take no lock and do not look at write sections: optimistic.pxd.
#
# The lock is a process-shared robust pthread mutex. A write section marks
# the shard as being changed (ShardHeader.writing). Whoever takes the lock
# and finds the mark set knows the previous owner died mid-change: it
# repairs the shard (do_shard_repair) before it does anything else. An owner
# that died outside a write section (check, stats, a snapshot export) changed
# nothing, so its successor only marks the mutex consistent.
#
# Repair trusts the index (index.pxd: one store commits each change) and
# rebuilds everything else from a walk of the arena (allocator.pxd: headers
# always tile the arena). It keeps its working state in private memory and
# writes the segment only in ways a second repair redoes from scratch, so a
# repair killed at any instruction is finished by the next owner.
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset
from posix.unistd cimport getpid
from layout cimport (ShardRef, Item, item_at, ARENA_RESERVED, ITEM_HEADER_SIZE,
                     BLOCK_USED, BLOCK_PREV_FREE, BLOCK_ZOMBIE, MIN_BLOCK)
from allocator cimport hdr_word, alloc_init, alloc_rebuild, block_header_ok, do_reclaim_begin
from pins cimport pin_held, shard_pinned, do_zombie_push, do_zombie_forget
from policy cimport do_policy_reset, do_queue_push_head, policy_rebuild_queue
from includes.sync cimport (metis_mutex_init, metis_mutex_timedlock, metis_mutex_trylock,
                            metis_mutex_unlock, metis_mutex_consistent, metis_load_acquire_u32,
                            metis_load_relaxed_u32, metis_store_release_u32, metis_cas_u32,
                            metis_load_relaxed_u64, metis_store_relaxed_u64)
from includes.posix cimport EBUSY, EOWNERDEAD, ENOTRECOVERABLE, ESRCH, kill, errno


cdef inline void do_write_begin(ShardRef *s) noexcept nogil:
    """Mark the shard as being changed (for whoever finds it after our death)."""
    metis_store_relaxed_u64(&s.sh.writing, 1)

cdef inline void do_write_end(ShardRef *s) noexcept nogil:
    metis_store_relaxed_u64(&s.sh.writing, 0)


cdef inline bint _pid_alive(uint32_t pid) noexcept nogil:
    return not (kill(pid, 0) == -1 and errno == ESRCH)


cdef inline int shard_recover_mutex(ShardRef *s, uint32_t generation_seen) noexcept nogil:
    """Re-initialise a mutex left ENOTRECOVERABLE (an owner after a death
    unlocked it without repairing: never this engine, but a process with
    write access can). No process can hold such a mutex, so making it anew
    takes nobody's lock away; the write mark makes the next owner repair.

    One process re-initialises at a time (lock_recoverer, taken over from a
    dead recoverer), and only if nobody did since this caller's failed lock
    attempt (lock_generation): a late caller must not re-initialise a mutex
    that a live process already holds again. 0 if the caller may try the
    lock again now, EBUSY if another live process is recovering.
    """
    cdef uint32_t me = <uint32_t>getpid()
    cdef uint32_t owner = metis_load_relaxed_u32(&s.sh.lock_recoverer)
    if owner and owner != me and _pid_alive(owner):
        return EBUSY
    if not metis_cas_u32(&s.sh.lock_recoverer, owner, me):
        return EBUSY
    if metis_load_acquire_u32(&s.sh.lock_generation) == generation_seen:
        metis_mutex_init(s.sh.lock)
        do_write_begin(s)
        metis_store_release_u32(&s.sh.lock_generation, generation_seen + 1)
    metis_store_release_u32(&s.sh.lock_recoverer, 0)
    return 0


cdef inline int shard_lock(ShardRef *s, long wait_ms) noexcept:
    """Take the shard's writer lock, waiting at most `wait_ms` (0: only try).

    Returns 0 with the lock held (the shard repaired first if its previous
    owner died mid-change), EBUSY/ETIMEDOUT if it is still held elsewhere
    (the caller looks at signals and calls again), or the pthread error.
    Waits with the GIL released, so other threads of this process run.
    """
    cdef uint32_t generation = metis_load_acquire_u32(&s.sh.lock_generation)
    cdef int rc = metis_mutex_trylock(s.sh.lock)
    cdef bint waited = False
    if rc == EBUSY and wait_ms > 0:
        waited = True
        with nogil:
            rc = metis_mutex_timedlock(s.sh.lock, wait_ms)
    if rc == ENOTRECOVERABLE:
        if shard_recover_mutex(s, generation) != 0:
            return EBUSY
        rc = metis_mutex_trylock(s.sh.lock)
    if rc == EOWNERDEAD:
        metis_mutex_consistent(s.sh.lock)
        s.sh.lock_recoveries += 1
        rc = 0
    if rc != 0:
        return rc
    if waited:
        s.sh.lock_waits += 1
    if metis_load_relaxed_u64(&s.sh.writing):
        do_shard_repair(s)
        s.sh.repairs += 1
    return 0

cdef inline void shard_unlock(ShardRef *s) noexcept nogil:
    metis_mutex_unlock(s.sh.lock)


cdef inline void do_shard_reset(ShardRef *s) noexcept nogil:
    """Empty the shard (clear): one free block, empty index and queue.

    Blocks a view pins stay where they are, as zombies (pins.pxd): then the
    rest of the arena is freed around them."""
    memset(s.buckets, 0, (<size_t>s.bucket_mask + 1) * sizeof(uint32_t))
    do_reclaim_begin(s)  # after the index is empty, before blocks change
    memset(s.hints, 0, <size_t>(s.arena_size >> 6) + 1)
    if s.sh.zombie_head or shard_pinned(s):
        _free_unpinned(s)
    else:
        do_zombie_forget(s)
        alloc_init(s)
    do_policy_reset(s)
    s.sh.items = 0


cdef inline void _free_unpinned(ShardRef *s) noexcept nogil:
    """Mark every used block free but the pinned ones, which become the
    zombie list; then rebuild the free lists. Restartable: a second run
    finds the same pins and redoes the same marks."""
    cdef uint32_t off = ARENA_RESERVED, hdr, size
    do_zombie_forget(s)
    while off < s.arena_size:
        hdr = hdr_word(s, off)[0]
        size = hdr & ~(<uint32_t>7)
        if not block_header_ok(s, off, size):
            hdr_word(s, off)[0] = <uint32_t>(s.arena_size - off)
            break
        if hdr & BLOCK_USED:
            if pin_held(s, off):
                hdr_word(s, off)[0] = hdr & ~(<uint32_t>BLOCK_ZOMBIE)
                do_zombie_push(s, off)
            else:
                hdr_word(s, off)[0] = size
        off += size
    alloc_rebuild(s)


cdef inline bint _bit(uint8_t *bits, uint32_t off) noexcept nogil:
    return (bits[off >> 6] >> ((off >> 3) & 7)) & 1

cdef inline void _set_bit(uint8_t *bits, uint32_t off) noexcept nogil:
    bits[off >> 6] |= <uint8_t>(1 << ((off >> 3) & 7))


cdef inline void do_shard_repair(ShardRef *s) noexcept nogil:
    """Bring a shard whose writer died mid-change back to a consistent state.

    1. walk the arena and note every block start (private bitmap);
    2. follow every index chain, cutting it at the first entry that is not a
       used block start not reached before, whose hash belongs to that bucket
       and whose item fits its block; note the rest as reached (private);
    3. free every used block the index does not reach (a half-written item,
       or one unlinked but not yet freed), unless a view pins it: that one
       joins the zombie list, which is rebuilt here from scratch;
    4. rebuild free lists, footers and counters, and the policy queue.
    Items lose their queue order and segment (they all go to the policy's
    main queue) and ghosts are forgotten; hint bytes stay.

    Restartable: the segment is written only by cuts of invalid chain links,
    by freeing unreachable blocks and by rebuilds from scratch, each of which
    a second repair finds done or does again. The write mark stays set until
    the end, so a repair killed midway is run again by the next owner.
    """
    cdef uint64_t nbuckets = <uint64_t>s.bucket_mask + 1
    cdef uint64_t nbits = (s.arena_size >> 6) + 1
    cdef uint8_t *starts
    cdef uint8_t *reached
    cdef uint32_t off, size, hdr
    cdef uint32_t *link
    cdef uint64_t b, items = 0, steps
    cdef Item *it
    do_write_begin(s)
    starts = <uint8_t *>calloc(nbits, 1)
    reached = <uint8_t *>calloc(nbits, 1)
    if starts == NULL or reached == NULL:
        free(starts)
        free(reached)
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
        _set_bit(starts, off)
        off += size
    # 2.
    for b in range(nbuckets):
        link = &s.buckets[b]
        steps = 0
        while link[0]:
            off = link[0]
            hdr = 0
            if off >= ARENA_RESERVED and (off & 7) == 0 and off < s.arena_size and \
                    _bit(starts, off) and not _bit(reached, off):
                hdr = hdr_word(s, off)[0]
            it = item_at(s, off)
            if not (hdr & BLOCK_USED) or steps > s.chain_limit or \
                    (it.hash & s.bucket_mask) != b or \
                    <uint64_t>ITEM_HEADER_SIZE + it.key_len + it.value_len > \
                    (hdr & ~(<uint32_t>7)):
                link[0] = 0
                break
            _set_bit(reached, off)
            items += 1
            steps += 1
            link = &it.hnext
    free(starts)
    # Every unlink is done: readers that start now cannot reach the blocks
    # freed below, and readers inside them retry.
    do_reclaim_begin(s)
    # 3.
    do_zombie_forget(s)
    off = ARENA_RESERVED
    while off < s.arena_size:
        hdr = hdr_word(s, off)[0]
        size = hdr & ~(<uint32_t>7)
        if (hdr & BLOCK_USED) and not _bit(reached, off):
            if pin_held(s, off):
                hdr_word(s, off)[0] = hdr & ~(<uint32_t>BLOCK_ZOMBIE)
                do_zombie_push(s, off)
            else:
                hdr_word(s, off)[0] = size
        elif hdr & BLOCK_ZOMBIE:
            # A zombie the index reaches again cannot be: it is an item.
            hdr_word(s, off)[0] = hdr & ~(<uint32_t>BLOCK_ZOMBIE)
        off += size
    free(reached)
    # 4.
    alloc_rebuild(s)
    do_policy_reset(s)
    off = ARENA_RESERVED
    while off < s.arena_size:
        hdr = hdr_word(s, off)[0]
        if (hdr & BLOCK_USED) and not (hdr & BLOCK_ZOMBIE):
            do_queue_push_head(s, policy_rebuild_queue(s), off)
        off += hdr & ~(<uint32_t>7)
    s.sh.items = items
    do_write_end(s)
