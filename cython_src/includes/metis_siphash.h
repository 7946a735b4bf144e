/*
 * metis_siphash.h - SipHash (Aumasson & Bernstein, 2012) with a 128-bit key,
 * the keyed hash CPython uses for str and bytes (as SipHash-1-3).
 *
 * Why a keyed PRF and not a fast mix: with a plain mix, keys that collide
 * under every seed can be built offline (a length or seed that enters the
 * state linearly cancels out), and then they share a bucket, a shard, sketch
 * counters and ghost entries. SipHash's output is unpredictable without the
 * key, which lives only in the segment header.
 *
 * metis_siphash(c, d, ...) runs c compression rounds per 8-byte word and d
 * finalization rounds: the engine uses (1, 3); the tests check (2, 4)
 * against the reference vectors of the SipHash paper, which exercises the
 * same code.
 */
#ifndef METIS_SIPHASH_H
#define METIS_SIPHASH_H

#include <stdint.h>
#include <string.h>

#define METIS_ROTL64(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

#define METIS_SIPROUND(v0, v1, v2, v3) do {                        \
        v0 += v1; v1 = METIS_ROTL64(v1, 13); v1 ^= v0;             \
        v0 = METIS_ROTL64(v0, 32);                                 \
        v2 += v3; v3 = METIS_ROTL64(v3, 16); v3 ^= v2;             \
        v0 += v3; v3 = METIS_ROTL64(v3, 21); v3 ^= v0;             \
        v2 += v1; v1 = METIS_ROTL64(v1, 17); v1 ^= v2;             \
        v2 = METIS_ROTL64(v2, 32);                                 \
    } while (0)

/* Words are read little-endian whatever the CPU, so a segment's hashes are
   the same on every machine that could share it (and match the paper). */
static inline uint64_t metis_load_le64(const unsigned char *p) {
    uint64_t w;
    memcpy(&w, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    w = __builtin_bswap64(w);
#endif
    return w;
}

static inline uint64_t metis_siphash(int c_rounds, int d_rounds, uint64_t k0, uint64_t k1,
                                     const void *data, size_t n) {
    const unsigned char *p = (const unsigned char *)data;
    uint64_t v0 = k0 ^ 0x736f6d6570736575ULL;
    uint64_t v1 = k1 ^ 0x646f72616e646f6dULL;
    uint64_t v2 = k0 ^ 0x6c7967656e657261ULL;
    uint64_t v3 = k1 ^ 0x7465646279746573ULL;
    uint64_t m, b = ((uint64_t)n) << 56;
    size_t i, tail = n & 7, words = n - tail;
    int r;
    for (i = 0; i < words; i += 8) {
        m = metis_load_le64(p + i);
        v3 ^= m;
        for (r = 0; r < c_rounds; r++) METIS_SIPROUND(v0, v1, v2, v3);
        v0 ^= m;
    }
    switch (tail) {
        case 7: b |= ((uint64_t)p[words + 6]) << 48; /* fall through */
        case 6: b |= ((uint64_t)p[words + 5]) << 40; /* fall through */
        case 5: b |= ((uint64_t)p[words + 4]) << 32; /* fall through */
        case 4: b |= ((uint64_t)p[words + 3]) << 24; /* fall through */
        case 3: b |= ((uint64_t)p[words + 2]) << 16; /* fall through */
        case 2: b |= ((uint64_t)p[words + 1]) << 8;  /* fall through */
        case 1: b |= ((uint64_t)p[words]); break;
        case 0: break;
    }
    v3 ^= b;
    for (r = 0; r < c_rounds; r++) METIS_SIPROUND(v0, v1, v2, v3);
    v0 ^= b;
    v2 ^= 0xff;
    for (r = 0; r < d_rounds; r++) METIS_SIPROUND(v0, v1, v2, v3);
    return v0 ^ v1 ^ v2 ^ v3;
}

#endif /* METIS_SIPHASH_H */
