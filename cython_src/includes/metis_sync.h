/*
 * metis_sync.h - the few things Cython cannot say by itself: explicit
 * C11-model atomics (GCC __atomic builtins), process-shared robust mutexes,
 * and crash points for the crash tests.
 *
 * Every ordering is spelled out (acquire/release/relaxed) so the engine is
 * correct on weakly ordered CPUs (ARM64), not only on x86-64 where plain
 * loads and stores happen to be ordered.
 */
#ifndef METIS_SYNC_H
#define METIS_SYNC_H

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- atomics ---------------------------------------------------------- */

static inline uint64_t metis_load_acquire_u64(const uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
static inline uint64_t metis_load_relaxed_u64(const uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}
static inline void metis_store_release_u64(uint64_t *p, uint64_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
static inline void metis_store_relaxed_u64(uint64_t *p, uint64_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}
static inline uint64_t metis_fetch_add_u64(uint64_t *p, uint64_t v) {
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
/* Coherence bumps (coherence.pxd): ordered against the loads and the unlink
   around them, so a reader that sees the new stamp sees nothing older. */
static inline uint64_t metis_fetch_add_acq_rel_u64(uint64_t *p, uint64_t v) {
    return __atomic_fetch_add(p, v, __ATOMIC_ACQ_REL);
}
static inline uint32_t metis_fetch_add_acq_rel_u32(uint32_t *p, uint32_t v) {
    return __atomic_fetch_add(p, v, __ATOMIC_ACQ_REL);
}
static inline int metis_cas_u64(uint64_t *p, uint64_t expected, uint64_t desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQ_REL,
                                       __ATOMIC_ACQUIRE);
}
static inline uint32_t metis_load_acquire_u32(const uint32_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
static inline uint32_t metis_load_relaxed_u32(const uint32_t *p) {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}
static inline void metis_store_release_u32(uint32_t *p, uint32_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
static inline void metis_store_relaxed_u32(uint32_t *p, uint32_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}
static inline int metis_cas_u32(uint32_t *p, uint32_t expected, uint32_t desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, 0,
                                       __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}
static inline uint8_t metis_load_relaxed_u8(const uint8_t *p) {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}
static inline void metis_store_relaxed_u8(uint8_t *p, uint8_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}
static inline void metis_fetch_or_u8(uint8_t *p, uint8_t bits) {
    __atomic_fetch_or(p, bits, __ATOMIC_RELAXED);
}
static inline void metis_fetch_and_u8(uint8_t *p, uint8_t bits) {
    __atomic_fetch_and(p, bits, __ATOMIC_RELAXED);
}
static inline void metis_fence_acquire(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
/* A full fence: a store before it is visible before any load after it
   (the store-load order the pin protocol of pins.pxd needs, both sides). */
static inline void metis_fence_seq_cst(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void metis_fetch_or_u64(uint64_t *p, uint64_t bits) {
    __atomic_fetch_or(p, bits, __ATOMIC_SEQ_CST);
}
static inline void metis_fetch_and_u64(uint64_t *p, uint64_t bits) {
    __atomic_fetch_and(p, bits, __ATOMIC_SEQ_CST);
}
static inline void metis_fence_release(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }

/* A hint that the line at p will be read soon (batched reads overlap their
   cache misses with it); never faults, whatever p is. */
static inline void metis_prefetch(const void *p) { __builtin_prefetch(p, 0, 3); }

static inline void metis_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline uint64_t metis_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- process-shared robust mutex ---------------------------------------- */

/* The shard header reserves this many bytes for the mutex. */
#define METIS_MUTEX_BYTES 64
_Static_assert(sizeof(pthread_mutex_t) <= METIS_MUTEX_BYTES,
               "pthread_mutex_t does not fit the space the layout reserves");

static inline int metis_mutex_init(void *storage) {
    pthread_mutexattr_t attr;
    int rc = pthread_mutexattr_init(&attr);
    if (rc) return rc;
    rc = pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    if (!rc) rc = pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    if (!rc) rc = pthread_mutex_init((pthread_mutex_t *)storage, &attr);
    pthread_mutexattr_destroy(&attr);
    return rc;
}
/* 0, EOWNERDEAD (we own it; the data may be half-written), or an error. */
static inline int metis_mutex_lock(void *storage) {
    return pthread_mutex_lock((pthread_mutex_t *)storage);
}
/* 0, ETIMEDOUT after `ms` milliseconds, EOWNERDEAD, or an error. Waiting in
   slices lets the caller look at signals (Ctrl-C) between them. */
static inline int metis_mutex_timedlock(void *storage, long ms) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec += 1;
        ts.tv_nsec -= 1000000000L;
    }
    return pthread_mutex_timedlock((pthread_mutex_t *)storage, &ts);
}
/* 0, EBUSY, EOWNERDEAD, or an error. */
static inline int metis_mutex_trylock(void *storage) {
    return pthread_mutex_trylock((pthread_mutex_t *)storage);
}
static inline int metis_mutex_unlock(void *storage) {
    return pthread_mutex_unlock((pthread_mutex_t *)storage);
}
static inline int metis_mutex_consistent(void *storage) {
    return pthread_mutex_consistent((pthread_mutex_t *)storage);
}

/* ---- crash points ------------------------------------------------------ */
/*
 * The crash tests need a writer to die (or stop) at a chosen instruction
 * inside the locked write path, not only at a random moment.
 * METIS_CRASH_POINT(k) raises metis_crash_signal (SIGKILL, or SIGSTOP for the
 * stopped-writer tests) when point k is armed; unarmed it costs one
 * predictable branch. One translation unit includes this header, so these
 * statics exist once per process. A stopped process disarms its point, so
 * after SIGCONT it carries on with its write.
 */
static int metis_crash_point = 0;
static long metis_crash_after = 0;
static int metis_crash_signal = SIGKILL;

static inline void METIS_CRASH_POINT(int k) {
    if (__builtin_expect(metis_crash_point == k, 0)) {
        if (metis_crash_after-- <= 0) {
            if (metis_crash_signal != SIGKILL) metis_crash_point = 0;
            raise(metis_crash_signal);
        }
    }
}

#endif /* METIS_SYNC_H */
