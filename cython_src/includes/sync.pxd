# Declarations of metis_sync.h: atomics with explicit ordering, robust
# process-shared mutexes, crash points. Nothing here is defined in Cython.
from libc.stdint cimport uint8_t, uint32_t, uint64_t

cdef extern from "metis_sync.h" nogil:
    uint64_t metis_load_acquire_u64(const uint64_t *p)
    uint64_t metis_load_relaxed_u64(const uint64_t *p)
    void metis_store_release_u64(uint64_t *p, uint64_t v)
    void metis_store_relaxed_u64(uint64_t *p, uint64_t v)
    uint64_t metis_fetch_add_u64(uint64_t *p, uint64_t v)
    uint64_t metis_fetch_add_acq_rel_u64(uint64_t *p, uint64_t v)
    uint32_t metis_fetch_add_acq_rel_u32(uint32_t *p, uint32_t v)
    uint32_t metis_load_acquire_u32(const uint32_t *p)
    uint32_t metis_load_relaxed_u32(const uint32_t *p)
    void metis_store_release_u32(uint32_t *p, uint32_t v)
    void metis_store_relaxed_u32(uint32_t *p, uint32_t v)
    bint metis_cas_u32(uint32_t *p, uint32_t expected, uint32_t desired)
    bint metis_cas_u64(uint64_t *p, uint64_t expected, uint64_t desired)
    uint8_t metis_load_relaxed_u8(const uint8_t *p)
    void metis_store_relaxed_u8(uint8_t *p, uint8_t v)
    void metis_fetch_or_u8(uint8_t *p, uint8_t bits)
    void metis_fetch_and_u8(uint8_t *p, uint8_t bits)
    void metis_fence_acquire()
    void metis_fence_release()
    void metis_fence_seq_cst()
    void metis_fetch_or_u64(uint64_t *p, uint64_t bits)
    void metis_fetch_and_u64(uint64_t *p, uint64_t bits)
    void metis_prefetch(const void *p)
    void metis_cpu_relax()
    uint64_t metis_now_ns()

    const int METIS_MUTEX_BYTES
    int metis_mutex_init(void *storage)
    int metis_mutex_lock(void *storage)
    int metis_mutex_trylock(void *storage)
    int metis_mutex_timedlock(void *storage, long ms)
    int metis_mutex_unlock(void *storage)
    int metis_mutex_consistent(void *storage)

    int metis_crash_point
    long metis_crash_after
    int metis_crash_signal
    void METIS_CRASH_POINT(int k)
