"""The scenarios of bench_stopped_writer and one repeat of each.

A repeat forks the processes it needs, each of which opens the cache by
name: the timed reader, a writer (stopped inside its write section, or
looping) and the probe that tells whether a stopped writer holds the
shard's lock. The module docstring of bench_stopped_writer.py says what is
measured and how.
"""

from __future__ import annotations

import gc
import math
import multiprocessing as mp
import os
import random
import resource
import signal
import time
import traceback
from array import array
from collections import Counter
from collections.abc import Callable
from typing import Any

from metis_shm import Cache, _engine

SCENARIOS = ("no-writer", "stopped-writer", "running-writer", "random-stop", "timer-only")
LABELS = {
    "no-writer": "no writer",
    "stopped-writer": "stopped writer",
    "running-writer": "running writer",
    "random-stop": "stopped at random",
    "timer-only": "empty bracket (no get)",
}
STOPPED = ("stopped-writer", "random-stop")
SIZES = (100, 4096)
CRASH_POINT = 5  # after the new item is written, before it is published (engine.pyx _do_store)
TARGET_US = 50.0
OVERHEAD_SAMPLES = 200_000
CHUNK_KEYS = 100  # the reader looks at its involuntary context switches every 2 x this many gets
PROBE_KEY = "probe:absent"
PROBE_WAIT_S = 0.3  # a probe whose delete takes longer than this met a held lock
TIMEOUT_S = 60.0  # for any one step of a child process
QUANTILES = (("p50", 0.5), ("p99", 0.99), ("p999", 0.999))
STATS = ("gets", "p50_us", "p99_us", "p999_us", "max_us", "mean_us", "over_target")


# --------------------------------------------------------------------------- setup


class Setup:
    """Keys and values, built in the parent and inherited by every child through fork."""

    def __init__(self, n_keys: int, size: int) -> None:
        self.size = size
        self.keys = [f"other:{i:06d}" for i in range(n_keys)]
        self.target = "written:key"
        # Distinct first bytes: telling the values apart costs one byte compare,
        # except for the value that matches (a memcmp of `size` bytes).
        self.init = b"i" * size  # what every key holds when a scenario starts
        self.new = b"n" * size  # what the stopped writer stores into the target key
        self.loop_values = (b"a" * size, b"b" * size)  # what a looping writer stores

    def fill(self, cache: Cache) -> None:
        """Give every key its initial value; fail if the cache could not hold them all."""
        for k in (*self.keys, self.target):
            cache.set(k, self.init)
        missing = [k for k in (*self.keys, self.target) if cache.get(k) != self.init]
        if missing:
            raise RuntimeError(f"{len(missing)} keys did not fit in the cache")


def pick_cpus() -> tuple[int | None, int | None]:
    """(reader CPU, writer CPU): the last and first usable CPU, or no pinning on 1 CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return cpus[-1], cpus[0]


# --------------------------------------------------------------------------- /proc


def proc_state(pid: int) -> str:
    """The one-letter state of a process (``T`` = stopped), or ``?`` if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def proc_cpu_ns(pid: int) -> int | None:
    """Nanoseconds the process has run on a CPU (``/proc/PID/schedstat``), if known."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def wait_state(pid: int, state: str, timeout: float) -> float:
    """Wait until ``pid`` is in ``state``; return how long it took."""
    t0 = time.monotonic()
    while (now := proc_state(pid)) != state:
        if now in ("?", "Z", "X"):
            raise RuntimeError(f"process {pid} ended before reaching state {state}")
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"process {pid} not in state {state} after {timeout:g} s: {now}")
        time.sleep(0.0005)
    return time.monotonic() - t0


# --------------------------------------------------------------------------- samples


def summarize(counts: Counter[int], overhead_ns: int) -> dict[str, Any]:
    """Nearest-rank quantiles, max and mean of latencies in ns, minus the timer overhead, in us."""
    n = sum(counts.values())
    out: dict[str, Any] = {"gets": n}
    if n == 0:
        out.update({f"{q}_us": None for q, _ in QUANTILES})
        out.update(max_us=None, mean_us=None, over_target=0)
        return out
    items = sorted(counts.items())
    ranks = [(name, max(1, math.ceil(q * n))) for name, q in QUANTILES]
    seen = 0
    for value, count in items:
        seen += count
        while ranks and seen >= ranks[0][1]:
            out[f"{ranks.pop(0)[0]}_us"] = max(0, value - overhead_ns) / 1e3
    out["max_us"] = max(0, items[-1][0] - overhead_ns) / 1e3
    total = sum(v * c for v, c in items)
    out["mean_us"] = max(0.0, total / n - overhead_ns) / 1e3
    limit = TARGET_US * 1e3 + overhead_ns
    out["over_target"] = sum(c for v, c in items if v > limit)
    return out


# --------------------------------------------------------------------------- children


def start(target: Callable[..., Any], *args: Any) -> tuple[Any, Any]:
    """Fork ``target(conn, *args)``; return (process, parent's end of the pipe)."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_child, args=(target, child, args), daemon=True)
    p.start()
    child.close()
    return p, parent


def _child(target: Callable[..., Any], conn: Any, args: tuple[Any, ...]) -> None:
    try:
        target(conn, *args)
    except BaseException:  # tell the parent what went wrong, then fail as usual
        conn.send(("error", traceback.format_exc()))
        raise
    finally:
        conn.close()


def expect(conn: Any, what: str, timeout: float = TIMEOUT_S) -> Any:
    """The next message from a child, which must be ``(what, payload)``."""
    if not conn.poll(timeout):
        raise RuntimeError(f"no {what!r} from a child in {timeout:g} s")
    kind, payload = conn.recv()
    if kind != what:
        raise RuntimeError(f"expected {what!r} from a child, got {kind!r}:\n{payload}")
    return payload


def finish(p: Any, timeout: float = TIMEOUT_S) -> None:
    """Wait for child ``p`` to exit with 0; kill it (stopped or not) if it does not."""
    p.join(timeout)
    if p.is_alive():
        os.kill(p.pid, signal.SIGCONT)
        p.kill()
        p.join()
        raise RuntimeError(f"child {p.pid} did not exit in {timeout:g} s")
    if p.exitcode != 0:
        raise RuntimeError(f"child {p.pid} exited with {p.exitcode}")


def _reader(
    conn: Any, name: str, setup: Setup, cpu: int | None, window_ns: int, empty: bool = False
) -> None:
    """Time single gets for ``window_ns`` once the parent says go; send the summary.

    With ``empty``, time empty brackets instead, in the same loop: what the
    machine alone does to the figures.
    """
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    cache = Cache(name, create=False)
    get = cache.get
    pc = time.perf_counter_ns
    keys, target, size = setup.keys, setup.target, setup.size
    init, new = setup.init, setup.new
    wa, wb = setup.loop_values
    gc.collect()
    gc.disable()
    for _ in range(3):  # warm-up: the code paths, the keys' cache lines
        for k in keys:
            get(target)
            get(k)
    over = array("q")
    app = over.append
    for _ in range(OVERHEAD_SAMPLES):
        t0 = pc()
        t1 = pc()
        app(t1 - t0)
    conn.send(("ready", None))
    writer_pid = expect(conn, "go")

    # lat[0::2]: gets of the written key, lat[1::2]: of the other keys.
    lat = array("q")
    app = lat.append
    chunks = [keys[i : i + CHUNK_KEYS] for i in range(0, len(keys), CHUNK_KEYS)]
    preempted: list[tuple[int, int]] = []  # [start, end) of lat: chunks the kernel preempted
    getrusage, who = resource.getrusage, resource.RUSAGE_SELF
    seen = {"old": 0, "new": 0, "writer": 0, "bad": 0}
    bad: list[str] = []
    before = (proc_state(writer_pid), proc_cpu_ns(writer_pid)) if writer_pid else None
    ru0 = getrusage(who)
    switches = ru0.ru_nivcsw
    n_chunks = 0
    t_start = pc()
    deadline = t_start + window_ns
    t1 = t_start
    while t1 < deadline:
        for chunk in chunks:
            first = len(lat)
            for _ in chunk if empty else ():
                t0 = pc()
                t1 = pc()
                app(t1 - t0)
                t0 = pc()
                t1 = pc()
                app(t1 - t0)
            for k in () if empty else chunk:
                t0 = pc()
                v = get(target)
                t1 = pc()
                app(t1 - t0)
                if v == init:
                    seen["old"] += 1
                elif v == new:
                    seen["new"] += 1
                elif v in (wa, wb):
                    seen["writer"] += 1
                else:
                    seen["bad"] += 1
                    if len(bad) < 10:
                        bad.append(f"{target}: {v[:16] if isinstance(v, bytes) else v!r}")
                v = None  # free it outside the next bracket
                t0 = pc()
                v = get(k)
                t1 = pc()
                app(t1 - t0)
                if v is None or len(v) != size:
                    seen["bad"] += 1
                    if len(bad) < 10:
                        bad.append(f"{k}: {v if v is None else len(v)}")
                v = None
            # Any involuntary context switch since the last look may have
            # landed inside one of this chunk's brackets: set the chunk aside.
            n_chunks += 1
            now = getrusage(who).ru_nivcsw
            if now != switches:
                preempted.append((first, len(lat)))
                switches = now
            if t1 >= deadline:
                break
    t_end = t1
    ru1 = getrusage(who)
    after = (proc_state(writer_pid), proc_cpu_ns(writer_pid)) if writer_pid else None
    gc.enable()

    sorted_over = sorted(over)
    overhead = sorted_over[len(over) // 2]
    c_target, c_other = Counter(lat[0::2]), Counter(lat[1::2])
    c_all = c_target + c_other
    c_kept: Counter[int] = Counter()
    pos = 0
    for first, end in preempted:
        c_kept.update(lat[pos:first])
        pos = end
    c_kept.update(lat[pos:])
    result = {
        "window_s": (t_end - t_start) / 1e9,
        "overhead": {
            "median_ns": overhead,
            "min_ns": min(over),
            "p99_ns": sorted_over[int(0.99 * len(over))],
            "p999_ns": sorted_over[int(0.999 * len(over))],
            "max_ns": sorted_over[-1],
        },
        "all": summarize(c_all, overhead),
        "unpreempted": summarize(c_kept, overhead),
        "written_key": summarize(c_target, overhead),
        "other_keys": summarize(c_other, overhead),
        # Where in the window the slowest get was (0 = its start, 1 = its end).
        "slowest_at": lat.index(max(lat)) / len(lat) if lat else None,
        "preempted_chunks": len(preempted),
        "chunks": n_chunks,
        "preemptions": ru1.ru_nivcsw - ru0.ru_nivcsw,
        "voluntary_switches": ru1.ru_nvcsw - ru0.ru_nvcsw,
        "slowest_us": [max(0, v - overhead) / 1e3 for v in sorted(c_all, reverse=True)[:5]],
        "written_key_values": seen,
        "bad_reads": bad,
        "writer_before": before,
        "writer_after": after,
    }
    cache.close()
    conn.send(("result", result))


def _writer_stop(conn: Any, name: str, setup: Setup, cpu: int | None) -> None:
    """Stop this process at crash point 5 inside a set of the target key; finish after SIGCONT."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    cache = Cache(name, create=False)
    _engine.set_crash_point(CRASH_POINT, 0, signal.SIGSTOP)
    cache.set(setup.target, setup.new)  # SIGSTOP inside; returns after SIGCONT
    _engine.set_crash_point(0)
    cache.close()
    conn.send(("done", None))


def _writer_loop(conn: Any, name: str, setup: Setup, cpu: int | None, stop: Any) -> None:
    """Overwrite every key of the shard, round after round, until ``stop`` is set."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    cache = Cache(name, create=False)
    set_ = cache.set
    keys = [*setup.keys, setup.target]
    wa, wb = setup.loop_values
    sets = rounds = 0
    while not stop.value:
        v = wa if rounds % 2 == 0 else wb
        for k in keys:
            set_(k, v)
        sets += len(keys)
        rounds += 1
        if rounds == 1:
            conn.send(("ready", None))
    cache.close()
    conn.send(("done", sets))


def _probe(conn: Any, name: str) -> None:
    """Attach, then delete an absent key: a write, which waits for the shard's lock
    (and changes nothing: there is nothing to delete)."""
    cache = Cache(name, create=False)
    conn.send(("attached", None))
    cache.delete(PROBE_KEY)
    cache.close()
    conn.send(("done", None))


def probe_lock(name: str) -> tuple[bool, Any, Any]:
    """Start a probe; (lock held?, probe, its pipe). Finish the probe after SIGCONT."""
    p, conn = start(_probe, name)
    expect(conn, "attached")
    held = not conn.poll(PROBE_WAIT_S)
    return held, p, conn


# --------------------------------------------------------------------------- one run


def run_once(
    scenario: str,
    cache: Cache,
    setup: Setup,
    cpus: tuple[int | None, int | None],
    window_ns: int,
    rng: random.Random,
) -> dict[str, Any]:
    """One repeat of one scenario: fork a reader (and a writer), time the window, check."""
    name = cache.name
    reader_cpu, writer_cpu = cpus
    cache.set(setup.target, setup.init)
    empty = scenario == "timer-only"
    reader, rconn = start(_reader, name, setup, reader_cpu, window_ns, empty)
    writer = wconn = stop = probe = pconn = None
    out: dict[str, Any] = {}
    try:
        expect(rconn, "ready")
        retries0 = cache.stats().read_retries
        if scenario == "stopped-writer":
            writer, wconn = start(_writer_stop, name, setup, writer_cpu)
            out["stop_wait_s"] = wait_state(writer.pid, "T", TIMEOUT_S)
        elif scenario in ("running-writer", "random-stop"):
            stop = mp.get_context("fork").RawValue("i", 0)
            writer, wconn = start(_writer_loop, name, setup, writer_cpu, stop)
            expect(wconn, "ready")
            if scenario == "random-stop":
                delay = rng.uniform(0.005, 0.05)
                time.sleep(delay)
                os.kill(writer.pid, signal.SIGSTOP)
                out["stop_delay_s"] = delay
                out["stop_wait_s"] = wait_state(writer.pid, "T", TIMEOUT_S)
        rconn.send(("go", writer.pid if writer is not None else 0))
        res = expect(rconn, "result", TIMEOUT_S + window_ns / 1e9)
        if scenario in STOPPED:
            assert writer is not None
            before, after = res["writer_before"], res["writer_after"]
            # Without /proc/PID/schedstat (a kernel without CONFIG_SCHED_INFO)
            # the state alone has to do.
            out["writer_stopped_throughout"] = (
                before[0] == "T" and after[0] == "T" and before[1] == after[1]
            )
            out["writer_cpu_ns_during_window"] = (
                None if before[1] is None or after[1] is None else after[1] - before[1]
            )
            held, probe, pconn = probe_lock(name)
            out["lock_held"] = held
            os.kill(writer.pid, signal.SIGCONT)
        if stop is not None:
            stop.value = 1
        if writer is not None:
            out["writer_sets"] = expect(wconn, "done")
            finish(writer)
            writer = None
        if probe is not None:
            expect(pconn, "done")
            finish(probe)
            probe = None
        finish(reader)
        reader = None
        out["read_retries"] = cache.stats().read_retries - retries0
        if scenario == "stopped-writer":
            out["new_value_visible"] = cache.get(setup.target) == setup.new
    finally:
        for p in (writer, probe, reader):
            if p is not None and p.is_alive():
                os.kill(p.pid, signal.SIGCONT)
                p.kill()
                p.join()
    out.update(res)
    for field in ("writer_before", "writer_after"):
        out.pop(field)
    return out
