"""``memoize``: cache a function's results in a shared ``Cache``, with
cross-process single-flight.

    >>> @memoize(cache, ttl=60)
    ... def report(user_id: int) -> dict: ...

Every process that decorates the same function over the same cache shares its
results. When several processes (or threads, or tasks) miss the same key at
once, one of them computes and the others wait for its result:

1. Look up the result key. A hit returns at once (``None`` results count: a
   stored ``None`` is told apart from a missing key).
2. On a miss, ``cache.add(lease_key, lease, ttl=lock_timeout)``. ``add`` is an
   atomic "only if absent" across processes, so exactly one caller wins the
   lease. The lease names its owner: pid, the process's start time (so a
   recycled pid is not mistaken for the owner), its host (boot id and pid
   namespace: where that pid means something) and a random token. On a
   near cache of Redis (``Cache(name, far=...)``) ``add`` is Redis's
   ``SET NX PX``: one caller in the whole fleet wins, and the lease expires
   in Redis ``lock_timeout`` after it was taken, whoever dies.
3. The winner runs the function, ``set``s the result, then deletes its lease.
4. The others poll the result key with exponential backoff (``poll`` doubling
   up to ``max_poll``), for at most ``wait`` seconds (default ``lock_timeout``):
   * the result appears: return it;
   * the lease is gone and still no result (the owner raised, or the lease was
     removed): compute locally, without a lease;
   * the lease's owner is dead (psutil: no such process, a zombie, or another
     process with that pid) or the lease expired: take over (below). Only a
     lease of this host is judged by its pid; another machine's stands
     until it expires;
   * ``wait`` runs out: compute locally (a *fallback*) and store the result.

Taking over a dead owner's lease, and why the race is safe. Each waiter that
judges the owner dead first ``add``s a take-over marker named after the dead
lease's token; only one waiter per dead lease gets it. That waiter ``pop``s the
lease: if it popped the dead lease (or nothing), it ``add``s its own and
computes; if it popped a live lease (the dead one expired and a new caller
took the key in between), it puts that lease back and goes on waiting. The
remaining window: between that ``pop`` and the put-back, the key has no lease,
so a new caller may win a lease of its own, or a waiter may see "no lease, no
result" and compute locally. At worst the function then runs twice (or a few
times) for one key; a caller never gets a wrong value, because results are
only ever read from the result key, which only holds what the function
returned for exactly those arguments.

The lease lives ``lock_timeout`` seconds: a function that runs longer than
that loses its exclusivity (another caller can then win the lease and run it
too). Choose ``lock_timeout`` above the function's longest expected run.

Keys are stable across processes and interpreters (never ``hash()``): the
canonical MessagePack encoding of the namespace (default
``<module>.<qualname>``) and the bound arguments, hashed with BLAKE2b:
``memo:<namespace>:<32 hex digits>``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import inspect
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, cast

import msgspec
import psutil

from metis_shm.cache import Cache
from metis_shm.errors import ValueTooLarge

log = logging.getLogger("metis_shm")

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)

KEY_PREFIX = "memo"
LEASE_PREFIX = "memo-lease"
DEFAULT_LOCK_TIMEOUT = 10.0
DEFAULT_POLL = 0.001
DEFAULT_MAX_POLL = 0.01

_MISSING: Any = object()
_ENCODER = msgspec.msgpack.Encoder()


# --------------------------------------------------------------------------
# Stable keys
# --------------------------------------------------------------------------


def _canon(value: Any, typed: bool) -> Any:
    """A msgpack-encodable form of ``value`` that is the same in every
    interpreter: containers tagged with their kind, unordered ones sorted by
    the encoding of their members, other objects by type name and ``repr``."""
    t = type(value)
    if value is None or t is str or t is bytes:
        return value
    if t is bool or t is int:
        if typed:
            return ["b" if t is bool else "i", int(value)]
        return int(value)  # like functools.lru_cache: True == 1 == 1.0
    if t is float:
        if not typed and value.is_integer():
            return int(value)
        return ["f", value] if typed else value
    if t is tuple or t is list:
        return ["t" if t is tuple else "l", [_canon(v, typed) for v in value]]
    if t is dict:
        items = [[_canon(k, typed), _canon(v, typed)] for k, v in value.items()]
        items.sort(key=_ENCODER.encode)
        return ["d", items]
    if t is set or t is frozenset:
        members = [_canon(v, typed) for v in value]
        members.sort(key=_ENCODER.encode)
        return ["s" if t is set else "fs", members]
    if t is bytearray or t is memoryview:
        return ["ba", bytes(value)]
    if cast(Any, t).__repr__ is object.__repr__:
        raise TypeError(
            f"memoize: cannot build a stable key from a {t.__module__}.{t.__qualname__} "
            f"(its repr shows a memory address, which differs between processes); "
            f"give it a __repr__ that depends on its value only, or pass key=..."
        )
    # Subclasses of builtins (IntEnum, str Enum, NamedTuple...) and every other
    # object: type name plus repr (datetime, Decimal, UUID, Path, dataclasses...).
    return ["r", f"{t.__module__}.{t.__qualname__}", repr(value)]


def make_key(namespace: str, arguments: Any, *, typed: bool = False) -> str:
    """The result key for ``arguments`` (any canonicalisable value) under
    ``namespace``: ``memo:<namespace>:<blake2b hex>``. The same in every
    process and interpreter, whatever ``PYTHONHASHSEED`` is."""
    payload = _ENCODER.encode([namespace, bool(typed), _canon(arguments, typed)])
    digest = hashlib.blake2b(payload, digest_size=16).hexdigest()
    return f"{KEY_PREFIX}:{namespace}:{digest}"


def lease_key_for(result_key: str) -> str:
    """The key of the single-flight lease that guards ``result_key``."""
    return LEASE_PREFIX + result_key[len(KEY_PREFIX) :]


# --------------------------------------------------------------------------
# Leases
# --------------------------------------------------------------------------

_self_pid = 0
_self_ctime = 0.0
_this_host: str | None = None


def _host_id() -> str:
    """Where a lease's pid means something: this boot of this machine (its
    kernel's boot id) and this pid namespace (a container has its own)."""
    global _this_host
    if _this_host is None:
        try:
            with open("/proc/sys/kernel/random/boot_id") as f:
                boot = f.read().strip()
        except OSError:
            boot = socket.gethostname()
        try:
            pid_ns = os.readlink("/proc/self/ns/pid")
        except OSError:
            pid_ns = ""
        _this_host = f"{boot}/{pid_ns}"
    return _this_host


def _own_identity() -> tuple[int, float]:
    """This process's pid and start time (recomputed after a fork)."""
    global _self_pid, _self_ctime
    pid = os.getpid()
    if pid != _self_pid:
        _self_ctime = psutil.Process(pid).create_time()
        _self_pid = pid
    return pid, _self_ctime


def _new_lease() -> dict[str, Any]:
    pid, ctime = _own_identity()
    return {
        "pid": pid,
        "ctime": ctime,
        "host": _host_id(),
        "start": time.time(),
        "token": secrets.token_hex(8),
    }


def _owner_alive(lease: Any) -> bool:
    """Is the process named by ``lease`` still the one that took it, and running?

    A lease taken on another host (another machine of a far tier, or another
    pid namespace) names a pid that means nothing here: it counts as alive,
    and ends when it expires (``lock_timeout``; in Redis, its PX).
    """
    if not isinstance(lease, dict):
        return False
    host = lease.get("host")
    if host is not None and host != _host_id():
        return True
    pid = lease.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        ctime = lease.get("ctime")
        if isinstance(ctime, float | int) and abs(proc.create_time() - ctime) > 0.02:
            return False  # the pid was recycled by another process
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True  # exists, belongs to someone else: assume alive


def _same_lease(a: Any, b: Any) -> bool:
    return isinstance(a, dict) and isinstance(b, dict) and a.get("token") == b.get("token")


# --------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------


@dataclasses.dataclass
class MemoStats:
    """What one process's calls of a memoized function did (not shared).

    * ``hits``: the result was in the cache at the first look.
    * ``misses``: it was not.
    * ``computed``: the function body ran in this process (every path).
    * ``waited``: a miss answered by another caller's result after waiting.
    * ``took_over``: a lease taken from a dead (or expired) owner.
    * ``fallbacks``: computed without a lease: ``wait`` ran out, or the
      owner left without a result (it raised).
    """

    hits: int = 0
    misses: int = 0
    computed: int = 0
    waited: int = 0
    took_over: int = 0
    fallbacks: int = 0

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class Memoized(Protocol[P, R_co]):
    """What ``memoize`` returns: the function, plus cache controls."""

    stats: MemoStats
    namespace: str

    @property
    def __wrapped__(self) -> Callable[P, R_co]: ...

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    def cache_key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The result key these arguments map to."""
        ...

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """Remove the cached result for these arguments (all processes)."""
        ...

    def cache_clear(self) -> int:
        """Remove every cached result of this function (all processes)."""
        ...


# --------------------------------------------------------------------------
# The single-flight protocol, as a generator of sleeps so that the sync and
# async wrappers share it: the generator yields ("sleep", seconds) or
# ("compute", reason), and returns the value when another caller's result
# was found.
# --------------------------------------------------------------------------

_Step = tuple[str, float]
_SLEEP = "sleep"
_COMPUTE_OWNER = "owner"
_COMPUTE_LOCAL = "local"


@dataclasses.dataclass
class _Flight:
    key: str
    lease_key: str
    lease: dict[str, Any] | None = None  # ours, when we own it
    value: Any = _MISSING


class _Engine(Generic[P]):
    def __init__(
        self,
        cache: Cache,
        func: Callable[..., Any],
        *,
        ttl: float | None,
        key: Callable[..., object] | None,
        namespace: str | None,
        lock_timeout: float,
        wait: float | None,
        poll: float,
        max_poll: float,
        typed: bool,
    ) -> None:
        if lock_timeout <= 0:
            raise ValueError(f"memoize: lock_timeout must be > 0, not {lock_timeout!r}")
        if poll <= 0 or max_poll <= 0:
            raise ValueError("memoize: poll and max_poll must be > 0")
        from metis_shm.far.near import NearCache  # not at import: most caches are not

        self.cache = cache
        self.near = isinstance(cache, NearCache)  # the near tier of Redis
        self.func = func
        self.ttl = ttl
        self.key_func = key
        self.namespace = namespace or f"{func.__module__}.{func.__qualname__}"
        self.lock_timeout = float(lock_timeout)
        self.wait = self.lock_timeout if wait is None else float(wait)
        self.poll = float(poll)
        self.max_poll = max(float(max_poll), self.poll)
        self.typed = typed
        self.stats = MemoStats()
        self._stats_lock = threading.Lock()
        try:
            self.signature: inspect.Signature | None = inspect.signature(func)
        except (TypeError, ValueError):
            self.signature = None

    def count(self, field: str) -> None:
        with self._stats_lock:
            setattr(self.stats, field, getattr(self.stats, field) + 1)

    # ---- keys ----------------------------------------------------------------

    def key_for(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        if self.key_func is not None:
            return make_key(self.namespace, self.key_func(*args, **kwargs), typed=self.typed)
        if self.signature is not None:
            try:
                bound = self.signature.bind(*args, **kwargs)
            except TypeError:
                pass  # let the call itself raise the TypeError
            else:
                bound.apply_defaults()  # f(1), f(x=1) and f() with x=1 share a key
                return make_key(self.namespace, bound.arguments, typed=self.typed)
        return make_key(self.namespace, [list(args), kwargs], typed=self.typed)

    # ---- protocol ------------------------------------------------------------

    def lookup(self, flight: _Flight) -> bool:
        value = self.cache.get(flight.key, _MISSING)
        if value is _MISSING:
            return False
        flight.value = value
        return True

    def acquire(self, flight: _Flight) -> bool:
        """Try to win the lease; True if we own it and the result is still missing."""
        lease = _new_lease()
        if not self.cache.add(flight.lease_key, lease, ttl=self.lock_timeout):
            return False
        flight.lease = lease
        if self.near:
            # This machine's near tier may still hold an absent marker for the
            # result another machine just stored (its invalidation in flight):
            # drop it, so the look below asks Redis, the truth.
            self.cache.invalidate(flight.key)
        if self.lookup(flight):
            # Another caller stored the result between our miss and our add.
            self.release(flight)
            return False
        return True

    def steps(self, flight: _Flight) -> Iterator[_Step]:
        """Drive a miss: yields sleeps, then ("owner"|"local", 0) when this
        caller must compute; returns with ``flight.value`` set otherwise."""
        deadline = time.monotonic() + self.wait
        delay = self.poll
        if self.acquire(flight):
            yield _COMPUTE_OWNER, 0.0
            return
        while True:
            if flight.value is not _MISSING or self.lookup(flight):
                self.count("waited")
                return
            current = self.cache.get(flight.lease_key, _MISSING)
            if current is _MISSING:
                # The owner finished (it stores the result before it deletes
                # its lease), or the lease expired or was removed.
                if self.lookup(flight):
                    self.count("waited")
                    return
                if self.acquire(flight):
                    self.count("took_over")
                    yield _COMPUTE_OWNER, 0.0
                    return
                continue  # another caller just took it, or just stored the result
            if isinstance(current, dict) and current.get("failed"):
                # The owner raised: every waiter runs the function itself (and
                # gets its own value or its own exception).
                if self.lookup(flight):
                    self.count("waited")
                    return
                self.count("fallbacks")
                yield _COMPUTE_LOCAL, 0.0
                return
            if not _owner_alive(current) and self.take_over(flight, current):
                yield _COMPUTE_OWNER, 0.0
                return
            now = time.monotonic()
            if now >= deadline:
                log.debug(
                    "memoize %s: no result after %.3gs; computing here", flight.key, self.wait
                )
                self.count("fallbacks")
                yield _COMPUTE_LOCAL, 0.0
                return
            yield _SLEEP, min(delay, deadline - now)
            delay = min(delay * 2, self.max_poll)

    def take_over(self, flight: _Flight, dead: Any) -> bool:
        """Replace a dead owner's lease by ours; True if we now own the key."""
        token = dead.get("token") if isinstance(dead, dict) else None
        marker = f"{flight.lease_key}:takeover:{token}"
        if not self.cache.add(marker, os.getpid(), ttl=self.lock_timeout):
            return False  # another waiter is taking over this lease
        popped = self.cache.pop(flight.lease_key, None)
        if popped is not None and not _same_lease(popped, dead):
            # A live lease taken after the dead one expired: give it back.
            self.cache.add(flight.lease_key, popped, ttl=self.lock_timeout)
            return False
        if not self.acquire(flight):
            return False
        log.info(
            "memoize %s: owner pid %s died holding the lease; pid %s takes over",
            flight.key,
            dead.get("pid") if isinstance(dead, dict) else "?",
            os.getpid(),
        )
        self.count("took_over")
        return True

    def store(self, flight: _Flight, value: Any) -> None:
        try:
            self.cache.set(flight.key, value, ttl=self.ttl)
        except ValueTooLarge as exc:
            log.warning("memoize %s: result not cached: %s", flight.key, exc)

    def release(self, flight: _Flight, *, failed: bool = False) -> None:
        """Give up our lease (only ours: tokens are compared first).

        After a success the lease is deleted: the result is already stored,
        so whoever sees the lease gone finds it. After a failure the lease
        becomes a short-lived tombstone that tells the waiters to run the
        function themselves instead of waiting for a result that won't come.
        """
        lease, flight.lease = flight.lease, None
        if lease is None:
            return
        current = self.cache.get(flight.lease_key, _MISSING)
        if not _same_lease(current, lease):
            return  # ours expired; somebody else's lease is not ours to touch
        # Between that get and this write another caller may replace our
        # expired lease; overwriting theirs only means their waiters read the
        # result we stored, or compute it once more.
        if failed:
            tombstone = {**lease, "failed": True}
            self.cache.set(flight.lease_key, tombstone, ttl=min(self.lock_timeout, 1.0))
        else:
            self.cache.delete(flight.lease_key)

    def clear(self) -> int:
        keys = list(self.cache.keys(prefix=f"{KEY_PREFIX}:{self.namespace}:"))
        return self.cache.delete_many(keys)


def memoize(
    cache: Cache,
    *,
    ttl: float | None = None,
    key: Callable[..., object] | None = None,
    namespace: str | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    wait: float | None = None,
    poll: float = DEFAULT_POLL,
    max_poll: float = DEFAULT_MAX_POLL,
    typed: bool = False,
) -> Callable[[Callable[P, R]], Memoized[P, R]]:
    """Cache a function's results in ``cache``, shared by every process.

    * ``ttl``: seconds a result lives (``None``: the cache's ``default_ttl``).
    * ``key``: called with the function's arguments; its return value is
      hashed instead of the arguments (for arguments without a stable repr).
    * ``namespace``: replaces ``<module>.<qualname>`` in keys (a function in
      ``__main__``, a rename, or a version bump that drops old results).
    * ``lock_timeout``: seconds the single-flight lease lives.
    * ``wait``: seconds a caller waits for another's result before computing
      itself (default ``lock_timeout``).
    * ``poll`` / ``max_poll``: first and longest interval between looks.
    * ``typed``: ``True`` keys ``f(1)``, ``f(1.0)`` and ``f(True)`` apart.

    Works on ``def`` and ``async def`` functions.
    """

    def decorate(func: Callable[P, R]) -> Memoized[P, R]:
        engine: _Engine[P] = _Engine(
            cache, func, ttl=ttl, key=key, namespace=namespace, lock_timeout=lock_timeout,
            wait=wait, poll=poll, max_poll=max_poll, typed=typed,
        )  # fmt: skip
        if inspect.iscoroutinefunction(func):
            wrapper: Any = _async_wrapper(engine, cast("Callable[..., Awaitable[Any]]", func))
        else:
            wrapper = _sync_wrapper(engine, func)
        wrapper = functools.wraps(func)(wrapper)
        wrapper.stats = engine.stats
        wrapper.namespace = engine.namespace
        wrapper.cache_key = lambda *a, **kw: engine.key_for(a, kw)
        wrapper.invalidate = lambda *a, **kw: cache.delete(engine.key_for(a, kw))
        wrapper.cache_clear = engine.clear
        return cast("Memoized[P, R]", wrapper)

    return decorate


def _sync_wrapper(engine: _Engine[Any], func: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result_key = engine.key_for(args, kwargs)
        flight = _Flight(result_key, lease_key_for(result_key))
        if engine.lookup(flight):
            engine.count("hits")
            return flight.value
        engine.count("misses")
        for action, seconds in engine.steps(flight):
            if action == _SLEEP:
                time.sleep(seconds)
                continue
            engine.count("computed")
            try:
                value = func(*args, **kwargs)
            except BaseException:
                engine.release(flight, failed=True)
                raise
            try:
                engine.store(flight, value)
            finally:
                engine.release(flight)
            return value
        return flight.value

    return wrapper


def _async_wrapper(
    engine: _Engine[Any], func: Callable[..., Awaitable[Any]]
) -> Callable[..., Awaitable[Any]]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        result_key = engine.key_for(args, kwargs)
        flight = _Flight(result_key, lease_key_for(result_key))
        if engine.lookup(flight):
            engine.count("hits")
            return flight.value
        engine.count("misses")
        for action, seconds in engine.steps(flight):
            if action == _SLEEP:
                await asyncio.sleep(seconds)
                continue
            engine.count("computed")
            try:
                value = await func(*args, **kwargs)
            except BaseException:  # also cancellation: a cancelled owner frees the key
                engine.release(flight, failed=True)
                raise
            try:
                engine.store(flight, value)
            finally:
                engine.release(flight)
            return value
        return flight.value

    return wrapper


__all__ = ["MemoStats", "Memoized", "lease_key_for", "make_key", "memoize"]
