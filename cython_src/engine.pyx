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
from libc.math cimport isfinite
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset

from layout cimport *
from hashing cimport metis_hash, metis_siphash
from allocator cimport do_alloc, do_free, alloc_largest_free, arena_usable
from index cimport (INDEX_TORN, item_offset_ok, do_index_find, do_index_insert,
                    do_index_replace)
from optimistic cimport (OptItem, OPT_FOUND, OPT_MISS, OPT_BROKEN, opt_begin, opt_still,
                         opt_find, opt_key_ptr, opt_value_ptr)
from item cimport item_expired, item_fill, do_item_remove, do_item_evict
from policy cimport (policy_record_hit, policy_uses_ring, policy_ring_pending, do_policy_on_hit,
                     do_policy_admit, do_policy_insert, do_policy_replace, do_policy_drain,
                     do_policy_victim, PENDING_ADMITTED)
from sweep cimport do_sweep
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

cdef enum:
    # A reader retries only when a running writer reclaimed a block of its
    # shard while it looked (optimistic.pxd). After TRYLOCK_AFTER such
    # retries in a row it also tries the lock, never waiting for it, so even
    # a writer freeing blocks without pause cannot starve it.
    TRYLOCK_AFTER = 8
    YIELD_AFTER = 32            # retries before a reader yields the CPU
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
    plan["bitmap_offset"] = off
    off = _round_up(off + <uint64_t>n_shards * plan["bitmap_stride"], 64)
    plan["policy_offset"] = off
    off = _round_up(off + <uint64_t>n_shards * plan["policy_stride"], 4096)
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


cdef class Engine:
    """One process's mapping of a segment. Subclassed by metis_shm.Cache."""

    cdef char *_base
    cdef uint64_t _size
    cdef SegmentHeader *_hdr
    cdef ShardRef *_shards
    cdef uint32_t _n_shards
    cdef uint32_t _shard_shift
    cdef uint32_t _max_key
    cdef uint32_t _max_value
    cdef uint32_t _max_block
    cdef uint32_t _compress_threshold
    cdef int64_t _default_ttl_ns
    cdef SlotHeader *_slot
    cdef SlotCounters *_counters
    cdef bint _shared_slot
    cdef object _codec
    cdef uint32_t _sweep_shard
    cdef bint _closed
    cdef int _lock_waiters
    cdef uint32_t _stripe
    cdef bint _record_hits
    cdef uint64_t _hash_seed
    cdef uint64_t _hash_seed2
    cdef list _largest_seen

    def __dealloc__(self):
        self._unmap()

    # ---- mapping -----------------------------------------------------------

    def _map(self, int fd, uint64_t size):
        """mmap the segment behind `fd` (the caller closes fd afterwards)."""
        cdef void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        if p == MAP_FAILED:
            raise OSError(errno, os.strerror(errno))
        self._base = <char *>p
        self._size = size
        self._hdr = <SegmentHeader *>p

    cdef void _unmap(self) noexcept:
        if self._shards != NULL:
            free(self._shards)
            self._shards = NULL
        if self._base != NULL:
            munmap(self._base, self._size)
            self._base = NULL
            self._hdr = NULL

    def _format(self, dict plan, dict settings):
        """Write a new segment's header and empty shards; mark it ready last."""
        cdef SegmentHeader *h = self._hdr
        cdef uint32_t i
        cdef ShardHeader *sh
        if sizeof(ShardHeader) != SHARD_HEADER_SIZE or sizeof(Item) != ITEM_HEADER_SIZE:
            raise AssertionError("layout structs do not have their declared sizes")
        cdef SegmentHeader fresh
        fields = {name: 0 for name in _HEADER_FIELDS}
        fields.update({k: v for k, v in plan.items() if k in fields})
        fields.update(settings)
        fields.update(layout_version=LAYOUT_VERSION, header_size=HEADER_SIZE,
                      created_ns=metis_now_ns(), creator_uid=os.getuid(),
                      creator_pid=os.getpid(), state=STATE_INITIALIZING, magic=b"\0" * 8,
                      hash_seed=int.from_bytes(os.urandom(8), "little"),
                      hash_seed2=int.from_bytes(os.urandom(8), "little"))
        fresh = fields
        memcpy(h, &fresh, sizeof(SegmentHeader))
        self._setup_views()
        for i in range(self._n_shards):
            sh = self._shards[i].sh
            memset(sh, 0, SHARD_HEADER_SIZE)
            if metis_mutex_init(sh.lock) != 0:
                raise OSError("cannot initialise a process-shared robust mutex")
            if plan["max_entries"]:
                sh.max_items = (plan["max_entries"] + self._n_shards - 1) // self._n_shards
            sh.ghost_cap = plan["ghost_cap"]
            sh.ghost_table_mask = (_pow2_at_least(4 * sh.ghost_cap) - 1) if sh.ghost_cap else 0
            sh.sketch_mask = plan["sketch_width"] - 1 if plan["sketch_width"] else 0
            do_shard_reset(&self._shards[i])
        memcpy(h.magic, <const char *>MAGIC, 8)
        metis_store_release_u32(&h.state, STATE_READY)

    def _setup_views(self):
        """Compute this process's pointers to each shard's pieces."""
        cdef SegmentHeader *h = self._hdr
        cdef uint32_t i
        cdef ShardRef *s
        # A header is input (any writer of the segment can change it): the
        # bounds the read path relies on are checked here, not assumed.
        if h.shard_arena_size < 4096 or h.shard_arena_size > 0x80000000 or \
                h.shard_arena_size % ARENA_ALIGN:
            raise _errors.SegmentCorrupt(
                f"impossible header: shard_arena_size {h.shard_arena_size}",
                context={"field": "shard_arena_size"})
        if h.max_key_size < 1 or h.max_key_size > 65536:
            raise _errors.SegmentCorrupt(f"impossible header: max_key_size {h.max_key_size}",
                                         context={"field": "max_key_size"})
        if h.max_value_size < 1 or h.max_value_size >= 0x80000000:
            raise _errors.SegmentCorrupt(
                f"impossible header: max_value_size {h.max_value_size}",
                context={"field": "max_value_size"})
        self._n_shards = h.n_shards
        self._shard_shift = h.shard_shift
        self._max_key = h.max_key_size
        self._compress_threshold = h.compress_threshold
        self._default_ttl_ns = h.default_ttl_ns
        self._max_block = <uint32_t>h.shard_arena_size
        self._max_value = h.max_value_size
        self._hash_seed = h.hash_seed
        self._hash_seed2 = h.hash_seed2
        self._largest_seen = [0] * h.n_shards
        if self._shards == NULL:
            self._shards = <ShardRef *>malloc(sizeof(ShardRef) * self._n_shards)
            if self._shards == NULL:
                raise MemoryError()
        for i in range(self._n_shards):
            s = &self._shards[i]
            s.sh = <ShardHeader *>(self._base + h.shards_offset + <uint64_t>i * SHARD_HEADER_SIZE)
            s.buckets = <uint32_t *>(self._base + h.index_offset
                                     + <uint64_t>i * h.index_buckets * 4)
            s.hints = <uint8_t *>(self._base + h.bitmap_offset + <uint64_t>i * h.bitmap_stride)
            pol = self._base + h.policy_offset + <uint64_t>i * h.policy_stride
            s.ghost_ring = <uint64_t *>pol
            s.ghost_table = <uint32_t *>(pol + <uint64_t>h.ghost_cap * 16)
            s.sketch = <uint8_t *>(pol + _round_up(_ghost_bytes(h.ghost_cap), 64))
            s.doorkeeper = s.sketch + <uint64_t>h.sketch_width * 2  # 2 * width bytes
            s.sketch_width = h.sketch_width
            s.n_shards = h.n_shards
            # Offsets start at ARENA_RESERVED (0 means "none"), so the arena
            # pointer sits that far before the shard's first byte: capacity
            # is all usable, and no block ever starts below the reserve.
            s.arena = self._base + h.arena_offset + <uint64_t>i * h.shard_arena_size \
                - ARENA_RESERVED
            s.arena_size = h.shard_arena_size + ARENA_RESERVED
            s.bucket_mask = h.index_buckets - 1
            s.policy = h.policy
            s.index = i
            s.max_value = h.max_value_size
            s.chain_limit = s.arena_size // MIN_BLOCK

    def _set_codec(self, codec):
        self._codec = codec
        self._record_hits = True

    def _set_hit_recording(self, bint on):
        """Benchmarks only: stop telling the policy about hits (measures what
        recording costs on the read path)."""
        self._record_hits = on

    # ---- per-process stat slots -------------------------------------------

    cdef SlotHeader *_slot_at(self, uint32_t i) noexcept:
        return <SlotHeader *>(self._base + self._hdr.slots_offset + <uint64_t>i * self._hdr.slot_size)

    def _claim_slot(self):
        """Take a stats slot of our own (slot 0 is shared, updated atomically).

        Readers bump hit/miss counters in their own slot, so two processes
        reading the same shard never write the same cache line. A slot whose
        process died is taken over and its counts folded into slot 0.
        """
        cdef uint32_t i, pid = os.getpid(), owner
        cdef SlotHeader *sl
        self._slot = NULL
        for i in range(1, self._hdr.n_slots):
            sl = self._slot_at(i)
            if metis_load_relaxed_u32(&sl.pid) == 0 and metis_cas_u32(&sl.pid, 0, pid):
                self._take_slot(sl)
                return
        for i in range(1, self._hdr.n_slots):
            sl = self._slot_at(i)
            owner = metis_load_relaxed_u32(&sl.pid)
            if owner != pid and kill(owner, 0) == -1 and errno == ESRCH:
                if metis_cas_u32(&sl.pid, owner, pid):
                    self._fold_slot(sl)
                    self._take_slot(sl)
                    return
        self._slot = self._slot_at(0)
        self._counters = <SlotCounters *>((<char *>self._slot) + SLOT_HEADER_SIZE)
        self._shared_slot = True
        self._stripe = pid

    cdef void _take_slot(self, SlotHeader *sl) noexcept:
        sl.claimed_ns = metis_now_ns()
        self._slot = sl
        # Each process writes its hits into its own access-ring stripe.
        self._stripe = <uint32_t>(((<char *>sl) - (<char *>self._slot_at(0)))
                                  // self._hdr.slot_size)
        self._counters = <SlotCounters *>((<char *>sl) + SLOT_HEADER_SIZE)
        self._shared_slot = False

    cdef void _fold_slot(self, SlotHeader *sl) noexcept:
        """Add a slot's counters into shared slot 0 and zero them."""
        cdef SlotCounters *src = <SlotCounters *>((<char *>sl) + SLOT_HEADER_SIZE)
        cdef SlotCounters *dst = <SlotCounters *>((<char *>self._slot_at(0)) + SLOT_HEADER_SIZE)
        cdef uint32_t i
        for i in range(self._n_shards):
            metis_fetch_add_u64(&dst[i].hits, metis_load_relaxed_u64(&src[i].hits))
            metis_fetch_add_u64(&dst[i].misses, metis_load_relaxed_u64(&src[i].misses))
            metis_fetch_add_u64(&dst[i].read_retries,
                                metis_load_relaxed_u64(&src[i].read_retries))
            metis_store_relaxed_u64(&src[i].hits, 0)
            metis_store_relaxed_u64(&src[i].misses, 0)
            metis_store_relaxed_u64(&src[i].read_retries, 0)

    def _slot_owners(self):
        """(slot index, pid, claimed_ns) of every claimed per-process slot."""
        cdef uint32_t i, pid
        cdef SlotHeader *sl
        self._check_open()
        out = []
        for i in range(1, self._hdr.n_slots):
            sl = self._slot_at(i)
            pid = metis_load_relaxed_u32(&sl.pid)
            if pid:
                out.append((i, pid, sl.claimed_ns))
        return out

    def _reclaim_slot(self, uint32_t index, uint32_t pid):
        """Free the slot of a process known to be gone (metisd asks psutil):
        its counts move to shared slot 0. False if the slot changed owner."""
        cdef SlotHeader *sl
        cdef uint32_t me = os.getpid()
        self._check_open()
        if index == 0 or index >= self._hdr.n_slots or pid == me:
            return False
        sl = self._slot_at(index)
        # Own it first, so no other process folds the same counts twice.
        if not metis_cas_u32(&sl.pid, pid, me):
            return False
        self._fold_slot(sl)
        metis_store_release_u32(&sl.pid, 0)
        return True

    def _release_slot(self):
        if self._slot != NULL and not self._shared_slot:
            self._fold_slot(self._slot)
            metis_store_release_u32(&self._slot.pid, 0)
        self._slot = NULL

    cdef inline void _bump(self, uint64_t *counter) noexcept:
        # Own slot: only this process writes it, and the GIL orders our
        # threads, so a plain relaxed load/store pair is exact.
        if self._shared_slot:
            metis_fetch_add_u64(counter, 1)
        else:
            metis_store_relaxed_u64(counter, metis_load_relaxed_u64(counter) + 1)

    # ---- closing -----------------------------------------------------------

    def _close_engine(self):
        if self._base != NULL and not self._closed:
            self._release_slot()
        self._closed = True
        # A thread of ours may be waiting (GIL released) for a shard lock in
        # this mapping: leave the unmapping to __dealloc__ then.
        if self._lock_waiters == 0:
            self._unmap()

    @property
    def closed(self):
        """True once close() has been called."""
        return self._closed or self._base == NULL

    cdef int _check_open(self) except -1:
        if self._closed or self._shards == NULL:
            raise _errors.CacheClosed("operation on a closed cache", context={})
        return 0

    # ---- keys, values, ttl -------------------------------------------------

    cdef int _key(self, object key, KeyView *kv) except -1:
        if PyUnicode_Check(key):
            kv.p = PyUnicode_AsUTF8AndSize(key, &kv.n)
            kv.flag = FLAG_KEY_STR
        elif PyBytes_Check(key):
            kv.p = PyBytes_AS_STRING(key)
            kv.n = PyBytes_GET_SIZE(key)
            kv.flag = 0
        else:
            raise _errors.InvalidKeyType(
                f"keys must be str or bytes, not {type(key).__name__}",
                context={"type": type(key).__name__})
        if kv.n > self._max_key:
            raise _errors.KeyTooLarge(
                f"key is {kv.n} bytes; max_key_size is {self._max_key}",
                context={"size": kv.n, "limit": self._max_key})
        kv.h = metis_hash(kv.p, kv.n, kv.flag, self._hash_seed, self._hash_seed2)
        return 0

    cdef inline ShardRef *_shard_for(self, uint64_t h) noexcept:
        return &self._shards[(h >> self._shard_shift) & (self._n_shards - 1)]

    cdef object _value(self, object value, ValueView *vv):
        """Point vv at the bytes to store; returns an object to keep alive."""
        cdef int overflow = 0
        cdef type t = type(value)
        cdef object kept
        if t is bytes:
            vv.p = PyBytes_AS_STRING(value)
            vv.n = PyBytes_GET_SIZE(value)
            vv.flags = KIND_BYTES
            kept = value
        elif t is str:
            vv.p = PyUnicode_AsUTF8AndSize(value, &vv.n)
            vv.flags = KIND_STR
            kept = value
        elif t is int:
            vv.ival = PyLong_AsLongLongAndOverflow(value, &overflow)
            if overflow == 0:
                vv.p = <const char *>&vv.ival
                vv.n = 8
                vv.flags = KIND_INT
                return None
            kept = None
        else:
            kept = None
        if kept is not None and (self._compress_threshold == 0
                                 or vv.n < self._compress_threshold):
            return kept
        flags, payload = self._codec.encode(value)
        vv.p = PyBytes_AS_STRING(payload)
        vv.n = PyBytes_GET_SIZE(payload)
        vv.flags = flags
        return payload

    cdef object _decode(self, uint32_t flags, object data):
        cdef uint32_t kind = flags & (FLAG_KIND_MASK | FLAG_CODEC_MASK)
        if kind == KIND_BYTES:
            return data
        if kind == KIND_STR:
            return PyUnicode_DecodeUTF8(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), NULL)
        if kind == KIND_BYTEARRAY:
            return PyByteArray_FromStringAndSize(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        return self._codec.decode(flags, data)

    cdef int _expiry(self, object ttl, uint64_t *out) except -1:
        """Absolute expiry in ns (0 = never); returns 1 if ttl <= 0."""
        cdef double t
        if ttl is None:
            out[0] = metis_now_ns() + <uint64_t>self._default_ttl_ns \
                if self._default_ttl_ns > 0 else 0
            return 0
        # bool is an int, but ttl=True meaning one second is a bug in the caller.
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
            try:
                if isinstance(ttl, bool):
                    raise TypeError
                t = ttl.__float__()  # Decimal, numpy floats: numbers that are not int/float
            except (TypeError, AttributeError, ValueError):
                raise _errors.InvalidArgument(
                    f"ttl must be a number of seconds or None, not {ttl!r}",
                    context={"argument": "ttl", "value": repr(ttl)}) from None
        elif isinstance(ttl, int):
            t = 9.0e9 if ttl >= 9_000_000_000 else (0.0 if ttl <= 0 else ttl)
        else:
            t = ttl
        # NaN converts to an integer in no defined way (C leaves it undefined:
        # "never" on x86-64, "now" on ARM64); refuse it.
        if t != t:
            raise _errors.InvalidArgument("ttl must be a number of seconds, not NaN",
                                          context={"argument": "ttl", "value": "nan"})
        if t <= 0:
            out[0] = 0
            return 1
        # A TTL past year 2262 (int64 nanoseconds) is "never" in practice:
        # clamp instead of overflowing into the past.
        if t >= 9.0e9:
            out[0] = <uint64_t>0x7FFFFFFFFFFFFFFF
        else:
            out[0] = metis_now_ns() + <uint64_t>(t * 1e9)
        return 0

    # ---- the read path -----------------------------------------------------

    cdef object _read(self, KeyView *kv, object default, bint consume):
        """Lock-free lookup (optimistic.pxd); never waits for another process.

        Every shared field is loaded once by opt_find; the copy below uses
        only the validated locals it returns. A retry means a running writer
        reclaimed a block of this shard meanwhile; after TRYLOCK_AFTER of
        them the reader also tries the lock, without waiting for it.
        """
        cdef ShardRef *s = self._shard_for(kv.h)
        cdef SlotCounters *c = &self._counters[s.index]
        cdef uint64_t begun
        cdef int64_t ival = 0
        cdef OptItem found
        cdef Item *it
        cdef object data
        cdef int r
        cdef uint64_t attempt = 0
        if consume:
            return self._read_locked(s, kv, default, True, True)
        found.off = 0
        found.flags = 0
        found.expire_ns = 0
        while True:
            begun = opt_begin(s)
            r = opt_find(s, begun, kv.h, kv.p, <uint32_t>kv.n, kv.flag, &found)
            data = None
            if r == OPT_FOUND:
                it = item_at(s, found.off)
                if (found.flags & (FLAG_KIND_MASK | FLAG_CODEC_MASK)) == KIND_INT and \
                        found.value_len == 8:
                    memcpy(&ival, opt_value_ptr(it, <uint32_t>kv.n), 8)
                else:
                    data = PyBytes_FromStringAndSize(opt_value_ptr(it, <uint32_t>kv.n),
                                                     found.value_len)
            if opt_still(s, begun):
                break
            # A block was reclaimed while we looked: start again.
            self._bump(&c.read_retries)
            attempt += 1
            if attempt >= TRYLOCK_AFTER:
                data = self._read_locked(s, kv, _MISSING, False, False)
                if data is not _TRY_AGAIN:
                    return default if data is _MISSING else data
                if attempt >= YIELD_AFTER:
                    sched_yield()
            metis_cpu_relax()
        if r == OPT_BROKEN:
            # Nothing was reclaimed, yet the chain made no sense: something
            # other than the engine wrote this shard.
            self._corrupt(s)
        if r == OPT_MISS or (found.expire_ns and found.expire_ns <= metis_now_ns()):
            self._bump(&c.misses)
            return default
        self._bump(&c.hits)
        if self._record_hits:
            policy_record_hit(s, found.off, self._stripe)
        if data is None:
            return PyLong_FromLongLong(ival)
        return self._decode(found.flags, data)

    cdef object _read_locked(self, ShardRef *s, KeyView *kv, object default, bint consume,
                             bint wait):
        """Lookup under the shard lock (and, with consume, remove: pop).

        Without `wait`, only tries the lock: _TRY_AGAIN if it is held.
        """
        cdef SlotCounters *c = &self._counters[s.index]
        cdef uint32_t off, vlen = 0, flags = 0
        cdef uint32_t *link
        cdef char *buf = NULL
        cdef bint found = False, corrupt = False, nomem = False
        cdef Item *it
        cdef uint64_t now = metis_now_ns()
        if wait:
            self._lock(s)
        elif not self._try_lock(s):
            return _TRY_AGAIN
        if consume:
            do_write_begin(s)
        off = do_index_find(s, kv.h, kv.p, <uint32_t>kv.n, kv.flag, &link)
        if off == INDEX_TORN:
            corrupt = True
            off = 0
        elif off:
            it = item_at(s, off)
            vlen = it.value_len
            # The same bounds as the lock-free path: a length written by
            # something other than the engine must not size the copy.
            if (vlen > self._max_value and vlen != 8) or \
                    <uint64_t>off + ITEM_HEADER_SIZE + kv.n + vlen > s.arena_size:
                corrupt = True
                off = 0
        if off:
            if item_expired(it, now):
                if consume:
                    do_item_remove(s, link, off)
                    s.sh.expirations += 1
            else:
                flags = it.flags
                buf = <char *>malloc(<size_t>vlen + 1)
                if buf == NULL:
                    nomem = True
                else:
                    memcpy(buf, item_value(it, <uint32_t>kv.n), vlen)
                    found = True
                    if consume:
                        do_item_remove(s, link, off)
                        s.sh.deletes += 1
                    else:
                        policy_record_hit(s, off, self._stripe)
        if consume:
            do_write_end(s)
        shard_unlock(s)
        if corrupt:
            self._corrupt(s)
        if nomem:
            raise MemoryError()
        if not found:
            self._bump(&c.misses)
            return default
        self._bump(&c.hits)
        try:
            if (flags & (FLAG_KIND_MASK | FLAG_CODEC_MASK)) == KIND_INT and vlen == 8:
                return PyLong_FromLongLong((<int64_t *>buf)[0])
            return self._decode(flags, PyBytes_FromStringAndSize(buf, vlen))
        finally:
            free(buf)

    # ---- the write path ----------------------------------------------------

    cdef int _lock(self, ShardRef *s) except -1:
        """Take the shard's lock, waiting as long as it takes; Ctrl-C (any
        signal handler that raises) interrupts the wait, and so does another
        thread closing the cache."""
        cdef int rc
        self._lock_waiters += 1
        try:
            while True:
                rc = shard_lock(s, LOCK_SLICE_MS)
                if (rc != ETIMEDOUT and rc != EBUSY) or self._closed:
                    break
                PyErr_CheckSignals()
                if rc == EBUSY:
                    sched_yield()  # another process is re-initialising the mutex
        finally:
            self._lock_waiters -= 1
        if self._closed:
            return self._closed_while_waiting(s, rc == 0)
        if rc != 0:
            raise _errors.LockUnrecoverable(
                f"shard {s.index} lock cannot be taken: {os.strerror(rc)}",
                context={"shard": s.index, "errno": rc})
        return 0

    cdef int _closed_while_waiting(self, ShardRef *s, bint locked) except -1:
        # Another thread closed the cache while this one waited: its stats
        # slot may belong to another process by now, so nothing more is done.
        if locked:
            shard_unlock(s)
        if self._lock_waiters == 0:
            self._unmap()
        raise _errors.CacheClosed("operation on a closed cache", context={})

    cdef bint _try_lock(self, ShardRef *s) except -1:
        """Take the shard's lock if nobody holds it; never waits."""
        cdef int rc = shard_lock(s, 0)
        if rc == EBUSY or rc == ETIMEDOUT:
            return False
        if rc != 0:
            raise _errors.LockUnrecoverable(
                f"shard {s.index} lock cannot be taken: {os.strerror(rc)}",
                context={"shard": s.index, "errno": rc})
        return True

    cdef int _corrupt(self, ShardRef *s) except -1:
        """Raise for a shard whose index points outside its arena or cycles.

        The engine never writes such a chain; finding one means something
        else wrote the segment. `metis check` reports the damage; recreating
        the cache (or restoring a snapshot) is the way out.
        """
        raise _errors.SegmentCorrupt(
            f"shard {s.index} of cache {getattr(self, "name", "?")!r}: its hash index points outside "
            "the shard or loops; the segment was written by something other than "
            "Metis. Run `metis check`, then recreate the cache or restore a snapshot",
            context={"shard": s.index})

    cdef int _abandon_write(self, ShardRef *s) except -1:
        """Close the write section, unlock and raise _corrupt (nothing was changed)."""
        do_write_end(s)
        shard_unlock(s)
        return self._corrupt(s)

    cdef int _check_size(self, KeyView *kv, ValueView *vv) except -1:
        cdef uint64_t need = item_block_need(kv.n, vv.n)
        if <uint64_t>vv.n > self._max_value or need > self._max_block:
            limit = min(self._max_value, self._max_block - ITEM_HEADER_SIZE - kv.n)
            raise _errors.ValueTooLarge(
                f"value is {vv.n} bytes stored; the limit is {limit} bytes "
                f"(max_value_size {self._max_value}, a shard holds items of at most "
                f"{self._max_block} bytes including a {ITEM_HEADER_SIZE}-byte header "
                f"and the {kv.n}-byte key)",
                context={"size": vv.n, "limit": limit})
        return 0

    cdef int _do_store(self, ShardRef *s, KeyView *kv, ValueView *vv, uint64_t expire,
                       int mode, uint64_t now) noexcept:
        """Store under the lock, inside a write section. Returns R_*.

        A new key: admit (the policy consults ghosts or its sketch), evict
        to the entry bound and to free memory, write the item, publish it.
        A present key: write the new item, swap it in with one index store,
        and the policy counts the set as a hit.
        """
        cdef uint32_t *link
        cdef uint32_t old = do_index_find(s, kv.h, kv.p, <uint32_t>kv.n, kv.flag, &link)
        cdef uint32_t need = item_block_need(kv.n, vv.n), off, victim
        cdef Item *it
        if old == INDEX_TORN:
            return R_CORRUPT
        if old and item_expired(item_at(s, old), now):
            do_item_remove(s, link, old)
            s.sh.expirations += 1
            old = 0
        if mode == MODE_ADD and old:
            return R_NOT_STORED
        if mode == MODE_REPLACE and not old:
            return R_NOT_STORED
        if not old:
            do_policy_admit(s, kv.h)
            if s.sh.max_items:
                while s.sh.items >= s.sh.max_items:
                    victim = do_policy_victim(s)
                    if victim == 0:
                        break
                    do_item_evict(s, victim, now)
        # Evict only when no free block fits (allocator.pxd's fit rule).
        off = do_alloc(s, need, True)
        while off == 0:
            victim = do_policy_victim(s)
            if victim == 0:
                return R_NO_ROOM
            do_item_evict(s, victim, now)
            off = do_alloc(s, need, False)
        it = item_at(s, off)
        s.sh.write_counter += 1
        item_fill(it, s.sh.write_counter, kv.h, expire, kv.p, <uint32_t>kv.n, vv.p,
                  <uint32_t>vv.n, vv.flags | kv.flag)
        METIS_CRASH_POINT(5)
        # Evictions above may have taken the old item: look again.
        old = do_index_find(s, kv.h, kv.p, <uint32_t>kv.n, kv.flag, &link)
        if old == INDEX_TORN:
            do_free(s, off)
            return R_CORRUPT
        if old:
            do_index_replace(s, link, item_at(s, old), off, it)
            METIS_CRASH_POINT(6)
            do_policy_replace(s, old, off)
            do_free(s, old)
        else:
            if not (s.sh.pending & PENDING_ADMITTED):
                do_policy_admit(s, kv.h)
            do_index_insert(s, off, it)
            do_policy_insert(s, off)
        s.sh.sets += 1
        return R_DONE

    cdef int _store(self, KeyView *kv, ValueView *vv, uint64_t expire, int mode) except -1:
        cdef ShardRef *s = self._shard_for(kv.h)
        cdef int r
        self._check_size(kv, vv)
        self._lock(s)
        do_write_begin(s)
        do_policy_drain(s)
        r = self._do_store(s, kv, vv, expire, mode, metis_now_ns())
        do_write_end(s)
        shard_unlock(s)
        if r == R_CORRUPT:
            self._corrupt(s)
        if r == R_NO_ROOM:
            raise _errors.ValueTooLarge(
                f"no room for a {vv.n}-byte value in shard {s.index}",
                context={"size": vv.n, "limit": self._max_block})
        return r

    cdef bint _remove(self, KeyView *kv) except -1:
        cdef ShardRef *s = self._shard_for(kv.h)
        cdef uint32_t *link
        cdef uint32_t off
        cdef bint removed = False
        self._lock(s)
        do_write_begin(s)
        off = do_index_find(s, kv.h, kv.p, <uint32_t>kv.n, kv.flag, &link)
        if off == INDEX_TORN:
            self._abandon_write(s)
        if off:
            if item_expired(item_at(s, off), metis_now_ns()):
                s.sh.expirations += 1
            else:
                s.sh.deletes += 1
                removed = True
            do_item_remove(s, link, off)
        do_write_end(s)
        shard_unlock(s)
        return removed

    # ---- public API --------------------------------------------------------

    def get(self, key, default=None):
        """The value stored under `key`, or `default` if absent or expired."""
        cdef KeyView kv
        self._check_open()
        self._key(key, &kv)
        return self._read(&kv, default, False)

    def __getitem__(self, key):
        cdef KeyView kv
        self._check_open()
        self._key(key, &kv)
        value = self._read(&kv, _MISSING, False)
        if value is _MISSING:
            raise _errors.KeyNotFound(key)
        return value

    def __contains__(self, key):
        cdef KeyView kv
        self._check_open()
        self._key(key, &kv)
        return self._read(&kv, _MISSING, False) is not _MISSING

    def set(self, key, value, ttl=None):
        """Store `value` under `key`; `ttl` in seconds (None: the default TTL)."""
        cdef KeyView kv
        cdef ValueView vv
        cdef uint64_t expire
        self._check_open()
        self._key(key, &kv)
        kept = self._value(value, &vv)
        if self._expiry(ttl, &expire):
            self._remove(&kv)
            return None
        self._store(&kv, &vv, expire, MODE_SET)
        return None

    def __setitem__(self, key, value):
        self.set(key, value)

    def add(self, key, value, ttl=None):
        """Store only if `key` is absent (atomic across processes). True if stored."""
        cdef KeyView kv
        cdef ValueView vv
        cdef uint64_t expire
        self._check_open()
        self._key(key, &kv)
        kept = self._value(value, &vv)
        if self._expiry(ttl, &expire):
            return False  # an item expired on arrival is never added
        return self._store(&kv, &vv, expire, MODE_ADD) == R_DONE

    def replace(self, key, value, ttl=None):
        """Store only if `key` is present. True if stored."""
        cdef KeyView kv
        cdef ValueView vv
        cdef uint64_t expire
        self._check_open()
        self._key(key, &kv)
        kept = self._value(value, &vv)
        if self._expiry(ttl, &expire):
            return self._remove(&kv)
        return self._store(&kv, &vv, expire, MODE_REPLACE) == R_DONE

    def delete(self, key):
        """Remove `key`. True if a live item was removed."""
        cdef KeyView kv
        self._check_open()
        self._key(key, &kv)
        return self._remove(&kv)

    def __delitem__(self, key):
        if not self.delete(key):
            raise _errors.KeyNotFound(key)

    def pop(self, key, default=_MISSING):
        """Remove `key` and return its value (atomic). KeyNotFound if absent
        and no default is given."""
        cdef KeyView kv
        self._check_open()
        self._key(key, &kv)
        value = self._read(&kv, default, True)
        if value is _MISSING:
            raise _errors.KeyNotFound(key)
        return value

    def touch(self, key, ttl=None):
        """Give a present item a new expiry. True if the item was there."""
        cdef KeyView kv
        cdef uint64_t expire
        cdef ShardRef *s
        cdef uint32_t *link
        cdef uint32_t off
        cdef bint found = False
        self._check_open()
        self._key(key, &kv)
        if self._expiry(ttl, &expire):
            return self._remove(&kv)
        s = self._shard_for(kv.h)
        self._lock(s)
        do_write_begin(s)
        off = do_index_find(s, kv.h, kv.p, <uint32_t>kv.n, kv.flag, &link)
        if off == INDEX_TORN:
            self._abandon_write(s)
        if off and not item_expired(item_at(s, off), metis_now_ns()):
            # One atomic store: a reader sees the old expiry or the new one.
            metis_store_relaxed_u64(&item_at(s, off).expire_ns, expire)
            found = True
        do_write_end(s)
        shard_unlock(s)
        return found

    cdef int64_t _counter_arg(self, object value, str name) except? -1:
        """An int64 delta or default; a MetisError with its code otherwise."""
        cdef int overflow = 0
        cdef int64_t v
        if type(value) is bool or not isinstance(value, int):
            raise _errors.InvalidArgument(
                f"{name} must be an int, not {type(value).__name__} ({value!r}): counters "
                f"are signed 64-bit integers and nothing is rounded",
                context={"argument": name, "value": repr(value)})
        v = PyLong_AsLongLongAndOverflow(value, &overflow)
        if overflow:
            raise _errors.CounterOverflow(
                f"{name} {value} is outside the signed 64-bit range of a counter",
                context={"argument": name, "value": repr(value)})
        return v

    def incr(self, key, delta=1, *, default=None, ttl=None):
        """Add `delta` to a 64-bit counter atomically and return the result.

        A missing key raises KeyNotFound unless `default` is given, in which
        case the counter starts at `default` (+ delta) with `ttl`. The new
        value is written as a new item that replaces the old one (readers
        never see a counter change in place), keeping the counter's expiry.
        """
        cdef KeyView kv
        cdef ValueView vv
        cdef ShardRef *s
        cdef uint32_t *link
        cdef uint32_t off
        cdef Item *it
        cdef int64_t d, cur = 0, res = 0
        cdef uint64_t expire = 0, now
        cdef int r = R_DONE
        cdef bint has_default = default is not None
        cdef int64_t start = 0
        self._check_open()
        self._key(key, &kv)
        d = self._counter_arg(delta, "delta")
        if has_default:
            start = self._counter_arg(default, "default")
        vv.n = 8
        vv.flags = KIND_INT
        vv.p = <const char *>&vv.ival
        self._check_size(&kv, &vv)
        expiring = self._expiry(ttl, &expire)
        s = self._shard_for(kv.h)
        self._lock(s)
        do_write_begin(s)
        do_policy_drain(s)
        now = metis_now_ns()
        off = do_index_find(s, kv.h, kv.p, <uint32_t>kv.n, kv.flag, &link)
        if off == INDEX_TORN:
            self._abandon_write(s)
        if off and item_expired(item_at(s, off), now):
            do_item_remove(s, link, off)
            s.sh.expirations += 1
            off = 0
        if off:
            it = item_at(s, off)
            if (it.flags & (FLAG_KIND_MASK | FLAG_CODEC_MASK)) != KIND_INT or it.value_len != 8:
                r = R_NOT_COUNTER
            else:
                memcpy(&cur, item_value(it, <uint32_t>kv.n), 8)
                if __builtin_add_overflow(cur, d, &res):
                    r = R_OVERFLOW
                else:
                    vv.ival = res
                    r = self._do_store(s, &kv, &vv, it.expire_ns, MODE_SET, now)
        elif not has_default:
            r = R_MISSING
        elif __builtin_add_overflow(start, d, &res):
            r = R_OVERFLOW
        elif not expiring:
            vv.ival = res
            r = self._do_store(s, &kv, &vv, expire, MODE_SET, now)
        do_write_end(s)
        shard_unlock(s)
        if r == R_CORRUPT:  # from _do_store
            self._corrupt(s)
        if r == R_NO_ROOM:
            raise _errors.ValueTooLarge(
                f"no room for counter {key!r} in shard {s.index}",
                context={"size": 8, "limit": self._max_block})
        if r == R_MISSING:
            raise _errors.KeyNotFound(key)
        if r == R_NOT_COUNTER:
            raise _errors.NotACounter(
                f"value under {key!r} is not an integer counter",
                context={"key": repr(key)})
        if r == R_OVERFLOW:
            raise _errors.CounterOverflow(
                f"counter {key!r} would leave the signed 64-bit range",
                context={"key": repr(key), "delta": delta})
        return res

    def decr(self, key, delta=1, *, default=None, ttl=None):
        """incr(key, -delta, ...)."""
        cdef int64_t d = self._counter_arg(delta, "delta")
        if d == -0x7FFFFFFFFFFFFFFF - 1:
            raise _errors.CounterOverflow(
                f"delta {delta} cannot be negated within the signed 64-bit range",
                context={"argument": "delta", "value": repr(delta)})
        return self.incr(key, -d, default=default, ttl=ttl)

    def get_many(self, keys):
        """A dict of the keys found (absent and expired keys are left out)."""
        cdef KeyView kv
        cdef dict out = {}
        self._check_open()
        for key in keys:
            self._key(key, &kv)
            value = self._read(&kv, _MISSING, False)
            if value is not _MISSING:
                out[key] = value
        return out

    def set_many(self, mapping, ttl=None):
        """set() each key/value pair of `mapping` (a dict or pairs).

        Every key is checked and every value encoded before anything is
        stored, so a bad key or value raises and stores nothing.
        """
        cdef KeyView *kvs
        cdef ValueView *vvs
        cdef Py_ssize_t n, i
        cdef uint64_t expire
        self._check_open()
        pairs = list(mapping.items() if hasattr(mapping, "items") else mapping)
        n = len(pairs)
        if n == 0:
            return None
        kvs = <KeyView *>malloc(n * sizeof(KeyView))
        vvs = <ValueView *>malloc(n * sizeof(ValueView))
        kept = []
        try:
            if kvs == NULL or vvs == NULL:
                raise MemoryError()
            for i in range(n):
                key, value = pairs[i]
                self._key(key, &kvs[i])
                kept.append(key)
                kept.append(self._value(value, &vvs[i]))
                self._check_size(&kvs[i], &vvs[i])
            if self._expiry(ttl, &expire):
                for i in range(n):
                    self._remove(&kvs[i])
                return None
            for i in range(n):
                self._store(&kvs[i], &vvs[i], expire, MODE_SET)
        finally:
            free(kvs)
            free(vvs)
        return None

    def delete_many(self, keys):
        """Delete each key; returns how many were removed."""
        cdef KeyView kv
        cdef int n = 0
        self._check_open()
        for key in keys:
            self._key(key, &kv)
            n += self._remove(&kv)
        return n

    def __len__(self):
        cdef uint64_t total = 0
        cdef uint32_t i
        self._check_open()
        for i in range(self._n_shards):
            total += metis_load_relaxed_u64(&self._shards[i].sh.items)
        return total

    def keys(self, prefix=None):
        """Iterate over the keys (str or bytes as stored), optionally by prefix.

        Tolerates concurrent writes: each bucket is copied under a validated
        sequence word, so a key present for the whole iteration is yielded
        exactly once; keys added or removed meanwhile may or may not appear.
        """
        cdef uint32_t i
        cdef uint64_t b, nb
        self._check_open()
        if prefix is not None and not isinstance(prefix, (str, bytes)):
            raise _errors.InvalidKeyType(
                f"prefix must be str or bytes, not {type(prefix).__name__}",
                context={"type": type(prefix).__name__})
        nb = self._hdr.index_buckets
        for i in range(self._n_shards):
            b = 0
            while b < nb:
                self._check_open()  # the caller may close between batches
                batch = self._bucket_keys(i, b, min(b + 256, nb))
                b = min(b + 256, nb)
                for key in batch:
                    if prefix is None or (type(key) is type(prefix) and key.startswith(prefix)):
                        yield key

    cdef list _bucket_keys(self, uint32_t shard, uint64_t first, uint64_t last):
        """Live keys of buckets [first, last) of a shard, copied consistently
        (the lock-free protocol of optimistic.pxd, as for get)."""
        cdef ShardRef *s = &self._shards[shard]
        cdef uint64_t begun, attempt = 0
        cdef list out
        cdef bint broken = False
        while True:
            begun = opt_begin(s)
            out = self._bucket_keys_optimistic(s, begun, first, last, &broken)
            if opt_still(s, begun):
                if broken:
                    self._corrupt(s)
                return out
            attempt += 1
            if attempt >= TRYLOCK_AFTER:
                out = self._bucket_keys_locked(s, first, last, False)
                if out is not None:
                    return out
                if attempt >= YIELD_AFTER:
                    sched_yield()
            metis_cpu_relax()

    cdef list _bucket_keys_optimistic(self, ShardRef *s, uint64_t begun, uint64_t first,
                                      uint64_t last, bint *broken):
        cdef uint64_t b, now = metis_now_ns(), steps
        cdef uint32_t off, klen, kflags
        cdef uint64_t exp
        cdef Item *it
        cdef list out = []
        broken[0] = False
        for b in range(first, last):
            off = metis_load_acquire_u32(&s.buckets[b])
            steps = 0
            while off:
                if not item_offset_ok(s, off) or steps > s.chain_limit:
                    broken[0] = True
                    return out
                it = item_at(s, off)
                klen = metis_load_relaxed_u32(&it.key_len)
                kflags = metis_load_relaxed_u32(&it.flags)
                exp = metis_load_relaxed_u64(&it.expire_ns)
                if klen > self._max_key or \
                        <uint64_t>off + ITEM_HEADER_SIZE + klen > s.arena_size:
                    broken[0] = True
                    return out
                if exp == 0 or exp > now:
                    out.append(_key_object(it, klen, kflags))
                off = metis_load_acquire_u32(&it.hnext)
                steps += 1
                if steps % 64 == 0 and not opt_still(s, begun):
                    return out  # the caller sees the sequence moved and retries
        return out

    cdef object _bucket_keys_locked(self, ShardRef *s, uint64_t first, uint64_t last,
                                    bint wait):
        """The locked fallback of _bucket_keys (None if `wait` is false and
        the lock is held). Python objects are built under the lock, so the GC
        (whose finalizers might re-enter this shard; the mutex is not
        recursive) waits until the lock is released."""
        cdef list out = []
        cdef uint64_t b, now = metis_now_ns(), steps
        cdef uint32_t off
        cdef Item *it
        cdef bint corrupt = False
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            if wait:
                self._lock(s)
            elif not self._try_lock(s):
                return None
            try:
                for b in range(first, last):
                    off = s.buckets[b]
                    steps = 0
                    while off and not corrupt:
                        it = item_at(s, off)
                        if not item_offset_ok(s, off) or steps > s.chain_limit or \
                                it.key_len > self._max_key or \
                                <uint64_t>off + ITEM_HEADER_SIZE + it.key_len > s.arena_size:
                            corrupt = True
                            break
                        if not item_expired(it, now):
                            out.append(_key_object(it, it.key_len, it.flags))
                        off = it.hnext
                        steps += 1
            finally:
                shard_unlock(s)
        finally:
            if gc_was_enabled:
                gc.enable()
        if corrupt:
            self._corrupt(s)
        return out

    def clear(self):
        """Remove every item from every shard."""
        cdef uint32_t i
        cdef ShardRef *s
        self._check_open()
        for i in range(self._n_shards):
            s = &self._shards[i]
            self._lock(s)
            do_write_begin(s)
            s.sh.deletes += s.sh.items
            do_shard_reset(s)
            do_write_end(s)
            shard_unlock(s)

    def drain(self):
        """Apply the hits readers have recorded to each shard's policy now.

        Readers only append to a small lossy ring (one 15-entry stripe per
        process and shard); writers apply it on every write, and metisd does
        it periodically. Call this between bursts of reads when every hit
        must count (the trace simulator does). Queue moves are invisible to
        readers, so this takes each shard's lock but never makes a reader
        retry. Returns how many shards had something to apply.
        """
        cdef uint32_t i, n = 0
        cdef ShardRef *s
        self._check_open()
        for i in range(self._n_shards):
            s = &self._shards[i]
            if not policy_uses_ring(s) or not policy_ring_pending(s):
                continue
            if not self._try_lock(s):
                continue
            do_write_begin(s)  # queue moves: a death halfway needs a repair
            do_policy_drain(s)
            do_write_end(s)
            shard_unlock(s)
            n += 1
        return n

    def sweep(self, max_items=1024):
        """Remove expired items, looking at no more than `max_items` items.

        Each shard resumes where its previous sweep stopped, and each call
        starts at the shard after the one the last call ended on, so repeated
        small sweeps cover the whole cache. Returns how many items went.
        """
        cdef uint32_t i, n
        cdef uint64_t removed = 0, budget = max_items, examined = 0
        cdef ShardRef *s
        self._check_open()
        for n in range(self._n_shards):
            if budget == 0:
                break
            i = self._sweep_shard
            self._sweep_shard = (i + 1) % self._n_shards
            s = &self._shards[i]
            # A shard whose lock is held is skipped, not waited for: its
            # holder may be stopped, and the next sweep comes back to it.
            if not self._try_lock(s):
                continue
            do_write_begin(s)
            do_policy_drain(s)
            removed += do_sweep(s, budget, metis_now_ns(), &examined)
            do_write_end(s)
            shard_unlock(s)
            # A slice finishes its first bucket even past the budget.
            budget = budget - examined if examined < budget else 0
        return removed

    def check(self):
        """Full consistency check of every shard; a list of problems (empty = ok).

        Takes each shard's lock in turn (a dead writer's shard is repaired
        first, as any writer would).
        """
        cdef uint32_t i
        cdef ShardRef *s
        cdef list problems = []
        self._check_open()
        if bytes(self._hdr.magic[:8]) != MAGIC or self._hdr.layout_version != LAYOUT_VERSION:
            return ["segment header lost its magic or layout version"]
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for i in range(self._n_shards):
                s = &self._shards[i]
                self._lock(s)
                try:
                    problems.extend(do_shard_check(s, self._shard_shift, self._n_shards))
                finally:
                    shard_unlock(s)
        finally:
            if gc_was_enabled:
                gc.enable()
        return problems

    def _repair_shard(self, uint32_t shard):
        """Rebuild one shard as after a dead writer (tests; operators' last resort)."""
        cdef ShardRef *s
        self._check_open()
        if shard >= self._n_shards:
            raise IndexError(f"shard {shard} of {self._n_shards}")
        s = &self._shards[shard]
        self._lock(s)
        do_shard_repair(s)
        s.sh.repairs += 1
        shard_unlock(s)

    # ---- test hooks: states the tests must produce for real ----------------

    def _locate(self, key):
        """(hash, shard, bucket) of a key in this segment."""
        cdef KeyView kv
        cdef ShardRef *s
        self._check_open()
        self._key(key, &kv)
        s = self._shard_for(kv.h)
        return kv.h, s.index, kv.h & s.bucket_mask

    def _test_hold_lock(self, uint32_t shard, bint write_section=False):
        """Take a shard's lock and keep it (optionally inside an open write
        section): the caller is a test process about to be killed or stopped."""
        cdef ShardRef *s
        self._check_open()
        if shard >= self._n_shards:
            raise IndexError(f"shard {shard} of {self._n_shards}")
        s = &self._shards[shard]
        self._lock(s)
        if write_section:
            do_write_begin(s)

    def _test_release_lock(self, uint32_t shard):
        """Undo _test_hold_lock."""
        cdef ShardRef *s = &self._shards[shard]
        do_write_end(s)
        shard_unlock(s)

    def _test_abandon_lock(self, uint32_t shard):
        """Leave a shard's mutex ENOTRECOVERABLE, as a process that took it
        from a dead owner (EOWNERDEAD) and unlocked it without repairing
        would. True if the mutex was in that dead-owner state."""
        cdef ShardRef *s
        cdef int rc
        self._check_open()
        s = &self._shards[shard]
        rc = metis_mutex_trylock(s.sh.lock)
        if rc == 0:
            metis_mutex_unlock(s.sh.lock)
            return False
        if rc != EOWNERDEAD:
            return False
        metis_mutex_unlock(s.sh.lock)
        return True

    def _raw_stats(self):
        """Per-shard counters as tuples (see metis_shm.stats for the names)."""
        cdef uint32_t i, j
        cdef ShardRef *s
        cdef SlotCounters *c
        cdef uint64_t hits, misses, retries, largest
        cdef list out = []
        self._check_open()
        for i in range(self._n_shards):
            s = &self._shards[i]
            hits = misses = retries = 0
            for j in range(self._hdr.n_slots):
                if j and metis_load_relaxed_u32(&self._slot_at(j).pid) == 0:
                    continue
                c = <SlotCounters *>((<char *>self._slot_at(j)) + SLOT_HEADER_SIZE) + i
                hits += metis_load_relaxed_u64(&c.hits)
                misses += metis_load_relaxed_u64(&c.misses)
                retries += metis_load_relaxed_u64(&c.read_retries)
            # largest_free walks a free list, which needs the lock. Stats
            # must not wait for a stopped lock holder: when the lock is held,
            # the last figure this process saw stands in.
            if self._try_lock(s):
                largest = alloc_largest_free(s)
                shard_unlock(s)
                self._largest_seen[i] = largest
            else:
                largest = self._largest_seen[i]
            out.append((hits, misses, s.sh.sets, s.sh.deletes, s.sh.evictions,
                        s.sh.expirations, s.sh.items, arena_usable(s) - s.sh.free_bytes,
                        arena_usable(s), s.sh.free_bytes, largest, s.sh.lock_waits, retries,
                        s.sh.lock_recoveries, s.sh.repairs))
        return out

    def _export_shard(self, uint32_t shard):
        """Every live item of one shard as (key bytes, flags, expire_ns, value
        bytes), copied under the shard's lock: a consistent cut of that shard
        (snapshots). Expired items are left out."""
        cdef ShardRef *s
        cdef list out = []
        cdef uint64_t b, now, steps = 0, bound
        cdef uint32_t off
        cdef Item *it
        self._check_open()
        if shard >= self._n_shards:
            raise IndexError(f"shard {shard} of {self._n_shards}")
        s = &self._shards[shard]
        bound = s.chain_limit  # items in the whole shard, over all its chains
        gc_was_enabled = gc.isenabled()
        gc.disable()  # no finalizer may re-enter this shard while we hold it
        try:
            self._lock(s)
            try:
                now = metis_now_ns()
                for b in range(<uint64_t>s.bucket_mask + 1):
                    off = s.buckets[b]
                    while off:
                        # The same checks as the locked lookups: the daemon
                        # snapshots segments that other users' processes write.
                        steps += 1
                        if not item_offset_ok(s, off) or steps > bound:
                            self._corrupt(s)
                        it = item_at(s, off)
                        if <uint64_t>off + ITEM_HEADER_SIZE + it.key_len + it.value_len > \
                                s.arena_size:
                            self._corrupt(s)
                        if not item_expired(it, now):
                            out.append((
                                PyBytes_FromStringAndSize(item_key(it), it.key_len),
                                it.flags, it.expire_ns,
                                PyBytes_FromStringAndSize(item_value(it, it.key_len),
                                                          it.value_len)))
                        off = it.hnext
            finally:
                shard_unlock(s)
        finally:
            if gc_was_enabled:
                gc.enable()
        return out

    def _import_item(self, bytes key, uint32_t flags, uint64_t expire_ns, bytes value):
        """Store an item exactly as exported (flags and bytes as they were).
        False if it has expired meanwhile; ValueTooLarge/KeyTooLarge if this
        cache's limits are smaller than the exporter's."""
        cdef KeyView kv
        cdef ValueView vv
        self._check_open()
        if expire_ns and expire_ns <= metis_now_ns():
            return False
        kv.p = PyBytes_AS_STRING(key)
        kv.n = PyBytes_GET_SIZE(key)
        kv.flag = flags & FLAG_KEY_STR
        if kv.n > self._max_key:
            raise _errors.KeyTooLarge(
                f"key is {kv.n} bytes; max_key_size is {self._max_key}",
                context={"size": kv.n, "limit": self._max_key})
        kv.h = metis_hash(kv.p, kv.n, kv.flag, self._hash_seed, self._hash_seed2)
        vv.p = PyBytes_AS_STRING(value)
        vv.n = PyBytes_GET_SIZE(value)
        vv.flags = flags & ~(<uint32_t>FLAG_KEY_STR)
        self._store(&kv, &vv, expire_ns, MODE_SET)
        return True

    def _policy_state(self, uint32_t shard):
        """One shard's policy state (queue lengths, window/target, ghosts)."""
        cdef ShardHeader *sh
        self._check_open()
        if shard >= self._n_shards:
            raise IndexError(f"shard {shard} of {self._n_shards}")
        sh = self._shards[shard].sh
        return {
            "queues": [sh.lists[q].count for q in range(4)],
            "target": sh.target,
            "protected_max": sh.protected_max,
            "ghosts": [sh.ghost_count[0], sh.ghost_count[1]],
            "max_items": sh.max_items,
            "window_acc": sh.window_acc,
            "drains": sh.drains,
        }

    def _header(self):
        """The live header fields (a dict)."""
        self._check_open()
        return read_header(PyBytes_FromStringAndSize(<char *>self._hdr, sizeof(SegmentHeader)))

    def _set_daemon(self, uint32_t pid, uint64_t heartbeat_ns):
        self._check_open()
        metis_store_relaxed_u32(&self._hdr.daemon_pid, pid)
        metis_store_release_u64(&self._hdr.daemon_heartbeat_ns, heartbeat_ns)

