# Pins: how a view keeps the bytes it shows while writers move on.
#
# A view (Cache.view) hands out a memoryview straight into an item's block.
# While it is held, that block must not be freed, merged or reused, though
# the key may be overwritten, deleted, evicted, expired or cleared: other
# readers see the new state at once. So freeing a block asks first whether a
# pin holds it; if one does, the block becomes a ZOMBIE (still used in the
# allocator, in no index chain or policy queue, on the shard's zombie list)
# and is freed later, when no pin holds it (do_zombie_reap).
#
# WHERE PINS LIVE. Each stats slot (one per process and Cache) has a table:
# PIN_LINES lines of 8 entries, an entry is (shard + 1) << 32 | offset, 0 is
# empty; an entry lives in the line its hash picks, or if that line is full
# in the overflow line set, which is scanned only while it holds something.
# Only the slot's owner writes its table. Each shard has a mask with one bit
# per slot: set from the slot's first pin in the shard until the slot is let
# go (so a view costs no atomic read-modify-write). A writer looks only at
# the tables of the slots whose bit is set, and in each at one line.
#
# THE PROTOCOL (Dekker's, both sides with a full fence):
#   reader: find the item (optimistic.pxd, sequence `begun`); write its
#           entry (and its mask bit, once); fence; check the sequence is still
#           `begun`. If it moved, undo the pin and look again.
#   writer: bump the sequence (do_reclaim_begin); fence; look for pins.
# Either the reader sees the bump (and retries), or the writer sees the pin
# (and keeps the block). No reader waits for anyone: pinning is stores into
# the reader's own table, and unpinning is a store of 0.
#
# DEATH. A process that dies holding pins leaves entries in its slot's table
# and bits in the masks. Whoever reclaims the dead slot (metisd each tick,
# a process taking the slot over, or an allocation that runs short) clears
# them first (pins_clear_slot), then reaps the zombies they held.
#
# Functions named do_* expect the shard lock.
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memset
from layout cimport (ShardRef, Item, item_at, BLOCK_USED, BLOCK_ZOMBIE, PIN_LINES,
                     PIN_OVERFLOW, PIN_TABLE_WORDS, block_size)
from allocator cimport hdr_word, do_reclaim_begin, do_free
from includes.sync cimport (metis_load_relaxed_u64, metis_store_relaxed_u64,
                            metis_store_release_u64, metis_fence_seq_cst,
                            metis_fetch_or_u64, metis_fetch_and_u64)

cdef extern from *:
    int __builtin_ctzll(unsigned long long x) nogil

cdef enum:
    PIN_HEADER_WORDS = 8    # word 0: entries in the overflow lines


cdef inline uint64_t pin_entry(uint32_t shard, uint32_t off) noexcept nogil:
    return ((<uint64_t>shard + 1) << 32) | off

cdef inline uint32_t pin_line(uint64_t entry) noexcept nogil:
    # Offsets are multiples of 8 and often of 64: mix before taking bits.
    cdef uint64_t x = entry * 0x9E3779B97F4A7C15ULL
    return <uint32_t>(x >> 58) & (PIN_LINES - 1)

cdef inline uint64_t *pin_table(ShardRef *s, uint32_t slot) noexcept nogil:
    return s.pin_tables + <uint64_t>slot * PIN_TABLE_WORDS


cdef inline bint pin_table_has(uint64_t *table, uint64_t entry) noexcept nogil:
    cdef uint64_t *line = table + PIN_HEADER_WORDS + <uint64_t>pin_line(entry) * 8
    cdef uint32_t i
    for i in range(8):
        if metis_load_relaxed_u64(&line[i]) == entry:
            return True
    if metis_load_relaxed_u64(&table[0]):
        line = table + PIN_HEADER_WORDS + PIN_LINES * 8
        for i in range(PIN_OVERFLOW):
            if metis_load_relaxed_u64(&line[i]) == entry:
                return True
    return False


cdef inline bint pin_held(ShardRef *s, uint32_t off) noexcept nogil:
    """True if some slot pins the block at `off`. The caller bumped the
    reclaim sequence before (the writer's half of the protocol)."""
    cdef uint64_t entry = pin_entry(s.index, off), bits
    cdef uint32_t w, slot
    metis_fence_seq_cst()
    for w in range(s.pin_mask_words):
        bits = metis_load_relaxed_u64(&s.pin_mask[w])
        while bits:
            slot = w * 64 + <uint32_t>__builtin_ctzll(bits)
            bits &= bits - 1
            if slot < s.n_slots and pin_table_has(pin_table(s, slot), entry):
                return True
    return False


# ---- the owner's side (one process, under the GIL) ---------------------------

cdef inline bint pin_insert(uint64_t *table, uint64_t entry) noexcept nogil:
    """Write `entry` into the owner's table; False if its line and the
    overflow are full. The caller fences before it validates."""
    cdef uint64_t *line = table + PIN_HEADER_WORDS + <uint64_t>pin_line(entry) * 8
    cdef uint32_t i
    for i in range(8):
        if line[i] == 0:
            metis_store_relaxed_u64(&line[i], entry)
            return True
    line = table + PIN_HEADER_WORDS + PIN_LINES * 8
    for i in range(PIN_OVERFLOW):
        if line[i] == 0:
            # The count first: a writer that sees the entry must also look.
            metis_store_relaxed_u64(&table[0], table[0] + 1)
            metis_store_relaxed_u64(&line[i], entry)
            return True
    return False

cdef inline void pin_remove(uint64_t *table, uint64_t entry) noexcept nogil:
    cdef uint64_t *line = table + PIN_HEADER_WORDS + <uint64_t>pin_line(entry) * 8
    cdef uint32_t i
    for i in range(8):
        if line[i] == entry:
            metis_store_release_u64(&line[i], 0)
            return
    line = table + PIN_HEADER_WORDS + PIN_LINES * 8
    for i in range(PIN_OVERFLOW):
        if line[i] == entry:
            metis_store_release_u64(&line[i], 0)
            metis_store_relaxed_u64(&table[0], table[0] - 1)
            return

cdef inline void pin_mask_set(ShardRef *s, uint32_t slot) noexcept nogil:
    metis_fetch_or_u64(&s.pin_mask[slot >> 6], (<uint64_t>1) << (slot & 63))

cdef inline void pin_mask_clear(ShardRef *s, uint32_t slot) noexcept nogil:
    metis_fetch_and_u64(&s.pin_mask[slot >> 6], ~((<uint64_t>1) << (slot & 63)))

cdef inline bint pin_mask_has(ShardRef *s, uint32_t slot) noexcept nogil:
    return (metis_load_relaxed_u64(&s.pin_mask[slot >> 6]) >> (slot & 63)) & 1

cdef inline void pins_clear_slot(ShardRef *shards, uint32_t n_shards, uint32_t slot) noexcept nogil:
    """Forget every pin of `slot`, whose owner is gone (or is the caller,
    holding none). Bits first: a writer that skips the table finds nothing
    it would have found."""
    cdef uint32_t i
    for i in range(n_shards):
        pin_mask_clear(&shards[i], slot)
    memset(pin_table(&shards[0], slot), 0, PIN_TABLE_WORDS * 8)


# ---- the writer's side: zombies ---------------------------------------------

cdef inline void do_zombie_push(ShardRef *s, uint32_t off) noexcept nogil:
    """Keep a pinned block out of the allocator until its pins are gone."""
    cdef Item *it = item_at(s, off)
    hdr_word(s, off)[0] |= BLOCK_ZOMBIE
    it.qnext = s.sh.zombie_head
    s.sh.zombie_head = off
    s.sh.zombie_count += 1
    s.sh.zombie_bytes += block_size(s, off)

cdef inline void do_release(ShardRef *s, uint32_t off) noexcept nogil:
    """Free a block a reader may have reached, unless a view pins it. The
    block is already out of the index and the policy's queues."""
    do_reclaim_begin(s)
    if pin_held(s, off):
        do_zombie_push(s, off)
    else:
        do_free(s, off)

cdef inline uint32_t do_zombie_reap(ShardRef *s) noexcept nogil:
    """Free the zombies no pin holds any more; how many were freed."""
    cdef uint32_t *link = &s.sh.zombie_head
    cdef uint32_t off, freed = 0, size
    if s.sh.zombie_head == 0:
        return 0
    do_reclaim_begin(s)
    while link[0]:
        off = link[0]
        if pin_held(s, off):
            link = &item_at(s, off).qnext
            continue
        link[0] = item_at(s, off).qnext
        size = block_size(s, off)
        hdr_word(s, off)[0] &= ~(<uint32_t>BLOCK_ZOMBIE)
        s.sh.zombie_count -= 1
        s.sh.zombie_bytes -= size
        s.sh.zombies_freed += 1
        do_free(s, off)
        freed += 1
    return freed

cdef inline void do_zombie_forget(ShardRef *s) noexcept nogil:
    """Empty the zombie list (the caller rebuilds it from a walk)."""
    s.sh.zombie_head = 0
    s.sh.zombie_count = 0
    s.sh.zombie_bytes = 0

cdef inline bint shard_pinned(ShardRef *s) noexcept nogil:
    """True if some slot may pin in this shard (after a full fence)."""
    cdef uint32_t w
    metis_fence_seq_cst()
    for w in range(s.pin_mask_words):
        if metis_load_relaxed_u64(&s.pin_mask[w]):
            return True
    return False
