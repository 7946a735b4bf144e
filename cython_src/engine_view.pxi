# Included by engine.pyx (one translation unit, so the read path inlines
# across the subsystems; docs/architecture.md section 5a). Views: values read
# in place, pinned while a memoryview shows them (pins.pxd has the protocol).

cdef class _Viewer(_Reader)

cdef extern from *:
    int __builtin_ctzll(unsigned long long x) nogil


cdef class _View:
    """What Cache.view(key) returns: a context manager. Entering it pins the
    value's bytes in the segment and gives a read-only memoryview of them
    (or the default on a miss); leaving it releases that memoryview, so a
    use after the block raises, and drops the pin.

    It is also the buffer exporter behind that memoryview. Something that
    still holds a buffer taken from it (a slice, a numpy array) keeps the
    pin until it lets go: the bytes it shows never change under it.
    """

    cdef _Viewer engine
    cdef object key
    cdef object default
    cdef object owner           # bytes, when the view is a private copy
    cdef object mv
    cdef const char *ptr
    cdef Py_ssize_t n
    cdef uint64_t entry         # the pin; 0: none
    cdef uint64_t epoch
    cdef readonly uint32_t flags
    cdef int exports
    cdef int state              # 0 new, 1 entered, 2 left

    def __enter__(self):
        if self.state:
            raise _errors.InvalidArgument("a view is entered once; call cache.view() again",
                                          context={})
        self.state = 1
        if not self.engine._view_open(self):
            return self.default
        self.mv = memoryview(self)
        return self.mv

    def __exit__(self, *exc):
        self.state = 2
        mv = self.mv
        self.mv = None
        if mv is not None:
            try:
                mv.release()
            except BufferError:
                pass  # a buffer taken from it is alive: it keeps the pin
        if self.exports == 0:
            self._drop()
        return False

    def __getbuffer__(self, Py_buffer *buf, int flags):
        if self.state != 1 or (self.entry == 0 and self.owner is None):
            raise BufferError("this view is not open")
        PyBuffer_FillInfo(buf, self, <void *>self.ptr, self.n, 1, flags)
        self.exports += 1

    def __releasebuffer__(self, Py_buffer *buf):
        self.exports -= 1
        if self.exports == 0 and self.state == 2:
            self._drop()

    cdef void _drop(self) noexcept:
        cdef uint64_t entry = self.entry
        self.entry = 0
        self.owner = None
        if entry:
            self.engine._pin_drop(entry, self.epoch)

    @property
    def pinned(self):
        """True while this view holds a pin in the segment (a private copy
        holds none)."""
        return self.entry != 0


cdef class _Viewer(_Reader):
    """view(), and this process's pins."""

    def view(self, key, default=None):
        """A context manager: `with cache.view(key) as mv:` gives a read-only
        memoryview of the value's stored bytes in shared memory, no copy, or
        `default` if the key is absent or expired.

        The bytes are the stored payload: a bytes value itself, a str's
        UTF-8, a counter's 8 bytes, MessagePack for other values (a value
        stored compressed is decompressed into a private copy). While the
        block is open the bytes do not change: an overwrite, delete,
        eviction, expiry or clear of the key leaves them alone, and the
        memory they take is reused only after the view is closed.
        """
        cdef _View v = _View.__new__(_View)
        self._check_open()
        v.engine = self
        v.key = key
        v.default = default
        return v

    cdef bint _view_open(self, _View v) except -1:
        """Find v.key and pin its bytes (or copy them); False on a miss."""
        cdef KeyView kv
        cdef ShardRef *s
        cdef SlotCounters *c
        cdef uint64_t begun, attempt = 0
        cdef OptItem found
        cdef int r
        cdef bint copy, pinned, live
        cdef object data
        self._check_open()
        self._key(v.key, &kv)
        s = self._shard_for(kv.h)
        c = &self._counters[s.index]
        if not coh_gate_open(self._coh):
            self._bump(&c.misses)
            return False
        # No slot of our own: no table to pin in, so a private copy.
        copy = self._pin_table == NULL
        while True:
            begun = opt_begin(s)
            r = opt_find(s, begun, kv.h, kv.p, <uint32_t>kv.n, kv.flag, &found)
            pinned = False
            data = None
            live = r == OPT_FOUND and not (found.expire_ns and
                                           found.expire_ns <= metis_now_ns()) and \
                found.stamp == coh_stamp(s, kv.h)
            if live:
                if copy or (found.flags & FLAG_CODEC_MASK):
                    data = PyBytes_FromStringAndSize(
                        opt_value_ptr(item_at(s, found.off), <uint32_t>kv.n), found.value_len)
                else:
                    self._pin_add(s, found.off, item_block_need(kv.n, found.value_len))
                    pinned = True
            if opt_still(s, begun):
                break
            if pinned:
                self._pin_drop(pin_entry(s.index, found.off), self._pin_epoch)
            self._bump(&c.read_retries)
            attempt += 1
            if attempt >= TRYLOCK_AFTER:
                r = self._view_locked(s, &kv, v, copy)
                if r >= 0:
                    return r
                if attempt >= YIELD_AFTER:
                    sched_yield()
            metis_cpu_relax()
        if r == OPT_BROKEN:
            self._corrupt(s)
        if not live:
            self._bump(&c.misses)
            return False
        self._bump(&c.hits)
        if self._record_hits:
            policy_record_hit(s, found.off, self._stripe)
        v.flags = found.flags
        if pinned:
            v.entry = pin_entry(s.index, found.off)
            v.epoch = self._pin_epoch
            v.ptr = opt_value_ptr(item_at(s, found.off), <uint32_t>kv.n)
            v.n = found.value_len
        else:
            self._view_own(v, data)
        return True

    cdef int _view_locked(self, ShardRef *s, KeyView *kv, _View v, bint copy) except -2:
        """_view_open under the shard's lock, only if it is free: -1 if it
        is held, else 1 (found) or 0 (a miss). Under the lock no writer
        frees anything, so a pin needs no validation."""
        cdef SlotCounters *c = &self._counters[s.index]
        cdef uint32_t *link
        cdef uint32_t off
        cdef Item *it = NULL
        cdef object data = None
        cdef bint pinned = False, corrupt = False
        if not self._try_lock(s):
            return -1
        try:
            off = do_index_find(s, kv.h, kv.p, <uint32_t>kv.n, kv.flag, &link)
            if off == INDEX_TORN:
                corrupt = True
                off = 0
            elif off:
                it = item_at(s, off)
                if (it.value_len > self._max_value and it.value_len != 8) or \
                        <uint64_t>off + ITEM_HEADER_SIZE + kv.n + it.value_len > s.arena_size:
                    corrupt = True
                    off = 0
                elif item_dead(s, it, metis_now_ns()):
                    off = 0
            if off:
                v.flags = it.flags
                if copy or (it.flags & FLAG_CODEC_MASK):
                    data = PyBytes_FromStringAndSize(item_value(it, <uint32_t>kv.n),
                                                     it.value_len)
                else:
                    self._pin_add(s, off, item_block_need(kv.n, it.value_len))
                    pinned = True
                policy_record_hit(s, off, self._stripe)
        finally:
            shard_unlock(s)
        if corrupt:
            self._corrupt(s)
        if not off:
            self._bump(&c.misses)
            return 0
        self._bump(&c.hits)
        if pinned:
            v.entry = pin_entry(s.index, off)
            v.epoch = self._pin_epoch
            v.ptr = item_value(it, <uint32_t>kv.n)
            v.n = it.value_len
        else:
            self._view_own(v, data)
        return 1

    cdef int _view_own(self, _View v, object data) except -1:
        """Make v a private copy of `data` (decompressed if it was stored so)."""
        if v.flags & FLAG_CODEC_MASK:
            data = self._codec.decompress(v.flags, data)
            v.flags &= ~(<uint32_t>FLAG_CODEC_MASK)
        v.owner = data
        v.ptr = PyBytes_AS_STRING(data)
        v.n = PyBytes_GET_SIZE(data)
        return 0

    # ---- this process's pins -------------------------------------------------

    cdef int _pin_add(self, ShardRef *s, uint32_t off, uint64_t nbytes) except -1:
        """Record a pin of the block at `off` (the reader's half of pins.pxd:
        entry, mask bit, full fence). The caller validates afterwards."""
        cdef uint64_t entry = pin_entry(s.index, off)
        cdef list rec = self._pins.get(entry)
        if rec is not None:
            rec[0] += 1
            metis_store_relaxed_u32(&self._slot.pins, self._slot.pins + 1)
            return 0
        if len(self._pins) >= PIN_MAX:
            raise _errors.PinLimit(
                f"this process holds {len(self._pins)} views; at most {PIN_MAX} at once: "
                f"close some first", context={"pins": len(self._pins), "limit": PIN_MAX})
        if self._pinned_bytes + nbytes > self._pin_limit:
            raise _errors.PinLimit(
                f"pinning {nbytes} more bytes would hold {self._pinned_bytes + nbytes} in this "
                f"process; max_pinned is {self._pin_limit}: close some views, or raise it",
                context={"pinned_bytes": self._pinned_bytes, "size": nbytes,
                         "limit": self._pin_limit})
        if not pin_insert(self._pin_table, entry):
            raise _errors.PinLimit(
                "this process's pin table has no free entry for this block; close some views",
                context={"pins": len(self._pins), "limit": PIN_MAX})
        # The bit stays set once this slot pinned in the shard (until the
        # slot is let go): a writer then looks at one line of our table per
        # block it frees, and a view costs no atomic read-modify-write.
        if not pin_mask_has(s, self._stripe):
            pin_mask_set(s, self._stripe)
        metis_fence_seq_cst()
        self._pins[entry] = [1, nbytes]
        self._pinned_bytes += nbytes
        metis_store_relaxed_u32(&self._slot.pins, self._slot.pins + 1)
        metis_store_relaxed_u64(&self._slot.pinned_bytes, self._pinned_bytes)
        return 0

    cdef void _pin_drop(self, uint64_t entry, uint64_t epoch) noexcept:
        """Undo one _pin_add. A view from before a fork is the parent's: its
        pins are in the parent's slot, and this process leaves them alone."""
        cdef list rec
        cdef ShardRef *s
        cdef uint32_t shard = <uint32_t>(entry >> 32) - 1, off = <uint32_t>entry
        cdef bint zombie
        if epoch != self._pin_epoch or self._pins is None:
            return
        rec = self._pins.get(entry)
        if rec is None:
            return
        rec[0] -= 1
        metis_store_relaxed_u32(&self._slot.pins, self._slot.pins - 1)
        if rec[0] > 0:
            return
        del self._pins[entry]
        s = &self._shards[shard]
        # Still ours, so the header is stable: was the block taken out of
        # the cache while we held it?
        zombie = (hdr_word(s, off)[0] & BLOCK_ZOMBIE) != 0
        pin_remove(self._pin_table, entry)
        self._pinned_bytes -= <uint64_t>rec[1]
        metis_store_relaxed_u64(&self._slot.pinned_bytes, self._pinned_bytes)
        if zombie:
            self._reap_if_free(s)
        if self._close_pending and not self._pins:
            try:
                self._close_engine()
            except BaseException:
                pass

    cdef void _reap_if_free(self, ShardRef *s) noexcept:
        """Give a zombie back to the allocator now, if the shard's lock is
        free: never wait (an unpin may run inside the garbage collector)."""
        if shard_lock(s, 0) != 0:
            return
        do_write_begin(s)
        do_zombie_reap(s)
        do_write_end(s)
        shard_unlock(s)

    cdef bint _forget_dead_pinners(self, ShardRef *s) noexcept:
        """Reclaim the slots of dead processes that may pin in `s` (their
        counters fold into slot 0, their pins are forgotten); True if any.
        Owning the slot first (as metisd's reclaim does) keeps a process
        that takes it over meanwhile from losing pins of its own."""
        cdef uint32_t w, slot, pid, me = getpid()
        cdef uint64_t bits
        cdef SlotHeader *sl
        cdef bint any_ = False
        for w in range(s.pin_mask_words):
            bits = metis_load_relaxed_u64(&s.pin_mask[w])
            while bits:
                slot = w * 64 + <uint32_t>__builtin_ctzll(bits)
                bits &= bits - 1
                if slot == 0 or slot >= s.n_slots or slot == self._stripe:
                    continue
                sl = self._slot_at(slot)
                pid = metis_load_relaxed_u32(&sl.pid)
                # A free slot holds no pins (its owner forgot them before it
                # let go), and one may be taking it now: leave it alone.
                if pid == 0 or pid == me or not (kill(pid, 0) == -1 and errno == ESRCH):
                    continue
                if not metis_cas_u32(&sl.pid, pid, me):
                    continue
                self._fold_slot(sl)
                self._forget_pins(slot)
                metis_store_release_u32(&sl.pid, 0)
                any_ = True
        return any_

    def _reap_pins(self):
        """Free the blocks views held back whose views are gone, or whose
        processes died (their slots are reclaimed: kill(pid, 0) says ESRCH).
        metisd's tick; how many were freed."""
        cdef uint32_t i
        cdef ShardRef *s
        cdef uint64_t freed = 0
        self._check_open()
        for i in range(self._n_shards):
            s = &self._shards[i]
            if metis_load_relaxed_u32(&s.sh.zombie_head) == 0:
                continue
            self._lock(s)
            do_write_begin(s)
            freed += do_zombie_reap(s)
            if s.sh.zombie_head and self._forget_dead_pinners(s):
                freed += do_zombie_reap(s)
            do_write_end(s)
            shard_unlock(s)
        return freed

    def _forget_parent_pins(self):
        """In a child after fork: the views inherited are the parent's, and
        so are the pins in its slot; this process unpins none of them."""
        self._reset_pins()
        if self._close_pending:
            # The parent's deferred close is the parent's too.
            self._close_pending = False
            self._slot = NULL

    def _held_blocks(self):
        """Blocks out of the cache that views hold back, all shards (no lock)."""
        cdef uint32_t i
        cdef uint64_t n = 0
        self._check_open()
        for i in range(self._n_shards):
            n += metis_load_relaxed_u32(&self._shards[i].sh.zombie_count)
        return n

    def _pin_stats(self):
        """(views, bytes) this process pins now."""
        return sum(rec[0] for rec in self._pins.values()), self._pinned_bytes

    def _set_pin_limit(self, uint64_t limit):
        """max_pinned: bytes this process may pin at once."""
        self._pin_limit = limit
