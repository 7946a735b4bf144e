"""The typed model of metisd's configuration: msgspec Structs, checked as they are built.

``DaemonConfig`` holds the caches (``CacheConfig``, the arguments of
``metis_shm.Cache``) and the daemon's settings (``SweepConfig``,
``SnapshotConfig``, ``HealthConfig``, and top-level fields). Each Struct
checks itself (``__post_init__``) with the rules of rules.py, so one built
in code gets the same rules as one loaded from a file; sizes and durations
given there as strings are converted (``CacheConfig(name="app",
capacity="64MiB").capacity == 67108864``).

``LIVE_FIELDS`` are the fields a ``SIGHUP`` may change in a running daemon;
``diff_config(old, new)`` splits a reload into live changes and changes that
need a restart; ``flatten_config`` and ``describe_value`` are what ``metis
config show`` prints.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from metis_shm.daemon.config.origins import _error
from metis_shm.daemon.config.rules import (
    CACHE_RULES,
    HEALTH_RULES,
    SNAPSHOT_RULES,
    SWEEP_RULES,
    TOP_RULES,
    Rule,
    _check_cache,
    _Reject,
)
from metis_shm.units import format_size

LIVE_FIELDS: frozenset[str] = frozenset(
    {
        "sweep.interval",
        "sweep.budget",
        "snapshot.interval",
        "snapshot.retention",
        "snapshot.on_shutdown",
        "log_level",
        "heartbeat_interval",
    }
)
"""Dotted fields that ``SIGHUP`` changes in a running daemon; the rest need a restart."""


def _apply_rules(obj: msgspec.Struct, rules: Mapping[str, Rule]) -> None:
    """Check (and convert) a Struct's fields in place; errors name the bare field."""
    for name, rule in rules.items():
        value = getattr(obj, name)
        try:
            typed = rule(value)
        except _Reject as exc:
            raise _error(name, value, exc.allowed, None, exc.hint) from None
        if typed is not value:
            setattr(obj, name, typed)


# ---- the model -----------------------------------------------------------------


class CacheConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One cache the daemon owns: the arguments of ``metis_shm.Cache``."""

    name: str
    capacity: int
    shards: int | None = None
    policy: str = "wtinylfu"
    max_entries: int | None = None
    default_ttl: float | None = None
    max_key_size: int = 1024
    max_value_size: int = 1024 * 1024
    compress_threshold: int | None = 16 * 1024
    serializer: str = "msgpack"
    mode: int = 0o600
    group: str | int | None = None
    """Share the segment with this group: mode 0660 and chgrp (docs/security.md)."""
    trusted_owners: list[str | int] = msgspec.field(default_factory=list)
    """Users (names or uids) whose existing segment metisd attaches to, besides itself and root."""
    allow_foreign_owner: bool = False
    far: dict[str, Any] | None = None
    """The far tier (docs/far-tier.md): a table of metis_shm.far.FarSettings fields."""

    def __post_init__(self) -> None:
        _apply_rules(self, CACHE_RULES)

        try:
            _check_cache(msgspec.structs.asdict(self))
        except _Reject as exc:
            field = exc.field or "capacity"
            raise _error(field, getattr(self, field), exc.allowed, None, exc.hint) from None

    def cache_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``metis_shm.Cache(self.name, **kwargs)``."""
        kwargs = msgspec.structs.asdict(self)
        del kwargs["name"]
        del kwargs["far"]  # metisd opens the segment, the tracker is daemon/far.py's
        return kwargs


class SweepConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The TTL sweep: every ``interval`` seconds, at most ``budget`` items examined
    (all shards together)."""

    interval: float = 1.0
    budget: int = 10_000

    def __post_init__(self) -> None:
        _apply_rules(self, SWEEP_RULES)


class SnapshotConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Snapshots to ``path`` every ``interval`` seconds (0: only at shutdown),
    keeping the newest ``retention``; files given to ``group`` (mode 0640) if
    set; encrypted with the key in ``key_file`` if set (or
    ``$METIS_SNAPSHOT_KEY``), older keys in ``read_key_files`` still read."""

    path: str = "/var/lib/metis"
    interval: float = 300.0
    retention: int = 3
    on_shutdown: bool = True
    enabled: bool = True
    group: str | int | None = None
    key_file: str | None = None
    read_key_files: list[str] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        _apply_rules(self, SNAPSHOT_RULES)


class HealthConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The HTTP endpoints (``/healthz``, ``/stats``, ``/metrics``)."""

    enabled: bool = True
    address: str = "127.0.0.1:9464"
    unix_socket: str | None = None

    def __post_init__(self) -> None:
        _apply_rules(self, HEALTH_RULES)


class DaemonConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Everything ``metisd`` reads: its caches and its own settings."""

    caches: list[CacheConfig]
    sweep: SweepConfig = msgspec.field(default_factory=SweepConfig)
    snapshot: SnapshotConfig = msgspec.field(default_factory=SnapshotConfig)
    health: HealthConfig = msgspec.field(default_factory=HealthConfig)
    log_level: str = "INFO"
    heartbeat_interval: float = 1.0
    replace_incompatible: bool = False
    audit_file: str | None = None
    """Append audit events (docs/security.md) to this JSON-lines file."""

    def __post_init__(self) -> None:
        _apply_rules(self, TOP_RULES)
        if not self.caches:
            raise _error("caches", self.caches, _CACHES_ALLOWED, None)
        seen: dict[str, int] = {}
        for i, cache in enumerate(self.caches):
            if cache.name in seen:
                raise _error(
                    f"caches[{i}].name", cache.name, _unique_allowed(seen[cache.name]), None
                )
            seen[cache.name] = i


class LoadedConfig(msgspec.Struct, kw_only=True):
    """What ``load_config`` returns."""

    config: DaemonConfig
    sources: dict[str, str]
    """Dotted field -> ``"default"``, ``"file PATH:LINE"``, ``"env METIS_X"`` or ``"argument"``."""
    path: str | None = None
    """The file read, if any."""


_CACHES_ALLOWED = (
    "at least one cache: a [[caches]] table with name and capacity "
    "(or METIS_CACHE_NAME and METIS_CACHE_CAPACITY)"
)


def _unique_allowed(first: int) -> str:
    return f"a name no other cache has (caches[{first}] has it)"


_SECTIONS: dict[str, tuple[type[msgspec.Struct], dict[str, Rule]]] = {
    "sweep": (SweepConfig, SWEEP_RULES),
    "snapshot": (SnapshotConfig, SNAPSHOT_RULES),
    "health": (HealthConfig, HEALTH_RULES),
}
_TOP_KEYS = ["caches", *_SECTIONS, *TOP_RULES]


def _defaults(cls: type[msgspec.Struct]) -> dict[str, Any]:
    """Field -> default (``msgspec.NODEFAULT`` for a required field)."""
    out: dict[str, Any] = {}
    for f in msgspec.structs.fields(cls):
        if f.default_factory is not msgspec.NODEFAULT:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = f.default
    return out


_CACHE_FIELD = re.compile(r"caches\[(\d+)\](?:\.(.+))?")
"""A dotted field of one cache: ``caches[0]`` or ``caches[0].capacity``."""


# ---- comparing two configs -----------------------------------------------------


def flatten_config(config: DaemonConfig) -> dict[str, Any]:
    """Dotted field -> value, in the order ``metis config show`` prints them."""
    out: dict[str, Any] = {}
    for key in TOP_RULES:
        out[key] = getattr(config, key)
    for section in _SECTIONS:
        for key, value in msgspec.structs.asdict(getattr(config, section)).items():
            out[f"{section}.{key}"] = value
    for i, cache in enumerate(config.caches):
        for key, value in msgspec.structs.asdict(cache).items():
            out[f"caches[{i}].{key}"] = value
    return out


def diff_config(
    old: DaemonConfig, new: DaemonConfig
) -> tuple[dict[str, tuple[Any, Any]], list[str]]:
    """What a reload changes: ``({field: (old, new)} for LIVE_FIELDS, [other
    changed fields])``. A cache present in only one config is ``caches[i]``."""
    before, after = flatten_config(old), flatten_config(new)
    live: dict[str, tuple[Any, Any]] = {}
    restart: list[str] = []
    for field in [*before, *(f for f in after if f not in before)]:
        m = _CACHE_FIELD.fullmatch(field)
        if m and not int(m.group(1)) < min(len(old.caches), len(new.caches)):
            whole = f"caches[{m.group(1)}]"
            if whole not in restart:
                restart.append(whole)
            continue
        if before.get(field) != after.get(field):
            if field in LIVE_FIELDS:
                live[field] = (before[field], after[field])
            else:
                restart.append(field)
    return live, restart


def describe_value(field: str, value: Any) -> str:
    """A value as ``metis config show`` prints it: ``268435456 (256.0 MiB)``,
    ``0o600``, ``"INFO"``, ``none``."""
    key = field.rsplit(".", 1)[-1]
    if value is None:
        return "auto" if key == "shards" else "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if key == "mode":
        return oct(value)
    if key in ("capacity", "max_value_size", "compress_threshold") and value >= 1024:
        return f"{value} ({format_size(value)})"
    if isinstance(value, float) and key in ("interval", "heartbeat_interval", "default_ttl"):
        return f"{value:g}s"
    return str(value)


__all__ = [
    "LIVE_FIELDS",
    "CacheConfig",
    "DaemonConfig",
    "HealthConfig",
    "LoadedConfig",
    "SnapshotConfig",
    "SweepConfig",
    "describe_value",
    "diff_config",
    "flatten_config",
]
