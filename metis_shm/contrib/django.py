"""A Django cache backend on a Metis cache: every process of the machine
(gunicorn, uwsgi or runserver workers, Celery workers, management commands)
shares one cache in POSIX shared memory, with no server and no network hop.

Configure it the Django way::

    CACHES = {
        "default": {
            "BACKEND": "metis_shm.contrib.django.MetisCache",
            "LOCATION": "mysite",            # the Metis cache name (/dev/shm/metis.mysite)
            "TIMEOUT": 300,                   # seconds; None = forever, 0 = do not cache
            "KEY_PREFIX": "",
            "VERSION": 1,
            "OPTIONS": {"capacity": "256MiB"},  # any metis_shm.Cache keyword argument
        }
    }

As the near tier of Redis (docs/far-tier.md), name Redis in ``OPTIONS["FAR"]``
(a ``redis://`` URL, or a dict of ``FarSettings`` fields)::

    "OPTIONS": {"capacity": "256MiB",
                "FAR": {"url": "redis://10.0.0.5:6379/0", "prefix": "mysite:"}},

The backend then reads through and writes through Redis, and a metisd with a
far table for ``LOCATION`` keeps this machine's copy coherent.

Semantics follow Django's documented cache API (and its memcached backend
where the built-in backends differ):

* values are pickled (``serializer="pickle"``, as Django's own backends do);
  ``OPTIONS={"serializer": "msgpack"}`` stores MessagePack instead (safe to
  read from untrusted writers, but only plain data round-trips);
* ``str``, ``bytes`` and 64-bit ``int`` values are stored raw, so ``incr`` and
  ``decr`` are atomic across processes; other numbers fall back to a
  read-modify-write like ``BaseCache.incr``;
* a value too large for the segment is not stored: ``set`` removes the old
  value and returns, ``add`` returns ``False``, ``set_many`` lists the key;
* keys get ``CacheKeyWarning``s like memcached keys (``validate_key``); a key
  longer than the segment's ``max_key_size`` is stored under a SHA-256 digest;
* ``clear()`` empties the whole segment (like Redis ``FLUSHDB``), including
  items other programs stored in it;
* ``close()`` (called by Django after every request) keeps the mapping: the
  cache is opened once per process, lazily, and stays valid across ``fork()``;
* the ``a*`` methods run inline: an operation on shared memory never waits for
  I/O, so handing it to a thread would cost more than the call itself.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from django.core.cache.backends.base import (  # type: ignore[import-untyped]
    DEFAULT_TIMEOUT,
    BaseCache,
)
from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]

from metis_shm.cache import Cache
from metis_shm.errors import (
    CounterOverflow,
    InvalidConfig,
    InvalidName,
    KeyNotFound,
    NotACounter,
    ValueTooLarge,
)
from metis_shm.far.settings import FarSettings

__all__ = ["MetisCache"]

# Keyword arguments of metis_shm.Cache that OPTIONS may carry.
CACHE_OPTIONS = frozenset(
    {
        "capacity",
        "shards",
        "policy",
        "max_entries",
        "max_key_size",
        "max_value_size",
        "compress_threshold",
        "serializer",
        "mode",
        "create",
        "far",
    }
)
# Options Django documents for its own backends; harmless here. FAR is
# Cache's `far` spelled like them.
_DJANGO_OPTIONS = frozenset({"MAX_ENTRIES", "CULL_FREQUENCY", "FAR"})
# The engine keeps expiry times in 64-bit nanoseconds: longer timeouts are
# clamped to a century, which is "forever" for a cache.
MAX_TTL = 100 * 365 * 24 * 3600.0
_HASHED_PREFIX = "metis-django-sha256:"


class MetisCache(BaseCache):  # type: ignore[misc]
    """Django cache backend storing in the Metis cache named by ``LOCATION``."""

    def __init__(self, location: str, params: dict[str, Any]) -> None:
        super().__init__(params)
        name = location[0] if isinstance(location, (list, tuple)) and location else location
        if not name or not isinstance(name, str):
            raise ImproperlyConfigured(
                "MetisCache needs LOCATION: the Metis cache name, e.g. 'LOCATION': 'mysite'"
            )
        options = dict(params.get("OPTIONS") or {})
        unknown = set(options) - CACHE_OPTIONS - _DJANGO_OPTIONS
        if unknown:
            hint = ""
            if "default_ttl" in unknown:
                hint = " (set the default expiry with TIMEOUT)"
            raise ImproperlyConfigured(
                f"MetisCache OPTIONS: unknown {sorted(unknown)}{hint}; "
                f"expected metis_shm.Cache arguments: {sorted(CACHE_OPTIONS)}"
            )
        if "MAX_ENTRIES" in options and "max_entries" not in options:
            options["max_entries"] = int(options["MAX_ENTRIES"])
        options.pop("MAX_ENTRIES", None)
        options.pop("CULL_FREQUENCY", None)
        if "FAR" in options:
            if "far" in options:
                raise ImproperlyConfigured("MetisCache OPTIONS: give FAR or far, not both")
            options["far"] = options.pop("FAR")
        if options.get("far") is not None:
            try:
                # Checked now: a typo in the Redis settings fails at startup.
                options["far"] = FarSettings.build(options["far"])
            except InvalidConfig as exc:
                raise ImproperlyConfigured(f"MetisCache OPTIONS FAR: {exc}") from exc
        else:
            options.pop("far", None)
        options.setdefault("serializer", "pickle")
        if options["serializer"] not in ("pickle", "msgpack"):
            raise ImproperlyConfigured(
                f"MetisCache OPTIONS serializer: {options['serializer']!r}; "
                "expected 'pickle' (the default) or 'msgpack'"
            )
        from metis_shm.segment import validate_name

        try:
            self.location: str = validate_name(name)
        except InvalidName as exc:
            raise ImproperlyConfigured(f"MetisCache LOCATION: {exc}") from exc
        self.options = options
        #: The far tier's settings (OPTIONS["FAR"]), or None: no Redis behind.
        self.far: FarSettings | None = options.get("far")
        self._lock = threading.Lock()
        self._metis: Cache | None = None
        self._forever: float | None = None
        self._max_key_bytes = 0

    # ---- the Metis cache, opened lazily once per process ------------------

    @property
    def cache(self) -> Cache:
        """This process's ``metis_shm.Cache`` (opened, creating the segment, on first use).

        A Cache opened before ``fork()`` keeps working in the child, so a
        backend used in a preloading master is reused by its workers.
        """
        metis = self._metis
        if metis is not None and not metis.closed:
            return metis
        with self._lock:
            if self._metis is None or self._metis.closed:
                self._metis = self._open()
            return self._metis

    def _open(self) -> Cache:
        try:
            metis = Cache(self.location, **self.options)
        except (InvalidConfig, TypeError) as exc:
            raise ImproperlyConfigured(f"MetisCache OPTIONS: {exc}") from exc
        header = metis.settings
        wanted = self.options["serializer"]
        have = "pickle" if header["serializer"] == 1 else "msgpack"
        if have != wanted:
            metis.close()
            raise ImproperlyConfigured(
                f"Metis cache {self.location!r} exists with serializer={have!r}, but this "
                f"backend asks for {wanted!r}: set OPTIONS['serializer'] = {have!r}, or "
                f"destroy the segment (metis_shm.Cache.destroy({self.location!r}))"
            )
        # ttl=None means the segment's default_ttl: "forever" must not inherit it.
        self._forever = None if not header["default_ttl_ns"] else MAX_TTL
        self._max_key_bytes = int(header["max_key_size"])
        return metis

    def detach(self) -> None:
        """Detach this process from the segment (it stays for the others).

        Django's ``close()`` deliberately does not do this: it runs after
        every request, and the mapping is worth keeping.
        """
        with self._lock:
            if self._metis is not None:
                self._metis.close()
                self._metis = None

    def close(self, **kwargs: Any) -> None:
        """Called by Django at the end of each request: nothing to release."""

    async def aclose(self, **kwargs: Any) -> None:
        """See ``close()``."""

    # ---- keys and timeouts ------------------------------------------------

    def _key(self, key: Any, version: int | None) -> str:
        made: str = self.make_and_validate_key(key, version=version)
        if not self._max_key_bytes:
            self.cache  # noqa: B018 - opening reads the segment's max_key_size
        if isinstance(made, str) and len(made.encode()) > self._max_key_bytes:
            return _HASHED_PREFIX + hashlib.sha256(made.encode()).hexdigest()
        return made

    def _ttl(self, timeout: Any) -> float | None:
        """Django timeout (seconds, None = forever, <= 0 = expired) to a Metis ttl."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if timeout is None:
            self.cache  # noqa: B018 - opened: _forever is known
            return self._forever
        seconds = float(timeout)
        if seconds <= 0:
            return 0.0
        return min(seconds, MAX_TTL)

    # ---- BaseCache --------------------------------------------------------

    def add(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        made = self._key(key, version)
        ttl = self._ttl(timeout)
        metis = self.cache
        if ttl == 0.0:
            # Django: add() with an expired timeout "succeeds" when the key is
            # absent, and nothing is kept.
            return made not in metis
        try:
            return metis.add(made, value, ttl=ttl)
        except ValueTooLarge:
            return False

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        return self.cache.get(self._key(key, version), default)

    def set(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> None:
        made = self._key(key, version)
        try:
            self.cache.set(made, value, ttl=self._ttl(timeout))
        except ValueTooLarge:
            # like memcached: the write fails quietly and no stale value stays
            self.cache.delete(made)

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        made = self._key(key, version)
        return self.cache.touch(made, ttl=self._ttl(timeout))

    def delete(self, key: Any, version: int | None = None) -> bool:
        return self.cache.delete(self._key(key, version))

    def has_key(self, key: Any, version: int | None = None) -> bool:
        return self._key(key, version) in self.cache

    def get_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        made: dict[str | bytes, Any] = {self._key(k, version): k for k in keys}
        if not made:
            return {}
        found = self.cache.get_many(list(made))
        return {made[k]: v for k, v in found.items()}

    def set_many(
        self,
        data: Mapping[Any, Any],
        timeout: Any = DEFAULT_TIMEOUT,
        version: int | None = None,
    ) -> list[Any]:
        """Store every pair; return the keys that could not be stored (too large)."""
        made: dict[str | bytes, tuple[Any, Any]] = {
            self._key(k, version): (k, v) for k, v in data.items()
        }
        if not made:
            return []
        ttl = self._ttl(timeout)
        metis = self.cache
        try:
            pairs: dict[str | bytes, object] = {mk: v for mk, (_, v) in made.items()}
            metis.set_many(pairs, ttl=ttl)
            return []
        except ValueTooLarge:
            pass
        failed = []
        for mk, (k, v) in made.items():
            try:
                metis.set(mk, v, ttl=ttl)
            except ValueTooLarge:
                metis.delete(mk)
                failed.append(k)
        return failed

    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        made = [self._key(k, version) for k in keys]
        if made:
            self.cache.delete_many(made)

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        """Atomic for 64-bit integers; ``ValueError`` if the key is missing."""
        made = self._key(key, version)
        metis = self.cache
        try:
            return metis.incr(made, delta)
        except KeyNotFound:
            raise ValueError(f"Key '{made}' not found") from None
        except (NotACounter, CounterOverflow):
            pass
        # Not a raw 64-bit int (a float, Decimal, big int, or a value that
        # does not add): BaseCache's read-modify-write, keeping Python's rules.
        missing = object()
        value = metis.get(made, missing)
        if value is missing:
            raise ValueError(f"Key '{made}' not found")
        new_value = value + delta
        if not metis.replace(made, new_value, ttl=self._ttl(DEFAULT_TIMEOUT)):
            raise ValueError(f"Key '{made}' not found")
        return new_value

    def decr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        return self.incr(key, -delta, version=version)

    def clear(self) -> None:
        """Remove every item of the segment (every process sees it empty).

        With ``FAR``: this machine's near tier only; Redis keeps its keys
        (NearCache.clear: flushing the source of truth is not a cache's call).
        """
        self.cache.clear()

    # ---- async: inline (no I/O to wait for) --------------------------------

    async def aadd(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        return self.add(key, value, timeout, version)

    async def aget(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        return self.get(key, default, version)

    async def aset(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> None:
        self.set(key, value, timeout, version)

    async def atouch(
        self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        return self.touch(key, timeout, version)

    async def adelete(self, key: Any, version: int | None = None) -> bool:
        return self.delete(key, version)

    async def ahas_key(self, key: Any, version: int | None = None) -> bool:
        return self.has_key(key, version)

    async def aget_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        return self.get_many(keys, version)

    async def aset_many(
        self,
        data: Mapping[Any, Any],
        timeout: Any = DEFAULT_TIMEOUT,
        version: int | None = None,
    ) -> list[Any]:
        return self.set_many(data, timeout, version)

    async def adelete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        self.delete_many(keys, version)

    async def aincr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        return self.incr(key, delta, version)

    async def adecr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        return self.incr(key, -delta, version)

    async def aclear(self) -> None:
        self.clear()

    def __repr__(self) -> str:
        state = "open" if self._metis is not None and not self._metis.closed else "not opened"
        return f"<MetisCache {self.location!r} pid={os.getpid()} {state}>"
