"""The configuration of ``metisd``: one typed model, four merged sources.

    defaults  <  file (TOML or JSON)  <  environment (``METIS_*``)  <  arguments

``load_config(path, env=..., overrides=...)`` reads and merges them and
returns a ``LoadedConfig``: the ``DaemonConfig`` and, for every dotted field
(``sweep.interval``, ``caches[0].capacity``), where its value came from:
``"default"``, ``"file PATH:LINE"``, ``"env METIS_X"`` or ``"argument"``.

Sizes take ``4096``, ``"64MiB"``, ``"1GB"``; durations ``30``, ``"250ms"``,
``"5m"`` (``metis_shm.units``). Every mistake raises ``InvalidConfig`` naming
the field, the value, what is allowed and where the value came from (file and
line, environment variable or argument); ``context`` holds the same pieces.
The rules of each field and of the environment are in docs/configuration.md.

``LIVE_FIELDS`` are the fields a ``SIGHUP`` may change in a running daemon;
``diff_config(old, new)`` splits a reload into live changes and changes that
need a restart.

The Structs check themselves too (``__post_init__``), so a ``CacheConfig``
built in code gets the same rules; sizes and durations given there as strings
are converted (``CacheConfig(name="app", capacity="64MiB").capacity ==
67108864``).
"""

from __future__ import annotations

import bisect
import difflib
import json
import logging
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from metis_shm import _engine
from metis_shm.cache import MAX_SHARDS, _settings, default_shards
from metis_shm.codec import SERIALIZERS
from metis_shm.errors import InvalidConfig, InvalidName
from metis_shm.segment import resolve_group, resolve_uid, validate_name
from metis_shm.units import format_size, parse_duration, parse_size

log = logging.getLogger("metis_shm.config")

CONFIG_ENV = "METIS_CONFIG"
"""Environment variable naming the config file when ``load_config`` gets no path."""

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MAX_HEARTBEAT_INTERVAL = 5.0
"""Clients call a daemon dead after 10 s without a heartbeat (``Cache.daemon_alive``)."""
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes with its terminating NUL

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


# ---- field rules ---------------------------------------------------------------
#
# A rule turns a raw value (from TOML, JSON, an environment string, an
# argument, or a Struct built in code) into the field's typed value, or
# raises _Reject saying what is allowed. Rules are idempotent: a typed value
# passes through unchanged.


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


# ---- environment ---------------------------------------------------------------


def _env_name(field: str) -> str:
    return "METIS_" + field.replace(".", "_").upper()


ENV_VARS: dict[str, str] = {
    **{_env_name(k): k for k in TOP_RULES},
    **{_env_name(f"{s}.{k}"): f"{s}.{k}" for s, (_, rules) in _SECTIONS.items() for k in rules},
    **{_env_name(f"cache.{k}"): f"caches[0].{k}" for k in CACHE_RULES},
}
"""Environment variable -> the dotted field it sets (``METIS_CACHE_*`` -> ``caches[0].*``)."""

_ENV_PREFIXES = ("METIS_CACHE_", "METIS_SWEEP_", "METIS_SNAPSHOT_", "METIS_HEALTH_")


# ---- where a value came from ---------------------------------------------------


@dataclass(frozen=True)
class _Origin:
    source: str
    file: str | None = None
    line: int | None = None
    env: str | None = None

    def label(self) -> str:
        """``/etc/metis/metisd.toml:12``, ``environment variable METIS_X``,
        ``argument`` or ``default``."""
        if self.file is not None:
            return f"{self.file}:{self.line}" if self.line else self.file
        if self.env is not None:
            return f"environment variable {self.env}"
        return self.source

    def at(self) -> str:
        """`` (LABEL)`` after a field's name; nothing for a default."""
        return "" if self.source == "default" else f" ({self.label()})"


_DEFAULT = _Origin("default")
_ARGUMENT = _Origin("argument")


def _always(origin: _Origin) -> Callable[[str], _Origin]:
    return lambda _field: origin


def _file_origin(path: str, line: int | None) -> _Origin:
    return _Origin(f"file {path}:{line}" if line else f"file {path}", file=path, line=line)


def _error(
    field: str, value: Any, allowed: str, origin: _Origin | None, hint: str = ""
) -> InvalidConfig:
    if hint:
        hint = f"; {hint}" if hint.startswith("did you mean") else f" ({hint})"
    at = origin.at() if origin else ""
    return InvalidConfig(
        f"{field}{at}: {value!r} is not valid; expected {allowed}{hint}",
        context=_context(field, value, allowed, origin),
    )


def _context(field: str, value: Any, allowed: str, origin: _Origin | None) -> dict[str, Any]:
    context: dict[str, Any] = {"field": field, "value": value, "allowed": allowed}
    if origin is not None:
        context.update(source=origin.source, file=origin.file, line=origin.line, env=origin.env)
    return context


def _missing(field: str, allowed: str, origin: _Origin) -> InvalidConfig:
    return InvalidConfig(
        f"{field}: missing, in the cache from {origin.label()}; expected {allowed} (required)",
        context=_context(field, None, allowed, origin),
    )


def _unknown(field: str, key: str, allowed: list[str], origin: _Origin) -> InvalidConfig:
    elsewhere = [f"{s}.{key}" for s, (_, rules) in _SECTIONS.items() if key in rules] + (
        ["caches[N]." + key] if key in CACHE_RULES else []
    )
    if elsewhere:
        suggestion = f"{key!r} is a setting of {' and '.join(elsewhere)}"
    else:
        suggestion = _did_you_mean(key, allowed)
    shown = ", ".join(allowed)
    message = f"{field}{origin.at()}: unknown setting; allowed here: {shown}"
    if suggestion:
        message += f"; {suggestion}"
    return InvalidConfig(
        message,
        context=_context(field, key, f"one of {shown}", origin) | {"unknown": True},
    )


# ---- finding the line of a key -------------------------------------------------


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_TOML_SCALAR = re.compile(r"[^,\]}\n#]*")
_JSON_SCALAR = re.compile(r"[^,\]}\s]*")
_CACHE_FIELD = re.compile(r"caches\[(\d+)\](?:\.(.+))?")


class _Scanner:
    """Just enough of a TOML/JSON tokenizer to say on which line each key is.
    Runs only over text the real parser has accepted."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.lines: dict[str, int] = {}
        self._newlines = [i for i, c in enumerate(text) if c == "\n"]

    def line(self) -> int:
        return bisect.bisect_right(self._newlines, self.pos - 1) + 1 if self.pos else 1

    def peek(self, n: int = 1) -> str:
        return self.text[self.pos : self.pos + n]

    def eof(self) -> bool:
        return self.pos >= len(self.text)

    def note(self, path: str, line: int) -> None:
        self.lines.setdefault(path, line)

    def skip(self, *, newlines: bool) -> None:
        """Spaces and comments (and newlines when ``newlines``)."""
        while not self.eof():
            c = self.text[self.pos]
            if c in " \t\r" or (newlines and c == "\n"):
                self.pos += 1
            elif c == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            else:
                return

    # ---- TOML

    def toml(self) -> dict[str, int]:
        prefix = ""
        arrays: dict[str, int] = {}
        while True:
            self.skip(newlines=True)
            if self.eof():
                return self.lines
            line = self.line()
            if self.peek(2) == "[[":
                self.pos += 2
                name = ".".join(self.toml_key())
                self.pos = self.text.index("]]", self.pos) + 2
                index = arrays.get(name, 0)
                arrays[name] = index + 1
                prefix = f"{name}[{index}]"
                self.note(name, line)
                self.note(prefix, line)
            elif self.peek() == "[":
                self.pos += 1
                prefix = ".".join(self.toml_key())
                self.pos = self.text.index("]", self.pos) + 1
                self.note(prefix, line)
            else:
                parts = self.toml_key()
                if not parts:  # cannot happen in valid TOML; never loop forever
                    self.pos += 1
                    continue
                path = ".".join(p for p in (prefix, *parts) if p)
                self.note(path, line)
                self.skip(newlines=False)
                self.pos += 1  # "="
                self.toml_value(path)

    def toml_key(self) -> list[str]:
        parts: list[str] = []
        while True:
            self.skip(newlines=False)
            c = self.peek()
            if c == '"':
                part, self.pos = _scan_string(self.text, self.pos + 1)
            elif c == "'":
                end = self.text.index("'", self.pos + 1)
                part, self.pos = self.text[self.pos + 1 : end], end + 1
            else:
                m = _BARE_KEY.match(self.text, self.pos)
                if not m:
                    return parts
                part, self.pos = m.group(), m.end()
            parts.append(part)
            self.skip(newlines=False)
            if self.peek() != ".":
                return parts
            self.pos += 1

    def toml_value(self, path: str) -> None:
        self.skip(newlines=False)
        c = self.peek()
        if self.peek(3) in ('"""', "'''"):
            quote = self.peek(3)
            self.pos += 3
            while True:
                end = self.text.index(quote, self.pos)
                if quote == '"""' and _escaped(self.text, end):
                    self.pos = end + 1
                    continue
                self.pos = end + 3
                while self.peek() == quote[0]:  # up to two quotes may end the content
                    self.pos += 1
                return
        if c == '"':
            _, self.pos = _scan_string(self.text, self.pos + 1)
        elif c == "'":
            self.pos = self.text.index("'", self.pos + 1) + 1
        elif c == "[":
            self.pos += 1
            index = 0
            while True:
                self.skip(newlines=True)
                if self.eof() or self.peek() == "]":
                    self.pos += 1
                    return
                self.note(f"{path}[{index}]", self.line())
                self.toml_value(f"{path}[{index}]")
                index += 1
                self.skip(newlines=True)
                if self.peek() == ",":
                    self.pos += 1
        elif c == "{":
            self.pos += 1
            while True:
                self.skip(newlines=True)
                if self.eof() or self.peek() == "}":
                    self.pos += 1
                    return
                line = self.line()
                parts = self.toml_key()
                if not parts:
                    self.pos += 1
                    continue
                key = ".".join((path, *parts))
                self.note(key, line)
                self.skip(newlines=False)
                self.pos += 1  # "="
                self.toml_value(key)
                self.skip(newlines=True)
                if self.peek() == ",":
                    self.pos += 1
        else:
            m = _TOML_SCALAR.match(self.text, self.pos)
            self.pos = m.end() if m else self.pos + 1

    # ---- JSON

    def json(self) -> dict[str, int]:
        self.json_value("")
        return self.lines

    def skip_json(self) -> None:
        while not self.eof() and self.text[self.pos] in " \t\r\n":
            self.pos += 1

    def json_value(self, path: str) -> None:
        self.skip_json()
        c = self.peek()
        if c == '"':
            _, self.pos = _scan_string(self.text, self.pos + 1)
        elif c == "{":
            self.pos += 1
            while True:
                self.skip_json()
                if self.eof() or self.peek() == "}":
                    self.pos += 1
                    return
                if self.peek() == ",":
                    self.pos += 1
                    continue
                line = self.line()
                key, self.pos = _scan_string(self.text, self.pos + 1)
                full = f"{path}.{key}" if path else key
                self.note(full, line)
                self.skip_json()
                self.pos += 1  # ":"
                self.json_value(full)
        elif c == "[":
            self.pos += 1
            index = 0
            while True:
                self.skip_json()
                if self.eof() or self.peek() == "]":
                    self.pos += 1
                    return
                if self.peek() == ",":
                    self.pos += 1
                    continue
                self.note(f"{path}[{index}]", self.line())
                self.json_value(f"{path}[{index}]")
                index += 1
        else:
            m = _JSON_SCALAR.match(self.text, self.pos)
            self.pos = m.end() if m and m.end() > self.pos else self.pos + 1


def _scan_string(text: str, start: int) -> tuple[str, int]:
    """A double-quoted string whose content starts at ``start``: (its value, the
    position after its closing quote)."""
    pos = start
    while text[pos] != '"':
        pos += 2 if text[pos] == "\\" else 1
    try:
        value = json.loads(text[start - 1 : pos + 1])
    except ValueError:  # a TOML-only escape such as \UXXXXXXXX
        value = text[start:pos]
    return str(value), pos + 1


def _escaped(text: str, pos: int) -> bool:
    n = 0
    while pos - n - 1 >= 0 and text[pos - n - 1] == "\\":
        n += 1
    return n % 2 == 1


def _key_lines(text: str, kind: str) -> dict[str, int]:
    """Dotted path -> line, best effort (an empty dict if the scan goes wrong)."""
    try:
        scanner = _Scanner(text)
        return scanner.toml() if kind == "toml" else scanner.json()
    except (ValueError, IndexError, RecursionError):
        return {}


class _FileOrigins:
    def __init__(self, path: str, lines: dict[str, int]) -> None:
        self.path = path
        self.lines = lines

    def __call__(self, field: str) -> _Origin:
        """The line of ``field``, else of the nearest enclosing table."""
        probe = field
        while probe:
            if probe in self.lines:
                return _file_origin(self.path, self.lines[probe])
            cut = max(probe.rfind("."), probe.rfind("["))
            probe = probe[:cut] if cut > 0 else ""
        return _file_origin(self.path, None)


# ---- reading a file ------------------------------------------------------------


def _read_file(path: str) -> tuple[dict[str, Any], Callable[[str], _Origin]]:
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".toml", ".json"):
        raise InvalidConfig(
            f"config file {path}: {ext or 'no extension'!r} is not a known format; "
            "expected a .toml or .json file",
            context={"file": path, "field": None, "value": ext, "allowed": ".toml or .json"},
        )
    try:
        with open(path, "rb") as f:
            raw = f.read()
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise InvalidConfig(
            f"config file {path}: not found", context={"file": path, "field": None}
        ) from None
    except OSError as exc:
        raise InvalidConfig(
            f"config file {path}: cannot be read: {exc.strerror or exc}",
            context={"file": path, "field": None},
        ) from None
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InvalidConfig(
            f"{path}:{line}: not valid UTF-8", context={"file": path, "line": line, "field": None}
        ) from None
    data: Any
    try:
        data = _parse(path, ext, text)
    except RecursionError:  # the parsers recurse once or twice per level
        raise InvalidConfig(
            f"config file {path}: nested too deeply", context={"file": path, "field": None}
        ) from None
    return data, _FileOrigins(path, _key_lines(text, ext[1:]))


def _parse(path: str, ext: str, text: str) -> dict[str, Any]:
    data: Any
    if ext == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            m = re.search(r"\(at line (\d+), column \d+\)", str(exc))
            line_no = int(m.group(1)) if m else None
            where = f"{path}:{line_no}" if line_no else path
            raise InvalidConfig(
                f"{where}: not valid TOML: {exc}",
                context={"file": path, "line": line_no, "field": None},
            ) from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidConfig(
                f"{path}:{exc.lineno}: not valid JSON: {exc.msg} (column {exc.colno})",
                context={"file": path, "line": exc.lineno, "field": None},
            ) from None
        if not isinstance(data, dict):
            raise InvalidConfig(
                f"{path}:1: the top level must be a JSON object, not {type(data).__name__}",
                context={"file": path, "line": 1, "field": None},
            )
    return data  # type: ignore[no-any-return]


# ---- merging ---------------------------------------------------------------------

_Values = dict[str, tuple[Any, _Origin]]


class _Merge:
    """Raw values by dotted field, each with its origin; later layers overwrite."""

    def __init__(self) -> None:
        self.values: _Values = {}
        self.caches: list[_Values] = []
        self.cache_origins: list[_Origin] = []

    def add_mapping(self, data: Mapping[str, Any], origin: Callable[[str], _Origin]) -> None:
        """A whole document (a file, or ``{"sweep": {...}}`` given as arguments)."""
        for key, value in data.items():
            if key == "caches":
                self.set_caches(value, origin)
            elif key in _SECTIONS:
                if not isinstance(value, Mapping):
                    rules = _SECTIONS[key][1]
                    raise _error(
                        key, value, f"a table of settings ({', '.join(rules)})", origin(key)
                    )
                for sub, item in value.items():
                    self.set_field(f"{key}.{sub}", item, origin)
            else:
                self.set_field(str(key), value, origin)

    def set_caches(self, value: Any, origin: Callable[[str], _Origin]) -> None:
        allowed = "an array of tables ([[caches]] in TOML, a list of objects in JSON)"
        if not isinstance(value, list | tuple):
            raise _error("caches", value, allowed, origin("caches"))
        self.caches, self.cache_origins = [], []
        for i, item in enumerate(value):
            if not isinstance(item, Mapping):
                raise _error(f"caches[{i}]", item, allowed, origin(f"caches[{i}]"))
            self.new_cache(origin(f"caches[{i}]"))
            for key, field_value in item.items():
                self.set_field(f"caches[{i}].{key}", field_value, origin)

    def new_cache(self, origin: _Origin) -> None:
        self.caches.append({})
        self.cache_origins.append(origin)

    def set_field(self, field: str, value: Any, origin: Callable[[str], _Origin]) -> None:
        """One dotted field: ``log_level``, ``sweep.interval``, ``caches[0].capacity``."""
        m = _CACHE_FIELD.fullmatch(field)
        if m and m.group(2) is not None:
            index, key = int(m.group(1)), m.group(2)
            if index >= len(self.caches):  # a file key spelled "caches[3].name"
                raise _unknown(field, field, _TOP_KEYS, origin(field))
            if key not in CACHE_RULES:
                raise _unknown(field, key, list(CACHE_RULES), origin(field))
            self.caches[index][key] = (value, origin(field))
            return
        section, dot, key = field.partition(".")
        if dot and section in _SECTIONS:
            rules = _SECTIONS[section][1]
            if key not in rules:
                raise _unknown(field, key, list(rules), origin(field))
        elif field not in TOP_RULES:
            raise _unknown(field, field, _TOP_KEYS, origin(field))
        self.values[field] = (value, origin(field))

    def add_environment(self, env: Mapping[str, str]) -> None:
        for var, field in ENV_VARS.items():
            value = env.get(var, "")
            if not value.strip():
                continue  # unset or empty: as if absent
            origin = _Origin(f"env {var}", env=var)
            if field.startswith("caches[0].") and not self.caches:
                self.new_cache(origin)
            self.set_field(field, value, _always(origin))
        for var in env:
            prefix = next((p for p in _ENV_PREFIXES if var.startswith(p)), None)
            if prefix is None or var in ENV_VARS:
                continue
            # Compare what follows the prefix: METIS_SWEEP_INTERVALL is a typo of
            # METIS_SWEEP_INTERVAL, METIS_SNAPSHOT_ID is somebody else's variable.
            known = [v[len(prefix) :] for v in ENV_VARS if v.startswith(prefix)]
            close = difflib.get_close_matches(var[len(prefix) :], known, n=1, cutoff=0.8)
            if close:
                log.warning(
                    "environment variable %s is not a Metis setting (ignored); did you mean %s?",
                    var,
                    prefix + close[0],
                )

    def add_overrides(self, overrides: Mapping[str, Any]) -> None:
        argument = _always(_ARGUMENT)
        for key, value in overrides.items():
            m = _CACHE_FIELD.fullmatch(key)
            if (key in _SECTIONS and isinstance(value, Mapping)) or key == "caches":
                self.add_mapping({key: value}, argument)
            elif m:
                index = int(m.group(1))
                if index > len(self.caches):
                    raise InvalidConfig(
                        f"{key} (argument): there are {len(self.caches)} caches; an argument "
                        f"can set caches[0] to caches[{len(self.caches)}] (the last one new)",
                        context={"field": key, "value": value, "source": "argument"},
                    )
                if index == len(self.caches):
                    self.new_cache(_ARGUMENT)
                if m.group(2) is not None:
                    self.set_field(key, value, argument)
                elif isinstance(value, Mapping):
                    for sub, item in value.items():
                        self.set_field(f"{key}.{sub}", item, argument)
                else:
                    raise _error(key, value, "a table of cache settings", _ARGUMENT)
            else:
                self.set_field(key, value, argument)


# ---- building the typed config -------------------------------------------------


def _build(merge: _Merge) -> tuple[DaemonConfig, dict[str, str]]:
    sources: dict[str, str] = {}

    def take(field: str, values: _Values, key: str, rule: Rule, default: Any) -> Any:
        """``values[key]`` through ``rule``, or ``default``; notes the source of ``field``."""
        if key in values:
            raw, origin = values[key]
            try:
                typed = rule(raw)
            except _Reject as exc:
                raise _error(field, raw, exc.allowed, origin, exc.hint) from None
            sources[field] = origin.source
            return typed
        sources[field] = "default"
        return default

    top: dict[str, Any] = {}
    top_defaults = _defaults(DaemonConfig)
    for key, rule in TOP_RULES.items():
        top[key] = take(key, merge.values, key, rule, top_defaults[key])
    for section, (cls, rules) in _SECTIONS.items():
        defaults = _defaults(cls)
        kwargs = {
            key: take(f"{section}.{key}", merge.values, f"{section}.{key}", rule, defaults[key])
            for key, rule in rules.items()
        }
        top[section] = cls(**kwargs)

    if not merge.caches:
        origin = merge.cache_origins[0] if merge.cache_origins else _DEFAULT
        raise _error("caches", [], _CACHES_ALLOWED, origin)
    cache_defaults = _defaults(CacheConfig)
    caches: list[CacheConfig] = []
    names: dict[str, int] = {}
    for i, values in enumerate(merge.caches):
        kwargs = {}
        for key, rule in CACHE_RULES.items():
            field = f"caches[{i}].{key}"
            default = cache_defaults[key]
            if default is msgspec.NODEFAULT and key not in values:
                allowed = "a cache name" if key == "name" else _SIZE_HELP
                raise _missing(field, allowed, merge.cache_origins[i])
            kwargs[key] = take(field, values, key, rule, default)
        try:
            _check_cache(kwargs)
        except _Reject as exc:
            key = exc.field or "capacity"
            raw, origin = values.get(key, (kwargs[key], merge.cache_origins[i]))
            raise _error(f"caches[{i}].{key}", raw, exc.allowed, origin, exc.hint) from None
        name = kwargs["name"]
        if name in names:
            raise _error(f"caches[{i}].name", name, _unique_allowed(names[name]), values["name"][1])
        names[name] = i
        caches.append(CacheConfig(**kwargs))
    return DaemonConfig(caches=caches, **top), sources


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> LoadedConfig:
    """Read and merge the configuration: defaults < ``path`` (``.toml`` or
    ``.json``) < ``env`` (``METIS_*``; ``os.environ`` when None) < ``overrides``
    (dotted fields such as ``{"sweep.interval": "2s", "caches[0].capacity":
    "1GiB"}``, or whole tables such as ``{"sweep": {...}}``).

    ``path=None`` reads the file named by ``$METIS_CONFIG`` if set, else no file.
    Raises ``InvalidConfig`` for any problem (see the module docstring).
    """
    environment = os.environ if env is None else env
    if path is None and environment.get(CONFIG_ENV, "").strip():
        path = environment[CONFIG_ENV]
    file = os.fspath(path) if path is not None else None
    merge = _Merge()
    if file is not None:
        data, origins = _read_file(file)
        merge.add_mapping(data, origins)
    merge.add_environment(environment)
    if overrides:
        merge.add_overrides(overrides)
    config, sources = _build(merge)
    return LoadedConfig(config=config, sources=sources, path=file)


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
    "CONFIG_ENV",
    "ENV_VARS",
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
    "load_config",
]
