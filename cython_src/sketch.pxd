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


cdef inline uint32_t _counter_index(ShardRef *s, uint64_t h, int row) noexcept nogil:
    return <uint32_t>(_fmix(h ^ METIS_SKETCH_SEEDS[row]) & s.sh.sketch_mask)

cdef inline uint32_t _counter_get(ShardRef *s, int row, uint32_t i) noexcept nogil:
    cdef uint64_t n = <uint64_t>row * s.sketch_width + i
    return (s.sketch[n >> 1] >> ((n & 1) * 4)) & 15

cdef inline void _counter_bump(ShardRef *s, int row, uint32_t i) noexcept nogil:
    cdef uint64_t n = <uint64_t>row * s.sketch_width + i
    cdef int shift = (n & 1) * 4
    if ((s.sketch[n >> 1] >> shift) & 15) < 15:
        s.sketch[n >> 1] += <uint8_t>(1 << shift)

cdef inline bint _door_test_set(ShardRef *s, uint64_t h, bint set_bits) noexcept nogil:
    """Is h in the doorkeeper? With set_bits, add it."""
    cdef uint64_t x = _fmix(h ^ <uint64_t>0x5851F42D4C957F2D)
    cdef uint64_t nbits = <uint64_t>s.sketch_width * 8
    cdef uint64_t a = x % nbits, b = (x >> 32) % nbits
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
    if s.sketch_width == 0:
        return 0
    for row in range(4):
        c = _counter_get(s, row, _counter_index(s, h, row))
        if c < best:
            best = c
    return best + (1 if _door_test_set(s, h, False) else 0)


cdef inline void do_sketch_reset(ShardRef *s) noexcept nogil:
    """Halve every counter and clear the doorkeeper (aging)."""
    cdef uint64_t i, nbytes = <uint64_t>s.sketch_width * 2
    for i in range(nbytes):
        s.sketch[i] = (s.sketch[i] >> 1) & 0x77
    memset(s.doorkeeper, 0, s.sketch_width)
    s.sh.sketch_additions //= 2


cdef inline void do_sketch_increment(ShardRef *s, uint64_t h) noexcept nogil:
    cdef int row
    if s.sketch_width == 0:
        return
    if _door_test_set(s, h, True):
        for row in range(4):
            _counter_bump(s, row, _counter_index(s, h, row))
    s.sh.sketch_additions += 1
    if s.sh.sketch_additions >= s.sh.sketch_sample:
        do_sketch_reset(s)
