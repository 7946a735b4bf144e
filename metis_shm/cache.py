"""``Cache``: the object users open. Settings, segment lifecycle and fork
handling in Python; every operation is the compiled engine's (``_engine``).

Thread-safe; process-safe; fork-safe (a Cache opened before ``fork()`` keeps
working in the child, which takes its own stats slot). Closing detaches this
process only; ``Cache.destroy(name)`` removes the segment.
"""

from __future__ import annotations

import contextlib
import logging
import os
import weakref
from collections.abc import Iterable
from typing import Any

from metis_shm import _engine, arrays, segment
from metis_shm.codec import KIND_MASK, KIND_NDARRAY, SERIALIZERS, Codec
from metis_shm.daemon import audit
from metis_shm.errors import InvalidArgument, InvalidConfig
from metis_shm.stats import Stats, build_stats
from metis_shm.units import parse_duration, parse_size

log = logging.getLogger("metis_shm")

DEFAULT_CAPACITY = "64MiB"
# Within 2 pp of the best classic policy on every reference trace
# (docs/policies.md); a hit costs readers one ring-slot store.
DEFAULT_POLICY = "wtinylfu"
DEFAULT_MAX_KEY_SIZE = 1024
DEFAULT_MAX_VALUE_SIZE = "1MiB"
DEFAULT_COMPRESS_THRESHOLD = "16KiB"
MAX_SHARDS = 1024
MAX_SHARD_BYTES = 2 << 30  # shard offsets are 32-bit

_open_caches: weakref.WeakSet[Cache] = weakref.WeakSet()


def default_shards(capacity: int, max_value_size: int) -> int:
    """Shards for a new cache: 4 per CPU (a power of two), but each shard
    large enough to hold a few of the largest values."""
    want = 1
    while want < 4 * (os.cpu_count() or 1):
        want *= 2
    while want > 1 and capacity // want < max(2 * max_value_size, 64 * 1024):
        want //= 2
    while capacity // want > MAX_SHARD_BYTES and want < MAX_SHARDS:
        want *= 2
    return min(want, MAX_SHARDS)


_MISSING = object()


class Cache(_engine.Engine):
    """A cache shared by every process that opens the same ``name``.

    >>> cache = Cache("doc-example", capacity="8MiB")
    >>> cache.set("user:42", b"Ada", ttl=300)
    >>> cache.get("user:42")
    b'Ada'
    >>> cache.close(); Cache.destroy("doc-example")
    True

    See docs/api.md for every argument and method.
    """

    name: str

    def __new__(cls, *args: Any, far: Any = None, **kwargs: Any) -> Cache:
        # Cache(name, far="redis://...") opens the near tier of Redis.
        if far is not None and cls is Cache:
            from metis_shm.far.near import NearCache

            cls = NearCache
        return super().__new__(cls)

    def __init__(
        self,
        name: str,
        capacity: int | str = DEFAULT_CAPACITY,
        *,
        shards: int | None = None,
        policy: str = DEFAULT_POLICY,
        max_entries: int | None = None,
        max_key_size: int = DEFAULT_MAX_KEY_SIZE,
        max_value_size: int | str = DEFAULT_MAX_VALUE_SIZE,
        compress_threshold: int | str | None = DEFAULT_COMPRESS_THRESHOLD,
        serializer: str = "msgpack",
        default_ttl: float | str | None = None,
        mode: int = 0o600,
        create: bool = True,
        group: int | str | None = None,
        trusted_owners: Iterable[int | str] = (),
        allow_foreign_owner: bool = False,
        strict: bool = False,
        max_pinned: int | str | None = None,
        far: Any = None,
        _hash_key: tuple[int, int] | None = None,
    ) -> None:
        if far is not None and not hasattr(self, "_read_miss"):
            raise InvalidConfig(
                f"far: {type(self).__name__} is not a near cache; open Cache(name, far=...) "
                "or subclass metis_shm.far.near.NearCache",
                context={"field": "far"},
            )
        self.name = segment.validate_name(name)
        owners = segment.OwnerCheck.build(
            trusted_owners=trusted_owners, group=group, allow_foreign_owner=allow_foreign_owner
        )
        settings = _settings(
            capacity=capacity, policy=policy, max_key_size=max_key_size,
            max_value_size=max_value_size, compress_threshold=compress_threshold,
            serializer=serializer, default_ttl=default_ttl, max_entries=max_entries,
        )  # fmt: skip
        cap = parse_size(capacity, "capacity")
        n_shards = shards if shards is not None else default_shards(cap, settings["max_value_size"])
        if shards is None and max_entries:
            # Each shard holds at least one entry of the bound.
            while n_shards > max_entries:
                n_shards //= 2
        if (
            not isinstance(n_shards, int)
            or n_shards < 1
            or n_shards & (n_shards - 1)
            or n_shards > MAX_SHARDS
        ):
            raise InvalidConfig(
                f"shards: {shards!r} is not valid; expected a power of two from 1 to {MAX_SHARDS}",
                context={"field": "shards", "value": shards},
            )
        if create and not segment.exists(self.name):
            # Say "not enough /dev/shm" before any layout limit: it is the
            # error a user can act on.
            segment.check_free_space(self.name, cap)
        try:
            plan = _engine.plan_layout(cap, n_shards, max_entries or 0, policy=settings["policy"])
        except ValueError as exc:
            field = "max_entries" if "max_entries" in str(exc) else "capacity"
            raise InvalidConfig(f"{field}: {exc}", context={"field": field}) from exc
        opened = segment.create_or_open(
            self.name, plan, mode, create, gid=owners.group, owners=owners
        )
        try:
            # Who this mapping is: a later destroy (and re-create) of the
            # name leaves this process on a segment no one else sees.
            st = os.fstat(opened.fd)
            self._segment_id = (st.st_dev, st.st_ino)
            self._map(opened.fd, opened.size)
            if opened.created:
                self._format(plan, settings, _hash_key)
            else:
                self._setup_views()
                _refuse_unasked_pickle(self.name, self._header(), serializer)
                _warn_mismatch(
                    self.name,
                    opened.header or {},
                    plan,
                    settings,
                    explicit_capacity=capacity != DEFAULT_CAPACITY,
                    strict=strict,
                )
        except BaseException:
            self._close_engine()
            if opened.created:
                segment.destroy(self.name)
            raise
        finally:
            os.close(opened.fd)
        header = self._header()
        self._codec_obj = Codec(
            _serializer_name(header["serializer"]), header["compress_threshold"]
        )
        self._set_codec(self._codec_obj)
        self._claim_slot()
        self._set_pin_limit(_pin_limit(max_pinned, header["capacity"]))
        _open_caches.add(self)
        self.created = opened.created

    # ---- lifecycle ---------------------------------------------------------

    def close(self) -> None:
        """Detach this process; the segment and its data stay for others."""
        _open_caches.discard(self)
        self._close_engine()

    @property
    def stale(self) -> bool:
        """True if the segment this process has mapped is no longer the one
        behind the name: it was destroyed (and perhaps created anew). Such a
        process keeps working on a copy that no other process sees; close
        it and open the name again. ``metis ls`` lists such processes."""
        try:
            st = os.stat(segment.shm_path(self.name))
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self._segment_id

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # At interpreter shutdown modules may be gone: nothing left to tell.
        with contextlib.suppress(Exception):
            self._close_engine()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self)} items"
        return f"<metis_shm.Cache {self.name!r} {state}>"

    @staticmethod
    def destroy(name: str) -> bool:
        """Remove the segment of cache ``name``. True if there was one.

        Processes that have it open keep working on their mapping until they
        close it; the memory is freed when the last one does. Recorded in the
        audit log (``metis_shm.daemon.audit``).
        """
        with audit.operation("destroy", name) as info:
            removed = segment.destroy(name)
            if not removed:
                info["outcome"] = "absent"
        return removed

    def clear(self) -> None:
        """Remove every item (for every process). Recorded in the audit log."""
        with audit.operation("clear", self.name) as info:
            info["items_before"] = len(self)
            super().clear()

    @staticmethod
    def exists(name: str) -> bool:
        """Is there a segment for cache ``name``?"""
        return segment.exists(name)

    # ---- arrays ------------------------------------------------------------

    def view_array(self, key: str | bytes, default: Any = None) -> Any:
        """A read-only numpy array over the stored array, in the segment.

        No copy: the array's memory is the item's, pinned (as by ``view``)
        for as long as the array, or any array or buffer made from it, is
        alive. ``del`` it, or let it go out of scope, to unpin. Returns
        ``default`` on a miss; raises ``InvalidArgument`` if the key holds
        something other than an array (``get`` returns a writable copy).
        """
        arrays.numpy()  # without numpy, say so before reading anything
        # The array holds a buffer of the view's memoryview, which holds the
        # pin: leaving the block drops the pin only if no array was made.
        with self.view(key, _MISSING) as mv:
            if mv is _MISSING:
                return default
            kind = mv.obj.flags & KIND_MASK  # the view that exports mv
            if kind != KIND_NDARRAY:
                raise InvalidArgument(
                    f"{key!r} holds a value of kind {kind}, not a numpy array; get() reads it",
                    context={"key": repr(key)},
                )
            return arrays.array_from_buffer(mv, copy=False)

    # ---- introspection -----------------------------------------------------

    def stats(self) -> Stats:
        """Counters read from shared memory, totals and per shard (any process)."""
        header = self._header()
        return build_stats(
            self._raw_stats(), name=self.name, policy=self.policy,
            segment_size=header["segment_size"], pins=self._raw_pins(),
        )  # fmt: skip

    @property
    def policy(self) -> str:
        """The eviction policy recorded in the segment."""
        number = self._header()["policy"]
        return next(k for k, v in _engine.POLICIES.items() if v == number)

    @property
    def n_shards(self) -> int:
        """How many shards the segment has."""
        return int(self._header()["n_shards"])

    @property
    def capacity(self) -> int:
        """Bytes available to items (all shards)."""
        h = self._header()
        return int(h["n_shards"] * h["shard_arena_size"])

    @property
    def settings(self) -> dict[str, Any]:
        """The segment's header fields (layout, limits, creator)."""
        return dict(self._header())

    @property
    def daemon_alive(self) -> bool:
        """Has a metisd supervisor beaten its heartbeat in the last 10 seconds?"""
        import time

        h = self._header()
        return bool(h["daemon_pid"]) and time.time_ns() - h["daemon_heartbeat_ns"] < 10**10

    def _after_fork_in_child(self) -> None:
        # The parent's views and pins are the parent's, closed or not.
        self._forget_parent_pins()
        if not self.closed:
            self._claim_slot()


def _pin_limit(max_pinned: int | str | None, capacity: int) -> int:
    """Bytes one process may hold pinned in views: an eighth of the cache
    unless said otherwise, so a few processes' views cannot hold it all."""
    if max_pinned is None:
        return capacity // 8
    limit = parse_size(max_pinned, "max_pinned")
    if limit <= 0:
        raise InvalidConfig(
            f"max_pinned must be a positive size, not {max_pinned!r}",
            context={"field": "max_pinned", "value": max_pinned},
        )
    return limit


def _serializer_name(number: int) -> str:
    return next(k for k, v in SERIALIZERS.items() if v == number)


def _setting_name(field: str, value: Any) -> Any:
    """A header number as users spell it (policy 0 -> 'sieve')."""
    table = {"policy": _engine.POLICIES, "serializer": SERIALIZERS}.get(field)
    if table is None:
        return value
    return next((k for k, v in table.items() if v == value), value)


def _settings(
    *, capacity: int | str, policy: str, max_key_size: int, max_value_size: int | str,
    compress_threshold: int | str | None, serializer: str, default_ttl: float | str | None,
    max_entries: int | None,
) -> dict[str, int]:  # fmt: skip
    """Validate the arguments; the header fields they become."""
    if policy not in _engine.POLICIES:
        raise InvalidConfig(
            f"policy: {policy!r} is not valid; expected one of {sorted(_engine.POLICIES)}",
            context={"field": "policy", "value": policy},
        )
    if serializer not in SERIALIZERS:
        raise InvalidConfig(
            f"serializer: {serializer!r} is not valid; expected one of {sorted(SERIALIZERS)}",
            context={"field": "serializer", "value": serializer},
        )
    if not isinstance(max_key_size, int) or not 1 <= max_key_size <= 65536:
        raise InvalidConfig(
            f"max_key_size: {max_key_size!r} is not valid; expected 1 to 65536 bytes",
            context={"field": "max_key_size", "value": max_key_size},
        )
    if max_entries is not None and (not isinstance(max_entries, int) or max_entries < 1):
        raise InvalidConfig(
            f"max_entries: {max_entries!r} is not valid; expected a positive int or None",
            context={"field": "max_entries", "value": max_entries},
        )
    max_value = parse_size(max_value_size, "max_value_size")
    if not 1 <= max_value < 2**31:
        raise InvalidConfig(
            f"max_value_size: {max_value_size!r} is not valid; expected 1 B to 2 GiB",
            context={"field": "max_value_size", "value": max_value_size},
        )
    threshold = (
        0 if compress_threshold is None else parse_size(compress_threshold, "compress_threshold")
    )
    ttl = 0.0 if default_ttl is None else parse_duration(default_ttl, "default_ttl")
    if ttl < 0:
        raise InvalidConfig(
            f"default_ttl: {default_ttl!r} is not valid; expected a positive duration or None",
            context={"field": "default_ttl", "value": default_ttl},
        )
    parse_size(capacity, "capacity")
    return {
        "policy": _engine.POLICIES[policy],
        "max_key_size": max_key_size,
        "max_value_size": max_value,
        "compress_threshold": min(threshold, 2**32 - 1),
        "serializer": SERIALIZERS[serializer],
        "default_ttl_ns": int(ttl * 1e9),
    }


def _refuse_unasked_pickle(name: str, header: dict[str, Any], serializer: str) -> None:
    """Attaching to a pickle segment needs ``serializer="pickle"`` from the caller.

    Every other setting is taken from the segment as it is; this one is not,
    because unpickling runs code chosen by whoever wrote the value: a process
    must opt in to that, never inherit it from a header that any writer of the
    segment can change (docs/security.md).
    """
    if header["serializer"] == SERIALIZERS["pickle"] and serializer != "pickle":
        raise InvalidConfig(
            f"cache {name!r} stores pickled values; unpickling runs code chosen by "
            "whoever wrote them, so pass serializer='pickle' to accept that "
            "(only when every process that can write the segment is trusted)",
            context={"field": "serializer", "value": serializer, "segment": "pickle"},
        )


def attach_existing(name: str, *, accept_pickle: bool) -> Cache:
    """Attach to an existing cache with whatever serializer its segment has.

    For tools that read no values (stats, check, snapshot, restore, keys) a
    pickle segment is harmless: nothing gets unpickled. `accept_pickle` says
    whether the caller may also unpickle (``metis get --pickle``).
    """
    try:
        return Cache(name, create=False)
    except InvalidConfig as exc:
        if exc.context.get("segment") != "pickle" or not accept_pickle:
            raise
    return Cache(name, create=False, serializer="pickle")


def _warn_mismatch(
    name: str, header: dict[str, Any], plan: dict[str, int], settings: dict[str, int],
    *, explicit_capacity: bool, strict: bool,
) -> None:  # fmt: skip
    """Attaching keeps the segment's settings; say so when the caller asked otherwise
    (a warning, or with ``strict`` an ``InvalidConfig``).

    Only settings the caller changed from their defaults count: a worker that
    opens ``Cache("app")`` is not warned about what the daemon chose.
    """
    wanted = {k: v for k, v in settings.items() if _DEFAULT_SETTINGS.get(k) != v}
    if explicit_capacity:
        wanted["capacity"] = plan["capacity"]
    differ = {
        k: (_setting_name(k, header.get(k)), _setting_name(k, v))
        for k, v in wanted.items()
        if header.get(k) != v
    }
    if not differ:
        return
    listed = ", ".join(f"{k}={have} (asked {want})" for k, (have, want) in differ.items())
    if strict:
        raise InvalidConfig(
            f"cache {name!r} already exists with other settings: {listed}; open it without "
            f"them, or destroy it first (its contents are lost)",
            context={"name": name, "fields": sorted(differ)},
        )
    log.warning("cache %r already exists; keeping its settings, not the ones asked for: %s",
                name, listed)  # fmt: skip


_DEFAULT_SETTINGS = _settings(
    capacity=DEFAULT_CAPACITY,
    policy=DEFAULT_POLICY,
    max_key_size=DEFAULT_MAX_KEY_SIZE,
    max_value_size=DEFAULT_MAX_VALUE_SIZE,
    compress_threshold=DEFAULT_COMPRESS_THRESHOLD,
    serializer="msgpack",
    default_ttl=None,
    max_entries=None,
)


def _reclaim_slots_after_fork() -> None:
    for cache in list(_open_caches):
        cache._after_fork_in_child()


os.register_at_fork(after_in_child=_reclaim_slots_after_fork)
