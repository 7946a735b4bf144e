"""Cache names written into test code and doc examples as literals.

Nothing here is a test. ``tests/test_cache_names.py`` uses ``fixed_names`` to
fail on a test that opens, clears or destroys a cache under a fixed name, and
``tests/test_docs_examples.py`` uses ``rewrite_names`` to run every doc
example under a prefix of its own, so that ``Cache("app")`` in the README
never touches somebody's real cache ``app``.

A *fixed name* is a valid cache name (``metis_shm.segment.validate_name``)
whose value is known before the code runs: a string literal, a constant
concatenation of literals, an f-string without a placeholder, or a variable
of the module that is only ever assigned such a literal. A name computed at
run time (``new_name()``, a fixture's ``cache_name``, an f-string with a pid
or a uuid in it) is not one; an invalid name (``"bad/name"``) opens nothing.

Where a name *opens* (``OPENING``):

* the first argument, or ``name=``/``location=``, of ``Cache(...)`` (also as
  ``MetisCache``, the Django backend's class), ``Cache.destroy(...)`` and
  ``metis_shm.segment``'s ``create_or_open``/``attach``/``destroy``, the CLI's
  ``open_existing`` and the ASGI ``cache_dependency``;
* ``cache=`` of ``CacheMiddleware`` (the ASGI response cache);
* the value of a ``"LOCATION"`` (Django) or ``"CACHE_METIS_NAME"`` (Flask)
  key in a dict literal, or of a ``CACHE_METIS_NAME=`` keyword;
* the word after a ``metis`` command that takes a cache name (``stats``,
  ``check``, ...) in an argument list: ``main(["check", "x"])`` or
  ``["metis", "get", "x", "k"]`` (``bench temp`` is a keyword, not a name).

Where a name only *configures* one (``CONFIGURING``; counted for the doc
examples, whose configuration does reach a cache, but not for tests, where
tests/test_config.py parses configurations full of names and opens none):
``CacheConfig(name=...)`` and a ``"METIS_CACHE_NAME"`` key or ``setenv``.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass

from metis_shm.errors import InvalidName
from metis_shm.segment import validate_name

#: callees whose first argument (or ``name=`` / ``location=``) is a cache name
NAME_CALLS = frozenset(
    {"Cache", "MetisCache", "destroy", "create_or_open", "attach", "open_existing",
     "cache_dependency"}
)  # fmt: skip
#: (callee, keyword) pairs whose keyword is a cache name
NAME_KEYWORDS = frozenset({("CacheMiddleware", "cache")})
#: dict keys (and keywords) whose value is a cache name
NAME_KEYS = frozenset({"LOCATION", "CACHE_METIS_NAME"})
#: ``metis`` commands whose first operand is a cache name
CLI_COMMANDS = frozenset(
    {"stats", "check", "inspect", "top", "get", "set", "delete", "keys", "bench",
     "snapshot", "restore"}
)  # fmt: skip
#: operands of those commands that are keywords, not names
CLI_KEYWORDS = frozenset({("bench", "temp")})

OPENING = "opens"
CONFIGURING = "configures"

#: the tokens that hold a string literal's text (Python 3.12 splits f-strings)
_STRING_TOKENS = {tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}
_NAME_CHARS = "A-Za-z0-9_-"  # a name's characters but the dot: "metis.<name>.snap" still matches


@dataclass(frozen=True)
class FixedName:
    """A fixed cache name at ``line`` of some code, and what the code does with it."""

    name: str
    line: int
    how: str  # OPENING or CONFIGURING
    where: str  # the construct, for messages: "Cache(...)", '"LOCATION": ...'

    def __str__(self) -> str:
        return f"line {self.line}: {self.where} {self.how} the fixed name {self.name!r}"


def _callee(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _module_constants(tree: ast.AST) -> dict[str, set[str] | None]:
    """Variable -> the string literals assigned to it; ``None`` when some
    assignment is not a literal (the value is then not known in advance)."""
    found: dict[str, set[str] | None] = {}

    def note(target: ast.expr, value: ast.expr | None) -> None:
        if not isinstance(target, ast.Name):
            for sub in ast.walk(target):
                if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                    found[sub.id] = None
            return
        literal = _literal(value, {}) if value is not None else None
        known = found.get(target.id, set())
        if literal is None or known is None:
            found[target.id] = None
        else:
            found[target.id] = known | {literal}

    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                note(target, node.value)
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            note(node.target, node.value if isinstance(node, ast.AnnAssign) else None)
        elif isinstance(node, ast.For | ast.AsyncFor | ast.comprehension | ast.NamedExpr):
            note(node.target, None)
        elif isinstance(node, ast.arg):
            found[node.arg] = None
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            note(node.optional_vars, None)
    return found


def _literal(node: ast.expr | None, constants: dict[str, set[str] | None]) -> str | None:
    """The value of ``node`` when it is known before the code runs (one value)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and all(isinstance(v, ast.Constant) for v in node.values):
        return "".join(str(v.value) for v in node.values if isinstance(v, ast.Constant))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _literal(node.left, constants), _literal(node.right, constants)
        return None if left is None or right is None else left + right
    if isinstance(node, ast.Name):
        values = constants.get(node.id)
        if values is not None and len(values) == 1:
            return next(iter(values))
    return None


def _valid(name: str) -> bool:
    try:
        validate_name(name)
    except InvalidName:
        return False
    return True


def fixed_names(code: str, *, configuring: bool = False) -> list[FixedName]:
    """The fixed cache names ``code`` opens (and, with ``configuring=True``,
    those it configures), in the order they appear (module docstring)."""
    tree = ast.parse(code)
    constants = _module_constants(tree)
    found: list[FixedName] = []
    main_argv = {
        id(node.args[0])
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and _callee(node) == "main" and node.args
    }

    def add(node: ast.expr | None, how: str, where: str) -> None:
        value = _literal(node, constants)
        if value is not None and _valid(value) and node is not None:
            found.append(FixedName(value, node.lineno, how, where))

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            callee = _callee(node)
            if callee in NAME_CALLS:
                if node.args:
                    add(node.args[0], OPENING, f"{callee}(...)")
                for kw in node.keywords:
                    if kw.arg in ("name", "location"):
                        add(kw.value, OPENING, f"{callee}({kw.arg}=...)")
            for kw in node.keywords:
                if (callee, kw.arg) in NAME_KEYWORDS or kw.arg in NAME_KEYS:
                    add(kw.value, OPENING, f"{callee}({kw.arg}=...)")
            if configuring and callee == "CacheConfig":
                for kw in node.keywords:
                    if kw.arg == "name":
                        add(kw.value, CONFIGURING, "CacheConfig(name=...)")
            if (
                configuring
                and callee == "setenv"
                and len(node.args) == 2
                and _literal(node.args[0], constants) == "METIS_CACHE_NAME"
            ):
                add(node.args[1], CONFIGURING, "setenv('METIS_CACHE_NAME', ...)")
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                k = _literal(key, constants) if key is not None else None
                if k in NAME_KEYS:
                    add(value, OPENING, f"{{{k!r}: ...}}")
                elif configuring and k == "METIS_CACHE_NAME":
                    add(value, CONFIGURING, f"{{{k!r}: ...}}")
        elif isinstance(node, ast.List | ast.Tuple):
            # an argument list: main([...]) (the CLI's entry point), or one that
            # names the program: [sys.executable, "-m", "metis_shm", "stats", ...]
            words = [_literal(e, constants) for e in node.elts]
            for i, word in enumerate(words[:-1]):
                operand = words[i + 1]
                if word not in CLI_COMMANDS or (word, operand) in CLI_KEYWORDS:
                    continue
                is_argv = (i == 0 and id(node) in main_argv) or (
                    i > 0 and words[i - 1] in ("metis", "metis_shm")
                )
                if is_argv and operand is not None and not operand.startswith("-"):
                    add(node.elts[i + 1], OPENING, f"metis {word} ...")
    found.sort(key=lambda f: (f.line, f.name))
    return found


def rewrite_names(code: str, prefix: str) -> tuple[str, dict[str, str]]:
    """``code`` with every fixed cache name it opens or configures made
    ``prefix + name``, in every string literal of the code where the name
    stands as a whole word (so ``"/dev/shm/metis.app"`` and TOML text inside
    an f-string follow ``Cache("app")``; ``"application"`` and comments do
    not). Returns the new code and the mapping old name -> new name."""
    mapping = {f.name: prefix + f.name for f in fixed_names(code, configuring=True)}
    if not mapping:
        return code, {}
    alternatives = "|".join(re.escape(n) for n in sorted(mapping, key=len, reverse=True))
    word = re.compile(rf"(?<![{_NAME_CHARS}])(?:{alternatives})(?![{_NAME_CHARS}])")
    lines = code.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    pieces: list[str] = []
    done = 0
    for tok in tokenize.generate_tokens(io.StringIO(code).readline):
        if tok.type not in _STRING_TOKENS:
            continue
        begin = starts[tok.start[0] - 1] + tok.start[1]
        end = starts[tok.end[0] - 1] + tok.end[1]
        pieces.append(code[done:begin])
        pieces.append(word.sub(lambda m: mapping[m.group(0)], code[begin:end]))
        done = end
    pieces.append(code[done:])
    return "".join(pieces), mapping
