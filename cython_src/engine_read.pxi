# Included by engine.pyx (one translation unit, so the read path inlines
# across the subsystems; docs/architecture.md section 5a). The read path:
# lock-free lookups (optimistic.pxd) and the reads built on them.


cdef class _Reader(_Segment):
    """get, `in`, get_many, keys: reads that take no lock and never wait."""

    # ---- the read path -----------------------------------------------------

    cdef object _read(self, KeyView *kv, object default, bint consume, bint ungated=False):
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
        if not coh_gate_open(self._coh) and not ungated:
            # No tracker vouches for this near tier now: a miss (the caller
            # reads through to the far tier).
            self._bump(&c.misses)
            return default
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
                    data = value_copy(found.flags, opt_value_ptr(it, <uint32_t>kv.n),
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
        if r == OPT_MISS or (found.expire_ns and found.expire_ns <= metis_now_ns()) or \
                found.stamp != coh_stamp(s, kv.h):
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
            if item_dead(s, it, now):
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
            return self._decode(flags, value_copy(flags, buf, vlen))
        finally:
            free(buf)

    # ---- reads -------------------------------------------------------------

    def get(self, key, default=None):
        """The value stored under `key`, or `default` if absent or expired."""
        cdef KeyView kv
        self._check_open()
        self._key(key, &kv)
        if not self._read_through:
            return self._read(&kv, default, False)
        value = self._read(&kv, _MISSING, False)
        if value is _MISSING:
            # A tier behind this one (metis_shm/far): one Python call on a
            # miss, nothing on a hit.
            return self._read_miss(key, default)
        return value

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


    def get_many(self, keys):
        """A dict of the keys found (absent and expired keys are left out).

        Reads GET_MANY_WINDOW keys at a time: every key's bucket is
        prefetched, then every bucket's first item, then each key is read as
        get reads it. On a cache larger than the CPU's caches most of a get
        is waiting on those two loads; this overlaps them across the window.
        """
        cdef KeyView kvs[GET_MANY_WINDOW]
        cdef ShardRef *s
        cdef uint32_t off
        cdef Py_ssize_t n, start = 0, m, j
        cdef dict out = {}
        self._check_open()
        seq = keys if type(keys) is list or type(keys) is tuple else list(keys)
        n = len(seq)
        while start < n:
            m = min(<Py_ssize_t>GET_MANY_WINDOW, n - start)
            # The next window's key objects, which this one's reads give
            # time to arrive.
            for j in range(start + m, min(start + 2 * m, n)):
                metis_prefetch(<void *>seq[j])
            # seq keeps each key alive, and with it the bytes kvs[j] points at.
            for j in range(m):
                self._key(seq[start + j], &kvs[j])
                metis_prefetch(bucket_of(self._shard_for(kvs[j].h), kvs[j].h))
            for j in range(m):
                s = self._shard_for(kvs[j].h)
                off = metis_load_relaxed_u32(bucket_of(s, kvs[j].h))
                if item_offset_ok(s, off):
                    metis_prefetch(s.arena + off)
            for j in range(m):
                value = self._read(&kvs[j], _MISSING, False)
                if value is not _MISSING:
                    out[seq[start + j]] = value
            start += m
        return out

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
        cdef uint64_t exp, stamp
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
                stamp = metis_load_relaxed_u64(&it.stamp)
                if klen > self._max_key or \
                        <uint64_t>off + ITEM_HEADER_SIZE + klen > s.arena_size:
                    broken[0] = True
                    return out
                # An item lives in bucket b, so b's counter is its stamp's.
                if (exp == 0 or exp > now) and stamp == coh_stamp(s, b):
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
                        if not item_dead(s, it, now):
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
