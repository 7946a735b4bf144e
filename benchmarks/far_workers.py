"""bench_far's workers: the three ways a process reads Redis, the timed loop
they all run, and the forking that lines them up with the parent.

Contenders (``open_client``):

* ``redis``: plain redis-py, one ``redis.Redis`` per process; every read is
  a GET over loopback TCP.
* ``redis-csc``: redis-py's client-side cache, one per process (RESP3,
  ``cache_config=CacheConfig(max_size=...)``, LRU): Redis tracks the keys
  each connection read and pushes their invalidations to it.
* ``metis``: the Metis near tier, one NearCache per machine opened by every
  worker of that machine; metisd holds the tracking connection.

The workload: blocks of 100 operations, 99 GETs then one SET, every key a
Zipf draw (the parent's ``Workload``). Every ``SAMPLE_EVERY``-th block is
timed operation by operation (``perf_counter_ns`` around each) and its
values checked (the key's own value, of the right length), outside the
timed bracket; the other blocks run bare.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import threading
import time
import traceback
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

BLOCK = 100  # operations per block: 99 reads, 1 write (1 % writes)
SAMPLE_EVERY = 16  # one block in SAMPLE_EVERY is timed op by op
BARRIER_TIMEOUT_S = 120.0
CSC_MIN_SERVER = "6.0.0"  # what CLIENT TRACKING with RESP3 pushes needs


@dataclass(frozen=True)
class RunSpec:
    """One configuration: a contender, a value size, how long."""

    contender: str
    size: int
    warm_s: float
    duration_s: float
    port: int
    prefix: str  # the Redis key prefix (the near cache's far prefix)
    csc_entries: int  # redis-csc: max_size of each process's cache
    procs_per_machine: int


def value_of(i: int, size: int) -> bytes:
    """Key i's value: its number, then filler, ``size`` bytes in all."""
    head = b"%08d" % i
    return head + b"." * (size - len(head))


def patch_csc_version_gate() -> None:
    """redis-py 8 refuses client-side caching below Redis 7.4 ("to maximize
    compatibility with all Redis products"); the mechanism it uses, CLIENT
    TRACKING with RESP3 push messages, is Redis 6.0's. bench_far lowers the
    gate when the server is older, and says so in its output."""
    import redis.connection

    redis.connection.CacheProxyConnection.MIN_ALLOWED_VERSION = CSC_MIN_SERVER


def open_client(spec: RunSpec, machine: Any) -> tuple[Callable[..., Any], Callable[..., Any], Any]:
    """(get, set, handle) of the contender in this process."""
    import redis

    if spec.contender == "redis":
        r = redis.Redis(host="127.0.0.1", port=spec.port)
        return r.get, r.set, r
    if spec.contender == "redis-csc":
        from redis.cache import CacheConfig

        patch_csc_version_gate()
        r = redis.Redis(
            host="127.0.0.1",
            port=spec.port,
            protocol=3,
            cache_config=CacheConfig(max_size=spec.csc_entries),
        )
        return r.get, r.set, r
    if spec.contender == "metis":
        cache = machine.open()
        return cache.get, cache.set, cache
    raise ValueError(f"unknown contender {spec.contender!r}")


def memory(segments: tuple[str, ...] = (), pid: int | None = None) -> tuple[int, int]:
    """(USS, USS without the pages of the given shared segments) of process
    ``pid`` (None: this one). A segment's page that only this process maps
    counts in its USS: the segment is counted apart, once."""
    import psutil

    proc = psutil.Process(pid)
    uss = proc.memory_full_info().uss
    if not segments:
        return uss, uss
    inside = sum(
        m.private_clean + m.private_dirty
        for m in proc.memory_maps(grouped=True)
        if m.path in segments
    )
    return uss, uss - inside


def _loop(
    get: Callable[..., Any],
    set_: Callable[..., Any],
    blocks: list[tuple[list[Any], list[int], Any, int]],
    size: int,
    seconds: float,
    lat: tuple[array[int], array[int]] | None,
    counts: dict[str, int],
    first: int,
) -> tuple[int, int, int]:
    """Run blocks from ``first`` for ``seconds``; (start ns, end ns, next block).
    ``lat``: where the sampled blocks' read and write latencies go (None: no sampling)."""
    pc = time.perf_counter_ns
    n = len(blocks)
    b = first
    missing = wrong = ops = done = 0
    start = pc()
    deadline = start + int(seconds * 1e9)
    while True:
        keys, idx, wkey, widx = blocks[b]
        if lat is not None and done % SAMPLE_EVERY == 0:
            for k, i in zip(keys, idx, strict=True):
                t0 = pc()
                r = get(k)
                t1 = pc()
                lat[0].append(t1 - t0)
                if r is None:
                    missing += 1
                elif len(r) != size or r[:8] != b"%08d" % i:
                    wrong += 1
            v = value_of(widx, size)
            t0 = pc()
            set_(wkey, v)
            lat[1].append(pc() - t0)
        else:
            for k in keys:
                if get(k) is None:
                    missing += 1
            set_(wkey, value_of(widx, size))
        ops += BLOCK
        done += 1
        b = b + 1 if b + 1 < n else 0
        if pc() >= deadline:
            break
    counts["ops"] += ops
    counts["missing"] += missing
    counts["wrong"] += wrong
    return start, pc(), b


def worker(index: int, barrier: Any, spec: RunSpec, seq: list[int], machines: list[Any]) -> dict:
    """One worker: open the contender, warm up, run timed, report."""
    machine = machines[index // spec.procs_per_machine] if machines else None
    near = spec.contender == "metis"
    name = [f"key:{i:08d}" for i in range(max(seq) + 1)]
    if not near:  # plain clients name the Redis key itself
        name = [spec.prefix + k for k in name]
    blocks = [
        (
            [name[i] for i in seq[s : s + BLOCK - 1]],
            seq[s : s + BLOCK - 1],
            name[seq[s + BLOCK - 1]],
            seq[s + BLOCK - 1],
        )
        for s in range(0, len(seq) - BLOCK + 1, BLOCK)
    ]
    get, set_, handle = open_client(spec, machine)
    segments = (_segment_path(machine.name),) if near else ()
    # Before the memory baseline: one block through every code path, and a
    # pass over every block's objects, so that the pages the loop touches
    # (copied on write from the parent: the Zipf draws are its ints) are in
    # the baseline, not in what the cache grew by.
    scratch: dict[str, int] = {"ops": 0, "missing": 0, "wrong": 0}
    _loop(get, set_, blocks[-2:], spec.size, 0.0, None, scratch, 0)
    for keys, idx, wkey, widx in blocks:
        for _ in zip(keys, idx, strict=True):
            pass
        del wkey, widx
    gc.collect()
    base = memory(segments)
    barrier.wait(timeout=BARRIER_TIMEOUT_S)  # 1: every worker is open
    warm: dict[str, int] = {"ops": 0, "missing": 0, "wrong": 0}
    _, _, nxt = _loop(get, set_, blocks, spec.size, spec.warm_s, None, warm, 0)
    barrier.wait(timeout=BARRIER_TIMEOUT_S)  # 2: warm; the parent reads Redis's counters
    barrier.wait(timeout=BARRIER_TIMEOUT_S)  # 3: go
    counts: dict[str, int] = {"ops": 0, "missing": 0, "wrong": 0}
    lat = (array("q"), array("q"))  # 8 bytes a sample: little to add to the USS
    start, end, _ = _loop(get, set_, blocks, spec.size, spec.duration_s, lat, counts, nxt)
    barrier.wait(timeout=BARRIER_TIMEOUT_S)  # 4: done; the parent reads the counters again
    gc.collect()
    mem = memory(segments)
    entries = None
    if spec.contender == "redis-csc":
        entries = handle.get_cache().size
    handle.close()
    return {
        "start_ns": start,
        "end_ns": end,
        "ops": counts["ops"],
        "reads": counts["ops"] // BLOCK * (BLOCK - 1),
        "missing": counts["missing"] + warm["missing"],
        "wrong": counts["wrong"],
        "read_ns": lat[0],
        "write_ns": lat[1],
        "uss_base": base[0],
        "uss_end": mem[0],
        "uss_base_private": base[1],
        "uss_end_private": mem[1],
        "csc_entries": entries,
        "sample_bytes": sum(a.buffer_info()[1] * a.itemsize for a in lat),
        "pid": os.getpid(),
    }


def _segment_path(name: str) -> str:
    from metis_shm.segment import shm_path

    return shm_path(name)


# --------------------------------------------------------------------------- forking


class Workers:
    """``procs`` forked workers running ``worker``, and a barrier of
    ``procs + 1`` parties: the parent meets them at each of its four waits."""

    def __init__(self, procs: int, spec: RunSpec, seqs: list[list[int]], machines: list) -> None:
        ctx = mp.get_context("fork")
        self.barrier = ctx.Barrier(procs + 1)
        self.children = []
        for index in range(procs):
            recv, send = ctx.Pipe(duplex=False)
            args = (index, self.barrier, spec, seqs[index], machines, send)
            p = ctx.Process(target=_child, args=args)
            p.start()
            send.close()
            self.children.append((p, recv))

    def wait(self) -> None:
        """Meet the workers at the next barrier; a worker's failure raises with its traceback."""
        try:
            self.barrier.wait(timeout=BARRIER_TIMEOUT_S)
        except threading.BrokenBarrierError:
            raise RuntimeError(f"a worker failed:\n{self._failure()}") from None

    def _failure(self) -> str:
        """The most telling traceback the workers sent (a broken barrier is only an echo)."""
        found = []
        for _, recv in self.children:
            if recv.poll(5.0):
                status, payload = recv.recv()
                if status != "ok":
                    found.append(payload)
        first = [t for t in found if "BrokenBarrierError" not in t]
        return (first or found or ["(no worker said why)"])[0]

    def results(self, timeout: float = 60.0) -> list[dict]:
        """What each worker returned, in index order; raises if one failed."""
        out = []
        for p, recv in self.children:
            if not recv.poll(timeout):
                raise RuntimeError(f"worker {p.pid} did not answer in {timeout:g} s")
            status, payload = recv.recv()
            if status != "ok":
                raise RuntimeError(f"worker failed:\n{payload}")
            out.append(payload)
        return out

    def close(self) -> None:
        """Join every worker (kill one that hangs); abort the barrier first."""
        self.barrier.abort()
        for p, _ in self.children:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()


def _child(index: int, barrier: Any, spec: RunSpec, seq: list[int], machines: list, conn) -> None:
    try:
        conn.send(("ok", worker(index, barrier, spec, seq, machines)))
    except BaseException:
        barrier.abort()  # the others and the parent stop waiting for this one
        conn.send(("error", traceback.format_exc()))
        raise
    finally:
        conn.close()
