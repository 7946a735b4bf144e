# The lock-free read protocol: what a reader may do in shared memory that a
# writer changes under it. docs/architecture.md ("Reads") has the argument;
# this file is the code it is about.
#
# THE RULE. On the optimistic path, every shared field is loaded exactly once
# (an explicit relaxed or acquire atomic load, which the compiler may neither
# repeat nor merge), into a local; the local is validated; only validated
# locals compute addresses and lengths. Nothing on this path calls a helper
# that reads a shared field itself: the helpers here are named opt_* and take
# what they need as arguments. A freed block may be reused at another
# alignment under the reader at any instruction, so a field read twice may
# differ, and an address computed from a second read may be wild.
#
# THE VALIDATION. A reader loads the shard's reclaim sequence (acquire),
# walks, copies, issues an acquire fence, and loads the sequence again. A
# writer bumps the sequence (release, then a release fence) before it
# changes any block that was ever reachable from the index: do_free,
# do_shard_reset, do_shard_repair. Everything else a writer does to
# reachable memory is a single atomic store a reader may see either way:
# publishing a new item (one release store of a link), unlinking (one
# store), touch (one 64-bit expiry store). So if the sequence did not move,
# no block the reader visited was reused while it looked, and what it copied
# is what the index held at the moment it loaded the link: a linearizable
# read. If it moved, the reader starts again.
#
# PROGRESS. Only a running writer moves the sequence, once per block freed.
# A stopped or dead writer moves nothing, so readers of its shard keep
# returning the last published state with no retry at all: nothing a reader
# does waits for another process.
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcmp
from layout cimport ShardRef, Item, item_at, ITEM_HEADER_SIZE, FLAG_KEY_STR
from index cimport bucket_of, item_offset_ok
from includes.sync cimport (metis_load_acquire_u32, metis_load_relaxed_u32,
                            metis_load_acquire_u64, metis_load_relaxed_u64, metis_fence_acquire)

cdef enum:
    OPT_MISS = 0
    OPT_FOUND = 1
    OPT_BROKEN = 2          # what was read cannot be a chain the engine wrote
    # How many chain steps between looks at the reclaim sequence: a walk
    # through a reused block may follow garbage links, so it gives up early
    # once the sequence moved instead of walking up to chain_limit.
    OPT_RECHECK_STEPS = 64


cdef struct OptItem:
    # The validated locals of the item a lookup found.
    uint32_t off
    uint32_t value_len
    uint32_t flags
    uint64_t expire_ns
    uint64_t stamp


cdef inline uint64_t opt_begin(ShardRef *s) noexcept nogil:
    """The reclaim sequence at the start of an optimistic read."""
    return metis_load_acquire_u64(&s.sh.reclaim_seq)

cdef inline bint opt_still(ShardRef *s, uint64_t begun) noexcept nogil:
    """True if no block was reclaimed since opt_begin returned `begun`:
    every plain load made before this call saw unreused memory."""
    metis_fence_acquire()
    return metis_load_relaxed_u64(&s.sh.reclaim_seq) == begun

cdef inline const char *opt_key_ptr(Item *it) noexcept nogil:
    return (<const char *>it) + ITEM_HEADER_SIZE

cdef inline const char *opt_value_ptr(Item *it, uint32_t klen) noexcept nogil:
    # klen is the validated local, never it.key_len read again.
    return (<const char *>it) + ITEM_HEADER_SIZE + klen


cdef inline int opt_find(ShardRef *s, uint64_t begun, uint64_t h, const char *key,
                         uint32_t klen, uint32_t kflag, OptItem *out) noexcept nogil:
    """Walk the key's chain without the lock: OPT_FOUND (out filled), OPT_MISS
    or OPT_BROKEN. The caller trusts the answer only after opt_still()."""
    cdef uint32_t off = metis_load_acquire_u32(bucket_of(s, h))
    cdef uint32_t ikl, iflags, vlen
    cdef uint64_t steps = 0
    cdef Item *it
    while off:
        if not item_offset_ok(s, off) or steps > s.chain_limit:
            return OPT_BROKEN
        it = item_at(s, off)
        if metis_load_relaxed_u64(&it.hash) == h:
            ikl = metis_load_relaxed_u32(&it.key_len)
            iflags = metis_load_relaxed_u32(&it.flags)
            if ikl == klen and (iflags & FLAG_KEY_STR) == kflag:
                vlen = metis_load_relaxed_u32(&it.value_len)
                # Bounds from locals only; no stored value is longer than
                # max_value (an 8-byte counter always fits).
                if (vlen > s.max_value and vlen != 8) or \
                        <uint64_t>off + ITEM_HEADER_SIZE + klen + vlen > s.arena_size:
                    return OPT_BROKEN
                if memcmp(opt_key_ptr(it), key, klen) == 0:
                    out.off = off
                    out.value_len = vlen
                    out.flags = iflags
                    out.expire_ns = metis_load_relaxed_u64(&it.expire_ns)
                    out.stamp = metis_load_relaxed_u64(&it.stamp)
                    return OPT_FOUND
        # Acquire: the next item was fully written before this link named it.
        off = metis_load_acquire_u32(&it.hnext)
        steps += 1
        if steps % OPT_RECHECK_STEPS == 0 and \
                metis_load_relaxed_u64(&s.sh.reclaim_seq) != begun:
            return OPT_BROKEN
    return OPT_MISS
