"""On which line of a config file each key is: the ``file PATH:LINE`` of an error.

``tomllib`` and ``json`` give values, not positions. ``_key_lines(text,
kind)`` scans text the real parser has accepted with just enough of a
TOML/JSON tokenizer to map every dotted path (``sweep.interval``,
``caches[0].capacity``) to its line; ``_FileOrigins`` answers the origin of
a field from that map (the line of the field, else of the nearest enclosing
table). Best effort: a scan that goes wrong gives no lines, never an error.
"""

from __future__ import annotations

import bisect
import json
import re

from metis_shm.daemon.config.origins import _file_origin, _Origin

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_TOML_SCALAR = re.compile(r"[^,\]}\n#]*")
_JSON_SCALAR = re.compile(r"[^,\]}\s]*")


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
