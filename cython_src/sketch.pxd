# W-TinyLFU's frequency sketch: a count-min sketch of 4-bit counters (four
# rows, sketch_width counters each, two per byte, blocked so that a key's
# four counters share one cache line) behind a doorkeeper (a bloom filter of
# sketch_width * 16 bits, two probes in one cache line: a smaller one gives
# enough false positives to hurt small caches).
#
# The first sighting of a key only sets its doorkeeper bits; later ones
# increment the four counters. A key's estimate is the smallest of its four
# counters, plus one if the doorkeeper has seen it. When the number of
# increments reaches the sample size (10 x the shard's entry capacity), every
# counter is halved and the doorkeeper cleared, so old popularity fades.
#
# All functions expect the shard lock.
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memset
from layout cimport ShardRef
from hashing cimport _fmix

cdef extern from *:
    """
    static int metis_sketch_doorkeeper = 1;
    static const unsigned long long METIS_SKETCH_SEEDS[4] = {
        0x97CB3127D6A1A6C9ULL, 0xB492B66FBE98F273ULL,
        0x9AE16A3B2F90404FULL, 0xCBF29CE484222325ULL};
    """
    const uint64_t METIS_SKETCH_SEEDS[4]
    int metis_sketch_doorkeeper


cdef struct SketchSlots:
    uint8_t *block          # the key's 64-byte block of counters
    uint32_t nib[4]         # one 4-bit counter per row, inside that block
    uint8_t *door           # the key's 64-byte block of doorkeeper bits
    uint32_t door_a         # two bits inside it
    uint32_t door_b

cdef inline void _slots(ShardRef *s, uint64_t h, SketchSlots *out) noexcept nogil:
    """Where a key's counters and doorkeeper bits are. All four counters sit
    in one 64-byte block (each row owns 32 of its 128 nibbles), and both
    doorkeeper bits in another, so an update touches two cache lines, not
    six (the blocked layout Caffeine's sketch uses)."""
    cdef uint64_t x1 = _fmix(h ^ METIS_SKETCH_SEEDS[0])
    cdef uint64_t x2 = _fmix(h ^ METIS_SKETCH_SEEDS[1])
    cdef uint64_t nblocks = (<uint64_t>s.sketch_width * 2) >> 6
    cdef int row
    out.block = s.sketch + (((x1 >> 32) & (nblocks - 1)) << 6)
    for row in range(4):
        out.nib[row] = <uint32_t>(row * 32 + ((x1 >> (row * 5)) & 31))
    out.door = s.doorkeeper + ((x2 & (nblocks - 1)) << 6)
    out.door_a = <uint32_t>((x2 >> 32) & 511)
    out.door_b = <uint32_t>((x2 >> 41) & 511)


cdef inline uint32_t _counter_get(SketchSlots *k, int row) noexcept nogil:
    cdef uint32_t n = k.nib[row]
    return (k.block[n >> 1] >> ((n & 1) * 4)) & 15

cdef inline void _counter_bump(SketchSlots *k, int row) noexcept nogil:
    cdef uint32_t n = k.nib[row]
    cdef int shift = (n & 1) * 4
    if ((k.block[n >> 1] >> shift) & 15) < 15:
        k.block[n >> 1] += <uint8_t>(1 << shift)

cdef inline bint _door_test_set(ShardRef *s, SketchSlots *k, bint set_bits) noexcept nogil:
    """Is the key in the doorkeeper? With set_bits, add it."""
    cdef uint32_t a = k.door_a, b = k.door_b
    cdef bint seen
    if not metis_sketch_doorkeeper:
        return set_bits
    seen = ((k.door[a >> 3] >> (a & 7)) & 1) and ((k.door[b >> 3] >> (b & 7)) & 1)
    if set_bits and not seen:
        k.door[a >> 3] |= <uint8_t>(1 << (a & 7))
        k.door[b >> 3] |= <uint8_t>(1 << (b & 7))
    return seen


cdef inline uint32_t sketch_estimate(ShardRef *s, uint64_t h) noexcept nogil:
    cdef uint32_t best = 15, c
    cdef int row
    cdef SketchSlots k
    if s.sketch_width == 0:
        return 0
    _slots(s, h, &k)
    for row in range(4):
        c = _counter_get(&k, row)
        if c < best:
            best = c
    return best + (1 if _door_test_set(s, &k, False) else 0)


cdef inline void do_sketch_reset(ShardRef *s) noexcept nogil:
    """Halve every counter and clear the doorkeeper (aging)."""
    cdef uint64_t i, nbytes = <uint64_t>s.sketch_width * 2
    for i in range(nbytes):
        s.sketch[i] = (s.sketch[i] >> 1) & 0x77
    memset(s.doorkeeper, 0, 2 * <size_t>s.sketch_width)
    s.sh.sketch_additions //= 2


cdef inline void do_sketch_increment(ShardRef *s, uint64_t h) noexcept nogil:
    cdef int row
    cdef SketchSlots k
    if s.sketch_width == 0:
        return
    _slots(s, h, &k)
    if _door_test_set(s, &k, True):
        for row in range(4):
            _counter_bump(&k, row)
    s.sh.sketch_additions += 1
    if s.sh.sketch_additions >= s.sh.sketch_sample:
        do_sketch_reset(s)
