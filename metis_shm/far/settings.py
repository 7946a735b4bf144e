"""The far tier's settings: one frozen record, the same for a worker's
``Cache(name, far=...)``, metisd's ``[caches.far]`` table and the Django,
Flask and ASGI settings. Every bad value raises InvalidConfig naming the
field, so a typo fails at startup, not at the first miss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import urlsplit

from metis_shm.errors import InvalidConfig

TRACKING_MODES = ("broadcast", "default")
ON_DOWN = ("raise", "stale")


@dataclass(frozen=True)
class FarSettings:
    """Where the far tier is and how the near tier follows it.

    * ``url``: ``redis://[[user]:password@]host[:port][/db]`` (a seed node
      with ``cluster``).
    * ``prefix``: prepended to every key in Redis, and the prefix broadcast
      tracking subscribes to ("" = every key).
    * ``ttl``: seconds for a ``set`` without one (None: no expiry in Redis).
    * ``tracking``: "broadcast" (metisd subscribes to the prefix; workers'
      connections need nothing) or "default" (Redis remembers the keys each
      worker read; workers' connections redirect to metisd's client id).
    * ``protocol``: 3 (RESP3 push messages) or 2 (Pub/Sub redirect), for
      metisd's tracking connection.
    * ``cluster``: a Redis Cluster (broadcast tracking on every primary).
    * ``on_down``: "raise" (FarUnavailable) or "stale" (serve near entries
      for at most ``max_stale`` seconds after the last vouch).
    * ``timeout``: seconds a worker waits for one Redis reply.
    * ``lease_timeout``: seconds a miss waits for another process's fetch
      of the same key before fetching itself.
    * ``staleness_bound``, ``ping_interval``: metisd's tracker; the near
      tier serves nothing more than ``staleness_bound`` after the last
      moment metisd knew it had every invalidation (docs/far-tier.md).
    """

    url: str
    prefix: str = ""
    ttl: float | None = None
    tracking: str = "broadcast"
    protocol: int = 3
    cluster: bool = False
    on_down: str = "raise"
    max_stale: float = 30.0
    timeout: float = 1.0
    lease_timeout: float = 2.0
    staleness_bound: float = 1.0
    ping_interval: float = 0.1

    def __post_init__(self) -> None:
        _check_url(self.url)
        _check(isinstance(self.prefix, str), "prefix", self.prefix, "a string")
        if self.ttl is not None:
            _check_seconds("ttl", self.ttl)
        _check(
            self.tracking in TRACKING_MODES, "tracking", self.tracking, f"one of {TRACKING_MODES}"
        )
        _check(self.protocol in (2, 3), "protocol", self.protocol, "2 or 3")
        _check(isinstance(self.cluster, bool), "cluster", self.cluster, "true or false")
        _check(
            not (self.cluster and self.tracking == "default"),
            "tracking",
            self.tracking,
            '"broadcast" with cluster (client ids are per node, so workers cannot redirect to one)',
        )
        _check(self.on_down in ON_DOWN, "on_down", self.on_down, f"one of {ON_DOWN}")
        for name in ("max_stale", "timeout", "lease_timeout", "staleness_bound", "ping_interval"):
            _check_seconds(name, getattr(self, name))
        # The tracker vouches 10 ms short of the bound (the gate's coarse clock).
        _check(
            self.staleness_bound > 0.02,
            "staleness_bound",
            self.staleness_bound,
            "more than 0.02 seconds",
        )
        if self.cluster:
            path = urlsplit(self.url).path.strip("/")
            _check(
                path in ("", "0"),
                "url",
                self.url,
                "database 0 with cluster (a cluster has no other)",
            )
        _check(
            self.ping_interval < self.staleness_bound,
            "ping_interval",
            self.ping_interval,
            f"less than staleness_bound ({self.staleness_bound})",
        )

    @classmethod
    def build(cls, far: str | dict[str, Any] | FarSettings, **overrides: Any) -> FarSettings:
        """Settings from a URL, a dict of the fields (a config table) or
        settings, with ``overrides`` (None values are ignored) on top."""
        known = {f.name for f in fields(cls)}
        given = {k: v for k, v in overrides.items() if v is not None}
        for k in given:
            if k not in known:
                raise InvalidConfig(f"far.{k}: unknown setting; known: {sorted(known)}")
        if isinstance(far, FarSettings):
            return replace(far, **given)
        if isinstance(far, str):
            return cls(url=far, **given)
        if isinstance(far, dict):
            unknown = set(far) - known
            if unknown:
                raise InvalidConfig(
                    f"far: unknown setting(s) {sorted(unknown)}; known: {sorted(known)}",
                    context={"field": "far"},
                )
            if "url" not in far:
                raise InvalidConfig("far.url: missing", context={"field": "far.url"})
            return cls(**{**far, **given})
        raise InvalidConfig(
            f"far: expected a redis:// URL or a table of settings, not {type(far).__name__}",
            context={"field": "far"},
        )

    @property
    def public_url(self) -> str:
        """The URL without user or password, for messages and logs."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"

    @property
    def redis_prefix(self) -> bytes:
        """The prefix as Redis sees it."""
        return self.prefix.encode()


def _check(ok: bool, field: str, value: object, rule: str) -> None:
    if not ok:
        raise InvalidConfig(
            f"far.{field}: {value!r} is not valid; expected {rule}",
            context={"field": f"far.{field}", "value": value},
        )


def _check_seconds(field: str, value: object) -> None:
    _check(
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0,
        field,
        value,
        "a positive number of seconds",
    )


def _check_url(url: object) -> None:
    ok = isinstance(url, str)
    if isinstance(url, str):
        parts = urlsplit(url)
        ok = parts.scheme == "redis" and bool(parts.hostname)
    _check(
        ok, "url", url, "redis://[[user]:password@]host[:port][/db] (TLS and unix sockets: not yet)"
    )
