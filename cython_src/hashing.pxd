# The key hash: 64 bits, the same in every process and every run (Python's
# hash() is seeded per process, so it cannot pick a shard in shared memory).
# A multiply-rotate mix over 8-byte words with the murmur3 64-bit finalizer.
# Bits 40 and up pick the shard (shard_shift), the low bits the bucket.
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy

cdef extern from *:
    """
    #define METIS_HASH_P1 0x9E3779B185EBCA87ULL
    #define METIS_HASH_P2 0xC2B2AE3D27D4EB4FULL
    #define METIS_HASH_P3 0x165667B19E3779F9ULL
    #define METIS_FMIX_M1 0xFF51AFD7ED558CCDULL
    #define METIS_FMIX_M2 0xC4CEB9FE1A85EC53ULL
    """
    const uint64_t _P1 "METIS_HASH_P1"
    const uint64_t _P2 "METIS_HASH_P2"
    const uint64_t _P3 "METIS_HASH_P3"
    const uint64_t _M1 "METIS_FMIX_M1"
    const uint64_t _M2 "METIS_FMIX_M2"

cdef inline uint64_t _rotl(uint64_t x, int r) noexcept nogil:
    return (x << r) | (x >> (64 - r))

cdef inline uint64_t _fmix(uint64_t h) noexcept nogil:
    h ^= h >> 33
    h *= _M1
    h ^= h >> 33
    h *= _M2
    h ^= h >> 33
    return h

cdef inline uint64_t metis_hash(const char *p, size_t n, uint32_t key_str,
                                uint64_t seed) noexcept nogil:
    # The seed enters the state before the first block: each block's update
    # (xor, rotate, multiply) is non-linear in the state, so two keys that
    # collide under one seed need not collide under another.
    cdef uint64_t h = (_P3 + seed) ^ (n * _P1) ^ (<uint64_t>key_str << 17)
    cdef uint64_t w
    cdef size_t i = 0
    while i + 8 <= n:
        memcpy(&w, p + i, 8)
        h ^= _rotl(w * _P2, 31) * _P1
        h = _rotl(h, 27) * _P1 + _P3
        i += 8
    if i < n:
        w = 0
        memcpy(&w, p + i, n - i)
        h ^= _rotl(w * _P2, 31) * _P1
    return _fmix(h)
