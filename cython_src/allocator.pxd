# The allocator: variable-size blocks inside one shard's arena, with boundary
# tags and one free list per power-of-two size class.
#
# Every block starts with a 32-bit header word: its size (a multiple of 8)
# and the BLOCK_USED / BLOCK_PREV_FREE bits. A free block also keeps its free
# list links after the header and its size in its last 4 bytes (the footer),
# so freeing can merge with the block before it.
#
# Crash rule: the chain of headers (arena start, then start + size, ...) tiles
# the arena at every instruction. A split writes the remainder's header before
# it shrinks the block; a merge grows the lower block with one store. So a
# writer killed anywhere leaves a walkable arena, and repair (shard.pxd)
# rebuilds the free lists and footers from a walk.
#
# Reuse rule: lock-free readers may be inside any block that was ever
# reachable from the index. do_free bumps the shard's reclaim sequence
# (do_reclaim_begin) before its first store into the block, so a reader that
# saw any of what follows retries (optimistic.pxd). Such a block is freed
# through pins.pxd's do_release, which keeps it while a view pins it; do_free
# itself is for blocks no view can hold.
#
# Fit rule: an allocation evicts only when no free block is large enough.
# Blocks merge with free neighbours as they are freed, so free space is
# always coalesced; do_alloc looks in the exact size class, then any larger
# class (where every block fits), and last the whole exact class.
#
# Functions named do_* expect the caller to hold the shard lock.
from libc.stdint cimport uint32_t, uint64_t
from layout cimport (ShardRef, FreeBlock, ARENA_RESERVED, MIN_BLOCK, N_BINS,
                     BLOCK_USED, BLOCK_PREV_FREE, BLOCK_ZOMBIE, block_size)
from includes.sync cimport (METIS_CRASH_POINT, metis_store_release_u32, metis_store_release_u64,
                            metis_load_relaxed_u64, metis_fence_release)

cdef extern from *:
    int __builtin_clz(unsigned int x) nogil
    int __builtin_ctz(unsigned int x) nogil

cdef enum:
    FIT_SCAN = 8            # first-fit probes in the exact size class


cdef inline void do_reclaim_begin(ShardRef *s) noexcept nogil:
    """Before changing memory a reader may be inside: make readers retry.

    Release: a reader that sees the new sequence also sees every unlink
    before it, so it cannot reach the block at all. The fence orders the
    bump before the stores that follow: a reader that sees one of those
    sees the bump when it validates.
    """
    metis_store_release_u64(&s.sh.reclaim_seq, metis_load_relaxed_u64(&s.sh.reclaim_seq) + 1)
    metis_fence_release()


cdef inline uint32_t *hdr_word(ShardRef *s, uint32_t off) noexcept nogil:
    return <uint32_t *>(s.arena + off)

cdef inline FreeBlock *free_at(ShardRef *s, uint32_t off) noexcept nogil:
    return <FreeBlock *>(s.arena + off)

cdef inline void set_footer(ShardRef *s, uint32_t off, uint32_t size) noexcept nogil:
    (<uint32_t *>(s.arena + off + size - 4))[0] = size

cdef inline uint32_t bin_of(uint32_t size) noexcept nogil:
    return 31 - __builtin_clz(size)

cdef inline uint64_t arena_usable(ShardRef *s) noexcept nogil:
    return s.arena_size - ARENA_RESERVED


cdef inline void do_bin_insert(ShardRef *s, uint32_t off, uint32_t size) noexcept nogil:
    cdef uint32_t b = bin_of(size)
    cdef uint32_t head = s.sh.bin_heads[b]
    cdef FreeBlock *fb = free_at(s, off)
    fb.prev_free = 0
    fb.next_free = head
    if head:
        free_at(s, head).prev_free = off
    s.sh.bin_heads[b] = off
    s.sh.bin_bitmap |= (<uint32_t>1) << b

cdef inline void do_bin_remove(ShardRef *s, uint32_t off) noexcept nogil:
    cdef FreeBlock *fb = free_at(s, off)
    cdef uint32_t b = bin_of(fb.block & ~(<uint32_t>7))
    if fb.prev_free:
        free_at(s, fb.prev_free).next_free = fb.next_free
    else:
        s.sh.bin_heads[b] = fb.next_free
    if fb.next_free:
        free_at(s, fb.next_free).prev_free = fb.prev_free
    if s.sh.bin_heads[b] == 0:
        s.sh.bin_bitmap &= ~((<uint32_t>1) << b)


cdef inline void alloc_init(ShardRef *s) noexcept nogil:
    """Make the whole arena one free block (a new or cleared shard)."""
    cdef uint32_t size = <uint32_t>arena_usable(s)
    cdef int b
    for b in range(N_BINS):
        s.sh.bin_heads[b] = 0
    s.sh.bin_bitmap = 0
    hdr_word(s, ARENA_RESERVED)[0] = size
    set_footer(s, ARENA_RESERVED, size)
    do_bin_insert(s, ARENA_RESERVED, size)
    s.sh.free_bytes = size


cdef inline uint32_t _fit_in_bin(ShardRef *s, uint32_t b, uint32_t size,
                                 uint64_t probes) noexcept nogil:
    """First block of bin b with at least `size` bytes, looking at no more
    than `probes` blocks; 0 if none."""
    cdef uint32_t off = s.sh.bin_heads[b]
    cdef uint64_t seen = 0
    while off and seen < probes:
        if block_size(s, off) >= size:
            return off
        off = free_at(s, off).next_free
        seen += 1
    return 0


cdef inline uint32_t do_alloc(ShardRef *s, uint32_t size, bint exhaustive) noexcept nogil:
    """A used block of at least `size` bytes (a multiple of 8), or 0.

    With `exhaustive`, 0 means no free block fits. Without it, only the
    first FIT_SCAN blocks of the exact class are looked at: enough after an
    eviction, whose merged block sits at the head of its class (the caller
    looked exhaustively before it evicted).
    """
    cdef uint32_t b = bin_of(size)
    cdef uint32_t off = _fit_in_bin(s, b, size, FIT_SCAN)
    cdef uint32_t higher, hdr, fsize, rem, rest, nxt
    if off == 0:
        higher = s.sh.bin_bitmap & ~((<uint32_t>2 << b) - 1) if b < 31 else 0
        if higher:
            off = s.sh.bin_heads[__builtin_ctz(higher)]
        elif exhaustive:
            off = _fit_in_bin(s, b, size, s.chain_limit)
        if off == 0:
            return 0
    do_bin_remove(s, off)
    hdr = hdr_word(s, off)[0]
    fsize = hdr & ~(<uint32_t>7)
    rem = fsize - size
    if rem >= MIN_BLOCK:
        rest = off + size
        hdr_word(s, rest)[0] = rem
        set_footer(s, rest, rem)
        do_bin_insert(s, rest, rem)
        METIS_CRASH_POINT(1)
        # Release: the remainder's header is in memory before the block
        # shrinks onto it (the compiler may not reorder the two).
        metis_store_release_u32(hdr_word(s, off), size | BLOCK_USED | (hdr & BLOCK_PREV_FREE))
    else:
        size = fsize
        hdr_word(s, off)[0] = size | BLOCK_USED | (hdr & BLOCK_PREV_FREE)
        nxt = off + size
        if nxt < s.arena_size:
            hdr_word(s, nxt)[0] &= ~(<uint32_t>BLOCK_PREV_FREE)
    s.sh.free_bytes -= size
    return off


cdef inline void do_free(ShardRef *s, uint32_t off) noexcept nogil:
    """Return a used block, merging it with free neighbours."""
    cdef uint32_t hdr, size, start = off, total, nxt, nhdr, psize
    do_reclaim_begin(s)
    hdr = hdr_word(s, off)[0]
    size = hdr & ~(<uint32_t>7)
    total = size
    hdr_word(s, off)[0] = size | (hdr & BLOCK_PREV_FREE)
    METIS_CRASH_POINT(2)
    nxt = off + size
    if nxt < s.arena_size:
        nhdr = hdr_word(s, nxt)[0]
        if not (nhdr & BLOCK_USED):
            do_bin_remove(s, nxt)
            total += nhdr & ~(<uint32_t>7)
            metis_store_release_u32(hdr_word(s, off), total | (hdr & BLOCK_PREV_FREE))
    if hdr & BLOCK_PREV_FREE:
        psize = (<uint32_t *>(s.arena + off - 4))[0]
        start = off - psize
        do_bin_remove(s, start)
        total += psize
        metis_store_release_u32(hdr_word(s, start), total)
    set_footer(s, start, total)
    do_bin_insert(s, start, total)
    nxt = start + total
    if nxt < s.arena_size:
        hdr_word(s, nxt)[0] |= BLOCK_PREV_FREE
    s.sh.free_bytes += size


cdef inline uint32_t alloc_largest_free(ShardRef *s) noexcept nogil:
    """The largest free block (scans the highest non-empty size class)."""
    cdef uint32_t best = 0, off, sz
    if s.sh.bin_bitmap == 0:
        return 0
    off = s.sh.bin_heads[31 - __builtin_clz(s.sh.bin_bitmap)]
    while off:
        sz = block_size(s, off)
        if sz > best:
            best = sz
        off = free_at(s, off).next_free
    return best


cdef inline bint block_header_ok(ShardRef *s, uint32_t off, uint32_t size) noexcept nogil:
    return size >= MIN_BLOCK and (size & 7) == 0 and <uint64_t>off + size <= s.arena_size


cdef inline void alloc_rebuild(ShardRef *s) noexcept nogil:
    """Rebuild free lists, footers, PREV_FREE bits and free_bytes from a walk.

    Used blocks keep their place; runs of adjacent free blocks merge into one.
    A header that cannot be a block ends the walk: the rest of the arena
    becomes one free block (what lived there is lost, never misread).
    """
    cdef uint32_t off = ARENA_RESERVED, hdr, size, run_start = 0, run_size = 0
    cdef uint64_t free_total = 0
    cdef bint prev_free = False
    cdef int b
    for b in range(N_BINS):
        s.sh.bin_heads[b] = 0
    s.sh.bin_bitmap = 0
    while off < s.arena_size:
        hdr = hdr_word(s, off)[0]
        size = hdr & ~(<uint32_t>7)
        if not block_header_ok(s, off, size):
            size = <uint32_t>(s.arena_size - off)
            hdr = 0
        if hdr & BLOCK_USED:
            if run_size:
                hdr_word(s, run_start)[0] = run_size
                set_footer(s, run_start, run_size)
                do_bin_insert(s, run_start, run_size)
                free_total += run_size
                run_size = 0
            hdr_word(s, off)[0] = size | BLOCK_USED | (hdr & BLOCK_ZOMBIE) | \
                (BLOCK_PREV_FREE if prev_free else 0)
            prev_free = False
        else:
            if run_size == 0:
                run_start = off
            run_size += size
            prev_free = True
        off += size
    if run_size:
        hdr_word(s, run_start)[0] = run_size
        set_footer(s, run_start, run_size)
        do_bin_insert(s, run_start, run_size)
        free_total += run_size
    s.sh.free_bytes = free_total
