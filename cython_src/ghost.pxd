# Ghost lists: hashes of recently evicted keys, remembered without their
# values (ARC's B1/B2, 2Q's A1out, S3-FIFO's ghost queue).
#
# Two rings of ghost_cap slots per shard hold the hashes in eviction order
# (oldest at ghost_tail); a linear-probing table maps a hash to its ring
# slot. Removing a ghost from the middle leaves a 0 (tombstone) in its ring
# slot that the tail skips later. Stored hashes have their low bit set so 0
# never names a key.
#
# All functions expect the shard lock.
from libc.stdint cimport uint32_t, uint64_t
from layout cimport ShardRef
from hashing cimport _fmix


cdef inline uint64_t ghost_key(uint64_t h) noexcept nogil:
    return h | 1

cdef inline uint32_t ghost_home(ShardRef *s, uint64_t g) noexcept nogil:
    return <uint32_t>(_fmix(g) & s.sh.ghost_table_mask)

cdef inline uint64_t *ghost_slot(ShardRef *s, uint32_t slot) noexcept nogil:
    return &s.ghost_ring[slot]


cdef inline int ghost_find(ShardRef *s, uint64_t h, uint32_t *table_index) noexcept nogil:
    """Which ring (0 or 1) holds the key's ghost, or -1."""
    cdef uint64_t g = ghost_key(h)
    cdef uint32_t i, v
    if s.sh.ghost_cap == 0:
        return -1
    i = ghost_home(s, g)
    while True:
        v = s.ghost_table[i]
        if v == 0:
            return -1
        if ghost_slot(s, v - 1)[0] == g:
            table_index[0] = i
            return <int>((v - 1) // s.sh.ghost_cap)
        i = (i + 1) & s.sh.ghost_table_mask


cdef inline void _table_delete(ShardRef *s, uint32_t i) noexcept nogil:
    """Backward-shift deletion keeps every probe chain unbroken."""
    cdef uint32_t j = i, k, mask = s.sh.ghost_table_mask
    while True:
        j = (j + 1) & mask
        if s.ghost_table[j] == 0:
            break
        k = ghost_home(s, ghost_slot(s, s.ghost_table[j] - 1)[0])
        # Move entry j back to the hole at i if its home is not in (i, j].
        if (j > i and (k <= i or k > j)) or (j < i and (k <= i and k > j)):
            s.ghost_table[i] = s.ghost_table[j]
            i = j
    s.ghost_table[i] = 0


cdef inline void do_ghost_remove(ShardRef *s, uint32_t table_index) noexcept nogil:
    cdef uint32_t slot = s.ghost_table[table_index] - 1
    cdef uint32_t ring = slot // s.sh.ghost_cap
    ghost_slot(s, slot)[0] = 0
    _table_delete(s, table_index)
    s.sh.ghost_count[ring] -= 1


cdef inline void _retire_tail_slot(ShardRef *s, uint32_t ring) noexcept nogil:
    """Free the ring's oldest slot (forgetting its ghost, if it holds one)."""
    cdef uint32_t slot = ring * s.sh.ghost_cap + \
        <uint32_t>(s.sh.ghost_tail[ring] % s.sh.ghost_cap)
    cdef uint64_t g = ghost_slot(s, slot)[0]
    cdef uint32_t i
    s.sh.ghost_tail[ring] += 1
    if g == 0:
        return
    i = ghost_home(s, g)
    while s.ghost_table[i] != slot + 1:
        i = (i + 1) & s.sh.ghost_table_mask
    ghost_slot(s, slot)[0] = 0
    _table_delete(s, i)
    s.sh.ghost_count[ring] -= 1


cdef inline bint do_ghost_drop_oldest(ShardRef *s, uint32_t ring) noexcept nogil:
    """Forget the oldest ghost of a ring. False if the ring is empty."""
    cdef uint32_t before = s.sh.ghost_count[ring]
    if before == 0:
        return False
    while s.sh.ghost_count[ring] == before:
        _retire_tail_slot(s, ring)
    return True


cdef inline void do_ghost_add(ShardRef *s, uint32_t ring, uint64_t h, uint32_t limit) noexcept nogil:
    """Remember `h` in a ring that keeps at most `limit` (<= ghost_cap) ghosts."""
    cdef uint32_t slot, i, idx
    cdef uint64_t g = ghost_key(h)
    if s.sh.ghost_cap == 0 or limit == 0:
        return
    if ghost_find(s, h, &idx) >= 0:
        do_ghost_remove(s, idx)
    if limit > s.sh.ghost_cap:
        limit = s.sh.ghost_cap
    while s.sh.ghost_count[ring] >= limit:
        do_ghost_drop_oldest(s, ring)
    # The slot we write must not hold a live ghost: advance past old ones.
    while s.sh.ghost_head[ring] - s.sh.ghost_tail[ring] >= s.sh.ghost_cap:
        _retire_tail_slot(s, ring)
    slot = ring * s.sh.ghost_cap + <uint32_t>(s.sh.ghost_head[ring] % s.sh.ghost_cap)
    s.sh.ghost_head[ring] += 1
    ghost_slot(s, slot)[0] = g
    i = ghost_home(s, g)
    while s.ghost_table[i] != 0:
        i = (i + 1) & s.sh.ghost_table_mask
    s.ghost_table[i] = slot + 1
    s.sh.ghost_count[ring] += 1
