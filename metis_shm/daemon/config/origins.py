"""Where a configuration value came from, and the errors that say so.

Every raw value the loader merges carries an ``_Origin``: a default, a file
(and line), an environment variable or an argument. ``_error``, ``_missing``
and ``_unknown`` build the ``InvalidConfig`` of a bad, missing or unknown
setting: the message names the field, the value, what is allowed and where
the value came from; ``context`` holds the same pieces (``field``,
``value``, ``allowed``, ``source``, ``file``, ``line``, ``env``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from metis_shm.daemon.config.rules import CACHE_RULES, SECTION_RULES, _did_you_mean
from metis_shm.errors import InvalidConfig


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
    elsewhere = [f"{s}.{key}" for s, rules in SECTION_RULES.items() if key in rules] + (
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
