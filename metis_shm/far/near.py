"""``NearCache``: a Cache that is the near tier of Redis.

A near hit is the engine's own ``get`` (one C call; the gate and the item's
stamp are two more loads). A miss calls ``_read_miss``: one Redis round trip
per machine for a key, whatever the number of processes missing it at once
(a lease in the segment), then a fill that carries the stamp taken before
the fetch, so an invalidation that overtook the reply leaves it dead.

Writes go to Redis first, the source of truth, and only then kill the near
copies of the key (every process of this machine at once). Other machines
learn of the write through Redis's invalidation, received by their metisd.
docs/far-tier.md states the consistency model.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from typing import Any

import psutil

from metis_shm import _engine
from metis_shm.cache import Cache
from metis_shm.errors import FarError, FarUnavailable, KeyNotFound
from metis_shm.far import encoding, words
from metis_shm.far.client import FarClient
from metis_shm.far.report import far_report
from metis_shm.far.settings import FarSettings

log = logging.getLogger("metis_shm.far")

_MISS = object()
_Engine = _engine.Engine
# Single-flight leases and absent markers share the segment with the data,
# under keys no str key can spell (a NUL first byte) and that keys() hides.
_LEASE = b"\x00metis.lease\x00"
_ABSENT = b"-"
_NEGATIVE_TTL = 30.0  # an absent marker is invalidated like any entry; this only bounds memory


class NearCache(Cache):
    """A Cache in front of Redis: read-through, write-through, kept coherent
    by metisd's tracking connection. Open it as ``Cache(name, far=...)``.

    >>> # Cache("app", capacity="256MiB", far="redis://127.0.0.1:6379/0")

    ``far`` is a redis:// URL, a dict of FarSettings fields, or FarSettings.
    Every other argument is Cache's.
    """

    far: FarSettings

    def __init__(self, name: str, *args: Any, far: Any, **kwargs: Any) -> None:
        self.far = FarSettings.build(far)
        super().__init__(name, *args, **kwargs)
        self._client = FarClient(self.far)
        # Default tracking: Redis client id -> the CONN_SLOTS word this
        # process registered it in (checked again at every fill: a new
        # subscription voids registrations).
        self._conn_slots: dict[int, int] = {}
        self._registry_full_logged = False
        self._max_key_size = int(self.settings["max_key_size"])
        self._set_gated(True)
        self._set_read_through(True)
        if self._word(words.TRACKER_STATE) == 0:
            log.warning(
                "near cache %r: no metisd tracks Redis for it yet, so every read goes to "
                "Redis; run metisd with a far table for this cache (docs/far-tier.md)",
                name,
            )

    # ---- reads ----------------------------------------------------------------

    def _read_miss(self, key: Any, default: Any) -> Any:
        """The engine's get() found nothing near: fetch from Redis, once per
        machine, and fill."""
        if not self.gate_open:
            return self._read_unvouched(key, default)
        lease = _lease_key(key)
        token = self.fill_token(key)
        if len(lease) > self._max_key_size:
            lease = b""  # a key near max_key_size: no room for its lease key
        elif not _Engine.add(self, lease, b"%d" % os.getpid(), ttl=self.far.lease_timeout):
            got = self._wait_for_fill(key, lease, default)
            if got is not _MISS:
                return got
            token = self.fill_token(key)
            lease = b""  # fetch without a lease: the holder is gone or slow
        try:
            data, pttl, tracked = self._fetch(key)
        except FarUnavailable as exc:
            if lease:
                _Engine.delete(self, lease)
            return self._read_stale(key, default, exc)
        if data is None:
            self._add_word(words.FAR_MISSES)
            # The absent marker carries the token: it stands only until the
            # key's next invalidation, like a filled value.
            if lease and tracked:
                _Engine.set(self, lease, _ABSENT + b"%d" % token, ttl=_NEGATIVE_TTL)
            elif lease:
                _Engine.delete(self, lease)
            return default
        self._add_word(words.FAR_HITS)
        value = encoding.decode(self._codec_obj, data)
        ttl = pttl / 1000 if pttl > 0 else None
        if not tracked:
            pass  # no invalidation of this read would come: nothing to fill
        elif self.fill(key, value, token, ttl=ttl):
            self._add_word(words.FILLS)
        else:
            self._add_word(words.FILLS_DROPPED)
        if lease:
            _Engine.delete(self, lease)
        return value

    def _fetch(self, key: Any) -> tuple[bytes | None, int, bool]:
        """The value and its PTTL, and whether the read is tracked (False:
        metisd would hear of no later write of the key, so fill nothing)."""
        default = self.far.tracking == "default"
        redirect = self._word(words.TRACKER_ID) if default else 0
        # After the caller's fill token (see _registered).
        polls = self._word(words.CONN_POLLS) if default else 0
        try:
            try:
                data, pttl, conn = self._client.fetch(key, redirect)
            except FarError:
                if not redirect:
                    raise
                # Redis refused CLIENT TRACKING REDIRECT: the id in the segment
                # is a tracker that is gone (metisd killed, or reconnecting).
                # Redis still answers, untracked.
                data, pttl, _ = self._client.fetch(key, 0)
                return data, pttl, False
        except FarUnavailable:
            self._add_word(words.FAR_ERRORS)
            raise
        return data, pttl, (self._registered(conn, polls) if default else True)

    def _registered(self, conn: int, polls: int) -> bool:
        """Default tracking: may what Redis connection ``conn`` read be filled?

        Redis files the read under ``conn``; if that connection closes, the
        key's invalidations go to no one. So ``conn`` is registered in the
        segment (words.CONN_SLOTS) for metisd's tracker to poll, and it must
        be registered before the fill. Full registry: no fill. A poll begun
        since ``polls`` was read (after the fill token) may have read the
        registry before this registration, and vouched without knowing of
        ``conn``: no fill either (rare: a fetch is far shorter than a ping
        interval). Any later poll sees ``conn`` and bumps once it is gone.
        """
        if not conn:
            return False  # no tracker to redirect to: the read was not tracked
        if not self._register(conn):
            self._add_word(words.FILLS_UNREGISTERED)
            if not self._registry_full_logged:
                self._registry_full_logged = True
                log.warning(
                    "near cache %r: the connection registry is full (%d Redis connections"
                    " registered): reads through other connections are not filled near",
                    self.name,
                    len(words.CONN_SLOTS),
                )
            return False
        # An atomic add of 0, not a load: ordered after the registration's
        # CAS as the tracker's count (an add) is before its read of the slots,
        # so either that read sees conn or this sees the count move.
        if self._add_word(words.CONN_POLLS, 0) != polls:
            self._add_word(words.FILLS_DROPPED)
            return False
        return True

    def _register(self, conn: int) -> bool:
        """Put ``conn`` in a slot of the registry unless it is there; False: full."""
        slot = self._conn_slots.get(conn)
        if slot is not None and self._word(slot) == conn:
            return True
        found = next((i for i in words.CONN_SLOTS if self._word(i) == conn), None)
        if found is None:
            free = (i for i in words.CONN_SLOTS if self._word(i) == 0)
            found = next((i for i in free if self._cas_word(i, 0, conn)), None)
            if found is None:
                return False
        if len(self._conn_slots) >= 4 * len(words.CONN_SLOTS):
            self._conn_slots.clear()  # closed connections' ids: forget them all at once
        self._conn_slots[conn] = found
        return True

    def _wait_for_fill(self, key: Any, lease: bytes, default: Any) -> Any:
        """Another process fetches `key`: wait for its fill (or its absent
        marker), at most lease_timeout. _MISS if it never came."""
        deadline = time.monotonic() + self.far.lease_timeout
        pause = 0.0001
        waited = False
        while True:
            value = self.peek(key, _MISS)
            if value is not _MISS:
                if waited:
                    self._add_word(words.SINGLE_FLIGHT_WAITS)
                return value
            holder = self.peek(lease, None)
            if holder is None and self.gate_open:
                # The holder filled and let go between our two looks.
                value = self.peek(key, _MISS)
                if value is not _MISS:
                    self._add_word(words.SINGLE_FLIGHT_WAITS)
                    return value
            if holder is None or not self.gate_open:
                return _MISS
            if holder.startswith(_ABSENT):
                if int(holder[1:]) == self.fill_token(key):
                    return default  # absent in Redis, and not written since
                _Engine.delete(self, lease)
                return _MISS
            if not psutil.pid_exists(int(holder)) or time.monotonic() >= deadline:
                return _MISS  # the lease dies with its owner
            waited = True
            time.sleep(pause)
            pause = min(pause * 2, 0.002)

    def _read_unvouched(self, key: Any, default: Any) -> Any:
        """No tracker vouches for the near tier: Redis answers, nothing is
        filled (it could not be vouched for either)."""
        try:
            data, _, _ = self._fetch(key)
        except FarUnavailable as exc:
            return self._read_stale(key, default, exc)
        self._add_word(words.FAR_HITS if data is not None else words.FAR_MISSES)
        return default if data is None else encoding.decode(self._codec_obj, data)

    def _read_stale(self, key: Any, default: Any, cause: FarUnavailable) -> Any:
        """Redis is down. With on_down="stale", a near entry may stand in for
        max_stale seconds after the last vouch; otherwise FarUnavailable."""
        if self.far.on_down == "stale":
            vouched = self._word(words.LAST_VOUCH_NS)
            if vouched and time.monotonic_ns() < vouched + int(self.far.max_stale * 1e9):
                value = self.get_ungated(key, _MISS)
                if value is not _MISS:
                    self._add_word(words.STALE_SERVED)
                    return value
                return default
        raise FarUnavailable(
            f"near cache {self.name!r}: the near tier cannot vouch for {key!r} and Redis "
            f"did not answer ({cause})",
            context={"key": repr(key), "on_down": self.far.on_down, **cause.context},
        ) from cause

    def __getitem__(self, key: Any) -> Any:
        value = self.get(key, _MISS)
        if value is _MISS:
            raise KeyNotFound(key)
        return value

    def __contains__(self, key: Any) -> bool:
        return self.get(key, _MISS) is not _MISS

    def get_many(self, keys: Iterable[Any]) -> dict[Any, Any]:
        """Near hits, then one MGET for the rest (filled with tokens)."""
        keys = list(keys)
        out = {}
        missing = []
        for key in keys:
            value = self.peek(key, _MISS)
            if value is _MISS:
                missing.append(key)
            else:
                out[key] = value
        if not missing:
            return out
        # Default tracking: Redis tracks only reads on a connection that
        # redirects to metisd, and fetch_many's MGET sends no REDIRECT, so
        # what it reads must not be filled (no invalidation would kill it).
        vouched = self.gate_open and self.far.tracking == "broadcast"
        tokens = [self.fill_token(k) for k in missing]
        try:
            datas = self._client.fetch_many(missing)
        except FarUnavailable as exc:
            self._add_word(words.FAR_ERRORS)
            for key in missing:
                value = self._read_stale(key, _MISS, exc)
                if value is not _MISS:
                    out[key] = value
            return out
        for key, token, data in zip(missing, tokens, datas, strict=True):
            if data is None:
                self._add_word(words.FAR_MISSES)
                continue
            self._add_word(words.FAR_HITS)
            value = out[key] = encoding.decode(self._codec_obj, data)
            # MGET has no TTLs: the fill takes the cache's default TTL.
            if vouched:
                self._add_word(words.FILLS if self.fill(key, value, token) else words.FILLS_DROPPED)
        return out

    def keys(self, prefix: Any = None) -> list[Any]:  # type: ignore[override]
        """The near tier's live keys (Redis may hold more)."""
        return [k for k in super().keys(prefix) if not (type(k) is bytes and k.startswith(_LEASE))]

    # ---- writes: Redis first, then every near copy of this machine dies -------

    def _written(self, key: Any) -> None:
        self._add_word(words.FAR_WRITES)
        self.invalidate(key)

    def set(self, key: Any, value: Any, ttl: float | None = None) -> None:
        """SET in Redis, then kill the near copies (the next read fills)."""
        self._check_key(key)
        if _expired(ttl):  # Cache's rule: remove the old value, store nothing
            self.delete(key)
            return
        self._client.set(key, encoding.encode(self._codec_obj, value), ttl)
        self._written(key)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.set(key, value)

    def add(self, key: Any, value: Any, ttl: float | None = None) -> bool:
        """SET NX in Redis: True for exactly one caller in the whole fleet."""
        self._check_key(key)
        if _expired(ttl):
            return False
        stored = self._client.set(key, encoding.encode(self._codec_obj, value), ttl, nx=True)
        if stored:
            self._written(key)
        return stored

    def replace(self, key: Any, value: Any, ttl: float | None = None) -> bool:
        """SET XX in Redis: True if the key existed."""
        self._check_key(key)
        if _expired(ttl):
            return self.delete(key)
        stored = self._client.set(key, encoding.encode(self._codec_obj, value), ttl, xx=True)
        if stored:
            self._written(key)
        return stored

    def delete(self, key: Any) -> bool:
        """DEL in Redis; True if it existed there."""
        self._check_key(key)
        existed = self._client.delete([key]) > 0
        self._written(key)
        return existed

    def __delitem__(self, key: Any) -> None:
        if not self.delete(key):
            raise KeyNotFound(key)

    def pop(self, key: Any, default: Any = _MISS) -> Any:
        """GETDEL in Redis."""
        self._check_key(key)
        data = self._client.pop(key)
        self._written(key)
        if data is None:
            if default is _MISS:
                raise KeyNotFound(key)
            return default
        return encoding.decode(self._codec_obj, data)

    def touch(self, key: Any, ttl: float | None = None) -> bool:
        """PEXPIRE in Redis (the near copy is dropped: its expiry was Redis's)."""
        self._check_key(key)
        if _expired(ttl):
            return self.delete(key)
        found = self._client.touch(key, ttl)
        self._written(key)
        return found

    def incr(
        self, key: Any, delta: int = 1, *, default: int | None = None, ttl: float | None = None
    ) -> int:
        """Redis's INCRBY: atomic across the fleet."""
        self._check_key(key)
        d = self._counter(delta, "delta")
        start = None if default is None else self._counter(default, "default")
        result = self._client.incr(key, d, start, ttl)
        self._written(key)
        if result is None:
            raise KeyNotFound(key)
        return result

    def decr(
        self, key: Any, delta: int = 1, *, default: int | None = None, ttl: float | None = None
    ) -> int:
        """incr(key, -delta)."""
        return self.incr(key, -self._counter(delta, "delta"), default=default, ttl=ttl)

    def set_many(self, mapping: Any, ttl: float | None = None) -> None:
        """Pipelined SETs; every key checked and every value encoded first."""
        pairs = list(mapping.items() if hasattr(mapping, "items") else mapping)
        for key, _ in pairs:
            self._check_key(key)
        if _expired(ttl):
            self.delete_many([k for k, _ in pairs])
            return
        items = [(k, encoding.encode(self._codec_obj, v)) for k, v in pairs]
        self._client.set_many(items, ttl)
        for key, _ in pairs:
            self._written(key)

    def delete_many(self, keys: Iterable[Any]) -> int:
        """DEL of every key; how many existed in Redis."""
        keys = list(keys)
        for key in keys:
            self._check_key(key)
        n = self._client.delete(keys)
        for key in keys:
            self._written(key)
        return n

    def clear(self) -> None:
        """Empty this machine's near tier (one generation bump). Redis is
        not touched: flushing the source of truth is not a cache's call."""
        self.invalidate_all()

    # ---- helpers --------------------------------------------------------------

    def _check_key(self, key: Any) -> None:
        # The engine's rules (type, size) before Redis sees the key.
        self.fill_token(key)

    def far_stats(self) -> dict[str, Any]:
        """The far tier's counters and the tracker's state, for this machine
        (metis_shm/far/report.py)."""
        return far_report(self)

    def close(self) -> None:
        """Detach this process and close its Redis connections."""
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()
        super().close()


def _expired(ttl: float | None) -> bool:
    """Cache's TTL rule: ttl <= 0 means "already expired" (Redis's PX would
    keep the value 1 ms instead)."""
    return ttl is not None and ttl <= 0


def _lease_key(key: Any) -> bytes:
    if isinstance(key, str):
        return _LEASE + b"s" + key.encode()
    return _LEASE + b"b" + bytes(key)
