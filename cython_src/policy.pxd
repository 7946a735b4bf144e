# Eviction policies: the seam between "which item goes" and the rest of the
# engine. Each shard keeps one doubly linked queue of its items (Item.qprev /
# Item.qnext, newest at q_head) plus policy state in its ShardHeader.
#
# Readers record hits without the lock (policy_record_hit): they never write
# into the arena, only into the shard's visited bitmap (one bit per 8 bytes of
# arena) or its access ring. A stale offset therefore can at worst set a wrong
# hint bit, never corrupt an item. Writers apply ring entries under the lock
# (do_policy_drain) after checking each offset is still an indexed item.
#
#   SIEVE: a hit sets the item's visited bit; the hand walks from the oldest
#          item toward the newest, clearing bits, and evicts the first item
#          whose bit is clear. Hits need no queue moves.
#   LRU:   a hit goes into the access ring; draining moves the item to the
#          head; the victim is the tail.
#
# Functions named do_* expect the shard lock.
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from layout cimport ShardRef, Item, item_at, RING_SIZE, POLICY_SIEVE, POLICY_LRU
from index cimport do_index_contains_offset
from includes.sync cimport (metis_load_relaxed_u8, metis_fetch_or_u8, metis_fetch_and_u8,
                            metis_load_relaxed_u64, metis_store_relaxed_u64,
                            metis_store_relaxed_u32, metis_load_relaxed_u32)


cdef inline uint8_t *visited_byte(ShardRef *s, uint32_t off) noexcept nogil:
    return &s.visited[off >> 6]

cdef inline uint8_t visited_mask(uint32_t off) noexcept nogil:
    return <uint8_t>(1 << ((off >> 3) & 7))

cdef inline bint is_visited(ShardRef *s, uint32_t off) noexcept nogil:
    return (metis_load_relaxed_u8(visited_byte(s, off)) & visited_mask(off)) != 0

cdef inline void clear_visited(ShardRef *s, uint32_t off) noexcept nogil:
    metis_fetch_and_u8(visited_byte(s, off), ~visited_mask(off))


cdef inline void policy_record_hit(ShardRef *s, uint32_t off) noexcept nogil:
    """Lock-free: note that the item at `off` was read."""
    cdef uint8_t *vb
    cdef uint8_t m
    cdef uint64_t pos
    if s.policy == POLICY_SIEVE:
        vb = visited_byte(s, off)
        m = visited_mask(off)
        # Read first: a hot item's bit is already set, and skipping the store
        # keeps the cache line shared between the readers' cores.
        if not (metis_load_relaxed_u8(vb) & m):
            metis_fetch_or_u8(vb, m)
    else:
        # Lossy by design: two readers racing may overwrite one entry.
        pos = metis_load_relaxed_u64(&s.sh.ring_pos)
        metis_store_relaxed_u32(&s.sh.ring[pos & (RING_SIZE - 1)], off)
        metis_store_relaxed_u64(&s.sh.ring_pos, pos + 1)


cdef inline void do_queue_push_head(ShardRef *s, uint32_t off) noexcept nogil:
    cdef Item *it = item_at(s, off)
    it.qprev = 0
    it.qnext = s.sh.q_head
    if s.sh.q_head:
        item_at(s, s.sh.q_head).qprev = off
    else:
        s.sh.q_tail = off
    s.sh.q_head = off
    s.sh.q_count += 1

cdef inline void do_queue_remove(ShardRef *s, uint32_t off) noexcept nogil:
    cdef Item *it = item_at(s, off)
    if it.qprev:
        item_at(s, it.qprev).qnext = it.qnext
    else:
        s.sh.q_head = it.qnext
    if it.qnext:
        item_at(s, it.qnext).qprev = it.qprev
    else:
        s.sh.q_tail = it.qprev
    s.sh.q_count -= 1


cdef inline void do_policy_reset(ShardRef *s) noexcept nogil:
    s.sh.q_head = 0
    s.sh.q_tail = 0
    s.sh.q_hand = 0
    s.sh.q_count = 0
    s.sh.ring_drained = metis_load_relaxed_u64(&s.sh.ring_pos)

cdef inline void do_policy_insert(ShardRef *s, uint32_t off) noexcept nogil:
    clear_visited(s, off)
    do_queue_push_head(s, off)

cdef inline void do_policy_remove(ShardRef *s, uint32_t off) noexcept nogil:
    if s.sh.q_hand == off:
        s.sh.q_hand = item_at(s, off).qprev
    do_queue_remove(s, off)
    clear_visited(s, off)


cdef inline void do_policy_drain(ShardRef *s) noexcept nogil:
    """Apply the hits readers left in the access ring (LRU: move to head)."""
    cdef uint64_t pos, i
    cdef uint32_t off
    if s.policy == POLICY_SIEVE:
        return
    pos = metis_load_relaxed_u64(&s.sh.ring_pos)
    i = s.sh.ring_drained
    if pos - i > RING_SIZE:
        i = pos - RING_SIZE
    while i < pos:
        off = metis_load_relaxed_u32(&s.sh.ring[i & (RING_SIZE - 1)])
        if do_index_contains_offset(s, off) and s.sh.q_head != off:
            do_queue_remove(s, off)
            do_queue_push_head(s, off)
        i += 1
    s.sh.ring_drained = pos
    s.sh.drains += 1


cdef inline uint32_t do_policy_victim(ShardRef *s) noexcept nogil:
    """The item to evict next, or 0 if the shard is empty."""
    cdef uint32_t hand
    cdef uint64_t guard = 0
    if s.sh.q_tail == 0:
        return 0
    if s.policy == POLICY_LRU:
        return s.sh.q_tail
    hand = s.sh.q_hand if s.sh.q_hand else s.sh.q_tail
    # At most two passes: the first clears every bit it meets.
    while guard <= 2 * <uint64_t>s.sh.q_count:
        if not is_visited(s, hand):
            s.sh.q_hand = item_at(s, hand).qprev
            return hand
        clear_visited(s, hand)
        hand = item_at(s, hand).qprev
        if hand == 0:
            hand = s.sh.q_tail
        guard += 1
    return s.sh.q_tail
