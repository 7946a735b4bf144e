"""Every ```python block in README.md and docs/*.md runs, each in a fresh
interpreter, under cache names of its own.

The examples name their caches as a reader would (``Cache("app")``), and a
reader's machine may well have a cache ``app``: so before an example runs,
every fixed cache name it opens or configures is rewritten in its string
literals to ``t<pid>-<hex>-<name>`` (``tests/_cache_names.rewrite_names``; the
``t<pid>-`` prefix is this session's, which conftest.py cleans up). The
runner checks that no fixed name is left unprefixed, runs the example, then
destroys the segments under that example's prefix, and only those: a segment
of any other name is somebody else's and is never opened.

``test_doc_examples_leave_a_foreign_cache_alone`` runs all of them while a
foreign cache ``app`` (another process's, with a marker value) exists, and
checks it afterwards: same segment, same marker, no operation counted.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from uuid import uuid4

import pytest
from _cache_names import fixed_names, rewrite_names
from _workers import SHM_DIR, new_name, shm_path

from metis_shm import Cache

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
#: a name readers' own caches have: the README's example and docs/cli.md use it
FOREIGN = "app"


def _examples() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for i, m in enumerate(BLOCK.finditer(doc.read_text())):
            found.append((f"{doc.relative_to(ROOT)}#{i + 1}", m.group(1)))
    return found


def _segments_under(prefix: str) -> list[str]:
    """The cache names of the segments whose name starts with ``prefix``."""
    return [n[len("metis.") :] for n in os.listdir(SHM_DIR) if n.startswith(f"metis.{prefix}")]


@pytest.mark.parametrize(("where", "code"), _examples(), ids=[w for w, _ in _examples()])
def test_doc_example_runs(where: str, code: str) -> None:
    prefix = f"{new_name()}-"
    run, renamed = rewrite_names(code, prefix)
    unprefixed = [
        str(f) for f in fixed_names(run, configuring=True) if f.name not in renamed.values()
    ]
    assert not unprefixed, f"{where}: names the runner could not make its own: {unprefixed}"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", run], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, (
            f"{where} failed (cache names {renamed}):\n{proc.stdout}\n{proc.stderr}"
        )
    finally:
        for name in _segments_under(prefix):
            Cache.destroy(name)


def test_the_examples_that_open_caches_are_renamed() -> None:
    """The rewriting reaches the names that matter: the README's ``app``, a
    name behind a constant, TOML inside an f-string, a path under /dev/shm."""
    by_where = dict(_examples())
    prefix = "t1-0000-"
    readme, renamed = rewrite_names(by_where["README.md#1"], prefix)
    assert renamed == {"app": "t1-0000-app"}
    assert 'Cache("t1-0000-app", capacity="256MiB")' in readme
    assert 'Cache.destroy("t1-0000-app")' in readme
    assert 'opens "app"' in readme  # a comment is left as it is
    asgi, _ = rewrite_names(by_where["docs/asgi.md#1"], prefix)
    assert 'NAME = "t1-0000-asgi-doc-example"' in asgi
    daemon, _ = rewrite_names(by_where["docs/daemon.md#2"], prefix)
    assert 'name = "t1-0000-daemon-doc-example"' in daemon  # the TOML config
    assert '"metis.t1-0000-daemon-doc-example.*.snap"' in daemon
    attach, _ = rewrite_names(by_where["docs/daemon.md#1"], prefix)
    assert 'Cache("t1-0000-app", create=False)' in attach
    security, _ = rewrite_names(by_where["docs/security.md#1"], prefix)
    assert '"/dev/shm/metis.t1-0000-security-group-example"' in security
    # every example that opens a cache at all opens it under the prefix
    for where, code in by_where.items():
        run, renamed = rewrite_names(code, prefix)
        assert all(f.name.startswith(prefix) for f in fixed_names(run, configuring=True)), where
        assert all(len(new) <= 64 for new in renamed.values())


_MAKE_FOREIGN = """
import os, sys
from metis_shm import Cache
cache = Cache(sys.argv[1], capacity="1MiB", shards=1)
if cache.settings["creator_pid"] != os.getpid():
    sys.exit(3)  # it existed already: somebody else's, leave it be
cache.set("marker", sys.argv[2])
cache.close()
print(os.getpid())
"""


@pytest.mark.slow
def test_doc_examples_leave_a_foreign_cache_alone() -> None:
    """The README's example ends with ``Cache.destroy("app")``; this suite
    used to run it as it is, and destroyed a cache ``app`` it had not made.

    A child process creates ``app`` (only if no ``app`` exists: a real one is
    only looked at with ``os.stat``, never opened) and stores a marker
    value, then exits, so the segment's creator is dead, as for a cache that
    a user's script left. Then the doc-example tests run in a pytest of their
    own. Afterwards the segment is the same file (inode, size), its creator
    is still the child, the marker is still there, and its counters say
    nobody read, wrote, deleted or evicted anything. The test destroys
    ``app`` at the end only when it is still the one its child made."""
    marker = uuid4().hex
    path = shm_path(FOREIGN)
    creator = None
    if not os.path.exists(path):
        made = subprocess.run(
            [sys.executable, "-c", _MAKE_FOREIGN, FOREIGN, marker],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert made.returncode in (0, 3), made.stderr
        creator = int(made.stdout) if made.returncode == 0 else None
    before = os.stat(path)
    try:
        proc = subprocess.run(
            [
                sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                f"{Path(__file__).relative_to(ROOT)}::test_doc_example_runs",
            ],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        assert os.path.exists(path), f"the doc examples destroyed the foreign cache {FOREIGN!r}"
        after = os.stat(path)
        assert (after.st_ino, after.st_dev, after.st_size) == (
            before.st_ino, before.st_dev, before.st_size,
        ), "the foreign cache was destroyed and made again"  # fmt: skip
        if creator is not None:
            with Cache(FOREIGN, create=False) as cache:
                assert cache.settings["creator_pid"] == creator
                st = cache.stats()
                counters = (st.hits, st.misses, st.sets, st.deletes, st.evictions, st.items)
                assert counters == (0, 0, 1, 0, 0, 1), counters
                assert cache.get("marker") == marker
    finally:
        if creator is not None:
            _destroy_if_still_ours(creator, marker)


def _destroy_if_still_ours(creator: int, marker: str) -> None:
    """Destroy ``FOREIGN`` if it is the segment this test's child made."""
    try:
        with Cache(FOREIGN, create=False) as cache:
            ours = cache.settings["creator_pid"] == creator and cache.get("marker") == marker
    except Exception:  # gone, or no longer a cache this test can read
        return
    if ours:
        Cache.destroy(FOREIGN)
