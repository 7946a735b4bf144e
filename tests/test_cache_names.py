"""No test and no doc example opens, clears or destroys a cache it did not create.

The rule: a test names the caches it opens with a name made unique at run
time (the ``cache_name`` / ``cache`` / ``names`` fixtures, ``new_name()``, an
f-string with a pid or a uuid in it), never with a fixed one (``"app"``,
``NAME = "sessions"``). A fixed name may be somebody's real cache on the
machine that runs the suite: attaching to it reads their data, ``clear()``
or ``Cache.destroy()`` wipes it. ``tests/_cache_names.py`` says exactly what
counts as a fixed name and as opening one (``Cache(...)``,
``Cache.destroy(...)``, Django's ``LOCATION``, Flask's ``CACHE_METIS_NAME``,
the ASGI middleware and dependency, ``metis stats NAME`` and the other CLI
commands that take a name, ...). An invalid name is not counted: it cannot
open anything.

* ``test_no_test_opens_a_fixed_name`` reads every ``.py`` file under
  ``tests/`` (but ``tests/.suites/``, Django's own suite, which runs against
  a ``LOCATION`` it is given), ``examples/`` and ``benchmarks/`` (tests start
  them), and fails on each fixed name it finds, with file and line.
  ``ALLOWED`` lists the exceptions, each with the reason it is safe.
* ``test_doc_examples_are_run_under_their_own_names``: the doc examples do
  use fixed names, as a reader's code would; the runner
  (tests/test_docs_examples.py) rewrites them, and this checks that after
  the rewriting every fixed name an example opens or configures is under
  the runner's prefix.
* The rest check the scanner itself on small pieces of code.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _cache_names import CONFIGURING, OPENING, fixed_names, rewrite_names
from test_docs_examples import FOREIGN, _examples

ROOT = Path(__file__).resolve().parent.parent

#: (file relative to the root, name) -> why that fixed name is safe there
ALLOWED: dict[tuple[str, str], str] = {
    ("tests/test_docs_examples.py", FOREIGN): (
        "the foreign cache of test_doc_examples_leave_a_foreign_cache_alone: created by a "
        "child only when no such cache exists, opened only to check the child's marker, "
        "destroyed only when creator pid and marker are still the child's"
    ),
}


def _sources() -> list[Path]:
    files = [
        *sorted((ROOT / "tests").rglob("*.py")),
        *sorted((ROOT / "examples").rglob("*.py")),
        *sorted((ROOT / "benchmarks").rglob("*.py")),
    ]
    suites = ROOT / "tests" / ".suites"
    return [p for p in files if suites not in p.parents]


def test_no_test_opens_a_fixed_name() -> None:
    found = []
    allowed_seen = set()
    for path in _sources():
        rel = str(path.relative_to(ROOT))
        for fixed in fixed_names(path.read_text()):
            if (rel, fixed.name) in ALLOWED:
                allowed_seen.add((rel, fixed.name))
                continue
            found.append(f"{rel} {fixed}")
    assert not found, (
        "tests must open caches under names made unique at run time (the cache_name or "
        "names fixture, _workers.new_name()):\n  " + "\n  ".join(found)
    )
    assert allowed_seen == set(ALLOWED), "ALLOWED lists an exception that is gone"


def test_doc_examples_are_run_under_their_own_names() -> None:
    prefix = "t1-ffff-"
    opened = 0
    for where, code in _examples():
        run, renamed = rewrite_names(code, prefix)
        left = [str(f) for f in fixed_names(run, configuring=True) if not f.name.startswith(prefix)]
        assert not left, f"{where}: {left}"
        opened += bool(renamed)
    assert opened >= 15  # most examples open a cache: the scanner does see them


# ---- the scanner ---------------------------------------------------------------------


def _names(code: str, configuring: bool = False) -> list[tuple[str, str]]:
    return [(f.name, f.how) for f in fixed_names(code, configuring=configuring)]


def test_literals_where_a_cache_is_opened() -> None:
    code = """
from metis_shm import Cache
NAME = "consts"
Cache("app", capacity="8MiB")
Cache(name="named")
Cache.destroy("gone")
Cache(NAME)
Cache("a" + "b")
with Cache(f"plain") as c:
    c.clear()
settings = {"default": {"LOCATION": "site"}}
app.config.update(CACHE_METIS_NAME="flask")
CacheMiddleware(app, cache="asgi", ttl=5)
cache_dependency("dep")
main(["stats", "cli"])
subprocess.run([sys.executable, "-m", "metis_shm", "get", "cli2", "key"])
"""
    assert _names(code) == [
        ("app", OPENING), ("named", OPENING), ("gone", OPENING), ("consts", OPENING),
        ("ab", OPENING), ("plain", OPENING), ("site", OPENING), ("flask", OPENING),
        ("asgi", OPENING), ("dep", OPENING), ("cli", OPENING), ("cli2", OPENING),
    ]  # fmt: skip


def test_names_made_at_run_time_and_others_are_not_fixed() -> None:
    code = """
import os
from metis_shm import Cache
Cache(cache_name)
Cache(new_name())
Cache(f"sim-{os.getpid()}-lru")
NAME = "x"
NAME = other()
Cache(NAME)                       # not always the same literal
for name in ("a", "b"):
    Cache(name)
Cache("bad/name")                 # invalid: opens nothing
Cache("")
MetisCache("", {})
main(["bench", "temp"])           # a keyword of the command
main(["stats", "--json", name])
ops = ["get", "set"]              # not an argument list
cache.set("key", "value")
cache.get("app")                  # a key, not a cache name
CacheConfig(name="config-only")   # configures, opens nothing
"""
    assert _names(code) == []
    assert _names(code, configuring=True) == [("config-only", CONFIGURING)]


def test_rewriting_names_in_strings_only() -> None:
    code = '''
from fastapi import FastAPI
app = FastAPI()
NAME = "app"
cache = Cache(NAME)  # opens "app"
text = f"""
[[caches]]
name = "app"
"""
assert os.path.exists("/dev/shm/metis.app")
assert "application" != "app-2"
load_config(env={"METIS_CACHE_NAME": "app"})
'''
    run, renamed = rewrite_names(code, "p-")
    assert renamed == {"app": "p-app"}
    assert "app = FastAPI()" in run and 'NAME = "p-app"' in run
    assert '# opens "app"' in run
    assert 'name = "p-app"' in run and '"/dev/shm/metis.p-app"' in run
    assert '"application" != "app-2"' in run
    assert '{"METIS_CACHE_NAME": "p-app"}' in run
    assert rewrite_names("print('no cache here')", "p-") == ("print('no cache here')", {})


@pytest.mark.parametrize("name", ["app", "sessions.v2", "a_b-c"])
def test_every_valid_name_is_seen(name: str) -> None:
    assert _names(f"Cache({name!r})") == [(name, OPENING)]
