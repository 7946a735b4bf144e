# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""The Metis engine: one mapped segment and the operations on it.

`Engine` is the compiled base of `metis_shm.Cache`. It knows the segment
layout, the lock-free read path, the locked write path, stats slots and the
consistency check; it knows nothing of names, config, posix_ipc or codecs
beyond the object it is handed (see metis_shm/cache.py and codec.py).

Thread safety: every method runs with the GIL held and never releases it
while a shard lock is held, so threads of one process never contend on a
shard lock; processes do. Reads take no lock and never wait: the protocol is
in optimistic.pxd, the argument in docs/architecture.md.

The subsystems are .pxd files of inline functions (layout, hashing,
allocator, index, item, policy, sweep, shard, check, optimistic) compiled
into this one module, so the read path inlines across them.
"""
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.bytearray cimport PyByteArray_FromStringAndSize
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_FromLongLong
from cpython.unicode cimport PyUnicode_DecodeUTF8
from cpython.buffer cimport PyBuffer_FillInfo
from libc.math cimport isfinite
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset

from layout cimport *
from hashing cimport metis_hash, metis_siphash
from allocator cimport do_alloc, do_free, alloc_largest_free, arena_usable, hdr_word
from index cimport (INDEX_TORN, item_offset_ok, bucket_of, do_index_find, do_index_insert,
                    do_index_replace)
from optimistic cimport (OptItem, OPT_FOUND, OPT_MISS, OPT_BROKEN, opt_begin, opt_still,
                         opt_find, opt_key_ptr, opt_value_ptr)
from coherence cimport coh_stamp, coh_gate_open
from item cimport item_expired, item_dead, item_fill, do_item_remove, do_item_evict
from policy cimport (policy_record_hit, policy_uses_ring, policy_ring_pending, do_policy_on_hit,
                     do_policy_admit, do_policy_insert, do_policy_replace, do_policy_drain,
                     do_policy_victim, PENDING_ADMITTED)
from sweep cimport do_sweep
from pins cimport (pin_entry, pin_insert, pin_remove, pin_mask_set, pin_mask_has,
                   pins_clear_slot, do_zombie_reap, do_release)
from shard cimport (shard_lock, shard_unlock, do_write_begin, do_write_end, do_shard_reset,
                    do_shard_repair)
from posix.unistd cimport getpid
from check cimport do_shard_check
from includes.sync cimport *
from includes.posix cimport (mmap, munmap, MAP_FAILED, PROT_READ, PROT_WRITE, MAP_SHARED,
                             kill, errno, ESRCH, EBUSY, ETIMEDOUT, EOWNERDEAD, sched_yield)

import gc
import os

from metis_shm import errors as _errors

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size) except NULL
    int PyErr_CheckSignals() except -1
    bint PyUnicode_Check(object o)
    bint PyBytes_Check(object o)

cdef extern from *:
    bint __builtin_add_overflow(int64_t a, int64_t b, int64_t *res) nogil

MAGIC = b"METISSHM"
LAYOUT = LAYOUT_VERSION
HEADER_BYTES = HEADER_SIZE
ITEM_OVERHEAD = ITEM_HEADER_SIZE
SHARD_OVERHEAD = ARENA_RESERVED
POLICIES = {"wtinylfu": POLICY_WTINYLFU, "sieve": POLICY_SIEVE, "lru": POLICY_LRU,
            "arc": POLICY_ARC, "2q": POLICY_2Q, "s3fifo": POLICY_S3FIFO}
CRASH_POINTS = 6
MAX_PINS = PIN_MAX          # distinct blocks one process may pin at once

cdef enum:
    # A reader retries only when a running writer reclaimed a block of its
    # shard while it looked (optimistic.pxd). After TRYLOCK_AFTER such
    # retries in a row it also tries the lock, never waiting for it, so even
    # a writer freeing blocks without pause cannot starve it.
    TRYLOCK_AFTER = 8
    YIELD_AFTER = 32            # retries before a reader yields the CPU
    # get_many's prefetch window: enough misses in flight to fill a core's
    # line-fill buffers (10-16 on current x86 and arm64), few enough that
    # the first prefetched lines are still in L1 when they are read.
    GET_MANY_WINDOW = 16
    LOCK_SLICE_MS = 100         # a writer waiting for a lock looks at signals this often
    MODE_SET = 0
    MODE_ADD = 1
    MODE_REPLACE = 2
    # results of the locked write paths
    R_DONE = 0
    R_NOT_STORED = 1
    R_NO_ROOM = 2
    R_MISSING = 3
    R_NOT_COUNTER = 4
    R_OVERFLOW = 5
    R_CORRUPT = 6           # a chain left the arena: see _corrupt()

cdef object _MISSING = object()
cdef object _TRY_AGAIN = object()


def set_crash_point(int point, long after=0, int sig=9):
    """Test hook: raise signal `sig` (SIGKILL by default; SIGSTOP stops the
    process there, inside its write section) in this process at labelled
    write-path point `point` (1..CRASH_POINTS) when it is reached for the
    (after+1)-th time; 0 disarms. A point that stops the process disarms
    itself first, so the write goes on after SIGCONT."""
    global metis_crash_point, metis_crash_after, metis_crash_signal
    if point < 0 or point > CRASH_POINTS:
        raise ValueError(f"crash point must be 0..{CRASH_POINTS}, not {point}")
    metis_crash_after = after
    metis_crash_signal = sig
    metis_crash_point = point


def _time_hash(uint32_t key_len, uint64_t n):
    """Benchmarks: nanoseconds per key hash (SipHash-1-3 as the engine keys
    it) over `n` distinct keys of `key_len` bytes, measured in C."""
    cdef char buf[256]
    cdef uint64_t i, t0, acc = 0
    if key_len > 256 or n == 0:
        raise ValueError("key_len must be at most 256 and n positive")
    memset(buf, 0x61, sizeof(buf))
    t0 = metis_now_ns()
    for i in range(n):
        memcpy(buf, &i, 8 if key_len >= 8 else key_len)
        acc += metis_hash(buf, key_len, 1, 0x0123456789ABCDEF, acc)
    t0 = metis_now_ns() - t0
    if acc == 42:  # keeps the loop: its result is used
        print("", end="")
    return t0 / <double>n


def _siphash(int c_rounds, int d_rounds, uint64_t k0, uint64_t k1, bytes data):
    """Test hook: SipHash-c-d of `data` under key (k0, k1), as the engine
    computes it (the tests check SipHash-2-4 against the paper's vectors)."""
    return metis_siphash(c_rounds, d_rounds, k0, k1, PyBytes_AS_STRING(data),
                         PyBytes_GET_SIZE(data))


cdef extern from *:
    int metis_wtlfu_adaptive
    double metis_wtlfu_ghost_share
    double metis_wtlfu_step
    double metis_wtlfu_initial_window
    int metis_sketch_doorkeeper


def set_policy_tuning(adaptive=None, ghost_share=None, step=None, initial_window=None,
                      doorkeeper=None):
    """Experiments only: W-TinyLFU's adaptive window on/off, the share of the
    capacity each ghost ring remembers (at most the 15% the layout holds), the
    window change per ghost hit (share of capacity), the initial window share,
    and the doorkeeper. ghost_share and initial_window apply to shards reset
    (created or cleared) afterwards; the others at once. This process only."""
    global metis_wtlfu_adaptive, metis_wtlfu_ghost_share, metis_wtlfu_step
    global metis_wtlfu_initial_window, metis_sketch_doorkeeper
    if adaptive is not None:
        metis_wtlfu_adaptive = 1 if adaptive else 0
    if ghost_share is not None:
        metis_wtlfu_ghost_share = min(ghost_share, 0.15)
    if step is not None:
        metis_wtlfu_step = step
    if initial_window is not None:
        metis_wtlfu_initial_window = initial_window
    if doorkeeper is not None:
        metis_sketch_doorkeeper = 1 if doorkeeper else 0
    return {"adaptive": bool(metis_wtlfu_adaptive), "ghost_share": metis_wtlfu_ghost_share,
            "step": metis_wtlfu_step, "initial_window": metis_wtlfu_initial_window,
            "doorkeeper": bool(metis_sketch_doorkeeper)}


cdef inline uint64_t _pow2_at_least(uint64_t n) noexcept:
    cdef uint64_t p = 1
    while p < n:
        p <<= 1
    return p

cdef inline uint64_t _round_up(uint64_t n, uint64_t a) noexcept:
    return (n + a - 1) // a * a

cdef inline uint64_t _pin_mask_stride(uint64_t words) noexcept:
    """Bytes per shard's pin mask: its own cache line(s), as readers set
    bits in it while writers read it."""
    return _round_up(words * 8, 64)

cdef inline uint64_t _ghost_bytes(uint64_t ghost_cap) noexcept:
    """Two rings of ghost_cap hashes and their probe table."""
    return ghost_cap * 16 + (_pow2_at_least(4 * ghost_cap) * 4 if ghost_cap else 0)


def plan_layout(uint64_t capacity, uint32_t n_shards, uint64_t max_entries=0,
                uint32_t n_slots=DEFAULT_SLOTS, uint32_t policy=POLICY_SIEVE):
    """Sizes and offsets of a segment: a dict, the same in every process."""
    cdef uint64_t arena
    cdef uint64_t buckets, per_shard_entries, off, entries, ghost_cap = 0, sketch_width = 0
    cdef dict plan = {}
    # Checked before any arithmetic: these come from headers too, and a
    # header is input (a zero would divide by zero, a huge bound overflow).
    if n_shards == 0 or (n_shards & (n_shards - 1)):
        raise ValueError(f"shards must be a power of two, not {n_shards}")
    if max_entries and max_entries < n_shards:
        raise ValueError(f"max_entries {max_entries} is less than the {n_shards} shards; every "
                         f"shard holds at least one entry: use at most {max_entries} shards")
    if max_entries > (<uint64_t>n_shards << 32):
        raise ValueError(f"max_entries {max_entries} is more than {n_shards} shards of "
                         f"32-bit offsets can index ({<uint64_t>n_shards << 32})")
    arena = (capacity // n_shards) // ARENA_ALIGN * ARENA_ALIGN
    if arena < 4096:
        raise ValueError(f"capacity {capacity} leaves {arena} bytes per shard "
                         f"with {n_shards} shards; at least 4096 are needed")
    if arena > 0x80000000:
        raise ValueError(f"capacity {capacity} gives {arena} bytes per shard; "
                         f"at most 2 GiB per shard: use more shards")
    buckets = _pow2_at_least(max(16, arena // 256))
    if max_entries:
        per_shard_entries = (max_entries + n_shards - 1) // n_shards
        buckets = max(buckets, _pow2_at_least(per_shard_entries))
    buckets = min(buckets, <uint64_t>1 << 26)
    # The policy's memory: ghosts for ARC/2Q/S3-FIFO, a sketch for W-TinyLFU,
    # sized for the shard's capacity in entries (or the bucket count).
    entries = (max_entries + n_shards - 1) // n_shards if max_entries else buckets
    if policy == POLICY_ARC or policy == POLICY_2Q or policy == POLICY_S3FIFO:
        ghost_cap = max(entries, 1)
    if policy == POLICY_WTINYLFU:
        sketch_width = _pow2_at_least(max(4 * entries, 64))
        ghost_cap = max(<uint64_t>(0.15 * entries) + 1, 1)
    plan["ghost_cap"] = ghost_cap
    plan["sketch_width"] = sketch_width
    # The sketch starts on a cache line: its 64-byte blocks are lines.
    plan["policy_stride"] = _round_up(_ghost_bytes(ghost_cap), 64) + sketch_width * 4
    plan["capacity"] = arena * n_shards
    plan["n_shards"] = n_shards
    plan["shard_shift"] = 40
    plan["shard_arena_size"] = arena
    plan["index_buckets"] = buckets
    plan["max_entries"] = max_entries
    plan["n_slots"] = n_slots
    plan["slot_size"] = _round_up(SLOT_HEADER_SIZE + n_shards * SLOT_COUNTERS_SIZE, 64)
    plan["bitmap_stride"] = _round_up((arena + ARENA_RESERVED) // 64 + 1, 64)
    off = HEADER_SIZE
    plan["shards_offset"] = off
    off += <uint64_t>n_shards * SHARD_HEADER_SIZE
    plan["slots_offset"] = off
    off = _round_up(off + n_slots * plan["slot_size"], 4096)
    plan["index_offset"] = off
    off = _round_up(off + <uint64_t>n_shards * buckets * 4, 64)
    plan["stamps_offset"] = off
    off = _round_up(off + <uint64_t>n_shards * buckets * 4, 64)
    plan["bitmap_offset"] = off
    off = _round_up(off + <uint64_t>n_shards * plan["bitmap_stride"], 64)
    plan["policy_offset"] = off
    off = _round_up(off + <uint64_t>n_shards * plan["policy_stride"], 64)
    plan["pin_mask_words"] = (n_slots + 63) // 64
    plan["pin_masks_offset"] = off
    off += <uint64_t>n_shards * _pin_mask_stride(plan["pin_mask_words"])
    plan["pin_tables_offset"] = off
    off = _round_up(off + <uint64_t>n_slots * PIN_TABLE_WORDS * 8, 4096)
    plan["arena_offset"] = off
    off += arena * n_shards
    plan["segment_size"] = _round_up(off, 4096)
    return plan


cdef SegmentHeader _zero_header
memset(&_zero_header, 0, sizeof(SegmentHeader))
_SECRET_FIELDS = ("hash_seed", "hash_seed2")
_HEADER_FIELDS = tuple(k for k in dict(_zero_header) if k != "magic" and k not in _SECRET_FIELDS)


def read_header(bytes raw):
    """Decode the fields of a segment header from its first bytes (a dict)."""
    if len(raw) < sizeof(SegmentHeader):
        raise ValueError("header too short")
    cdef SegmentHeader h
    memcpy(&h, PyBytes_AS_STRING(raw), sizeof(SegmentHeader))
    magic = PyBytes_FromStringAndSize(h.magic, 8)
    # dict() converts char[8] with strlen: zero it so no NUL-less magic reads on.
    memset(h.magic, 0, 8)
    d = dict(h)
    d["magic"] = magic
    for secret in _SECRET_FIELDS:  # the key against hash flooding: not for stats or logs
        del d[secret]
    return d


cdef object _key_object(Item *it, uint32_t klen, uint32_t flags):
    """An item's key as stored: str or bytes. The caller passes the length and
    flags it validated: a lock-free reader must not read them twice."""
    raw = PyBytes_FromStringAndSize(item_key(it), klen)
    return raw.decode("utf-8", "surrogateescape") if flags & FLAG_KEY_STR else raw


cdef inline object value_copy(uint32_t flags, const char *p, Py_ssize_t n):
    """A private copy of a stored value, in the object its decoding keeps:
    a bytearray for the kinds that are mutable once read (a bytearray, the
    writable buffer of a numpy array: one copy, not a bytes and then
    another), bytes for the rest."""
    cdef uint32_t kind = flags & (FLAG_KIND_MASK | FLAG_CODEC_MASK)
    if kind == KIND_BYTEARRAY or kind == KIND_NDARRAY:
        return PyByteArray_FromStringAndSize(p, n)
    return PyBytes_FromStringAndSize(p, n)


cdef struct KeyView:
    const char *p
    Py_ssize_t n
    uint32_t flag
    uint64_t h

cdef struct ValueView:
    const char *p
    Py_ssize_t n
    uint32_t flags
    int64_t ival


# The Engine class, one file per path (each a subclass of the one before):
include "engine_segment.pxi"
include "engine_read.pxi"
include "engine_view.pxi"
include "engine_write.pxi"
include "engine_coherence.pxi"
include "engine_admin.pxi"
