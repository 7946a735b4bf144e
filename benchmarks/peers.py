"""The caches users pick instead of Metis, each behind the same small interface.

A ``Peer`` is set up once in the benchmark's parent process (``start``: a
server, a file, a shared segment), filled there (``fill``), and opened by every
forked worker (``open``), which gets the library's own bound ``get``/``set``
so the timed loop calls the library directly. Per-process caches (cachetools,
cachebox, theine) are created and filled inside each worker instead: with N
processes there are N independent copies, nothing is shared.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from peer_servers import memcached_server, redis_server
from peer_values import ends, from_ends, in_place

LMDB_MAP_SIZE = 8 << 30  # address space only; tmpfs pages are used as written
ULTRADICT_BUFFER = 64 << 20  # the update stream; when full, UltraDict writes a full dump
MEMCACHED_FILL_BATCH = 100
SMD_HEADROOM = 2  # shared-memory-dict needs its whole pickled dict to fit


@dataclass
class Handle:
    """What a worker's timed loop calls: the library's own get and set.

    ``mix_get``/``mix_set`` are used inside the 90/10 mix and by the final
    check (lmdb renews its read transaction after a write, to read it back,
    so its get must look the current transaction up); ``sync`` makes
    reads see every write that finished before it (the final check);
    ``release`` drops what a write-only loop must not hold (lmdb's read
    snapshot, which would pin every page the writes replace).
    """

    get: Callable[[Any], Any]
    set: Callable[[Any, bytes], Any]
    mix_get: Callable[[Any], Any] | None = None
    mix_set: Callable[[Any, bytes], Any] | None = None
    sync: Callable[[], None] = lambda: None
    release: Callable[[], None] = lambda: None
    close: Callable[[], None] = lambda: None


@dataclass
class Peer:
    """One contender: how to start it, fill it and open it in a worker."""

    name: str
    label: str
    shared: bool = True
    bytes_keys: bool = False
    libraries: tuple[str, ...] = ()
    binaries: tuple[str, ...] = ()  # server programs it needs on PATH
    _stack: ExitStack = field(default_factory=ExitStack, repr=False)
    _state: dict[str, Any] = field(default_factory=dict, repr=False)

    # What ``get`` returns for an absent key; theine returns (None, False).
    missing: ClassVar[Any] = None

    def found(self, value: bytes) -> Any:
        """What ``get`` returns for a key holding ``value``."""
        return value

    def unwrap(self, got: Any) -> Any:
        """The value inside what ``get`` returned."""
        return got

    @contextlib.contextmanager
    def started(self, workdir: Path, n_keys: int, max_size: int) -> Iterator[Peer]:
        """Set the peer up for the whole run and tear it down afterwards."""
        with self._stack:
            self.start(workdir, n_keys, max_size)
            yield self

    def start(self, workdir: Path, n_keys: int, max_size: int) -> None:
        """Start what the peer needs (server, files, segment); register cleanups."""

    def fill(self, items: dict[Any, bytes]) -> None:
        """Write every item from the parent (shared peers)."""
        raise NotImplementedError

    def open(self, index: int, fill: dict[Any, bytes]) -> Handle:
        """Attach in worker ``index`` (per-process peers create and fill their copy here)."""
        raise NotImplementedError


class MetisPeer(Peer):
    def start(self, workdir: Path, n_keys: int, max_size: int) -> None:
        from metis_shm import Cache

        name = f"bench-peers-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        cache = Cache(name, capacity="256MiB")
        self._state.update(name=name, cache=cache)
        self._stack.callback(Cache.destroy, name)
        self._stack.callback(cache.close)

    def fill(self, items: dict[Any, bytes]) -> None:
        cache = self._state["cache"]
        for k, v in items.items():
            cache.set(k, v)

    def open(self, index: int, fill: dict[Any, bytes]) -> Handle:
        from metis_shm import Cache

        cache = Cache(self._state["name"], create=False)
        return Handle(cache.get, cache.set, close=cache.close)


class _InPlace:
    """A zero-copy peer: its get returns only the stamps it read in place
    (peer_values.in_place), so the comparison costs every size the same."""

    def found(self, value: bytes) -> Any:
        return ends(value)

    def unwrap(self, got: Any) -> Any:
        return from_ends(got)


class MetisViewPeer(_InPlace, MetisPeer):
    """Metis read through Cache.view: the value's bytes in the segment, pinned
    for the read, never copied."""

    def open(self, index: int, fill: dict[Any, bytes]) -> Handle:
        from metis_shm import Cache

        cache = Cache(self._state["name"], create=False)
        view = cache.view

        def get(key: Any) -> bytes | None:
            with view(key) as mv:
                return in_place(mv)

        return Handle(get, cache.set, close=cache.close)


class RedisPeer(Peer):
    def __init__(self, name: str, label: str, unix: bool) -> None:
        super().__init__(name, label, libraries=("redis", "hiredis"), binaries=("redis-server",))
        self.unix = unix

    def start(self, workdir: Path, n_keys: int, max_size: int) -> None:
        self._state["server"] = self._stack.enter_context(redis_server(workdir))

    def fill(self, items: dict[Any, bytes]) -> None:
        client = self._state["server"].client(unix=self.unix)
        with client:
            pipe = client.pipeline(transaction=False)
            for k, v in items.items():
                pipe.set(k, v)
            pipe.execute()

    def open(self, index: int, fill: dict[Any, bytes]) -> Handle:
        client = self._state["server"].client(unix=self.unix)
        return Handle(client.get, client.set, close=client.close)


class MemcachedPeer(Peer):
    def __init__(self, name: str, label: str, unix: bool) -> None:
        super().__init__(name, label, libraries=("pymemcache",), binaries=("memcached",))
        self.unix = unix

    def start(self, workdir: Path, n_keys: int, max_size: int) -> None:
        server = memcached_server(workdir, unix=self.unix)
        self._state["server"] = self._stack.enter_context(server)

    def fill(self, items: dict[Any, bytes]) -> None:
        client = self._state["server"].client()
        pairs = list(items.items())
        try:
            # set_many sends all its commands before reading any answer: in one
            # piece, the server stops reading once its answers fill the socket.
            for start in range(0, len(pairs), MEMCACHED_FILL_BATCH):
                failed = client.set_many(
                    dict(pairs[start : start + MEMCACHED_FILL_BATCH]), noreply=False
                )
                if failed:
                    raise RuntimeError(f"memcached refused {len(failed)} keys")
        finally:
            client.close()

    def open(self, index: int, fill: dict[Any, bytes]) -> Handle:
        client = self._state["server"].client()
        # pymemcache's set is noreply by default: it does not wait for "STORED"
        return Handle(client.get, client.set, close=client.close)


class DiskcachePeer(Peer):
    def start(self, workdir: Path, n_keys: int, max_size: int) -> None:
        self._state["dir"] = str(workdir / "diskcache")

    def fill(self, items: dict[Any, bytes]) -> None:
        import diskcache

        with diskcache.Cache(self._state["dir"]) as cache, cache.transact():
            for k, v in items.items():
                cache.set(k, v)

    def open(self, index: int, fill: dict[Any, bytes]) -> Handle:
        import diskcache

        cache = diskcache.Cache(self._state["dir"])
        return Handle(cache.get, cache.set, close=cache.close)


class LmdbPeer(Peer):
    """lmdb as a cache user runs it: fsync off, one reused read transaction for
    gets, one write transaction per set."""

    def start(self, workdir: Path, n_keys: int, max_size: int) -> None:
        self._state["dir"] = str(workdir / "lmdb")

    def _env(self) -> Any:
        import lmdb

        return lmdb.open(self._state["dir"], map_size=LMDB_MAP_SIZE, sync=False, metasync=False)

    def fill(self, items: dict[Any, bytes]) -> None:
        env = self._env()
        try:
            with env.begin(write=True) as txn:
                for k, v in items.items():
                    txn.put(k, v)
        finally:
            env.close()

    def open(self, index: int, fill: dict[Any, bytes]) -> Handle:
        env = self._env()
        reader = {"txn": env.begin()}
        first = reader["txn"]

        def renew() -> None:  # lmdb-py has no renew: a read txn sees its start snapshot only
            reader["txn"].abort()
            reader["txn"] = env.begin()

        def current_get(key: bytes) -> Any:
            return reader["txn"].get(key)

        def put(key: bytes, value: bytes) -> None:
            with env.begin(write=True) as txn:
                txn.put(key, value)

        def put_then_renew(key: bytes, value: bytes) -> None:
            put(key, value)
            renew()

        def close() -> None:
            reader["txn"].abort()
            env.close()

        return Handle(
            get=first.get,  # get-hit and get-miss: the reused read transaction itself
            set=put,
            mix_get=current_get,
            mix_set=put_then_renew,
            sync=renew,
            release=first.abort,  # a set-only loop must not pin the snapshot's pages
            close=close,
        )


class LmdbBuffersPeer(_InPlace, LmdbPeer):
    """lmdb's zero-copy read: a read transaction with buffers=True per get,
    as a view is a transaction of one key (a reused buffers transaction would
    hand out buffers that each later get invalidates)."""

    def open(self, index: int, fill: dict[Any, bytes]) -> Handle:
        env = self._env()

        def get(key: bytes) -> bytes | None:
            with env.begin(buffers=True) as txn:
                return in_place(txn.get(key))

        def put(key: bytes, value: bytes) -> None:
            with env.begin(write=True) as txn:
                txn.put(key, value)

        return Handle(get=get, set=put, close=env.close)


class UltraDictPeer(Peer):
    """UltraDict as its docs recommend: the default multiprocessing.RLock with
    workers forked from the creator (``shared_lock=False``), or the
    ``shared_lock=True`` lock (needs the ``atomics`` package) for processes
    that attach by name."""

    def __init__(self, name: str, label: str, shared_lock: bool) -> None:
        libs = ("UltraDict", "atomics") if shared_lock else ("UltraDict",)
        super().__init__(name, label, libraries=libs)
        self.shared_lock = shared_lock

    def start(self, workdir: Path, n_keys: int, max_size: int) -> None:
        from UltraDict import UltraDict

        if self.shared_lock:
            try:
                import atomics  # noqa: F401
            except ImportError as exc:
                raise RuntimeError(
                    "UltraDict(shared_lock=True) needs the atomics package: pip install atomics"
                ) from exc
        name = f"bp{os.getpid()}{uuid.uuid4().hex[:6]}"
        ud = UltraDict(
            name=name, create=True, buffer_size=ULTRADICT_BUFFER, shared_lock=self.shared_lock
        )
        self._state.update(name=name, ud=ud)
        self._stack.callback(ud.close, unlink=True)

    def fill(self, items: dict[Any, bytes]) -> None:
        self._state["ud"].update(items)

    def open(self, index: int, fill: dict[Any, bytes]) -> Handle:
        from UltraDict import UltraDict

        if self.shared_lock:
            ud = UltraDict(name=self._state["name"], create=False, shared_lock=True)
        else:
            ud = self._state["ud"]  # inherited through fork, with its RLock
        return Handle(ud.get, ud.__setitem__)


class SharedMemoryDictPeer(Peer):
    """shared-memory-dict as it installs (no SHARED_MEMORY_USE_LOCK): every get
    unpickles the whole dict, every set pickles it back."""

    def start(self, workdir: Path, n_keys: int, max_size: int) -> None:
        from shared_memory_dict import SharedMemoryDict

        name = f"bp{os.getpid()}{uuid.uuid4().hex[:6]}"
        size = SMD_HEADROOM * n_keys * (max_size + 64) + (1 << 20)
        smd = SharedMemoryDict(name=name, size=size)
        self._state.update(name=name, size=size, smd=smd)
        self._stack.callback(smd.shm.unlink)
        self._stack.callback(smd.shm.close)

    def fill(self, items: dict[Any, bytes]) -> None:
        smd = self._state["smd"]
        smd.clear()
        smd.update(items)

    def open(self, index: int, fill: dict[Any, bytes]) -> Handle:
        from shared_memory_dict import SharedMemoryDict

        smd = SharedMemoryDict(name=self._state["name"], size=self._state["size"])
        return Handle(smd.get, smd.__setitem__)


class ManagerDictPeer(Peer):
    def start(self, workdir: Path, n_keys: int, max_size: int) -> None:
        manager = mp.get_context("fork").Manager()
        self._stack.callback(manager.shutdown)
        self._state["dict"] = manager.dict()

    def fill(self, items: dict[Any, bytes]) -> None:
        self._state["dict"].update(items)

    def open(self, index: int, fill: dict[Any, bytes]) -> Handle:
        proxy = self._state["dict"]  # a proxy inherited through fork reconnects by itself
        return Handle(proxy.get, proxy.__setitem__)


class CachetoolsPeer(Peer):
    def open(self, index: int, fill: dict[Any, bytes]) -> Handle:
        import cachetools

        cache: cachetools.LRUCache[Any, bytes] = cachetools.LRUCache(maxsize=2 * len(fill))
        cache.update(fill)
        return Handle(cache.get, cache.__setitem__)


class CacheboxPeer(Peer):
    def open(self, index: int, fill: dict[Any, bytes]) -> Handle:
        import cachebox

        cache = cachebox.LRUCache(maxsize=2 * len(fill))
        cache.update(fill)
        return Handle(cache.get, cache.__setitem__)


class TheinePeer(Peer):
    missing: ClassVar[Any] = (None, False)

    def found(self, value: bytes) -> Any:
        return (value, True)

    def unwrap(self, got: Any) -> Any:
        return got[0] if isinstance(got, tuple) else got

    def open(self, index: int, fill: dict[Any, bytes]) -> Handle:
        import theine

        cache = theine.Cache(2 * len(fill))
        for k, v in fill.items():
            cache.set(k, v)
        return Handle(cache.get, cache.set, close=cache.close)


PER_PROCESS = "per-process, not shared"


def all_peers() -> list[Peer]:
    """Every contender, Metis first, in the order of the report."""
    return [
        MetisPeer("metis", "Metis (metis_shm.Cache)", libraries=()),
        MetisViewPeer("metis-view", "Metis, Cache.view (in place)"),
        LmdbPeer("lmdb", "lmdb, reused read txn", bytes_keys=True, libraries=("lmdb",)),
        LmdbBuffersPeer(
            "lmdb-buffers", "lmdb, buffers=True txn per get", bytes_keys=True, libraries=("lmdb",)
        ),
        UltraDictPeer("ultradict", "UltraDict (RLock, forked)", shared_lock=False),
        UltraDictPeer("ultradict-shared-lock", "UltraDict (shared_lock=True)", shared_lock=True),
        DiskcachePeer("diskcache", "diskcache.Cache", libraries=("diskcache",)),
        RedisPeer("redis-unix", "Redis, unix socket", unix=True),
        RedisPeer("redis-tcp", "Redis, loopback TCP", unix=False),
        MemcachedPeer("memcached-unix", "memcached, unix socket", unix=True),
        MemcachedPeer("memcached-tcp", "memcached, loopback TCP", unix=False),
        SharedMemoryDictPeer(
            "shared-memory-dict", "SharedMemoryDict", libraries=("shared-memory-dict",)
        ),
        ManagerDictPeer("manager-dict", "multiprocessing.Manager().dict()"),
        CachetoolsPeer(
            "cachetools", "cachetools.LRUCache", shared=False, libraries=("cachetools",)
        ),
        CacheboxPeer("cachebox", "cachebox.LRUCache", shared=False, libraries=("cachebox",)),
        TheinePeer("theine", "theine.Cache", shared=False, libraries=("theine",)),
    ]
