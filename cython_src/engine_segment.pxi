# Included by engine.pyx (one translation unit, so the read path inlines
# across the subsystems; docs/architecture.md section 5a). The base of Engine:
# one process's mapping of a segment, its stats slot, closing, turning keys,
# values and TTLs into what the engine stores, and taking shard locks.


cdef class _Segment:
    """The mapping, stats slot and lock handling every operation needs."""

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
    cdef Coherence *_coh
    cdef bint _read_through
    # Pins (pins.pxd, engine_view.pxi): this process's side. NULL table:
    # no slot of our own, so views are private copies.
    cdef uint64_t *_pin_table
    cdef dict _pins                 # entry -> [views, bytes]
    cdef uint64_t _pinned_bytes
    cdef uint64_t _pin_limit
    cdef uint64_t _pin_epoch        # bumped at fork: views of the parent are not ours
    cdef bint _close_pending


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

    def _format(self, dict plan, dict settings, tuple hash_key=None):
        """Write a new segment's header and empty shards; mark it ready last.

        `hash_key`: the SipHash key as two u64s instead of a random one, for
        reproducible simulations only (a known key lets anyone aim keys at
        one bucket)."""
        cdef SegmentHeader *h = self._hdr
        cdef uint32_t i
        cdef ShardHeader *sh
        if sizeof(ShardHeader) != SHARD_HEADER_SIZE or sizeof(Item) != ITEM_HEADER_SIZE or \
                COHERENCE_OFFSET + sizeof(Coherence) > HEADER_SIZE:
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
        if hash_key is not None:
            fields.update(hash_seed=hash_key[0], hash_seed2=hash_key[1])
        fresh = fields
        memcpy(h, &fresh, sizeof(SegmentHeader))
        memset(self._base + COHERENCE_OFFSET, 0, sizeof(Coherence))
        self._setup_views()
        for i in range(self._n_shards):
            sh = self._shards[i].sh
            memset(sh, 0, SHARD_HEADER_SIZE)
            if metis_mutex_init(sh.lock) != 0:
                raise OSError("cannot initialise a process-shared robust mutex")
            if plan["max_entries"]:
                # The bound is of the whole cache: the first max_entries %
                # n_shards shards hold one more than the others, so the
                # shards' bounds add up to exactly max_entries.
                sh.max_items = plan["max_entries"] // self._n_shards + \
                    (1 if i < plan["max_entries"] % self._n_shards else 0)
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
        self._coh = <Coherence *>(self._base + COHERENCE_OFFSET)
        if self._shards == NULL:
            self._shards = <ShardRef *>malloc(sizeof(ShardRef) * self._n_shards)
            if self._shards == NULL:
                raise MemoryError()
        for i in range(self._n_shards):
            s = &self._shards[i]
            s.sh = <ShardHeader *>(self._base + h.shards_offset + <uint64_t>i * SHARD_HEADER_SIZE)
            s.buckets = <uint32_t *>(self._base + h.index_offset
                                     + <uint64_t>i * h.index_buckets * 4)
            s.stamps = <uint32_t *>(self._base + h.stamps_offset
                                    + <uint64_t>i * h.index_buckets * 4)
            s.coh = self._coh
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
            s.pin_mask = <uint64_t *>(self._base + h.pin_masks_offset
                                      + <uint64_t>i * _pin_mask_stride(h.pin_mask_words))
            s.pin_tables = <uint64_t *>(self._base + h.pin_tables_offset)
            s.pin_mask_words = h.pin_mask_words
            s.n_slots = h.n_slots

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
        self._reset_pins()
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
                    self._forget_pins(i)
                    self._take_slot(sl)
                    return
        self._slot = self._slot_at(0)
        self._counters = <SlotCounters *>((<char *>self._slot) + SLOT_HEADER_SIZE)
        self._shared_slot = True
        self._stripe = pid
        self._pin_table = NULL

    cdef void _take_slot(self, SlotHeader *sl) noexcept:
        sl.claimed_ns = metis_now_ns()
        self._slot = sl
        # Each process writes its hits into its own access-ring stripe.
        self._stripe = <uint32_t>(((<char *>sl) - (<char *>self._slot_at(0)))
                                  // self._hdr.slot_size)
        self._counters = <SlotCounters *>((<char *>sl) + SLOT_HEADER_SIZE)
        self._shared_slot = False
        self._pin_table = self._shards[0].pin_tables + <uint64_t>self._stripe * PIN_TABLE_WORDS

    cdef int _reset_pins(self) except -1:
        """Start with no pins (a new slot; a child after fork, whose parent's
        views are the parent's)."""
        self._pins = {}
        self._pinned_bytes = 0
        self._pin_epoch += 1
        self._pin_table = NULL
        return 0

    cdef void _forget_pins(self, uint32_t slot) noexcept:
        """The pins of a slot whose owner is gone: their blocks may be freed
        (the zombies they held are reaped by the next writer that needs room,
        or metisd's tick)."""
        cdef SlotHeader *sl = self._slot_at(slot)
        pins_clear_slot(self._shards, self._n_shards, slot)
        metis_store_relaxed_u32(&sl.pins, 0)
        metis_store_relaxed_u64(&sl.pinned_bytes, 0)

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
        self._forget_pins(index)
        metis_store_release_u32(&sl.pid, 0)
        return True

    def _release_slot(self):
        if self._slot != NULL and not self._shared_slot:
            self._fold_slot(self._slot)
            self._forget_pins(self._stripe)
            metis_store_release_u32(&self._slot.pid, 0)
        self._slot = NULL
        self._pin_table = NULL

    cdef inline void _bump(self, uint64_t *counter) noexcept:
        # Own slot: only this process writes it, and the GIL orders our
        # threads, so a plain relaxed load/store pair is exact.
        if self._shared_slot:
            metis_fetch_add_u64(counter, 1)
        else:
            metis_store_relaxed_u64(counter, metis_load_relaxed_u64(counter) + 1)

    # ---- closing -----------------------------------------------------------

    def _close_engine(self):
        self._closed = True
        if self._pins:
            # Views are open: their memory stays mapped and pinned until the
            # last one is released, which finishes the close (_pin_drop).
            self._close_pending = True
            return
        self._close_pending = False
        if self._base != NULL:
            self._release_slot()
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

    cdef object _value(self, object value, ValueView *vv, Py_ssize_t key_len):
        """Point vv at the bytes to store under a key of key_len bytes;
        returns an object to keep alive."""
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
        flags, payload = self._codec.encode(value, key_len)
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
            return data  # value_copy made it one
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


    # ---- shard locks -------------------------------------------------------

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
