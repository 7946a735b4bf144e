# Included by engine.pyx (one translation unit, so the read path inlines
# across the subsystems; docs/architecture.md section 5a). Coherence
# (coherence.pxd): invalidation, fills and the gate, the engine's part of a
# near tier. What drives them (Redis, a tracker) is metis_shm/far's.


cdef class _Coherent(_Writer):
    """fill_token, fill, invalidate, invalidate_all, the gate and the
    package's coherence words."""

    def fill_token(self, key):
        """The stamp `key` has now. Take it before fetching the value from
        the far tier and give it to fill(): any invalidation of `key` after
        this moment makes the fill dead on arrival."""
        cdef KeyView kv
        self._check_open()
        self._key(key, &kv)
        return coh_stamp(self._shard_for(kv.h), kv.h)

    def fill(self, key, value, token, ttl=None):
        """Store `value` only if `key` was not invalidated since `token` was
        taken (fill_token). True if stored; a dropped fill changes nothing."""
        cdef KeyView kv
        cdef ValueView vv
        cdef uint64_t expire, t = token
        self._check_open()
        self._key(key, &kv)
        kept = self._value(value, &vv, kv.n)
        if self._expiry(ttl, &expire):
            return False
        return self._store(&kv, &vv, expire, MODE_SET, t, True) == R_DONE

    def invalidate(self, key):
        """Kill every copy of `key` written so far, at once, without a lock.

        Bumps the stamp counter of the key's bucket (which may kill a
        neighbour too: a spurious miss, never a stale hit), then unlinks the
        item if the shard's lock is free; otherwise a sweep or the next
        write reclaims it. True if an item was unlinked now.
        """
        cdef KeyView kv
        cdef ShardRef *s
        cdef uint32_t *link
        cdef uint32_t off
        cdef bint removed = False
        self._check_open()
        self._key(key, &kv)
        s = self._shard_for(kv.h)
        metis_fetch_add_acq_rel_u32(&s.stamps[kv.h & s.bucket_mask], 1)
        # Never wait: the tracker calling this must keep reading its socket
        # even while a stopped process holds this shard's lock.
        if not self._try_lock(s):
            return False
        do_write_begin(s)
        off = do_index_find(s, kv.h, kv.p, <uint32_t>kv.n, kv.flag, &link)
        if off == INDEX_TORN:
            self._abandon_write(s)
        if off:
            do_item_remove(s, link, off)
            s.sh.invalidated += 1
            removed = True
        do_write_end(s)
        shard_unlock(s)
        return removed

    def invalidate_all(self):
        """Bump the generation: every item written so far is dead at once
        (sweeps reclaim the memory). Returns the new generation."""
        self._check_open()
        return metis_fetch_add_acq_rel_u64(&self._coh.generation, 1) + 1

    @property
    def generation(self):
        """How many times invalidate_all() ran on this segment."""
        self._check_open()
        return metis_load_acquire_u64(&self._coh.generation)

    @property
    def gated(self):
        """True if reads are served only while a tracker vouches (_vouch)."""
        self._check_open()
        return bool(metis_load_relaxed_u32(&self._coh.gated))

    @property
    def gate_open(self):
        """True if a read may be served from this segment now."""
        self._check_open()
        return coh_gate_open(self._coh)

    @property
    def vouch_until_ns(self):
        """The time.monotonic_ns() deadline of the tracker's last vouch."""
        self._check_open()
        return metis_load_acquire_u64(&self._coh.vouch_until_ns)

    def _set_gated(self, bint on):
        self._check_open()
        metis_store_release_u32(&self._coh.gated, 1 if on else 0)

    def _vouch(self, uint64_t until_ns):
        """Serve reads until `until_ns` (time.monotonic_ns clock)."""
        self._check_open()
        metis_store_release_u64(&self._coh.vouch_until_ns, until_ns)

    def _set_read_through(self, bint on):
        """get() calls self._read_miss(key, default) on a miss."""
        self._read_through = on

    def peek(self, key, default=None):
        """get() from this segment only: no read-through on a miss."""
        cdef KeyView kv
        self._check_open()
        self._key(key, &kv)
        return self._read(&kv, default, False)

    def get_ungated(self, key, default=None):
        """get() from this segment even if no tracker vouches for it now
        (serve-stale mode); invalidated and expired items stay absent."""
        cdef KeyView kv
        self._check_open()
        self._key(key, &kv)
        return self._read(&kv, default, False, True)

    cdef uint64_t *_word_at(self, uint32_t i) except NULL:
        self._check_open()
        if i >= COHERENCE_WORDS:
            raise IndexError(f"coherence word {i}: there are {COHERENCE_WORDS}")
        return &self._coh.words[i]

    def _word(self, uint32_t i):
        """One of the package's coherence words (atomic load)."""
        return metis_load_acquire_u64(self._word_at(i))

    def _set_word(self, uint32_t i, uint64_t v):
        metis_store_release_u64(self._word_at(i), v)

    def _cas_word(self, uint32_t i, uint64_t expected, uint64_t desired):
        """Atomic compare-and-swap; True if the word was `expected`."""
        return metis_cas_u64(self._word_at(i), expected, desired)

    def _add_word(self, uint32_t i, uint64_t n=1):
        """Atomic add; returns the new value."""
        return metis_fetch_add_acq_rel_u64(self._word_at(i), n) + n
