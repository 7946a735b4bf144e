# Included by engine.pyx (one translation unit, so the read path inlines
# across the subsystems; docs/architecture.md section 5a). Administration:
# the consistency check, repair, stats, snapshot export and import, the
# header, and the hooks the tests use to produce states for real.


cdef class Engine(_Coherent):
    """One process's mapping of a segment. Subclassed by metis_shm.Cache."""

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
                        s.sh.lock_recoveries, s.sh.repairs, s.sh.zombie_count,
                        s.sh.zombie_bytes))
        return out

    def _raw_pins(self):
        """(views, bytes) pinned now by every process's slot together."""
        cdef uint32_t j
        cdef SlotHeader *sl
        cdef uint64_t pins = 0, nbytes = 0
        self._check_open()
        for j in range(1, self._hdr.n_slots):
            sl = self._slot_at(j)
            if metis_load_relaxed_u32(&sl.pid):
                pins += metis_load_relaxed_u32(&sl.pins)
                nbytes += metis_load_relaxed_u64(&sl.pinned_bytes)
        return pins, nbytes

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
                        if not item_dead(s, it, now):
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
