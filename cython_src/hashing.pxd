# The key hash: 64 bits of SipHash-1-3 under the segment's 128-bit key
# (includes/metis_siphash.h), the same in every process that maps the
# segment (Python's hash() is seeded per process, so it cannot pick a shard
# in shared memory). Bits 40 and up pick the shard (shard_shift), the low
# bits the bucket; the policies derive sketch counters and ghost tags from it.
#
# A str key and a bytes key with the same bytes are different keys: the
# key-type flag selects one of two derived keys, so they hash independently.
from libc.stdint cimport uint32_t, uint64_t

cdef extern from "metis_siphash.h" nogil:
    uint64_t metis_siphash(int c_rounds, int d_rounds, uint64_t k0, uint64_t k1,
                           const void *data, size_t n)

cdef extern from *:
    """
    #define METIS_STR_KEY_TWEAK 0x9E3779B97F4A7C15ULL
    """
    const uint64_t _STR_KEY_TWEAK "METIS_STR_KEY_TWEAK"


cdef inline uint64_t metis_hash(const char *p, size_t n, uint32_t key_str,
                                uint64_t k0, uint64_t k1) noexcept nogil:
    return metis_siphash(1, 3, k0, k1 ^ (_STR_KEY_TWEAK if key_str else 0), p, n)


cdef extern from *:
    """
    #define METIS_FMIX_M1 0xFF51AFD7ED558CCDULL
    #define METIS_FMIX_M2 0xC4CEB9FE1A85EC53ULL
    """
    const uint64_t _M1 "METIS_FMIX_M1"
    const uint64_t _M2 "METIS_FMIX_M2"


cdef inline uint64_t _fmix(uint64_t h) noexcept nogil:
    """murmur3's 64-bit finalizer: spreads a key hash (already keyed) into
    the independent-looking values the sketch rows and ghost table use."""
    h ^= h >> 33
    h *= _M1
    h ^= h >> 33
    h *= _M2
    h ^= h >> 33
    return h
