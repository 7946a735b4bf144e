"""A Flask-Caching backend on a Metis cache: every worker process of the app
(gunicorn, uWSGI, ...) shares one cache in shared memory.

Configure it the Flask-Caching way::

    app.config.update(
        CACHE_TYPE="metis_shm.contrib.flask.MetisCache",
        CACHE_DEFAULT_TIMEOUT=300,          # seconds; 0 = never expire
        CACHE_KEY_PREFIX="myapp:",          # Flask-Caching's default is "flask_cache_"
        CACHE_METIS_NAME="myapp",           # segment /dev/shm/metis.myapp
        CACHE_OPTIONS={"capacity": "64MiB"},  # any other Cache(...) keyword
        CACHE_METIS_FAR={"url": "redis://10.0.0.5:6379/0", "prefix": "myapp:"},  # optional
    )
    cache = flask_caching.Cache(app)

``CACHE_METIS_FAR`` (a ``redis://`` URL or a dict of ``FarSettings`` fields)
makes the cache the near tier of Redis (docs/far-tier.md): reads go through
to Redis, writes go to Redis first, and a metisd with a far table for the
cache keeps this machine's copy coherent.

Timeouts follow Flask-Caching (and cachelib): ``None`` means the default
timeout, ``0`` means never expire, a positive number (or ``timedelta``) is
seconds, a negative one means "already expired" (``set`` removes the key).

Values: ints (not bools) are stored as Metis counters so that ``inc``/``dec``
are atomic across processes; everything else is pickled, like Flask-Caching's
Redis and Memcached backends do, so ``cache.cached`` and ``cache.memoize``
can store any Python object. Only processes of the same user can open the
segment (mode ``0o600`` by default); do not share it with code you would not
let unpickle data.

``CACHE_SERIALIZER`` (a ``cachelib.serializers.BaseSerializer``, e.g.
``JSONSerializer``) is honoured: every value except a 64-bit int goes
through its ``dumps`` and is stored as the bytes it returns, and is read back
through its ``loads``; nothing is pickled then. Ints stay Metis counters (as
cachelib's Redis serializer keeps them plain for ``INCRBY``), so ``inc`` and
``dec`` stay atomic. A value the serializer cannot encode (``dumps`` returns
``None``) is not stored: ``set`` removes the old value and returns ``False``.
"""

from __future__ import annotations

import datetime as dt
import math
import pickle
from typing import Any

from flask import Flask
from flask_caching.backends.base import BaseCache

from metis_shm.cache import Cache
from metis_shm.far.settings import FarSettings

__all__ = ["DEFAULT_NAME", "MetisCache", "metis"]

DEFAULT_NAME = "flask-cache"
# Cache(...) keywords that can be given through CACHE_OPTIONS / CACHE_ARGS.
_CACHE_KWARGS = frozenset(
    {
        "capacity",
        "shards",
        "policy",
        "max_entries",
        "max_key_size",
        "max_value_size",
        "compress_threshold",
        "mode",
        "create",
    }
)
_Timeout = int | float | dt.timedelta | None


class MetisCache(BaseCache):
    """Flask-Caching backend storing into the Metis cache ``name``.

    :param name: the Metis cache name (``CACHE_METIS_NAME``).
    :param default_timeout: seconds for ``timeout=None``; ``0`` = never expire.
    :param key_prefix: prepended to every key; ``clear()`` then removes only
        the keys with this prefix.
    :param cache: an already open :class:`metis_shm.Cache` to use instead
        of opening ``name`` (it is not closed by :meth:`close`).
    :param serializer: a ``cachelib.serializers.BaseSerializer`` (anything with
        ``dumps`` and ``loads``) for every value but ints, or ``None`` (pickle).
        Flask-Caching sets it from ``CACHE_SERIALIZER``.
    :param far: the far tier (``CACHE_METIS_FAR``): a ``redis://`` URL, a
        dict of ``FarSettings`` fields, or ``FarSettings``; ``None``: no Redis.
    :param cache_kwargs: passed to :class:`metis_shm.Cache` (``capacity``,
        ``policy``, ...).
    """

    def __init__(
        self,
        name: str = DEFAULT_NAME,
        default_timeout: int = 300,
        key_prefix: str | None = None,
        ignore_delete_many_errors: bool = False,
        *,
        cache: Cache | None = None,
        serializer: Any = None,
        far: str | dict[str, Any] | FarSettings | None = None,
        **cache_kwargs: Any,
    ) -> None:
        super().__init__(
            default_timeout=default_timeout, ignore_delete_many_errors=ignore_delete_many_errors
        )
        unknown = set(cache_kwargs) - _CACHE_KWARGS
        if unknown:
            raise TypeError(
                f"MetisCache: unknown option(s) {sorted(unknown)}; "
                f"Cache options are {sorted(_CACHE_KWARGS)}"
            )
        self.key_prefix = key_prefix or ""
        self.serializer = serializer
        if far is not None and cache is not None:
            raise TypeError("MetisCache: give far= or cache=, not both (open the cache with far)")
        #: The far tier's settings, or None (checked here: a typo fails at init).
        self.far = FarSettings.build(far) if far is not None else None
        self._owns_cache = cache is None
        if cache is None:
            # far only when given: Cache.__init__ itself has no far argument.
            far_kwargs: dict[str, Any] = {} if self.far is None else {"far": self.far}
            cache = Cache(name, **far_kwargs, **cache_kwargs)
        self.metis: Cache = cache

    @classmethod
    def factory(
        cls, app: Flask, config: dict[str, Any], args: list[Any], kwargs: dict[str, Any]
    ) -> MetisCache:
        """What Flask-Caching calls for ``CACHE_TYPE = "metis_shm.contrib.flask.MetisCache"``.

        ``kwargs`` holds ``default_timeout``, ``ignore_delete_many_errors`` and
        ``CACHE_OPTIONS``; ``args`` is ``CACHE_ARGS`` (its first item, if any,
        is the cache name). ``CACHE_METIS_FAR`` is the far tier.
        """
        kwargs = dict(kwargs)
        if not args:
            kwargs.setdefault("name", config.get("CACHE_METIS_NAME") or DEFAULT_NAME)
        if config.get("CACHE_METIS_FAR") is not None:
            if kwargs.get("far") is not None:
                raise TypeError(
                    "MetisCache: give CACHE_METIS_FAR or CACHE_OPTIONS['far'], not both"
                )
            kwargs["far"] = config["CACHE_METIS_FAR"]
        if "key_prefix" not in kwargs:
            kwargs["key_prefix"] = config.get("CACHE_KEY_PREFIX")
        return cls(*args, **kwargs)

    # ---- the serializer (CACHE_SERIALIZER) ---------------------------------------

    @property
    def serializer(self) -> Any:
        """The ``CACHE_SERIALIZER`` in use, or ``None`` (values pickled).

        Flask-Caching assigns it after building the backend; a value without
        ``dumps``/``loads`` is refused here, at the app's init.
        """
        return self._serializer

    @serializer.setter
    def serializer(self, serializer: Any) -> None:
        if serializer is not None and not (
            callable(getattr(serializer, "dumps", None))
            and callable(getattr(serializer, "loads", None))
        ):
            raise TypeError(
                f"MetisCache: CACHE_SERIALIZER / serializer={serializer!r} is not a "
                "serializer: expected a cachelib.serializers.BaseSerializer (an object "
                "with dumps() and loads()) or None for pickle (metis_shm.Cache's own "
                "'serializer' option does not apply: this backend stores bytes)"
            )
        self._serializer = serializer

    # ---- helpers -------------------------------------------------------------

    def _key(self, key: str) -> str:
        return self.key_prefix + key

    def _ttl(self, timeout: _Timeout) -> float | None:
        """Flask-Caching timeout -> Metis ttl (None = no expiry, <= 0 = expired)."""
        if timeout is None:
            seconds: float = self.default_timeout
        elif isinstance(timeout, dt.timedelta):
            seconds = math.ceil(timeout.total_seconds())
        else:
            seconds = timeout
        if seconds == 0:
            return None
        return float(seconds) if seconds > 0 else -1.0

    def _dump(self, value: Any) -> Any:
        """What to store for ``value``: an int (a counter), bytes or str; ``None``
        when the serializer could not encode it (then nothing is stored)."""
        if type(value) is int and -(2**63) <= value < 2**63:
            return value
        if self._serializer is None:
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        dumped = self._serializer.dumps(value)
        if dumped is None or isinstance(dumped, (bytes, str)):
            return dumped  # None: cachelib serializers log the error and return None
        if isinstance(dumped, (bytearray, memoryview)):
            return bytes(dumped)
        raise TypeError(
            f"MetisCache: {type(self._serializer).__name__}.dumps() returned "
            f"{type(dumped).__name__}; expected bytes or str"
        )

    def _load(self, stored: Any) -> Any:
        if stored is None or isinstance(stored, int):
            return stored
        try:
            if self._serializer is None:
                return pickle.loads(stored)
            return self._serializer.loads(stored)
        except Exception:  # not written by this backend: treat as a miss
            return None

    # ---- the BaseCache API ---------------------------------------------------

    def get(self, key: str) -> Any:
        return self._load(self.metis.get(self._key(key)))

    def has(self, key: str) -> bool:
        return self._key(key) in self.metis

    def set(self, key: str, value: Any, timeout: _Timeout = None) -> bool:
        stored = self._dump(value)
        if stored is None:  # the serializer could not encode it: no stale value stays
            self.metis.delete(self._key(key))
            return False
        self.metis.set(self._key(key), stored, ttl=self._ttl(timeout))
        return True

    def add(self, key: str, value: Any, timeout: _Timeout = None) -> bool:
        stored = self._dump(value)
        if stored is None:
            return False
        return bool(self.metis.add(self._key(key), stored, ttl=self._ttl(timeout)))

    def delete(self, key: str) -> bool:
        return bool(self.metis.delete(self._key(key)))

    def get_many(self, *keys: str) -> list[Any]:
        found = self.metis.get_many([self._key(k) for k in keys])
        return [self._load(found.get(self._key(k))) for k in keys]

    def set_many(self, mapping: dict[str, Any], timeout: _Timeout = None) -> list[Any]:
        stored: dict[str | bytes, object] = {}
        done = []
        for k, v in mapping.items():
            dumped = self._dump(v)
            if dumped is None:  # not encodable by the serializer: not set
                self.metis.delete(self._key(k))
            else:
                stored[self._key(k)] = dumped
                done.append(k)
        if stored:
            self.metis.set_many(stored, ttl=self._ttl(timeout))
        return done

    def delete_many(self, *keys: str) -> list[Any]:
        deleted = []
        for key in keys:
            self.metis.delete(self._key(key))
            deleted.append(key)  # absent afterwards: deleted, as cachelib counts it
        return deleted

    def clear(self) -> bool:
        # With far: the near tier's keys (Redis keeps keys this machine never read).
        if not self.key_prefix:
            self.metis.clear()
        else:
            self.metis.delete_many(list(self.metis.keys(prefix=self.key_prefix)))
        return True

    def inc(self, key: str, delta: int = 1) -> int | None:
        """Atomic across processes; a missing key starts at 0 (default timeout)."""
        try:
            return int(
                self.metis.incr(
                    self._key(key), delta, default=0, ttl=self._ttl(self.default_timeout)
                )
            )
        except TypeError:  # holds something that is not a counter
            return None

    def dec(self, key: str, delta: int = 1) -> int | None:
        return self.inc(key, -delta)

    def close(self) -> None:
        """Detach this process (when the backend opened the cache itself)."""
        if self._owns_cache:
            self.metis.close()


def metis(
    app: Flask, config: dict[str, Any], args: list[Any], kwargs: dict[str, Any]
) -> MetisCache:
    """Factory function form: ``CACHE_TYPE = "metis_shm.contrib.flask.metis"``."""
    return MetisCache.factory(app, config, args, kwargs)
