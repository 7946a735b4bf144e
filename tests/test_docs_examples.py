"""Every ```python block in README.md and docs/*.md runs, each in a fresh
interpreter; segments an example leaves behind are destroyed afterwards.

Only the example's own leftovers: a segment that appeared meanwhile but
whose creator is still alive belongs to someone else (another test session
on this machine) and is left alone."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from metis_shm import Cache, MetisError

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _examples() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for i, m in enumerate(BLOCK.finditer(doc.read_text())):
            found.append((f"{doc.relative_to(ROOT)}#{i + 1}", m.group(1)))
    return found


def _segments() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("metis.")}


@pytest.mark.parametrize(("where", "code"), _examples(), ids=[w for w, _ in _examples()])
def test_doc_example_runs(where: str, code: str) -> None:
    before = _segments()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, f"{where} failed:\n{proc.stdout}\n{proc.stderr}"
    finally:
        for name in _segments() - before:
            _destroy_if_orphaned(name.removeprefix("metis."))


def _destroy_if_orphaned(name: str) -> None:
    try:
        with Cache(name, create=False) as cache:
            creator = cache.settings["creator_pid"]
    except (MetisError, OSError):
        return  # gone already, or not ours to judge
    if not psutil.pid_exists(creator):
        Cache.destroy(name)
