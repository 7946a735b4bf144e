"""The rules of metisd's configuration fields: what each field accepts.

A rule turns a raw value (from TOML, JSON, an environment string, an
argument, or a Struct built in code) into the field's typed value, or
raises ``_Reject`` saying what is allowed. Rules are idempotent: a typed
value passes through unchanged. ``CACHE_RULES``, ``SWEEP_RULES``,
``SNAPSHOT_RULES``, ``HEALTH_RULES`` and ``TOP_RULES`` name every field of
each table (``SECTION_RULES``: the three tables of daemon settings);
``_check_cache`` holds the rules between a cache's fields. The model
(model.py) applies them to Structs built in code, the loader (sources.py)
to what it read; origins.py turns a rejection into an ``InvalidConfig``.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from metis_shm import _engine
from metis_shm.cache import MAX_SHARDS, _settings, default_shards
from metis_shm.codec import SERIALIZERS
from metis_shm.errors import InvalidConfig, InvalidName
from metis_shm.segment import resolve_group, resolve_uid, validate_name
from metis_shm.units import parse_duration, parse_size

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MAX_HEARTBEAT_INTERVAL = 5.0
"""Clients call a daemon dead after 10 s without a heartbeat (``Cache.daemon_alive``)."""
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes with its terminating NUL


class _Reject(Exception):
    def __init__(self, allowed: str, hint: str = "", field: str | None = None) -> None:
        super().__init__(allowed)
        self.allowed = allowed
        self.hint = hint
        self.field = field  # set by cross-field checks: the field to blame


Rule = Callable[[Any], Any]

_NONE_WORDS = frozenset({"none", "null", "off"})
_TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
_FALSE_WORDS = frozenset({"false", "no", "off", "0"})
_SIZE_HELP = "a size such as 4096, '64MiB' or '1GB'"
_DURATION_HELP = "a duration such as 30, '250ms', '5m' or '2h'"


def _did_you_mean(word: str, options: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""


def _size(lo: int, hi: int, allowed: str) -> Rule:
    def rule(value: Any) -> int:
        try:
            n = parse_size(value)
        except InvalidConfig as exc:
            raise _Reject(str(exc.context["allowed"])) from None
        if not lo <= n <= hi:
            raise _Reject(allowed, f"that is {n:,} bytes" if isinstance(value, str) else "")
        return n

    return rule


def _duration(*, positive: bool, hi: float = math.inf, allowed: str) -> Rule:
    def rule(value: Any) -> float:
        try:
            seconds = parse_duration(value)
        except InvalidConfig as exc:
            raise _Reject(str(exc.context["allowed"])) from None
        if not math.isfinite(seconds) or seconds < 0 or (positive and seconds == 0) or seconds > hi:
            raise _Reject(allowed)
        return seconds

    return rule


def _count(lo: int, allowed: str) -> Rule:
    def rule(value: Any) -> int:
        n: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            n = value
        elif isinstance(value, str) and re.fullmatch(r"\s*\d[\d_]*\s*", value):
            n = int(value.strip().replace("_", ""))
        if n is None or n < lo:
            raise _Reject(allowed)
        return n

    return rule


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise _Reject("true or false (or yes/no, on/off, 1/0)")


def _choice(options: list[str], *, upper: bool = False) -> Rule:
    shown = ", ".join(options)

    def rule(value: Any) -> str:
        if isinstance(value, str):
            word = value.strip().upper() if upper else value.strip().lower()
            if word in options:
                return word
            raise _Reject(f"one of {shown}", _did_you_mean(word, options))
        raise _Reject(f"one of {shown}")

    return rule


def _optional(rule: Rule, *words: str) -> Rule:
    """``None`` (JSON null), or a word such as ``"none"`` (TOML has no null), or ``rule``."""
    none_words = _NONE_WORDS | set(words)
    spelled = repr(words[0] if words else "none")

    def optional(value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str) and value.strip().lower() in none_words:
            return None
        try:
            return rule(value)
        except _Reject as exc:
            raise _Reject(f"{exc.allowed}, or {spelled}", exc.hint) from None

    return optional


def _cache_name(value: Any) -> str:
    try:
        return validate_name(value)
    except InvalidName:
        raise _Reject("1 to 64 characters from A-Z a-z 0-9 _ . - (not '.' or '..')") from None


def _shards(value: Any) -> int:
    allowed = f"a power of two from 1 to {MAX_SHARDS}"
    n: int = _count(1, allowed)(value)
    if n & (n - 1) or n > MAX_SHARDS:
        raise _Reject(allowed)
    return n


def _mode(value: Any) -> int:
    allowed = (
        "permission bits such as 0o600 or '0640' (a string is read as octal), "
        "0o600 to 0o777 with the owner's read and write"
    )
    n: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    elif isinstance(value, str) and re.fullmatch(r"\s*(0o?)?[0-7]{1,4}\s*", value):
        n = int(value.strip().removeprefix("0o"), 8)
    if n is None or not 0 <= n <= 0o777 or n & 0o600 != 0o600:
        raise _Reject(allowed)
    return n


def _path(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise _Reject("a directory path such as '/var/lib/metis'")
    return value


def _file_path(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise _Reject("a file path such as '/etc/metis/snapshot.key'")
    return value


def _path_list(value: Any) -> list[str]:
    """A list of file paths; an environment string is split at commas."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple):
        raise _Reject("a list of file paths (in the environment: separated by commas)")
    return [_file_path(v) for v in value]


def _group(value: Any) -> str | int:
    """A group that exists on this machine: its name or gid, kept as given."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    try:
        resolve_group(value)
    except InvalidConfig as exc:
        allowed = "the name or gid of an existing group (getent group NAME)"
        raise _Reject(allowed, f"no group {value!r}" if "no group" in str(exc) else "") from None
    assert isinstance(value, str | int)
    return value.strip() if isinstance(value, str) else value


def _owners(value: Any) -> list[str | int]:
    """User names or uids; an environment string is split at commas."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple):
        raise _Reject("a list of user names or uids (in the environment: separated by commas)")
    owners: list[str | int] = []
    for item in value:
        if isinstance(item, str) and item.strip().isdigit():
            item = int(item.strip())
        try:
            resolve_uid(item)
        except InvalidConfig:
            raise _Reject("a list of existing user names or uids", f"no user {item!r}") from None
        owners.append(item)
    return owners


def _unix_socket(value: Any) -> str:
    allowed = f"a socket path of at most {_UNIX_PATH_MAX} bytes such as '/run/metis/health.sock'"
    if (
        not isinstance(value, str)
        or not value.strip()
        or "\0" in value
        or len(os.fsencode(value)) > _UNIX_PATH_MAX
    ):
        raise _Reject(allowed)
    return value


def _address(value: Any) -> str:
    allowed = "HOST:PORT such as '127.0.0.1:9464', 'localhost:9464' or '[::1]:9464' (port 0-65535)"
    if not isinstance(value, str):
        raise _Reject(allowed)
    host, sep, port = value.strip().rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]") and len(host) > 2
    if (
        not sep
        or not host
        or not port.isdigit()
        or int(port) > 65535
        or (":" in host and not bracketed)
        or any(c.isspace() for c in host)
    ):
        raise _Reject(allowed)
    return value.strip()


def _far(value: Any) -> dict[str, Any]:
    """The far tier: a table of FarSettings fields, or a redis:// URL (as
    METIS_CACHE_FAR gives it; a JSON object there is a whole table)."""
    from metis_shm.far.settings import FarSettings

    if isinstance(value, str):
        text = value.strip()
        value = json.loads(text) if text.startswith("{") else {"url": text}
    if not isinstance(value, dict):
        raise _Reject("a redis:// URL or a table such as { url = 'redis://host:6379/0' }")
    try:
        FarSettings.build(value)
    except InvalidConfig as exc:
        raise _Reject(str(exc).split("] ", 1)[-1]) from None
    return dict(value)


CACHE_RULES: dict[str, Rule] = {
    "name": _cache_name,
    "capacity": _size(1, 2**63, "a size of at least 4 KiB per shard"),
    "shards": _optional(_shards, "auto"),
    "policy": _choice(sorted(_engine.POLICIES)),
    "max_entries": _optional(_count(1, "a positive number of items")),
    "default_ttl": _optional(_duration(positive=True, allowed="a positive duration")),
    "max_key_size": _size(1, 65536, "1 to 65536 bytes"),
    "max_value_size": _size(1, 2**31 - 1, "1 B to 2 GiB"),
    "compress_threshold": _optional(_size(0, 2**63, "a size")),
    "serializer": _choice(sorted(SERIALIZERS)),
    "mode": _mode,
    "group": _optional(_group),
    "trusted_owners": _owners,
    "allow_foreign_owner": _boolean,
    "far": _optional(_far),
}
SWEEP_RULES: dict[str, Rule] = {
    "interval": _duration(positive=True, allowed="a positive duration such as '1s' or '250ms'"),
    "budget": _count(1, "a positive number of items (all shards, per tick)"),
}
SNAPSHOT_RULES: dict[str, Rule] = {
    "path": _path,
    "interval": _duration(positive=False, allowed="a duration of 0 (only at shutdown) or more"),
    "retention": _count(1, "a positive number of snapshots to keep"),
    "on_shutdown": _boolean,
    "enabled": _boolean,
    "group": _optional(_group),
    "key_file": _optional(_file_path),
    "read_key_files": _path_list,
}
HEALTH_RULES: dict[str, Rule] = {
    "enabled": _boolean,
    "address": _address,
    "unix_socket": _optional(_unix_socket),
}
TOP_RULES: dict[str, Rule] = {
    "log_level": _choice(list(LOG_LEVELS), upper=True),
    "heartbeat_interval": _duration(
        positive=True,
        hi=MAX_HEARTBEAT_INTERVAL,
        allowed=f"a positive duration of at most {MAX_HEARTBEAT_INTERVAL:g}s "
        "(clients call a daemon dead after 10s without a heartbeat)",
    ),
    "replace_incompatible": _boolean,
    "audit_file": _optional(_file_path),
}
SECTION_RULES: dict[str, dict[str, Rule]] = {
    "sweep": SWEEP_RULES,
    "snapshot": SNAPSHOT_RULES,
    "health": HEALTH_RULES,
}
"""The tables of daemon settings (``[sweep]``, ``[snapshot]``, ``[health]``) and their rules."""


def _check_cache(values: Mapping[str, Any]) -> None:
    """The rules between a cache's fields: the segment layout must be possible,
    and whatever ``Cache`` itself checks. Raises _Reject(field=...)."""
    capacity = values["capacity"]
    shards = values["shards"]
    n_shards = shards if shards is not None else default_shards(capacity, values["max_value_size"])
    policy = _engine.POLICIES[values["policy"]]
    try:
        _engine.plan_layout(capacity, n_shards, values["max_entries"] or 0, policy=policy)
    except (ValueError, OverflowError) as exc:
        raise _Reject(
            "4 KiB to 2 GiB per shard",
            str(exc) + ("; shards chosen from capacity and CPU count" if shards is None else ""),
            field="capacity",
        ) from None
    try:  # Cache's own checks, so that the two never disagree
        _settings(
            capacity=capacity,
            policy=values["policy"],
            max_key_size=values["max_key_size"],
            max_value_size=values["max_value_size"],
            compress_threshold=values["compress_threshold"],
            serializer=values["serializer"],
            default_ttl=values["default_ttl"],
            max_entries=values["max_entries"],
        )
    except InvalidConfig as exc:
        field = str(exc.context.get("field"))
        field = field if field in CACHE_RULES else "capacity"
        raise _Reject(str(exc.context.get("allowed", exc.args[0])), field=field) from None


__all__ = [
    "CACHE_RULES",
    "HEALTH_RULES",
    "LOG_LEVELS",
    "MAX_HEARTBEAT_INTERVAL",
    "SECTION_RULES",
    "SNAPSHOT_RULES",
    "SWEEP_RULES",
    "TOP_RULES",
    "Rule",
]
