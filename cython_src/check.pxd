# The consistency checker: every invariant the other subsystems promise,
# checked on one shard while its lock is held. Returns a list of problems
# (empty = consistent). Read-only; builds Python objects, so the caller keeps
# the garbage collector off while it holds the lock.
from libc.stdint cimport uint32_t, uint64_t
from layout cimport (ShardRef, Item, item_at, ARENA_RESERVED, ITEM_HEADER_SIZE,
                     N_BINS, BLOCK_USED, BLOCK_PREV_FREE, BLOCK_ZOMBIE, FLAG_KEY_STR)
from allocator cimport hdr_word, free_at, bin_of, block_header_ok


cdef inline list do_shard_check(ShardRef *s, uint32_t shard_shift, uint32_t n_shards):
    cdef list problems = []
    cdef str where = f"shard {s.index}"
    cdef uint32_t off = ARENA_RESERVED, hdr, size, prev_hdr = BLOCK_USED, nxt
    cdef uint64_t steps
    cdef uint64_t free_total = 0, used_blocks = 0, n_free = 0, b
    cdef Item *it
    cdef set starts = set(), used = set(), free_blocks = set(), indexed = set(), keys = set()
    cdef set zombies = set(), listed = set()
    cdef uint64_t zombie_bytes = 0
    if s.sh.writing:
        problems.append(f"{where}: a write section is open with no writer")
    # Blocks tile the arena.
    while off < s.arena_size:
        hdr = hdr_word(s, off)[0]
        size = hdr & ~(<uint32_t>7)
        if not block_header_ok(s, off, size):
            problems.append(f"{where}: bad block header {hdr:#x} at offset {off}")
            break
        if (hdr & BLOCK_ZOMBIE) and not (hdr & BLOCK_USED):
            problems.append(f"{where}: free block {off} is marked a zombie")
        if bool(hdr & BLOCK_PREV_FREE) != (not (prev_hdr & BLOCK_USED)):
            problems.append(f"{where}: block {off} PREV_FREE bit disagrees with its neighbour")
        starts.add(off)
        if hdr & BLOCK_ZOMBIE:
            zombies.add(off)
        elif hdr & BLOCK_USED:
            used.add(off)
            used_blocks += 1
        else:
            if not (prev_hdr & BLOCK_USED):
                problems.append(f"{where}: adjacent free blocks at {off} (not merged)")
            if (<uint32_t *>(s.arena + off + size - 4))[0] != size:
                problems.append(f"{where}: free block {off} has a wrong footer")
            free_blocks.add(off)
            free_total += size
        prev_hdr = hdr
        off += size
    else:
        if off != s.arena_size:
            problems.append(f"{where}: blocks overrun the arena ({off} > {s.arena_size})")
    if free_total != s.sh.free_bytes:
        problems.append(f"{where}: free_bytes is {s.sh.free_bytes}, blocks say {free_total}")
    # Free lists hold exactly the free blocks, each in its size class.
    for b in range(N_BINS):
        off = s.sh.bin_heads[b]
        if bool(off) != bool(s.sh.bin_bitmap & ((<uint32_t>1) << b)):
            problems.append(f"{where}: bin bitmap disagrees with bin {b}")
        nxt = 0
        steps = 0
        while off:
            if off not in free_blocks:
                problems.append(f"{where}: bin {b} holds {off}, not a free block")
                break
            if bin_of(hdr_word(s, off)[0] & ~(<uint32_t>7)) != b:
                problems.append(f"{where}: free block {off} is in the wrong bin {b}")
            if free_at(s, off).prev_free != nxt:
                problems.append(f"{where}: free list {b} back link broken at {off}")
            n_free += 1
            nxt = off
            off = free_at(s, off).next_free
            steps += 1
            if steps > len(free_blocks):
                problems.append(f"{where}: free list {b} loops")
                break
    if n_free != len(free_blocks):
        problems.append(f"{where}: free lists hold {n_free} blocks, arena has {len(free_blocks)}")
    # The index reaches every used block exactly once, each in its place.
    for b in range(<uint64_t>s.bucket_mask + 1):
        off = s.buckets[b]
        steps = 0
        while off:
            if off not in used:
                problems.append(f"{where}: bucket {b} points at {off}, not a used block")
                break
            if off in indexed:
                problems.append(f"{where}: item {off} is reachable twice")
                break
            it = item_at(s, off)
            if (it.hash & s.bucket_mask) != b:
                problems.append(f"{where}: item {off} is in bucket {b}, its hash says otherwise")
            if n_shards > 1 and ((it.hash >> shard_shift) & (n_shards - 1)) != s.index:
                problems.append(f"{where}: item {off} belongs to another shard")
            if <uint64_t>ITEM_HEADER_SIZE + it.key_len + it.value_len > \
                    (hdr_word(s, off)[0] & ~(<uint32_t>7)):
                problems.append(f"{where}: item {off} overruns its block")
                break
            key = ((it.flags & FLAG_KEY_STR) != 0,
                   (<char *>it)[ITEM_HEADER_SIZE:ITEM_HEADER_SIZE + it.key_len])
            if key in keys:
                problems.append(f"{where}: key {key[1]!r} is stored twice")
            keys.add(key)
            indexed.add(off)
            off = it.hnext
            steps += 1
            if steps > s.chain_limit:
                problems.append(f"{where}: chain of bucket {b} is longer than the shard can "
                                f"hold ({s.chain_limit} items): it loops")
                break
    # The zombie list holds exactly the zombie blocks (pins.pxd), each once.
    off = s.sh.zombie_head
    while off:
        if off not in zombies or off in listed:
            problems.append(f"{where}: zombie list holds {off}, not a zombie block once")
            break
        listed.add(off)
        zombie_bytes += hdr_word(s, off)[0] & ~(<uint32_t>7)
        off = item_at(s, off).qnext
    if listed != zombies:
        problems.append(f"{where}: {len(zombies)} zombie blocks, {len(listed)} on the list")
    if len(listed) != s.sh.zombie_count or zombie_bytes != s.sh.zombie_bytes:
        problems.append(f"{where}: zombie_count/bytes say {s.sh.zombie_count}/"
                        f"{s.sh.zombie_bytes}, the list {len(listed)}/{zombie_bytes}")
    if len(indexed) != used_blocks:
        problems.append(f"{where}: {used_blocks} used blocks, {len(indexed)} indexed (leak)")
    if len(indexed) != s.sh.items:
        problems.append(f"{where}: items is {s.sh.items}, index holds {len(indexed)}")
    # The policy queues hold exactly the indexed items, each once.
    queued = 0
    for q in range(4):
        off = s.sh.lists[q].head
        nxt = 0
        steps = 0
        while off:
            if off not in indexed:
                problems.append(f"{where}: queue {q} holds {off}, not an indexed item")
                break
            if (item_at(s, off).qaux & 3) != q:
                problems.append(f"{where}: item {off} is in queue {q} but says "
                                f"{item_at(s, off).qaux & 3}")
            if item_at(s, off).qprev != nxt:
                problems.append(f"{where}: queue {q} back link broken at {off}")
            nxt = off
            off = item_at(s, off).qnext
            steps += 1
            if steps > len(indexed):
                problems.append(f"{where}: queue {q} loops")
                break
        if nxt != s.sh.lists[q].tail:
            problems.append(f"{where}: queue {q} tail is {s.sh.lists[q].tail}, "
                            f"walk ends at {nxt}")
        if steps != s.sh.lists[q].count:
            problems.append(f"{where}: queue {q} has {steps} items, count says "
                            f"{s.sh.lists[q].count}")
        queued += steps
    if queued != len(indexed):
        problems.append(f"{where}: queues hold {queued} items, index {len(indexed)}")
    return problems
