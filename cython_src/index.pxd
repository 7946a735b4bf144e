# The hash index: per shard, a power-of-two array of 32-bit bucket heads;
# items of one bucket are chained through Item.hnext.
#
# Commit rule: every change to the set of keys becomes visible through ONE
# 32-bit store into the index (bucket head or a predecessor's hnext), made
# with release ordering after the item is fully written. Insert, replace and
# unlink each have exactly one such store, so the index is consistent at every
# instruction: a writer killed mid-operation leaves either the old or the new
# state reachable, never a mix. Repair (shard.pxd) trusts the index and frees
# whatever used block it cannot reach.
#
# Lock-free readers walk the chains too (optimistic.pxd). The locked
# lookups here bound-check every offset as well, against a segment written by
# something other than the engine (docs/security.md). Every walk, locked or
# not, stops at the same bound: ShardRef.chain_limit, the most items the
# shard can hold, so a longer walk has met a cycle.
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcmp
from layout cimport (ShardRef, Item, item_at, item_key, ITEM_HEADER_SIZE,
                     ARENA_RESERVED, FLAG_KEY_STR)
from includes.sync cimport (metis_load_relaxed_u32, metis_store_release_u32,
                            METIS_CRASH_POINT)

cdef enum:
    INDEX_TORN = 1          # an impossible offset: "what I read was inconsistent"


cdef inline uint32_t *bucket_of(ShardRef *s, uint64_t h) noexcept nogil:
    return &s.buckets[h & s.bucket_mask]

cdef inline bint item_offset_ok(ShardRef *s, uint32_t off) noexcept nogil:
    return off >= ARENA_RESERVED and (off & 7) == 0 and \
        <uint64_t>off + ITEM_HEADER_SIZE <= s.arena_size

cdef inline uint32_t do_index_find(ShardRef *s, uint64_t h, const char *key, uint32_t klen,
                                   uint32_t kflag, uint32_t **link_out) noexcept nogil:
    """Offset of the key's item or 0; *link_out = the word that points at it.

    Under the lock the chain is consistent unless something other than the
    engine wrote the segment (memory corruption, a hostile process with
    write access): an offset outside the arena or a cycle returns INDEX_TORN
    instead of reading out of bounds or looping forever. The bound is the
    most items a shard can hold, so a legitimately long chain (keys that
    happen to share a bucket) is still searched to its end.
    """
    cdef uint32_t *link = bucket_of(s, h)
    cdef uint32_t off = link[0]
    cdef uint64_t steps = 0, bound = s.chain_limit
    cdef Item *it
    link_out[0] = NULL
    while off:
        if not item_offset_ok(s, off) or steps > bound:
            return INDEX_TORN
        it = item_at(s, off)
        if it.hash == h and it.key_len == klen and (it.flags & FLAG_KEY_STR) == kflag:
            if <uint64_t>off + ITEM_HEADER_SIZE + klen > s.arena_size:
                return INDEX_TORN
            if memcmp(item_key(it), key, klen) == 0:
                link_out[0] = link
                return off
        link = &it.hnext
        off = link[0]
        steps += 1
    return 0


cdef inline bint do_index_contains_offset(ShardRef *s, uint32_t off) noexcept nogil:
    """Is `off` the start of an indexed item? (validates access-ring entries)"""
    cdef Item *it
    cdef uint32_t cur
    cdef uint64_t steps = 0
    if not item_offset_ok(s, off):
        return False
    it = item_at(s, off)
    cur = bucket_of(s, it.hash)[0]
    while cur and steps <= s.chain_limit:
        if cur == off:
            return True
        if not item_offset_ok(s, cur):
            return False
        cur = item_at(s, cur).hnext
        steps += 1
    return False


cdef inline void do_index_insert(ShardRef *s, uint32_t off, Item *it) noexcept nogil:
    cdef uint32_t *head = bucket_of(s, it.hash)
    it.hnext = head[0]
    METIS_CRASH_POINT(3)
    metis_store_release_u32(head, off)
    s.sh.items += 1

cdef inline void do_index_replace(ShardRef *s, uint32_t *link, Item *old, uint32_t off,
                                  Item *it) noexcept nogil:
    it.hnext = old.hnext
    METIS_CRASH_POINT(4)
    metis_store_release_u32(link, off)

cdef inline void do_index_unlink(ShardRef *s, uint32_t *link, Item *it) noexcept nogil:
    metis_store_release_u32(link, it.hnext)
    s.sh.items -= 1


cdef inline uint32_t *do_index_link_of(ShardRef *s, uint32_t off) noexcept nogil:
    """The word that points at the indexed item `off` (NULL if not indexed,
    or if the chain leaves the arena or cycles: see do_index_find)."""
    cdef uint32_t *link
    cdef uint64_t steps = 0, bound = s.chain_limit
    if not item_offset_ok(s, off):
        return NULL
    link = bucket_of(s, item_at(s, off).hash)
    while link[0]:
        if link[0] == off:
            return link
        if not item_offset_ok(s, link[0]) or steps > bound:
            return NULL
        link = &item_at(s, link[0]).hnext
        steps += 1
    return NULL
