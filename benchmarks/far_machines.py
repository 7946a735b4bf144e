"""bench_far's "machines": one metisd per machine, each the tracker of its
own near cache in front of the benchmark's redis-server; and the Metis side
of the measurement: how big a near cache is, and its hits against a local
cache's.

A machine is a cache name and the metisd that owns its segment and holds
its Redis CLIENT TRACKING connection; its workers are the processes that
open ``Cache(name, far=...)``. ``machines(...)`` starts them all, waits
until every near tier serves (``gate_open``), and on exit stops each metisd
(SIGTERM, then SIGKILL) and destroys its segment.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

from far_workers import BLOCK, value_of

from metis_shm import Cache, _engine
from metis_shm.cache import DEFAULT_MAX_VALUE_SIZE, default_shards
from metis_shm.segment import shm_path
from metis_shm.units import parse_size

ROOT = Path(__file__).resolve().parents[1]
GATE_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
PR_SET_PDEATHSIG = 1  # <sys/prctl.h>
KEY_LEN = len("key:00000000")
MAX_VALUE = parse_size(DEFAULT_MAX_VALUE_SIZE)
NEAR_HIT_ROUNDS = 21


def cache_name(tag: str) -> str:
    """A segment name no test and no other run uses; the smoke test looks
    for leftovers by its ``bench-far-<pid>-`` prefix."""
    return f"bench-far-{os.getpid()}-{uuid.uuid4().hex[:8]}-{tag}"


@dataclass
class Machine:
    """One machine: its near cache's name and settings, its metisd, and the
    benchmark's own handle on the cache (for its gate and counters)."""

    name: str
    open_kwargs: dict[str, Any]
    proc: subprocess.Popen[bytes]
    log: Path
    cache: Any = None

    def open(self) -> Any:
        """A NearCache handle in this process (the workers call this after fork)."""
        return Cache(self.name, create=False, **self.open_kwargs)

    def segment_bytes(self) -> tuple[int, int]:
        """(size, bytes actually allocated in /dev/shm) of the segment."""
        st = os.stat(shm_path(self.name))
        return st.st_size, st.st_blocks * 512

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def config_text(cache: dict[str, Any]) -> str:
    """metisd's TOML: one near cache, no snapshots, no HTTP endpoints."""
    lines = ["[snapshot]", "enabled = false", "[health]", "enabled = false", "[[caches]]"]
    lines += [f"{k} = {_toml(v)}" for k, v in cache.items()]
    return "\n".join(lines) + "\n"


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METIS_", "NOTIFY_SOCKET"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


@contextlib.contextmanager
def machines(
    workdir: Path, count: int, far: dict[str, Any], capacity: int, max_entries: int
) -> Iterator[list[Machine]]:
    """``count`` machines, each a near cache of ``capacity`` bytes and at most
    ``max_entries`` entries with its own metisd; all serving on entry."""
    started: list[Machine] = []
    try:
        for i in range(count):
            name = cache_name(f"m{i}")
            kwargs = {"capacity": capacity, "max_entries": max_entries, "far": dict(far)}
            config = workdir / f"{name}.toml"
            config.write_text(config_text({"name": name, **kwargs}))
            log = workdir / f"{name}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "metis_shm.daemon", "--config", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=_env(),
                    cwd=ROOT,
                    start_new_session=True,
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                )
            started.append(Machine(name, kwargs, proc, log))
        for m in started:
            _wait_serving(m)
        yield started
    finally:
        for m in started:
            _stop(m)


def _wait_serving(m: Machine) -> None:
    """Open the machine's cache once metisd made it, then wait for its gate."""
    deadline = time.monotonic() + GATE_TIMEOUT_S
    while m.cache is None:
        if m.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"metisd for {m.name} did not start:\n{m.log_tail()}")
        if os.path.exists(shm_path(m.name)):
            with contextlib.suppress(Exception):  # not initialised yet: try again
                m.cache = m.open()
        time.sleep(0.02)
    while not m.cache.gate_open:
        if m.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"near cache {m.name} never served:\n{m.log_tail()}")
        time.sleep(0.01)


def _stop(m: Machine) -> None:
    """SIGTERM metisd (SIGKILL after STOP_TIMEOUT_S), then destroy the segment."""
    if m.cache is not None:
        with contextlib.suppress(Exception):
            m.cache.close()
    if m.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            m.proc.send_signal(signal.SIGTERM)
        try:
            m.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            m.proc.kill()
            m.proc.wait()
    with contextlib.suppress(FileNotFoundError):
        Cache.destroy(m.name)


# --------------------------------------------------------------------------- sizing and hits


def item_bytes(size: int) -> int:
    """What one item of ``size`` takes in a shard's arena (docs/memory.md)."""
    return max(64, -(-(_engine.ITEM_OVERHEAD + KEY_LEN + size) // 8) * 8)


def near_capacity(entries: int, size: int) -> int:
    """A capacity that holds ``entries`` items of ``size``: docs/memory.md's
    rule (item bytes times 1 + 4 / sqrt(items per shard)), in 64 KiB steps."""
    item = item_bytes(size)
    capacity = entries * item
    for _ in range(8):  # the shard count depends on the capacity: settle both
        shards = default_shards(capacity, MAX_VALUE)
        want = entries * item * (1 + 4 / math.sqrt(max(1.0, entries / shards)))
        capacity = max(1 << 20, -(-int(want) // (64 << 10)) * (64 << 10))
    return capacity


def near_hit_latency(
    near: Any, size: int, keys: int, capacity: int, entries: int, churn: list[int] | None
) -> dict:
    """ns/op of a NearCache hit and of a plain local Cache hit, the same hot keys
    and values, one process: pairs of rounds, the median of each and of the
    pairs' ratios.

    Where the items lie matters as much as the read path (a hit on items
    scattered by a long run of fills and evictions is slower than on items
    written one after the other, near or local), so the local cache is put
    in the near one's state: fresh (``churn`` None, before the workload), or
    after replaying ``churn`` (Zipf ranks: get, set on a miss, every 100th a
    delete, as the workers' writes invalidate) once the near tier ran it."""
    names = [f"key:{i:08d}" for i in range(keys)]
    for k in names:  # the hottest keys: fetched, filled near (a racing fill is retried)
        for _ in range(50):
            near.get(k)
            if near.peek(k) is not None:
                break
    names = [k for k in names if near.peek(k) is not None]
    local_name = cache_name("local")
    local = Cache(local_name, capacity=capacity, max_entries=entries)
    try:
        if churn:
            every = [f"key:{i:08d}" for i in range(max(churn) + 1)]
            for j, i in enumerate(churn):
                if j % BLOCK == BLOCK - 1:
                    local.delete(every[i])
                elif local.get(every[i]) is None:
                    local.set(every[i], value_of(i, size))
        for k in names:
            if local.get(k) is None:
                local.set(k, value_of(int(k[4:]), size))
        reps = max(1, 100_000 // max(1, len(names)))

        def timed(get: Any) -> float:
            t0 = time.perf_counter_ns()
            for _ in range(reps):
                for k in names:
                    get(k)
            return (time.perf_counter_ns() - t0) / (reps * len(names))

        near_rounds, local_rounds = [], []
        for r in range(NEAR_HIT_ROUNDS):  # pairs, in turn near first and local first
            if r % 2:
                local_rounds.append(timed(local.get))
            near_rounds.append(timed(near.get))
            if not r % 2:
                local_rounds.append(timed(local.get))
        still_near = sum(near.peek(k) is not None for k in names)
    finally:
        local.close()
        Cache.destroy(local_name)
    n, lo = median(near_rounds), median(local_rounds)
    return {
        "near_ns": n,
        "local_ns": lo,
        # The median of the pairs' ratios: load that comes and goes hits both of a pair.
        "ratio": median([a / b for a, b in zip(near_rounds, local_rounds, strict=True)]),
        "keys": len(names),
        "churn_ops": len(churn or ()),
        "best_ratio": min(near_rounds) / min(local_rounds),
        "still_near_after": still_near,
        "reps": reps,
        "near_rounds": near_rounds,
        "local_rounds": local_rounds,
    }
