"""The worker's side of Redis: one redis-py client per process (standalone
or Cluster, with MOVED/ASK handled by redis-py), every reply error turned
into a MetisError with a code, and the commands the near tier needs in one
round trip each.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from metis_shm.errors import CounterOverflow, FarError, FarUnavailable, NotACounter
from metis_shm.far.settings import FarSettings

T = TypeVar("T")

# INCRBY that refuses a missing key (Redis's own creates it at 0). A Lua
# number is a double: the result is exact to 2**53 (docs/far-tier.md).
_INCR_EXISTING = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return redis.call('INCRBY', KEYS[1], ARGV[1])
"""


class FarClient:
    """Redis commands for one near cache, with the key prefix applied."""

    def __init__(self, settings: FarSettings) -> None:
        try:
            import redis
            import redis.cluster
        except ImportError as exc:  # pragma: no cover - redis is in the far extra
            raise FarError("the far tier needs redis-py: pip install 'metis-shm[far]'") from exc
        self.settings = settings
        self.prefix = settings.redis_prefix
        self._errors = redis.exceptions
        opts: dict[str, Any] = {
            "socket_timeout": settings.timeout,
            "socket_connect_timeout": settings.timeout,
        }
        self.redis: Any
        if settings.cluster:
            self.redis = redis.cluster.RedisCluster.from_url(settings.url, **opts)
        else:
            self.redis = redis.Redis.from_url(settings.url, retry_on_timeout=False, **opts)
        self._incr_existing = self.redis.register_script(_INCR_EXISTING)

    def key(self, key: str | bytes) -> bytes:
        """The Redis key of a near key."""
        return self.prefix + (key.encode() if isinstance(key, str) else key)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one redis-py call; its failures as FarUnavailable or FarError."""
        e = self._errors
        try:
            return fn(*args, **kwargs)
        except (e.ConnectionError, e.TimeoutError) as exc:
            raise FarUnavailable(
                f"Redis at {self.settings.public_url} did not answer: {exc}",
                context={"url": self.settings.public_url},
            ) from exc
        except e.ResponseError as exc:
            msg = str(exc)
            if "not an integer" in msg:
                raise NotACounter(f"the value in Redis is not an integer counter: {msg}") from exc
            if "overflow" in msg:
                raise CounterOverflow(f"Redis refused the increment: {msg}") from exc
            raise FarError(
                f"Redis refused: {msg}", context={"url": self.settings.public_url}
            ) from exc
        except e.RedisError as exc:
            raise FarError(
                f"Redis client error: {exc}", context={"url": self.settings.public_url}
            ) from exc

    # ---- reads --------------------------------------------------------------

    def fetch(self, key: str | bytes, redirect_to: int = 0) -> tuple[bytes | None, int, int]:
        """The value, its remaining TTL in ms (-1: none) and the client id of
        the connection that read it (0 without ``redirect_to``), one round trip.

        With ``redirect_to`` (default tracking), the same connection first
        turns tracking on towards metisd's client id: sent every time,
        since a connection redis-py reopened has forgotten it, and a read
        on an untracked connection would be an invalidation never sent.
        Redis files the read under the connection's id, which the caller
        registers before it fills (metis_shm/far/words.py CONN_SLOTS).
        """
        k = self.key(key)

        def run() -> tuple[bytes | None, int, int]:
            pipe = self.redis.pipeline(transaction=False)
            if redirect_to:
                pipe.execute_command("CLIENT", "TRACKING", "ON", "REDIRECT", redirect_to)
                pipe.execute_command("CLIENT", "ID")
            pipe.get(k)
            pipe.pttl(k)
            out = pipe.execute()
            return out[-2], out[-1], int(out[1]) if redirect_to else 0

        return self.call(run)

    def fetch_many(self, keys: list[str | bytes]) -> list[bytes | None]:
        """MGET (split by slot on a cluster)."""
        ks = [self.key(k) for k in keys]
        if self.settings.cluster:
            return self.call(self.redis.mget_nonatomic, ks)
        return self.call(self.redis.mget, ks)

    # ---- writes -------------------------------------------------------------

    def _px(self, ttl: float | None) -> int | None:
        ttl = self.settings.ttl if ttl is None else ttl
        return None if ttl is None else max(1, int(ttl * 1000))

    def set(
        self,
        key: str | bytes,
        data: bytes,
        ttl: float | None,
        *,
        nx: bool = False,
        xx: bool = False,
    ) -> bool:
        """SET with the TTL (or the far default); NX for add, XX for replace."""
        r = self.call(self.redis.set, self.key(key), data, px=self._px(ttl), nx=nx, xx=xx)
        return bool(r)

    def set_many(self, items: Iterable[tuple[str | bytes, bytes]], ttl: float | None) -> None:
        """Pipelined SETs, one round trip (per node on a cluster)."""
        px = self._px(ttl)

        def run() -> None:
            pipe = self.redis.pipeline(transaction=False)
            for key, data in items:
                pipe.set(self.key(key), data, px=px)
            pipe.execute()

        self.call(run)

    def delete(self, keys: list[str | bytes]) -> int:
        """DEL; how many existed."""
        if not keys:
            return 0
        if len(keys) == 1 or not self.settings.cluster:
            return int(self.call(self.redis.delete, *[self.key(k) for k in keys]))

        def run() -> int:
            pipe = self.redis.pipeline(transaction=False)
            for k in keys:
                pipe.delete(self.key(k))
            return sum(pipe.execute())

        return self.call(run)

    def pop(self, key: str | bytes) -> bytes | None:
        """GETDEL."""
        data: bytes | None = self.call(self.redis.getdel, self.key(key))
        return data

    def touch(self, key: str | bytes, ttl: float | None) -> bool:
        """PEXPIRE (PERSIST with no TTL at all); True if the key exists."""
        px = self._px(ttl)
        if px is None:
            k = self.key(key)
            return bool(self.call(self.redis.persist, k)) or bool(self.call(self.redis.exists, k))
        return bool(self.call(self.redis.pexpire, self.key(key), px))

    def incr(
        self, key: str | bytes, delta: int, default: int | None, ttl: float | None
    ) -> int | None:
        """Redis's own INCRBY. Without ``default`` a missing key gives None;
        with it, a missing key starts at ``default`` (SET NX, then INCRBY,
        in one MULTI: atomic)."""
        k = self.key(key)
        if default is None:
            r = self.call(self._incr_existing, keys=[k], args=[delta])
            return None if r is None else int(r)

        def run() -> int:
            pipe = self.redis.pipeline(transaction=True)
            pipe.set(k, default, nx=True, px=self._px(ttl))
            pipe.incrby(k, delta)
            return int(pipe.execute()[-1])

        return self.call(run)

    def close(self) -> None:
        """Close the connections."""
        # Closing a broken client must not raise.
        with contextlib.suppress(Exception):
            self.redis.close()
