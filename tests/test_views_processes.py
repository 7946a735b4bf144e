"""Views across processes: a process holding pins that dies (SIGKILL), is
stopped (SIGSTOP) or forks, and writers in other processes while views are
held. Every child is a real process; a killed one is really SIGKILLed."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _metisd import ROOT, python_env, write_config
from _workers import ForkedChild

from metis_shm import Cache

KIB = 1024
PINS = 100

# A process that opens `name`, views keys k0..k{n-1}, says "ready", then on
# "check" says whether every view still shows what it showed first, and on
# "close" closes them all.
HOLDER = """
import sys
from metis_shm import Cache
name, n = sys.argv[1], int(sys.argv[2])
cache = Cache(name, create=False, max_pinned="64MiB")
held = []
for i in range(n):
    ctx = cache.view(f"k{i}")
    mv = ctx.__enter__()
    held.append((ctx, mv, bytes(mv)))
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() == "check":
        print("same" if all(bytes(mv) == first for _c, mv, first in held) else "moved",
              flush=True)
    elif line.strip() == "close":
        for ctx, _mv, _first in held:
            ctx.__exit__(None, None, None)
        print("closed", flush=True)
"""


def _holder(name: str, n: int = PINS) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, name, str(n)],
        env=python_env(),
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _ask(proc: subprocess.Popen[str], line: str) -> str:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    return proc.stdout.readline().strip()


def _pinned_then_overwritten(cache: Cache, rng: random.Random) -> subprocess.Popen[str]:
    """A holder process with PINS views, every one of whose keys is then
    overwritten: PINS blocks held back for it."""
    for i in range(PINS):
        cache.set(f"k{i}", rng.randbytes(rng.randint(1000, 4 * KIB)))
    proc = _holder(cache.name)
    assert cache.stats().pins == PINS
    for i in range(PINS):
        cache.set(f"k{i}", b"new")
    assert cache.stats().held_blocks == PINS
    return proc


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)  # reaped: its pid names nobody now
    _close_pipes(proc)
    assert proc.returncode == -signal.SIGKILL


def _close_pipes(proc: subprocess.Popen[str]) -> None:
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            pipe.close()


def test_sigkilled_holder_blocks_are_reused_by_the_next_allocation(
    names: Callable[[], str], rng: random.Random
) -> None:
    cache = Cache(names(), "1MiB", shards=1, compress_threshold=None)
    try:
        proc = _pinned_then_overwritten(cache, rng)
        _kill(proc)
        # No metisd: an allocation that runs short reclaims the dead slot.
        held = cache.stats().held_bytes
        assert held > 0
        i = 0
        while cache.stats().held_blocks and i < 10_000:
            cache.set(f"fill{i}", rng.randbytes(8 * KIB))
            i += 1
        st = cache.stats()
        assert st.held_blocks == 0 and st.held_bytes == 0, st
        assert st.pins == 0
        assert cache.check() == []
        print(f"{PINS} held blocks ({held} B) reused after {i} sets")
    finally:
        cache.close()


@pytest.mark.slow
def test_sigkilled_holder_blocks_are_freed_within_a_metisd_tick(
    tmp_path: Path, daemons: Any, names: Callable[[], str], rng: random.Random
) -> None:
    name = names()
    config = write_config(
        tmp_path / "metisd.toml",
        [{"name": name, "capacity": "8MiB"}],
        sweep={"interval": "50ms"},
    )
    d = daemons(config).wait_ready()
    with Cache(name, create=False) as cache:
        proc = _pinned_then_overwritten(cache, rng)
        _kill(proc)
        t0 = time.monotonic()
        while cache.stats().held_blocks and time.monotonic() - t0 < 10:
            time.sleep(0.005)
        took = time.monotonic() - t0
        assert cache.stats().held_blocks == 0, d.lines[-20:]
        assert cache.check() == []
        stats = d.stats()
        print(f"held blocks freed by metisd {took * 1000:.0f} ms after the SIGKILL")
    assert "'held_blocks_freed': " in str(stats), stats


def test_a_stopped_holder_stops_no_writer_and_keeps_its_bytes(
    names: Callable[[], str], rng: random.Random
) -> None:
    cache = Cache(names(), "1MiB", shards=1, compress_threshold=None)
    try:
        proc = _pinned_then_overwritten(cache, rng)
        proc.send_signal(signal.SIGSTOP)
        try:
            # Writers go on at full speed around the held blocks.
            for i in range(2000):
                cache.set(f"w{i % 50}", rng.randbytes(rng.randint(1, 6 * KIB)))
            assert cache.stats().held_blocks == PINS
            assert cache.check() == []
        finally:
            proc.send_signal(signal.SIGCONT)
        assert _ask(proc, "check") == "same"
        assert _ask(proc, "close") == "closed"
        # Its closing views gave the blocks back at once (no lock waited for).
        assert cache.stats().held_blocks == 0
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(10)
        _close_pipes(proc)
    finally:
        cache.close()


def test_views_survive_a_fork_and_the_child_drops_none_of_the_parents_pins(
    cache: Cache,
) -> None:
    value = os.urandom(3000)
    cache.set("k", value)
    cache.set("other", b"child's own")
    with cache.view("k") as mv:

        def child() -> tuple[bool, int, bytes]:
            same = bytes(mv) == value
            # Leaving the inherited block in the child must not unpin the
            # parent's view; the child's own views are its own.
            with cache.view("other") as own:
                mine = bytes(own)
            return same, cache._pin_stats()[0], mine

        same, child_pins, mine = ForkedChild(child).join(30)
        assert same and child_pins == 0 and mine == b"child's own"
        assert cache.stats().pins == 1
        cache.set("k", b"new")
        assert bytes(mv) == value
    assert cache.stats().held_blocks == 0


WRITER = """
import random, sys, time
from metis_shm import Cache
name, seed, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rng = random.Random(seed)
cache = Cache(name, create=False)
end = time.monotonic() + seconds
n = 0
while time.monotonic() < end:
    key = f"hot{rng.randrange(6)}"
    if rng.random() < 0.85:
        cache.set(key, rng.randbytes(int(2 ** rng.uniform(0, 14))))
    else:
        cache.delete(key)
    n += 1
print(n, flush=True)
"""


@pytest.mark.slow
def test_views_held_against_a_writer_process(
    names: Callable[[], str], rng: random.Random, seed: int
) -> None:
    """Random sizes under six hot keys, a writer in another process, views
    opened and held here: no view ever shows a changed byte."""
    cache = Cache(names(), "256KiB", shards=1, compress_threshold=None, max_pinned="256KiB")
    try:
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, cache.name, str(seed), "3"],
            env=python_env(),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        held: list[tuple[Any, memoryview, bytes]] = []
        views = checks = 0
        while writer.poll() is None:
            key = f"hot{rng.randrange(6)}"
            if len(held) < 8:
                ctx = cache.view(key)
                mv = ctx.__enter__()
                if mv is None:
                    ctx.__exit__(None, None, None)
                else:
                    held.append((ctx, mv, bytes(mv)))
                    views += 1
            else:
                ctx, mv, first = held.pop(rng.randrange(len(held)))
                assert bytes(mv) == first
                checks += 1
                ctx.__exit__(None, None, None)
        for ctx, mv, first in held:
            assert bytes(mv) == first
            ctx.__exit__(None, None, None)
        assert writer.stdout is not None
        writes = int(writer.stdout.read())
        writer.stdout.close()
        assert writer.returncode == 0
        assert views > 100 and checks > 100 and writes > 1000
        assert cache.check() == []
        assert cache.stats().held_blocks == 0
        print(f"{views} views, {checks} re-checked, against {writes} writes")
    finally:
        cache.close()
