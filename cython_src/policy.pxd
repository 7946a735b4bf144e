# Eviction policies: the seam between "which item goes" and the rest of the
# engine. Every policy keeps its items in up to four doubly linked queues
# (ShardHeader.lists; Item.qprev/qnext, newest at head; Item.qaux says which
# queue) plus what it needs beside them: hint bytes, ghosts (ghost.pxd), a
# frequency sketch (sketch.pxd).
#
# The engine calls, for a new key:   admit -> victim* -> insert
#                  for a replaced key: replace (the new item takes the old's place)
#                  for any removal:    remove (evicted=True lets ghosts remember it)
#                  under the lock, before any decision: drain
# and, without the lock, on every hit: policy_record_hit.
#
# Readers never write into the arena. A hit either sets the item's hint byte
# (hints[off >> 6] belongs to the item at off: items are >= 64 bytes) or
# pushes the offset into the shard's lossy access ring. A stale offset can
# only touch a hint byte or a ring slot; drain checks every ring entry is
# still an indexed item before applying it.
#
#   SIEVE     one FIFO queue and a hand; a hit sets the hint byte; the hand
#             walks from the oldest item, clearing hints, and evicts the first
#             item whose hint is clear.
#   LRU       one queue; hits (ring) move items to the head; victim = tail.
#   S3-FIFO   small FIFO (10%), main FIFO, ghost ring; a hit bumps a 2-bit
#             frequency in the hint byte. Small's oldest goes to main if it
#             was hit at least twice, else it is evicted into the ghost; a key
#             found in the ghost is inserted straight into main. Main's oldest
#             is reinserted with frequency - 1 until one at 0 is evicted.
#   2Q        A1in FIFO (25%), Am LRU, A1out ghost (50%): a key seen again
#             after leaving A1in enters Am.
#   ARC       T1/T2 with ghosts B1/B2 and the adaptive target p.
#   W-TinyLFU window LRU, then a segmented LRU main area (probation and
#             protected, 80%); an item leaving the window enters main only if
#             the sketch says it is used more often than main's victim. The
#             window size adapts to ghost hits: keys that come back after
#             losing the window's duel grow the window, keys that come back
#             after main evicted them shrink it (two ghost rings of 15%).
#
# Functions named do_* expect the shard lock.
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.string cimport memset
from layout cimport (ShardRef, Item, item_at, PolicyList, RingStripe, RING_STRIPES, STRIPE_SLOTS,
                     POLICY_SIEVE, POLICY_LRU,
                     POLICY_WTINYLFU, POLICY_ARC, POLICY_2Q, POLICY_S3FIFO)
from index cimport do_index_contains_offset
from ghost cimport ghost_find, do_ghost_remove, do_ghost_add, do_ghost_drop_oldest
from sketch cimport sketch_estimate, do_sketch_increment
from includes.sync cimport (metis_load_relaxed_u8, metis_store_relaxed_u8,
                            metis_load_relaxed_u64, metis_store_relaxed_u64,
                            metis_store_relaxed_u32, metis_load_relaxed_u32)

cdef extern from *:
    """
    /* Tuning knobs of W-TinyLFU's adaptive window, settable for experiments
       (engine.set_policy_tuning); one translation unit, so one copy. */
    static int metis_wtlfu_adaptive = 1;
    static double metis_wtlfu_ghost_share = 0.15;
    static double metis_wtlfu_step = 0.001;
    static double metis_wtlfu_initial_window = 0.01;
    """
    int metis_wtlfu_adaptive
    double metis_wtlfu_ghost_share
    double metis_wtlfu_step
    double metis_wtlfu_initial_window

cdef enum:
    QUEUE_MASK = 3
    PENDING_GHOST0 = 1          # admit(): the key was in ghost ring 0
    PENDING_GHOST1 = 2          # admit(): the key was in ghost ring 1 (ARC's B2)
    PENDING_ADMITTED = 4        # admit() ran for the key being inserted
    PENDING_HOUSEKEPT = 8       # ARC: ghost trimming done for this admission
    PENDING_NO_GHOST = 16       # ARC: the next eviction leaves no ghost
    PENDING_CANDIDATE = 32      # W-TinyLFU: the victim is the window's candidate

    # queue numbers per policy
    Q_MAIN = 0                  # SIEVE, LRU
    Q_SMALL = 0                 # S3-FIFO
    Q_S3MAIN = 1
    Q_A1IN = 0                  # 2Q
    Q_AM = 1
    Q_T1 = 0                    # ARC
    Q_T2 = 1
    Q_WINDOW = 0                # W-TinyLFU
    Q_PROBATION = 1
    Q_PROTECTED = 2


# ---- hints and the ring: the lock-free side ------------------------------

cdef inline uint8_t *hint_of(ShardRef *s, uint32_t off) noexcept nogil:
    return &s.hints[off >> 6]

cdef inline bint policy_uses_ring(ShardRef *s) noexcept nogil:
    return s.policy != POLICY_SIEVE and s.policy != POLICY_S3FIFO

cdef inline void policy_record_hit(ShardRef *s, uint32_t off, uint32_t stripe) noexcept nogil:
    """Lock-free: note that the item at `off` was read."""
    cdef uint8_t *hint
    cdef uint8_t v
    cdef uint32_t pos
    cdef RingStripe *r
    if s.policy == POLICY_SIEVE or s.policy == POLICY_S3FIFO:
        hint = hint_of(s, off)
        v = metis_load_relaxed_u8(hint)
        # Read first: a hot item's hint is already at its ceiling, and
        # skipping the store keeps the cache line shared between readers.
        if v < (1 if s.policy == POLICY_SIEVE else 3):
            metis_store_relaxed_u8(hint, v + 1)
    else:
        # Lossy by design: two readers racing may overwrite one entry.
        r = &s.sh.stripes[stripe & (RING_STRIPES - 1)]
        pos = metis_load_relaxed_u32(&r.pos)
        metis_store_relaxed_u32(&r.slots[pos % STRIPE_SLOTS], off)
        metis_store_relaxed_u32(&r.pos, pos + 1)

cdef inline bint policy_ring_pending(ShardRef *s) noexcept nogil:
    """Has any stripe hits not yet applied?"""
    cdef uint32_t stripe
    for stripe in range(RING_STRIPES):
        if metis_load_relaxed_u32(&s.sh.stripes[stripe].pos) != \
                metis_load_relaxed_u32(&s.sh.ring_drained[stripe]):
            return True
    return False


# ---- queues ----------------------------------------------------------------

cdef inline PolicyList *qlist(ShardRef *s, uint32_t q) noexcept nogil:
    return &s.sh.lists[q]

cdef inline uint32_t queue_of(ShardRef *s, uint32_t off) noexcept nogil:
    return item_at(s, off).qaux & QUEUE_MASK

cdef inline void do_queue_push_head(ShardRef *s, uint32_t q, uint32_t off) noexcept nogil:
    cdef Item *it = item_at(s, off)
    cdef PolicyList *l = qlist(s, q)
    it.qaux = (it.qaux & ~(<uint32_t>QUEUE_MASK)) | q
    it.qprev = 0
    it.qnext = l.head
    if l.head:
        item_at(s, l.head).qprev = off
    else:
        l.tail = off
    l.head = off
    l.count += 1

cdef inline void do_queue_remove(ShardRef *s, uint32_t off) noexcept nogil:
    cdef Item *it = item_at(s, off)
    cdef PolicyList *l = qlist(s, it.qaux & QUEUE_MASK)
    if it.qprev:
        item_at(s, it.qprev).qnext = it.qnext
    else:
        l.head = it.qnext
    if it.qnext:
        item_at(s, it.qnext).qprev = it.qprev
    else:
        l.tail = it.qprev
    l.count -= 1

cdef inline void do_queue_move_head(ShardRef *s, uint32_t q, uint32_t off) noexcept nogil:
    do_queue_remove(s, off)
    do_queue_push_head(s, q, off)

cdef inline uint32_t policy_entries(ShardRef *s) noexcept nogil:
    """The shard's capacity in entries: max_items, or an estimate in byte mode."""
    if s.sh.max_items:
        return <uint32_t>s.sh.max_items
    return s.bucket_mask + 1

cdef inline uint32_t policy_rebuild_queue(ShardRef *s) noexcept nogil:
    """Where repair puts items whose queue it cannot know."""
    if s.policy == POLICY_S3FIFO:
        return Q_S3MAIN
    if s.policy == POLICY_2Q:
        return Q_AM
    if s.policy == POLICY_WTINYLFU:
        return Q_PROBATION
    return Q_MAIN


# ---- setup -----------------------------------------------------------------

cdef inline void do_policy_reset(ShardRef *s) noexcept nogil:
    """Empty queues and policy state (new shard, clear, repair)."""
    cdef uint32_t c = policy_entries(s), q
    for q in range(4):
        s.sh.lists[q].head = 0
        s.sh.lists[q].tail = 0
        s.sh.lists[q].count = 0
    s.sh.hand = 0
    s.sh.pending = 0
    for q in range(RING_STRIPES):
        s.sh.ring_drained[q] = metis_load_relaxed_u32(&s.sh.stripes[q].pos)
    s.sh.rng = <uint32_t>0x9E3779B9 ^ s.index
    s.sh.target = 0
    if s.policy == POLICY_WTINYLFU:
        # A 1% window, 80% of main protected; ghost hits move the window.
        s.sh.target = c - <uint32_t>((1.0 - metis_wtlfu_initial_window) * c)
        if s.sh.target < 1:
            s.sh.target = 1
        s.sh.protected_max = <uint32_t>(0.8 * (c - s.sh.target))
        s.sh.window_acc = 0.0
        s.sh.ghost_limit = <uint32_t>(metis_wtlfu_ghost_share * c)
        if s.sh.ghost_limit < 1:
            s.sh.ghost_limit = 1
        s.sh.sketch_sample = 10 * <uint64_t>c
        s.sh.sketch_additions = 0
    # Ghosts and sketch are wiped, not walked: after a crash they may be
    # half-updated, and they are only hints.
    if s.sh.ghost_cap:
        memset(s.ghost_ring, 0, 2 * <size_t>s.sh.ghost_cap * sizeof(uint64_t))
        memset(s.ghost_table, 0, (<size_t>s.sh.ghost_table_mask + 1) * sizeof(uint32_t))
    for q in range(2):
        s.sh.ghost_head[q] = 0
        s.sh.ghost_tail[q] = 0
        s.sh.ghost_count[q] = 0
    if s.sketch_width:
        memset(s.sketch, 0, 2 * <size_t>s.sketch_width)
        memset(s.doorkeeper, 0, 2 * <size_t>s.sketch_width)


# ---- W-TinyLFU ---------------------------------------------------------------

cdef inline void _wtlfu_demote_protected(ShardRef *s) noexcept nogil:
    cdef uint32_t off
    while qlist(s, Q_PROTECTED).count > s.sh.protected_max:
        off = qlist(s, Q_PROTECTED).tail
        do_queue_move_head(s, Q_PROBATION, off)

cdef inline void _wtlfu_resize(ShardRef *s, int64_t adj) noexcept nogil:
    """Grow (adj > 0) or shrink the window by adj entries, moving items and
    the protected segment's share to match."""
    cdef uint32_t quota, off
    if adj > 0:
        quota = <uint32_t>adj if adj < s.sh.protected_max else s.sh.protected_max
        s.sh.protected_max -= quota
        s.sh.target += quota
        _wtlfu_demote_protected(s)
        while quota > 0:
            off = qlist(s, Q_PROBATION).tail
            if off == 0:
                off = qlist(s, Q_PROTECTED).tail
            if off == 0:
                break
            do_queue_move_head(s, Q_WINDOW, off)
            quota -= 1
    elif adj < 0:
        quota = <uint32_t>(-adj)
        if quota > s.sh.target - 1:
            quota = s.sh.target - 1
        s.sh.protected_max += quota
        s.sh.target -= quota
        while quota > 0 and qlist(s, Q_WINDOW).count > s.sh.target:
            do_queue_move_head(s, Q_PROBATION, qlist(s, Q_WINDOW).tail)
            quota -= 1


cdef inline void _wtlfu_adapt(ShardRef *s, int ring) noexcept nogil:
    """Move the window by the ghosts' votes. A returning key that lost the
    window's admission duel (ring 0) says the window is too small: recency
    matters more than the sketch saw. A returning key that main evicted
    (ring 1) says main is too small. Each vote moves the window by a small
    fraction of the capacity; whole entries are applied as they accumulate."""
    cdef int64_t whole
    if not metis_wtlfu_adaptive:
        return
    # A shard sees 1/n_shards of the traffic, so each of its votes counts
    # n_shards times: every shard adapts as fast as a one-shard cache would.
    s.sh.window_acc += metis_wtlfu_step * policy_entries(s) * s.n_shards * \
        (1 if ring == 0 else -1)
    whole = <int64_t>s.sh.window_acc
    if whole != 0:
        s.sh.window_acc -= whole
        _wtlfu_resize(s, whole)


cdef inline void _wtlfu_on_hit(ShardRef *s, uint32_t off) noexcept nogil:
    cdef uint32_t q = queue_of(s, off)
    do_sketch_increment(s, item_at(s, off).hash)
    if q == Q_PROBATION:
        do_queue_move_head(s, Q_PROTECTED, off)
        _wtlfu_demote_protected(s)
    else:
        do_queue_move_head(s, q, off)

cdef inline bint _wtlfu_admit(ShardRef *s, uint32_t candidate, uint32_t victim) noexcept nogil:
    """Does the window's candidate deserve main's place more than the victim?"""
    cdef uint32_t fc = sketch_estimate(s, item_at(s, candidate).hash)
    cdef uint32_t fv = sketch_estimate(s, item_at(s, victim).hash)
    if fc > fv:
        return True
    if fc < 6:
        return False
    # Against hash flooding: a warm candidate sometimes wins a tie anyway.
    s.sh.rng = s.sh.rng * 1664525 + 1013904223
    return (s.sh.rng >> 24) & 127 == 0

cdef inline uint32_t _wtlfu_victim(ShardRef *s) noexcept nogil:
    """If the window is full, its oldest item moves to probation as the
    candidate and duels main's victim on sketch frequency; the loser goes."""
    cdef uint32_t candidate = 0, victim
    s.sh.pending &= ~(<uint32_t>PENDING_CANDIDATE)
    if qlist(s, Q_WINDOW).count >= s.sh.target and qlist(s, Q_WINDOW).count > 0:
        candidate = qlist(s, Q_WINDOW).tail
        do_queue_move_head(s, Q_PROBATION, candidate)
    victim = qlist(s, Q_PROBATION).tail
    if victim == candidate:
        victim = qlist(s, Q_PROTECTED).tail
    if victim == 0:
        victim = qlist(s, Q_PROTECTED).tail
    if victim == 0:
        if candidate:
            s.sh.pending |= PENDING_CANDIDATE
            return candidate
        return qlist(s, Q_WINDOW).tail
    if candidate == 0 or _wtlfu_admit(s, candidate, victim):
        return victim
    s.sh.pending |= PENDING_CANDIDATE
    return candidate


# ---- ARC, 2Q, S3-FIFO -------------------------------------------------------

cdef inline uint32_t _arc_victim(ShardRef *s) noexcept nogil:
    cdef uint32_t c = policy_entries(s)
    cdef uint32_t t1 = qlist(s, Q_T1).count, t2 = qlist(s, Q_T2).count
    cdef uint32_t b1 = s.sh.ghost_count[0], b2 = s.sh.ghost_count[1]
    cdef bint in_b2 = (s.sh.pending & PENDING_GHOST1) != 0
    if (s.sh.pending & (PENDING_GHOST0 | PENDING_GHOST1)) == 0 and \
            not (s.sh.pending & PENDING_HOUSEKEPT):
        s.sh.pending |= PENDING_HOUSEKEPT
        if t1 + b1 >= c:
            if t1 < c:
                do_ghost_drop_oldest(s, 0)
            else:
                s.sh.pending |= PENDING_NO_GHOST
                return qlist(s, Q_T1).tail
        elif t1 + t2 + b1 + b2 >= 2 * c:
            do_ghost_drop_oldest(s, 1)
    if t1 >= 1 and ((in_b2 and t1 == s.sh.target) or t1 > s.sh.target):
        return qlist(s, Q_T1).tail
    if t2 >= 1:
        return qlist(s, Q_T2).tail
    return qlist(s, Q_T1).tail

cdef inline uint32_t _twoq_victim(ShardRef *s) noexcept nogil:
    cdef uint32_t kin = policy_entries(s) // 4
    if kin < 1:
        kin = 1
    if qlist(s, Q_A1IN).count > kin or qlist(s, Q_AM).count == 0:
        return qlist(s, Q_A1IN).tail
    return qlist(s, Q_AM).tail

cdef inline uint32_t _s3fifo_victim(ShardRef *s) noexcept nogil:
    """Evict from main while it is over its 90% share (or small is empty),
    else from small; each side first moves on the items that earned it."""
    cdef uint32_t c = policy_entries(s), small_max = c // 10, off
    cdef uint8_t *hint
    s.sh.target = 1  # S3-FIFO: "an eviction has happened" (see insert)
    if qlist(s, Q_S3MAIN).count <= c - small_max and qlist(s, Q_SMALL).count > 0:
        while qlist(s, Q_SMALL).count > 0:
            off = qlist(s, Q_SMALL).tail
            hint = hint_of(s, off)
            if hint[0] < 2:
                return off
            hint[0] = 0
            do_queue_move_head(s, Q_S3MAIN, off)
    while qlist(s, Q_S3MAIN).count > 0:
        off = qlist(s, Q_S3MAIN).tail
        hint = hint_of(s, off)
        if hint[0] == 0:
            return off
        hint[0] -= 1
        do_queue_move_head(s, Q_S3MAIN, off)
    return qlist(s, Q_SMALL).tail

cdef inline uint32_t _sieve_victim(ShardRef *s) noexcept nogil:
    cdef uint32_t hand
    cdef uint64_t guard = 0
    cdef PolicyList *l = qlist(s, Q_MAIN)
    if l.tail == 0:
        return 0
    hand = s.sh.hand if s.sh.hand else l.tail
    # At most two passes: the first clears every hint it meets.
    while guard <= 2 * <uint64_t>l.count:
        if hint_of(s, hand)[0] == 0:
            s.sh.hand = item_at(s, hand).qprev
            return hand
        hint_of(s, hand)[0] = 0
        hand = item_at(s, hand).qprev
        if hand == 0:
            hand = l.tail
        guard += 1
    return l.tail


# ---- the interface the engine calls ----------------------------------------

cdef inline void do_policy_admit(ShardRef *s, uint64_t h) noexcept nogil:
    """A new key is about to be inserted: consult ghosts and the sketch."""
    cdef uint32_t idx, c
    cdef int ring
    cdef uint32_t b1, b2, delta
    s.sh.pending = PENDING_ADMITTED
    if s.policy == POLICY_WTINYLFU:
        do_sketch_increment(s, h)
    elif s.policy != POLICY_ARC and s.policy != POLICY_2Q and s.policy != POLICY_S3FIFO:
        return
    ring = ghost_find(s, h, &idx)
    if ring < 0:
        return
    if s.policy == POLICY_WTINYLFU:
        do_ghost_remove(s, idx)
        _wtlfu_adapt(s, ring)
        return
    if s.policy == POLICY_ARC:
        c = policy_entries(s)
        b1 = s.sh.ghost_count[0]
        b2 = s.sh.ghost_count[1]
        if ring == 0:
            delta = b2 // b1 if b1 and b2 > b1 else 1
            s.sh.target = c if s.sh.target + delta > c else s.sh.target + delta
        else:
            delta = b1 // b2 if b2 and b1 > b2 else 1
            s.sh.target = 0 if delta > s.sh.target else s.sh.target - delta
    s.sh.pending |= PENDING_GHOST1 if ring == 1 else PENDING_GHOST0
    do_ghost_remove(s, idx)

cdef inline uint32_t do_policy_victim(ShardRef *s) noexcept nogil:
    """The item to evict next (before admit()'s key goes in), 0 if none.

    May reorder queues on the way (S3-FIFO promotions, W-TinyLFU's window
    demotion); the caller evicts what it returns through do_policy_remove.
    """
    if qlist(s, 0).count + qlist(s, 1).count + qlist(s, 2).count == 0:
        return 0
    if s.policy == POLICY_SIEVE:
        return _sieve_victim(s)
    if s.policy == POLICY_LRU:
        return qlist(s, Q_MAIN).tail
    if s.policy == POLICY_WTINYLFU:
        return _wtlfu_victim(s)
    if s.policy == POLICY_ARC:
        return _arc_victim(s)
    if s.policy == POLICY_2Q:
        return _twoq_victim(s)
    return _s3fifo_victim(s)

cdef inline void do_policy_insert(ShardRef *s, uint32_t off) noexcept nogil:
    """Queue a newly inserted key's item."""
    cdef uint32_t pending = s.sh.pending
    cdef uint32_t q = Q_MAIN
    hint_of(s, off)[0] = 0
    if s.policy == POLICY_S3FIFO:
        # Ghost hits go to main; so do new keys while small is full but
        # nothing was evicted yet (the cache is still filling).
        q = Q_SMALL
        if pending & PENDING_GHOST0 or (
                s.sh.target == 0 and qlist(s, Q_SMALL).count >= policy_entries(s) // 10):
            q = Q_S3MAIN
    elif s.policy == POLICY_2Q:
        q = Q_AM if pending & PENDING_GHOST0 else Q_A1IN
    elif s.policy == POLICY_ARC:
        q = Q_T2 if pending & (PENDING_GHOST0 | PENDING_GHOST1) else Q_T1
    do_queue_push_head(s, q, off)
    if s.policy == POLICY_WTINYLFU:
        while qlist(s, Q_WINDOW).count > s.sh.target:
            do_queue_move_head(s, Q_PROBATION, qlist(s, Q_WINDOW).tail)
    s.sh.pending = 0

cdef inline void do_policy_on_hit(ShardRef *s, uint32_t off) noexcept nogil:
    """Apply one hit under the lock (ring entries, and sets of present keys)."""
    cdef uint32_t q
    if s.policy == POLICY_SIEVE or s.policy == POLICY_S3FIFO:
        policy_record_hit(s, off, 0)
    elif s.policy == POLICY_LRU:
        do_queue_move_head(s, Q_MAIN, off)
    elif s.policy == POLICY_ARC:
        do_queue_move_head(s, Q_T2, off)
    elif s.policy == POLICY_2Q:
        if queue_of(s, off) == Q_AM:
            do_queue_move_head(s, Q_AM, off)
    else:
        _wtlfu_on_hit(s, off)

cdef inline void do_policy_remove(ShardRef *s, uint32_t off, bint evicted) noexcept nogil:
    """Take an item out of its queue; an evicted one may leave a ghost."""
    cdef uint32_t q = queue_of(s, off), c
    cdef uint64_t h = item_at(s, off).hash
    if s.sh.hand == off:
        s.sh.hand = item_at(s, off).qprev
    do_queue_remove(s, off)
    hint_of(s, off)[0] = 0
    if not evicted:
        return
    c = policy_entries(s)
    if s.policy == POLICY_S3FIFO and q == Q_SMALL:
        do_ghost_add(s, 0, h, c * 9 // 10)
    elif s.policy == POLICY_2Q and q == Q_A1IN:
        do_ghost_add(s, 0, h, c // 2 if c >= 2 else 1)
    elif s.policy == POLICY_WTINYLFU:
        do_ghost_add(s, 1 if not (s.sh.pending & PENDING_CANDIDATE) else 0, h,
                     s.sh.ghost_limit)
        s.sh.pending &= ~(<uint32_t>PENDING_CANDIDATE)
    elif s.policy == POLICY_ARC:
        if s.sh.pending & PENDING_NO_GHOST:
            s.sh.pending &= ~(<uint32_t>PENDING_NO_GHOST)
        else:
            do_ghost_add(s, 0 if q == Q_T1 else 1, h, c)

cdef inline void do_policy_replace(ShardRef *s, uint32_t old, uint32_t new) noexcept nogil:
    """The new item of a present key takes the old one's place, then counts as a hit."""
    s.sh.pending = 0  # whatever evictions on the way learnt is not about this key
    cdef Item *o = item_at(s, old)
    cdef Item *n = item_at(s, new)
    cdef PolicyList *l = qlist(s, o.qaux & QUEUE_MASK)
    n.qaux = o.qaux
    n.qprev = o.qprev
    n.qnext = o.qnext
    if o.qprev:
        item_at(s, o.qprev).qnext = new
    else:
        l.head = new
    if o.qnext:
        item_at(s, o.qnext).qprev = new
    else:
        l.tail = new
    if s.sh.hand == old:
        s.sh.hand = new
    hint_of(s, new)[0] = hint_of(s, old)[0]
    hint_of(s, old)[0] = 0
    do_policy_on_hit(s, new)

cdef inline void do_policy_drain(ShardRef *s) noexcept nogil:
    """Apply the hits readers left in the access ring's stripes."""
    cdef uint32_t pos, i, stripe
    cdef uint32_t off
    cdef RingStripe *r
    if not policy_uses_ring(s):
        return
    for stripe in range(RING_STRIPES):
        r = &s.sh.stripes[stripe]
        pos = metis_load_relaxed_u32(&r.pos)
        i = s.sh.ring_drained[stripe]
        if <uint32_t>(pos - i) > STRIPE_SLOTS:
            i = pos - STRIPE_SLOTS
        while i != pos:
            off = metis_load_relaxed_u32(&r.slots[i % STRIPE_SLOTS])
            if do_index_contains_offset(s, off):
                do_policy_on_hit(s, off)
            i += 1
        s.sh.ring_drained[stripe] = pos
    s.sh.drains += 1
