# Items: what one stored key/value looks like in the arena, and the steps that
# put one in or take one out. An item is written completely into a block that
# no reader can reach yet; only then does the index publish it (index.pxd).
#
#   Item header (56 bytes) | key bytes | value bytes | padding to 8
#
# Functions named do_* expect the shard lock.
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy
from layout cimport ShardRef, Item, item_at, ITEM_HEADER_SIZE
from pins cimport do_release
from index cimport do_index_unlink, do_index_link_of
from policy cimport do_policy_remove
from coherence cimport item_stamp_dead


cdef inline bint item_expired(Item *it, uint64_t now_ns) noexcept nogil:
    return it.expire_ns != 0 and it.expire_ns <= now_ns

cdef inline bint item_dead(ShardRef *s, Item *it, uint64_t now_ns) noexcept nogil:
    """Expired, or invalidated since it was written (coherence.pxd): either
    way, absent for every operation."""
    return item_expired(it, now_ns) or item_stamp_dead(s, it)

cdef inline void item_fill(Item *it, uint64_t stamp, uint64_t h, uint64_t expire_ns,
                           const char *key, uint32_t klen, const char *value, uint32_t vlen,
                           uint32_t flags) noexcept nogil:
    it.hnext = 0
    it.stamp = stamp
    it.hash = h
    it.expire_ns = expire_ns
    it.key_len = klen
    it.value_len = vlen
    it.flags = flags
    it.qprev = 0
    it.qnext = 0
    it.qaux = 0
    memcpy((<char *>it) + ITEM_HEADER_SIZE, key, klen)
    if vlen:
        memcpy((<char *>it) + ITEM_HEADER_SIZE + klen, value, vlen)


cdef inline void do_item_remove(ShardRef *s, uint32_t *link, uint32_t off) noexcept nogil:
    """Unlink (the commit), leave the policy queue, free the block."""
    do_index_unlink(s, link, item_at(s, off))
    do_policy_remove(s, off, False)
    do_release(s, off)

cdef inline void do_item_evict(ShardRef *s, uint32_t off, uint64_t now_ns) noexcept nogil:
    """Remove a policy victim; an expired victim counts as an expiration (and
    leaves no ghost: it was not pushed out by the policy)."""
    cdef uint32_t *link = do_index_link_of(s, off)
    cdef bint expired = item_dead(s, item_at(s, off), now_ns)
    if expired:
        s.sh.expirations += 1
    else:
        s.sh.evictions += 1
    if link != NULL:
        do_index_unlink(s, link, item_at(s, off))
    do_policy_remove(s, off, not expired)
    do_release(s, off)
