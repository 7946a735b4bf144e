"""Helpers shared by the tests and by the child processes they start.

Nothing here is a test.  The module is importable both under pytest (conftest.py
puts this directory on ``sys.path``) and from ``python tests/test_multiprocess.py``.

* ``shm_path(name)``: the file behind a cache's segment.
* ``make_value`` / ``verify_value``: self-describing values (key, writer pid,
  version and a checksum inside) so that a reader can tell a torn value or
  another key's value from a good one.
* ``ForkedChild``: ``os.fork()`` a function, get its return value or traceback
  back through a pipe, wait with a time limit.
* ``reader_loop`` / ``writer_loop``: the loops the stress and crash tests run
  in their child processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import pickle
import random
import select
import signal
import struct
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any
from uuid import uuid4

SHM_DIR = "/dev/shm"
SEGMENT_PREFIX = f"t{os.getpid()}-"  # fixed at import: forked children keep the parent's


def new_name() -> str:
    """A segment name unique to this test run (the session fixture cleans up the prefix)."""
    return f"{SEGMENT_PREFIX}{uuid4().hex[:8]}"


def shm_path(name: str) -> str:
    """Path of the POSIX shared-memory object behind cache ``name``."""
    return os.path.join(SHM_DIR, f"metis.{name}")


# --------------------------------------------------------------------------
# Self-describing values
# --------------------------------------------------------------------------

_HEAD = struct.Struct("<HIQI")  # key length, writer pid, version, payload length
_DIGEST = 16

OK = "ok"
TORN = "torn"
FOREIGN = "foreign"


def _key_bytes(key: str | bytes) -> bytes:
    return key.encode() if isinstance(key, str) else key


def make_value(key: str | bytes, version: int, size: int, rng: random.Random) -> bytes:
    """A value of about ``size`` bytes that says which key it belongs to.

    The payload is hex text of random bytes: zlib shrinks it to a bit more
    than half, so a value above the compress threshold is stored compressed
    and still takes real room.
    """
    kb = _key_bytes(key)
    n = max(0, size)
    payload = rng.randbytes((n + 1) // 2).hex().encode()[:n]
    body = _HEAD.pack(len(kb), os.getpid(), version, len(payload)) + kb + payload
    return body + hashlib.blake2b(body, digest_size=_DIGEST).digest()


def verify_value(key: str | bytes, value: Any) -> str:
    """``OK`` for a whole value of ``key``; ``TORN`` or ``FOREIGN`` otherwise."""
    if not isinstance(value, bytes) or len(value) < _HEAD.size + _DIGEST:
        return TORN
    body, digest = value[:-_DIGEST], value[-_DIGEST:]
    if hashlib.blake2b(body, digest_size=_DIGEST).digest() != digest:
        return TORN
    klen, _pid, _version, plen = _HEAD.unpack_from(body)
    if _HEAD.size + klen + plen != len(body):
        return TORN
    if body[_HEAD.size : _HEAD.size + klen] != _key_bytes(key):
        return FOREIGN
    return OK


def value_size(rng: random.Random, threshold: int = 16 * 1024) -> int:
    """Sizes from 10 B to 20 KB: half small, half large, ~10 % above ``threshold``."""
    if rng.random() < 0.5:
        return int(10 * (200 ** rng.random()))  # 10 B .. 2 KB, log-uniform
    return rng.randint(2_000, 20_000)


# --------------------------------------------------------------------------
# Running a function in a forked child
# --------------------------------------------------------------------------


class ChildFailed(AssertionError):
    """The child raised, died, or ran past its time limit."""


class ForkedChild:
    """``os.fork()`` and run ``fn(*args)`` in the child.

    The child sends back ``fn``'s return value (pickled) or its traceback and
    leaves with ``os._exit`` (no atexit handlers, no pytest teardown twice).
    ``join`` returns the value or raises ``ChildFailed``.
    """

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            code = 3
            try:
                os.close(r)
                try:
                    data = pickle.dumps(("ok", fn(*args)))
                    code = 0
                except BaseException:  # reported to the parent
                    data = pickle.dumps(("error", traceback.format_exc()))
                    code = 1
                view = memoryview(data)
                while view:
                    view = view[os.write(w, view) :]
            finally:
                os._exit(code)
        os.close(w)
        self.pid = pid
        self._r = r
        self._buf = bytearray()
        self.status: int | None = None

    def _drain(self, timeout: float) -> bool:
        """Read what is there; True at end of file."""
        ready, _, _ = select.select([self._r], [], [], timeout)
        if not ready:
            return False
        chunk = os.read(self._r, 1 << 16)
        if not chunk:
            return True
        self._buf += chunk
        return False

    def join(self, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        eof = False
        try:
            while not eof:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.kill()
                    raise ChildFailed(f"child {self.pid} still running after {timeout} s")
                eof = self._drain(min(left, 0.1))
            _, self.status = os.waitpid(self.pid, 0)
        finally:
            os.close(self._r)
        if os.WIFSIGNALED(self.status):
            raise ChildFailed(f"child {self.pid} killed by signal {os.WTERMSIG(self.status)}")
        if not self._buf:
            raise ChildFailed(f"child {self.pid} sent nothing (status {self.status})")
        kind, value = pickle.loads(bytes(self._buf))
        if kind != "ok":
            raise ChildFailed(f"child {self.pid} raised:\n{value}")
        return value

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)


def run_in_fork(fn: Callable[..., Any], *args: Any, timeout: float = 30.0) -> Any:
    """Run ``fn(*args)`` in a forked child and return its result."""
    return ForkedChild(fn, *args).join(timeout)


def wait_status(pid: int, timeout: float) -> int | None:
    """``waitpid`` with a time limit: the status, or None if still running."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.002)


class StopFlag:
    """One byte in an anonymous shared mapping: set by the parent, seen by forked children."""

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, mmap.PAGESIZE)

    def set(self) -> None:
        self._map[0] = 1

    def is_set(self) -> bool:
        return self._map[0] == 1


def spawned_child(name: str, conn: Any) -> None:
    """Target of a multiprocessing 'spawn' child in test_api: reads, writes, reports."""
    from metis_shm import Cache

    with Cache(name, create=False) as c:
        conn.send((c.get("from_parent"), c.get_many(["a", "b"])))
        c.set("from_spawn", b"spawned")
    conn.close()


# --------------------------------------------------------------------------
# Loops for the stress and crash tests
# --------------------------------------------------------------------------


def new_counts() -> dict[str, int]:
    return {"reads": 0, "hits": 0, "ok": 0, "torn": 0, "foreign": 0, "writes": 0, "deletes": 0}


def check_read(counts: dict[str, int], key: str | bytes, value: Any, bad: list[str]) -> None:
    counts["reads"] += 1
    if value is None:
        return
    counts["hits"] += 1
    verdict = verify_value(key, value)
    counts[verdict] += 1
    if verdict != OK and len(bad) < 5:
        bad.append(f"{verdict} value for {key!r}: {bytes(value[:48])!r}...")


def reader_loop(
    cache: Any,
    keys: Sequence[str | bytes],
    seed: int,
    stop: StopFlag | None = None,
    seconds: float | None = None,
) -> dict[str, Any]:
    """Read random keys (get and get_many) and verify every value found.

    Runs until ``stop`` is set or ``seconds`` have passed.
    """
    rng = random.Random(seed)
    counts = new_counts()
    bad: list[str] = []
    deadline = time.monotonic() + seconds if seconds is not None else None
    i = 0
    while True:
        i += 1
        if i % 64 == 0:
            if stop is not None and stop.is_set():
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
        if rng.random() < 0.9:
            key = rng.choice(keys)
            check_read(counts, key, cache.get(key), bad)
        else:
            batch = rng.sample(keys, 5)
            found = cache.get_many(batch)
            for key in batch:
                check_read(counts, key, found.get(key), bad)
            for key in found:
                if key not in batch:
                    counts["foreign"] += 1
                    bad.append(f"get_many returned a key not asked for: {key!r}")
    return {"counts": counts, "bad": bad, "pid": os.getpid()}


def mixed_loop(
    cache: Any,
    keys: Sequence[str | bytes],
    seed: int,
    seconds: float,
    threshold: int = 16 * 1024,
) -> dict[str, Any]:
    """The stress test's worker: 60 % reads, 30 % writes, 10 % deletes."""
    rng = random.Random(seed)
    counts = new_counts()
    bad: list[str] = []
    deadline = time.monotonic() + seconds
    version = 0
    i = 0
    while True:
        i += 1
        if i % 32 == 0 and time.monotonic() >= deadline:
            break
        key = rng.choice(keys)
        p = rng.random()
        if p < 0.6:
            check_read(counts, key, cache.get(key), bad)
        elif p < 0.9:
            version += 1
            cache.set(key, make_value(key, version, value_size(rng, threshold), rng))
            counts["writes"] += 1
        else:
            cache.delete(key)
            counts["deletes"] += 1
    return {"counts": counts, "bad": bad, "pid": os.getpid()}


def writer_loop(
    cache: Any,
    keys: Sequence[str | bytes],
    seed: int,
    max_ops: int | None = None,
    ready_fd: int | None = None,
) -> int:
    """Every kind of write, in a tight loop: the victim of the crash test.

    Self-describing values under ``keys``; counters under ``ctr-*`` keys.
    Writes one byte to ``ready_fd`` once it has started.  Returns the number
    of operations done (if ``max_ops`` ends the loop).
    """
    rng = random.Random(seed)
    counters = [f"ctr-{i}" for i in range(8)]
    version = 0
    if ready_fd is not None:
        os.write(ready_fd, b"r")
    n = 0
    while max_ops is None or n < max_ops:
        n += 1
        version += 1
        p = rng.random()
        key = rng.choice(keys)
        if p < 0.45:
            cache.set(key, make_value(key, version, value_size(rng), rng))
        elif p < 0.52:
            cache.set(key, make_value(key, version, value_size(rng), rng), ttl=0.05)
        elif p < 0.62:
            cache.delete(key)
        elif p < 0.67:
            cache.add(key, make_value(key, version, value_size(rng), rng))
        elif p < 0.72:
            cache.replace(key, make_value(key, version, value_size(rng), rng))
        elif p < 0.76:
            cache.pop(key, None)
        elif p < 0.82:
            cache.incr(rng.choice(counters), default=0)
        elif p < 0.85:
            cache.touch(key, ttl=30)
        elif p < 0.90:
            batch = rng.sample(keys, 4)
            cache.set_many({k: make_value(k, version, value_size(rng), rng) for k in batch})
        elif p < 0.94:
            cache.delete_many(rng.sample(keys, 4))
        elif p < 0.97:
            cache.sweep(max_items=32)
        elif p < 0.9995:
            cache.get(key)
        else:
            cache.clear()
    return n
