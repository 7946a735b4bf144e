# The segment layout: every structure that lives in shared memory, and the
# process-local view of one shard (ShardRef). Offsets inside a shard's arena
# are 32-bit; offset 0 means "none", so the arena's first ARENA_RESERVED
# bytes are never handed out.
#
# LAYOUT_VERSION rule: bump it whenever a struct below changes size, order or
# meaning, or an invariant of the allocator, index or policy changes. A bump
# means every existing segment is refused at attach (SEGMENT_VERSION) and
# must be destroyed: the RAM cache is dropped. docs/architecture.md lists the
# history.
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t

cdef enum:
    LAYOUT_VERSION = 4
    HEADER_SIZE = 4096
    COHERENCE_OFFSET = 2048  # the Coherence block, inside the header page
    COHERENCE_WORDS = 216  # 24 counters and states, 192 slots (metis_shm/far/words.py)
    SHARD_HEADER_SIZE = 1024
    ITEM_HEADER_SIZE = 56
    MIN_BLOCK = 64
    ARENA_RESERVED = 64
    ARENA_ALIGN = 64
    N_BINS = 32
    RING_STRIPES = 4
    STRIPE_SLOTS = 15
    SLOT_HEADER_SIZE = 64
    SLOT_COUNTERS_SIZE = 32
    DEFAULT_SLOTS = 128

    STATE_INITIALIZING = 0
    STATE_READY = 1

    # Low bits of a block header word; the size is a multiple of 8.
    BLOCK_USED = 1
    BLOCK_PREV_FREE = 2
    BLOCK_ZOMBIE = 4        # used, unlinked, kept while a view pins it (pins.pxd)

    # Pin tables (pins.pxd): per stats slot, PIN_LINES cache lines of 8
    # entries and an overflow line set, one header line first.
    PIN_LINES = 64
    PIN_OVERFLOW = 64
    PIN_TABLE_WORDS = 8 + PIN_LINES * 8 + PIN_OVERFLOW
    PIN_MAX = 256           # pins one process may hold (the table's load bound)

    # Item flags: the engine reads the key-type bit and the counter kind;
    # the rest belongs to the codec (metis_shm/codec.py).
    FLAG_KIND_MASK = 0xFF
    FLAG_CODEC_MASK = 0xF00
    FLAG_KEY_STR = 0x1000
    KIND_BYTES = 0
    KIND_BYTEARRAY = 1
    KIND_STR = 2
    KIND_INT = 3
    KIND_NDARRAY = 10           # a numpy array (metis_shm/arrays.py)

    POLICY_SIEVE = 0
    POLICY_LRU = 1
    POLICY_WTINYLFU = 2
    POLICY_ARC = 3
    POLICY_2Q = 4
    POLICY_S3FIFO = 5

cdef struct SegmentHeader:
    char magic[8]
    uint32_t layout_version
    uint32_t header_size
    uint64_t segment_size
    uint64_t capacity
    uint64_t shard_arena_size
    uint64_t max_entries
    uint64_t shards_offset
    uint64_t slots_offset
    uint64_t index_offset
    uint64_t bitmap_offset
    uint64_t policy_offset
    uint64_t policy_stride
    uint64_t arena_offset
    uint64_t created_ns
    uint64_t daemon_heartbeat_ns
    int64_t default_ttl_ns
    uint32_t n_shards
    uint32_t shard_shift
    uint32_t index_buckets
    uint32_t policy
    uint32_t max_key_size
    uint32_t max_value_size
    uint32_t compress_threshold
    uint32_t serializer
    uint32_t n_slots
    uint32_t slot_size
    uint32_t creator_uid
    uint32_t creator_pid
    uint32_t daemon_pid
    uint32_t flags
    uint32_t state
    uint32_t bitmap_stride
    uint32_t ghost_cap
    uint32_t sketch_width
    # The 128-bit SipHash key, random at creation, so which keys share a
    # bucket or a shard cannot be worked out offline (hash flooding).
    uint64_t hash_seed
    uint64_t hash_seed2
    # One stamp counter per index bucket (coherence.pxd), per shard.
    uint64_t stamps_offset
    # Pins (pins.pxd): per shard, a mask of the slots pinning in it (its own
    # cache line); then per slot, a table of its pins.
    uint64_t pin_masks_offset
    uint64_t pin_tables_offset
    uint32_t pin_mask_words
    uint32_t _pad_pins

# Coherence (coherence.pxd): what lets another tier invalidate this one. The
# engine knows only generations, stamps and a gate; what drives them (a
# tracker of Redis invalidations, metis_shm/far) lives in the package.
cdef struct Coherence:
    # Read by every reader of a gated segment: its own cache line, written
    # rarely (a generation bump, a vouch every ping interval).
    uint64_t generation     # bumped: every item written before is invalid at once
    uint64_t vouch_until_ns # CLOCK_MONOTONIC: a gated segment serves reads only before it
    uint32_t gated          # 1: reads obey vouch_until_ns
    uint32_t _pad0
    uint64_t _pad_line[5]
    # The package's words (atomics the engine never interprets).
    uint64_t words[216]

cdef struct PolicyList:
    uint32_t head           # newest
    uint32_t tail           # oldest
    uint32_t count
    uint32_t _pad

cdef struct RingStripe:
    uint32_t pos            # hits written so far (wraps)
    uint32_t slots[15]

cdef struct ShardHeader:
    # The robust mutex: writers only.
    char lock[64]
    # The reclaim sequence, read by every reader: its own cache line. A
    # writer bumps it (release) before it changes any block a reader may
    # have reached: a freed item, a cleared or repaired shard. A reader
    # trusts what it copied only if the sequence did not move meanwhile
    # (optimistic.pxd). Nothing else a writer does makes a reader retry.
    uint64_t reclaim_seq
    uint64_t _pad_reclaim[7]
    # Written under the lock.
    uint64_t sets
    uint64_t deletes
    uint64_t evictions
    uint64_t expirations
    uint64_t items
    uint64_t free_bytes
    uint64_t lock_waits
    uint64_t lock_recoveries
    uint64_t max_items
    uint64_t sweep_cursor
    uint64_t drains
    # Odd while a write section is open (shard.pxd): a lock owner that died
    # with it odd left the shard half-changed, and the next owner repairs.
    uint64_t writing
    uint64_t _unused_write_counter
    uint64_t repairs        # full repairs run (lock_recoveries counts every dead owner)
    # ENOTRECOVERABLE recovery (shard.pxd): the pid re-initialising the
    # mutex, and how many times it was re-initialised.
    uint32_t lock_recoverer
    uint32_t lock_generation
    uint64_t invalidated    # items unlinked by invalidate() (a sweep's dead-stamp removals count as expirations)
    # Allocator: one free list per power-of-two size class.
    uint32_t bin_heads[32]
    uint32_t bin_bitmap
    # Zombies (pins.pxd): blocks taken out of the cache while a view pinned
    # them, linked through their qnext, freed once no pin holds them.
    uint32_t zombie_head
    uint32_t zombie_count
    uint32_t _pad_alloc
    uint64_t zombie_bytes
    uint64_t zombies_freed
    uint32_t _pad_alloc2[8]
    # Policy state (policy.pxd): up to four queues and what the policies
    # keep beside them. 256 bytes.
    PolicyList lists[4]
    uint32_t hand           # SIEVE's hand
    uint32_t target         # ARC: p; W-TinyLFU: window maximum; S3-FIFO: 1 once it evicted
    uint32_t protected_max  # W-TinyLFU: protected segment maximum
    uint32_t pending        # PENDING_* bits: what admit() learnt about the key
    double window_acc       # W-TinyLFU: ghost-driven window change not yet applied
    uint32_t ghost_limit    # W-TinyLFU: ghosts kept per ring
    uint32_t _pad_w
    uint64_t _pad_w2[2]
    uint64_t sketch_additions
    uint64_t sketch_sample
    uint32_t sketch_mask
    uint32_t ghost_cap
    uint32_t ghost_table_mask
    uint32_t rng
    uint64_t ghost_head[2]  # next sequence number written, per ghost ring
    uint64_t ghost_tail[2]  # oldest sequence number still in the ring
    uint32_t ghost_count[2]
    char _pad_policy[72]
    # Access ring, striped: readers write without the lock into the stripe
    # of their stats slot (one cache line each, so two processes reading
    # one shard do not bounce a line); writers drain all stripes.
    RingStripe stripes[4]
    uint32_t ring_drained[4]
    uint32_t _pad_ring[12]

cdef struct SlotHeader:
    uint32_t pid
    uint32_t pins           # views this process holds (pins.pxd)
    uint64_t claimed_ns
    uint64_t pinned_bytes   # the blocks those views hold
    uint64_t _pad2[5]

# Per process, per shard: counters a reader bumps without any shared write.
cdef struct SlotCounters:
    uint64_t hits
    uint64_t misses
    uint64_t read_retries
    uint64_t _pad

cdef struct Item:
    uint32_t block          # allocator: size | BLOCK_* bits
    uint32_t hnext          # index: next item in this bucket's chain
    uint64_t stamp          # coherence stamp when written: generation << 32 | bucket stamp
    uint64_t hash
    uint64_t expire_ns      # 0 = never
    uint32_t key_len
    uint32_t value_len
    uint32_t flags
    uint32_t qprev          # policy queue links
    uint32_t qnext
    uint32_t qaux           # policy: which queue (QUEUE_MASK bits)

cdef struct FreeBlock:
    uint32_t block
    uint32_t next_free
    uint32_t prev_free

# Process-local: where one shard's pieces are in this process's mapping.
cdef struct ShardRef:
    ShardHeader *sh
    uint32_t *buckets
    uint32_t *stamps        # one per bucket: bumped by invalidate (coherence.pxd)
    Coherence *coh          # the segment's (shared by all shards)
    char *arena
    uint8_t *hints          # one byte per 64 arena bytes: the item at off owns hints[off >> 6]
    uint64_t *ghost_ring    # 2 rings of ghost_cap hashes (ARC, 2Q, S3-FIFO)
    uint32_t *ghost_table   # open addressing: 1 + ring slot, 0 = empty
    uint8_t *sketch         # W-TinyLFU: 4 rows of sketch_width 4-bit counters
    uint8_t *doorkeeper     # W-TinyLFU: 2 * sketch_width bytes of bloom bits
    uint32_t sketch_width
    uint32_t n_shards       # of the whole cache (policies that pool votes)
    uint64_t arena_size     # end offset: ARENA_RESERVED + the shard's bytes
    uint32_t bucket_mask
    uint32_t policy
    uint32_t index
    uint32_t max_value      # of the cache: a longer value_len is torn or forged
    uint64_t chain_limit    # most items the shard can hold: a longer chain loops
    uint64_t *pin_mask      # this shard's mask: bit i = slot i may pin here
    uint64_t *pin_tables    # slot i's table at pin_tables + i * PIN_TABLE_WORDS
    uint32_t pin_mask_words
    uint32_t n_slots

cdef inline Item *item_at(ShardRef *s, uint32_t off) noexcept nogil:
    return <Item *>(s.arena + off)

cdef inline const char *item_key(Item *it) noexcept nogil:
    return (<const char *>it) + ITEM_HEADER_SIZE

cdef inline char *item_value(Item *it, uint32_t klen) noexcept nogil:
    # The key length comes from the caller: a lock-free reader passes the
    # length it validated, never a second load of it.key_len.
    return (<char *>it) + ITEM_HEADER_SIZE + klen

cdef inline uint32_t block_size(ShardRef *s, uint32_t off) noexcept nogil:
    return (<uint32_t *>(s.arena + off))[0] & ~(<uint32_t>7)

cdef inline uint32_t align8(uint64_t n) noexcept nogil:
    return <uint32_t>((n + 7) & ~(<uint64_t>7))

cdef inline uint32_t item_block_need(uint64_t klen, uint64_t vlen) noexcept nogil:
    cdef uint64_t n = ITEM_HEADER_SIZE + klen + vlen
    if n < MIN_BLOCK:
        n = MIN_BLOCK
    return align8(n)
