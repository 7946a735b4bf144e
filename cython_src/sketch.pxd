# W-TinyLFU's frequency sketch: a count-min sketch of 4-bit counters (four
# rows of sketch_width counters, two per byte) behind a doorkeeper (a bloom
# filter of sketch_width * 8 bits, two probes).
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
    uint32_t idx[4]         # one counter per row
    uint64_t door_a         # two doorkeeper bits
    uint64_t door_b

cdef inline void _slots(ShardRef *s, uint64_t h, SketchSlots *out) noexcept nogil:
    """Where a key's counters and doorkeeper bits are: two 64-bit mixes give
    four 32-bit row indexes; a third gives the doorkeeper bits."""
    cdef uint64_t x1 = _fmix(h ^ METIS_SKETCH_SEEDS[0])
    cdef uint64_t x2 = _fmix(h ^ METIS_SKETCH_SEEDS[1])
    cdef uint64_t x3 = _fmix(h ^ METIS_SKETCH_SEEDS[2])
    cdef uint64_t nbits = <uint64_t>s.sketch_width * 8
    out.idx[0] = <uint32_t>(x1 & s.sh.sketch_mask)
    out.idx[1] = <uint32_t>((x1 >> 32) & s.sh.sketch_mask)
    out.idx[2] = <uint32_t>(x2 & s.sh.sketch_mask)
    out.idx[3] = <uint32_t>((x2 >> 32) & s.sh.sketch_mask)
    out.door_a = (x3 & <uint64_t>0xFFFFFFFF) % nbits
    out.door_b = (x3 >> 32) % nbits


cdef inline uint32_t _counter_get(ShardRef *s, int row, uint32_t i) noexcept nogil:
    cdef uint64_t n = <uint64_t>row * s.sketch_width + i
    return (s.sketch[n >> 1] >> ((n & 1) * 4)) & 15

cdef inline void _counter_bump(ShardRef *s, int row, uint32_t i) noexcept nogil:
    cdef uint64_t n = <uint64_t>row * s.sketch_width + i
    cdef int shift = (n & 1) * 4
    if ((s.sketch[n >> 1] >> shift) & 15) < 15:
        s.sketch[n >> 1] += <uint8_t>(1 << shift)

cdef inline bint _door_test_set(ShardRef *s, SketchSlots *k, bint set_bits) noexcept nogil:
    """Is the key in the doorkeeper? With set_bits, add it."""
    cdef uint64_t a = k.door_a, b = k.door_b
    cdef bint seen
    if not metis_sketch_doorkeeper:
        return set_bits
    seen = ((s.doorkeeper[a >> 3] >> (a & 7)) & 1) and \
        ((s.doorkeeper[b >> 3] >> (b & 7)) & 1)
    if set_bits and not seen:
        s.doorkeeper[a >> 3] |= <uint8_t>(1 << (a & 7))
        s.doorkeeper[b >> 3] |= <uint8_t>(1 << (b & 7))
    return seen


cdef inline uint32_t sketch_estimate(ShardRef *s, uint64_t h) noexcept nogil:
    cdef uint32_t best = 15, c
    cdef int row
    cdef SketchSlots k
    if s.sketch_width == 0:
        return 0
    _slots(s, h, &k)
    for row in range(4):
        c = _counter_get(s, row, k.idx[row])
        if c < best:
            best = c
    return best + (1 if _door_test_set(s, &k, False) else 0)


cdef inline void do_sketch_reset(ShardRef *s) noexcept nogil:
    """Halve every counter and clear the doorkeeper (aging)."""
    cdef uint64_t i, nbytes = <uint64_t>s.sketch_width * 2
    for i in range(nbytes):
        s.sketch[i] = (s.sketch[i] >> 1) & 0x77
    memset(s.doorkeeper, 0, s.sketch_width)
    s.sh.sketch_additions //= 2


cdef inline void do_sketch_increment(ShardRef *s, uint64_t h) noexcept nogil:
    cdef int row
    cdef SketchSlots k
    if s.sketch_width == 0:
        return
    _slots(s, h, &k)
    if _door_test_set(s, &k, True):
        for row in range(4):
            _counter_bump(s, row, k.idx[row])
    s.sh.sketch_additions += 1
    if s.sh.sketch_additions >= s.sh.sketch_sample:
        do_sketch_reset(s)
