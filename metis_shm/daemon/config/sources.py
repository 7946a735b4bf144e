"""Reading and merging the sources of metisd's configuration.

    defaults  <  file (TOML or JSON)  <  environment (``METIS_*``)  <  arguments

``load_config(path, env=..., overrides=...)`` reads the file (its format from
its extension), the environment (``ENV_VARS``: variable -> dotted field) and
the arguments, merges them field by field (a later source overwrites an
earlier one), builds the typed ``DaemonConfig`` (model.py) through the
fields' rules (rules.py), and returns a ``LoadedConfig``: the config and,
for every dotted field, where its value came from (``"default"``, ``"file
PATH:LINE"``, ``"env METIS_X"`` or ``"argument"``). An unknown setting, a
bad value, a missing one, an unreadable file: each raises ``InvalidConfig``
naming where it came from (origins.py, scanner.py).
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from metis_shm.daemon.config.model import (
    _CACHE_FIELD,
    _CACHES_ALLOWED,
    _SECTIONS,
    _TOP_KEYS,
    CacheConfig,
    DaemonConfig,
    LoadedConfig,
    _defaults,
    _unique_allowed,
)
from metis_shm.daemon.config.origins import (
    _ARGUMENT,
    _DEFAULT,
    _always,
    _error,
    _missing,
    _Origin,
    _unknown,
)
from metis_shm.daemon.config.rules import (
    _SIZE_HELP,
    CACHE_RULES,
    TOP_RULES,
    Rule,
    _check_cache,
    _Reject,
)
from metis_shm.daemon.config.scanner import _FileOrigins, _key_lines
from metis_shm.errors import InvalidConfig

log = logging.getLogger("metis_shm.config")

CONFIG_ENV = "METIS_CONFIG"
"""Environment variable naming the config file when ``load_config`` gets no path."""


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


__all__ = ["CONFIG_ENV", "ENV_VARS", "load_config"]
