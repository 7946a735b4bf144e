# Included by engine.pyx (one translation unit, so the read path inlines
# across the subsystems; docs/architecture.md section 5a). The write path:
# every change to a shard, under its lock, inside a write section.


cdef class _Writer(_Viewer):
    """set, add, replace, delete, pop, touch, incr, the *_many forms, clear,
    drain and sweep."""

    cdef int _do_store(self, ShardRef *s, KeyView *kv, ValueView *vv, uint64_t expire,
                       int mode, uint64_t now, uint64_t token=0, bint tokened=False) noexcept:
        """Store under the lock, inside a write section. Returns R_*.

        A new key: admit (the policy consults ghosts or its sketch), evict
        to the entry bound and to free memory, write the item, publish it.
        A present key: write the new item, swap it in with one index store,
        and the policy counts the set as a hit.

        With `tokened`, a fill (coherence.pxd): stored only if the key's
        stamp is still `token`, and stamped with it, so an invalidation that
        lands at any point after the token was taken leaves the item dead.
        """
        cdef uint32_t *link
        cdef uint32_t old = do_index_find(s, kv.h, kv.p, <uint32_t>kv.n, kv.flag, &link)
        cdef uint32_t need = item_block_need(kv.n, vv.n), off, victim
        cdef Item *it
        if old == INDEX_TORN:
            return R_CORRUPT
        if tokened and coh_stamp(s, kv.h) != token:
            return R_NOT_STORED
        if old and item_dead(s, item_at(s, old), now):
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
        if off == 0 and s.sh.zombie_head:
            # Short of room with blocks held back by views: give back those
            # whose views closed, or whose process died, before evicting.
            if do_zombie_reap(s) == 0 and self._forget_dead_pinners(s):
                do_zombie_reap(s)
            off = do_alloc(s, need, True)
        while off == 0:
            victim = do_policy_victim(s)
            if victim == 0:
                return R_NO_ROOM
            do_item_evict(s, victim, now)
            off = do_alloc(s, need, False)
        it = item_at(s, off)
        item_fill(it, token if tokened else coh_stamp(s, kv.h), kv.h, expire, kv.p, <uint32_t>kv.n, vv.p,
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
            do_release(s, old)
        else:
            if not (s.sh.pending & PENDING_ADMITTED):
                do_policy_admit(s, kv.h)
            do_index_insert(s, off, it)
            do_policy_insert(s, off)
        s.sh.sets += 1
        return R_DONE

    cdef int _store(self, KeyView *kv, ValueView *vv, uint64_t expire, int mode,
                    uint64_t token=0, bint tokened=False) except -1:
        cdef ShardRef *s = self._shard_for(kv.h)
        cdef int r
        self._check_size(kv, vv)
        self._lock(s)
        do_write_begin(s)
        do_policy_drain(s)
        r = self._do_store(s, kv, vv, expire, mode, metis_now_ns(), token, tokened)
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
            if item_dead(s, item_at(s, off), metis_now_ns()):
                s.sh.expirations += 1
            else:
                s.sh.deletes += 1
                removed = True
            do_item_remove(s, link, off)
        do_write_end(s)
        shard_unlock(s)
        return removed

    def set(self, key, value, ttl=None):
        """Store `value` under `key`; `ttl` in seconds (None: the default TTL)."""
        cdef KeyView kv
        cdef ValueView vv
        cdef uint64_t expire
        self._check_open()
        self._key(key, &kv)
        kept = self._value(value, &vv, kv.n)
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
        kept = self._value(value, &vv, kv.n)
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
        kept = self._value(value, &vv, kv.n)
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
        if off and not item_dead(s, item_at(s, off), metis_now_ns()):
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

    def _counter(self, value, str name):
        """`value` as a counter argument, by the rule incr() applies (for a
        tier that checks arguments before it sends them on)."""
        return self._counter_arg(value, name)

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
        if off and item_dead(s, item_at(s, off), now):
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
                kept.append(self._value(value, &vvs[i], kvs[i].n))
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
