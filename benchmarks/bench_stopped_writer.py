"""Latency of a reader's ``get`` on a shard whose writer is stopped inside its write section.

What it measures
    The latency of single ``Cache.get`` calls (p50, p99, p99.9 and max, in
    microseconds) made by one reader process on a cache of **one shard**, so
    that every key it reads lives in the shard of the writer. The reader
    alternates between the key being written and the other keys (``--keys``
    of them), values of 100 B and 4 KiB, in four scenarios:

    * ``no writer``: the reader alone (the baseline);
    * ``stopped writer``: a writer process arms
      ``_engine.set_crash_point(5, 0, SIGSTOP)`` and calls ``cache.set`` on
      the key the reader reads: it stops itself at crash point 5, after the
      new item is written and before it is published, inside its write
      section and holding the shard's lock. The reader is timed for
      ``--stop-seconds`` (default 1 s) while the writer stays stopped; then
      the writer gets SIGCONT, finishes its write, and the new value must be
      visible;
    * ``running writer``: a writer overwrites the keys of the shard in a loop
      while the reader is timed (the reader's retries, from
      ``stats().read_retries``, are expected here and reported);
    * ``stopped at random``: the same looping writer gets SIGSTOP from the
      parent at a random moment, inside or outside its locked section (a
      probe tells which: see below), and the reader is timed while it stays
      stopped.

    * ``empty bracket (no get)``: the control. The same reader times empty
      ``perf_counter_ns()`` brackets in the same loop: what the machine
      alone does to the figures.

    Each scenario runs ``--repeats`` times (default 5, ``--quick`` 2), the
    scenarios interleaved, with fresh processes every time.

Against what
    The same reader, pinned to the same CPU, with no writer. The issue's
    target for the stopped writer: *max within noise of the same reader with
    no writer, under 50 us*. Noise is defined here as the spread (highest
    minus lowest) of the baseline's max over its repeats. The target holds
    for a value size when the stopped-writer row's worst max over repeats is
    under 50 us **and** its median max exceeds the baseline's median max by
    no more than that spread. Since a max over a second of gets also catches
    interrupts and preemption, the output says as well whether the baseline
    itself stays under 50 us: when it does not, the machine, not the
    protocol, sets the max.

Method
    Every process is forked from the parent and opens the cache by name. The
    reader pins itself to one CPU (``os.sched_setaffinity``; the last usable
    one) when 2 or more are usable, a writer to another one, so that a
    running writer never takes the reader's CPU. The reader turns the
    garbage collector off, warms up, measures the cost of an empty
    ``perf_counter_ns()`` bracket (200,000 of them; the median is the timer
    overhead, subtracted from every sample and reported), then times each
    ``get`` on its own between two ``perf_counter_ns()`` calls until the
    window ends. The result of each get is checked outside the bracket: no
    key may be missing, and the key being written may only hold a value some
    writer stored (while the writer is stopped: the old one).

    That the stopped writer stayed stopped through the whole window is
    checked, not assumed: the reader reads ``/proc/PID/stat`` (state ``T``)
    and ``/proc/PID/schedstat`` (CPU time) of the writer just before its
    first and just after its last timed get; both must show ``T`` and the
    same CPU time (``writer_stopped_throughout`` in the JSON). After the
    window, a probe process deletes an absent key, a write that waits for the
    shard's lock: if it has not finished within 0.3 s, the stopped writer
    holds the lock (``lock_held``). ``read_retries`` is the change of
    ``stats().read_retries`` from before the writer starts to after it ends.

    A row reports the median over repeats of each statistic, and the worst
    max; ``max/base`` and ``p99/base`` divide the row's median max and p99 by
    those of ``no writer`` at the same size. ``preempt`` is how many times the
    kernel took the CPU from the reader during its window (involuntary context
    switches, ``getrusage``): a max of milliseconds with a nonzero ``preempt``
    is the scheduler's, not the cache's. To tell the two apart, the reader
    reads its count of involuntary switches after every chunk of 200 gets;
    the second table leaves out every chunk in which it moved (``gets
    kept`` says how much remains). Voluntary switches (the reader waiting)
    are counted too, and left in. A ``sched_yield``, which a reader makes
    after 32 retries in a row, counts as involuntary: for the running writer
    that table may also leave out chunks the cache made slow. No reader
    retries while its writer is stopped, so it never yields there.

Does the target hold?
    The output ends with the verdict per value size, twice: over all gets
    (the issue's literal target) and over the gets the kernel did not preempt.
    The ``empty bracket (no get)`` row is the control: the same reader
    timing empty brackets, no get at all, for as long. On the 2-vCPU VM of
    docs/performance.md the target does not hold, and the machine is why.
    There the empty bracket alone reaches a max of 80 to 230 us in a second
    (up to 3 ms), with the reader never preempted: a vCPU the host
    deschedules shows no context switch in the guest. Against the no-writer
    baseline a stopped writer changes nothing measurable. Its p50, p99 and
    p99.9 are the baseline's, it causes no read retries and no voluntary
    context switch (the reader never waits), and its median max is within
    the baseline's noise in every run. The new value is visible after
    SIGCONT. Showing the 50 us bound itself needs a machine whose empty
    bracket stays under it (bare metal, an isolated CPU).

Not a pass/fail test of speed: the numbers depend on the machine. It exits
with 1 only if something was wrong rather than slow. That means a read
returned a missing or wrong value (the unpublished one included), a
"stopped" writer ran during the window, or its value was not visible after
SIGCONT. A full run takes about 75 s; ``--quick --stop-seconds 0.3`` takes
about 15 s. The table is always printed; ``--json PATH`` also writes every
repeat and the machine it ran on.

    python benchmarks/bench_stopped_writer.py [--quick] [--repeats N]
        [--stop-seconds S] [--json PATH]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import multiprocessing as mp
import os
import random
import resource
import signal
import statistics
import sys
import time
import traceback
import uuid
from array import array
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import fmt_size, machine_info, print_table

try:
    from metis_shm import Cache, _engine
except ImportError:  # run from a checkout, not installed: use the in-place build
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
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


# --------------------------------------------------------------------------- report


def combine(scenario: str, size: int, reps: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over repeats of each statistic, and the worst max."""
    row: dict[str, Any] = {"scenario": scenario, "label": LABELS[scenario], "size": size}
    for field in STATS:  # all gets, at the top level of the row
        row[field] = statistics.median(r["all"][field] for r in reps)
    row["worst_max_us"] = max(r["all"]["max_us"] for r in reps)
    row["maxes_us"] = [r["all"]["max_us"] for r in reps]
    for part in ("unpreempted", "written_key", "other_keys"):
        row[part] = {f: statistics.median(r[part][f] for r in reps) for f in STATS}
        row[part]["worst_max_us"] = max(r[part]["max_us"] for r in reps)
        row[part]["maxes_us"] = [r[part]["max_us"] for r in reps]
    row["unpreempted"]["kept"] = statistics.median(
        r["unpreempted"]["gets"] / r["all"]["gets"] for r in reps
    )
    for field in ("read_retries", "preemptions", "preempted_chunks", "chunks"):
        row[field] = statistics.median(r[field] for r in reps)
    row["read_retries_each"] = [r["read_retries"] for r in reps]
    row["written_key_values"] = {
        k: sum(r["written_key_values"][k] for r in reps) for k in ("old", "new", "writer")
    }
    row["bad_reads"] = [b for r in reps for b in r["bad_reads"]]
    row["bad_read_count"] = sum(r["written_key_values"]["bad"] for r in reps)
    row["timer_overhead_ns"] = statistics.median(r["overhead"]["median_ns"] for r in reps)
    row["timer_p99_ns"] = statistics.median(r["overhead"]["p99_ns"] for r in reps)
    row["timer_p999_ns"] = statistics.median(r["overhead"]["p999_ns"] for r in reps)
    if scenario in STOPPED:
        row["writer_stopped_throughout"] = all(r["writer_stopped_throughout"] for r in reps)
        row["gets_while_stopped"] = min(r["all"]["gets"] for r in reps)
        row["lock_held"] = [r["lock_held"] for r in reps]
    if scenario == "stopped-writer":
        row["new_value_visible"] = all(r["new_value_visible"] for r in reps)
    if scenario in ("running-writer", "random-stop"):
        row["writer_sets"] = statistics.median(r["writer_sets"] for r in reps)
    row["repeats"] = reps
    return row


def judge(rows: list[dict[str, Any]], part: str) -> dict[str, Any]:
    """Ratios to the baseline, and the target per size (see the module docstring).

    ``part`` is ``"all"`` (every get; the figures at the top level of a row)
    or ``"unpreempted"`` (``row["unpreempted"]``); the ratios and verdicts
    are written next to the figures they are about.
    """

    def figures(row: dict[str, Any]) -> dict[str, Any]:
        return row if part == "all" else row[part]

    verdict: dict[str, Any] = {"threshold_us": TARGET_US, "sizes": {}}
    for size in SIZES:
        at = {r["scenario"]: r for r in rows if r["size"] == size}
        base = figures(at["no-writer"])
        noise = max(base["maxes_us"]) - min(base["maxes_us"])
        for r in at.values():
            f = figures(r)
            f["max_ratio"] = f["max_us"] / base["max_us"] if base["max_us"] else None
            f["p99_ratio"] = f["p99_us"] / base["p99_us"] if base["p99_us"] else None
            f["max_excess_us"] = f["max_us"] - base["max_us"]
            f["within_noise"] = f["max_excess_us"] <= noise
            f["under_target"] = f["worst_max_us"] < TARGET_US
            f["target_met"] = f["within_noise"] and f["under_target"]
        stopped = figures(at["stopped-writer"])
        verdict["sizes"][fmt_size(size)] = {
            "baseline_max_us": base["max_us"],
            "baseline_worst_max_us": base["worst_max_us"],
            "noise_us": noise,
            "baseline_under_target": base["under_target"],
            "stopped_max_us": stopped["max_us"],
            "stopped_worst_max_us": stopped["worst_max_us"],
            "under_target": stopped["under_target"],
            "within_noise": stopped["within_noise"],
            "holds": stopped["target_met"],
        }
    verdict["holds"] = all(v["holds"] for v in verdict["sizes"].values())
    return verdict


def us(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}" if x < 10 else f"{x:.1f}"


def ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def size_cell(row: dict[str, Any]) -> str:
    # The empty bracket reads no value: its size is that of the pass it ran in.
    return fmt_size(row["size"])


def target_cell(row: dict[str, Any], f: dict[str, Any]) -> str:
    if row["scenario"] not in STOPPED:
        return ""
    return "met" if f["target_met"] else "missed"


def print_rows(rows: list[dict[str, Any]]) -> None:
    header = (
        "scenario",
        "size",
        "gets",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "max us",
        "worst max us",
        "retries",
        "preempt",
        "max/base",
        "p99/base",
        "target",
    )
    lines = [
        (
            r["label"],
            size_cell(r),
            f"{r['gets']:,.0f}",
            us(r["p50_us"]),
            us(r["p99_us"]),
            us(r["p999_us"]),
            us(r["max_us"]),
            us(r["worst_max_us"]),
            f"{r['read_retries']:,.0f}",
            f"{r['preemptions']:,.0f}",
            ratio(r["max_ratio"]),
            ratio(r["p99_ratio"]),
            target_cell(r, r),
        )
        for r in rows
    ]
    print_table(header, lines, left=1)


def print_unpreempted(rows: list[dict[str, Any]]) -> None:
    header = (
        "scenario",
        "size",
        "gets kept",
        "p99 us",
        "p99.9 us",
        "max us",
        "worst max us",
        "max/base",
        "target",
    )
    lines = []
    for r in rows:
        u = r["unpreempted"]
        lines.append(
            (
                r["label"],
                size_cell(r),
                f"{100 * u['kept']:.1f}%",
                us(u["p99_us"]),
                us(u["p999_us"]),
                us(u["max_us"]),
                us(u["worst_max_us"]),
                ratio(u["max_ratio"]),
                target_cell(r, u),
            )
        )
    print_table(header, lines, left=1)


def print_written_key(rows: list[dict[str, Any]]) -> None:
    header = ("scenario", "size", "gets", "p50 us", "p99 us", "max us", "old", "new", "writer's")
    lines = []
    for r in rows:
        if r["scenario"] == "timer-only":
            continue
        w, v = r["written_key"], r["written_key_values"]
        lines.append(
            (
                r["label"],
                size_cell(r),
                f"{w['gets']:,.0f}",
                us(w["p50_us"]),
                us(w["p99_us"]),
                us(w["worst_max_us"]),
                f"{v['old']:,}",
                f"{v['new']:,}",
                f"{v['writer']:,}",
            )
        )
    print_table(header, lines, left=1)


def print_verdict(title: str, verdict: dict[str, Any]) -> None:
    print(f"target, {title}:")
    for size_name, v in verdict["sizes"].items():
        line = (
            f"  {size_name:>6}: worst max {v['stopped_worst_max_us']:.1f} us"
            f" ({'under' if v['under_target'] else 'NOT under'} {TARGET_US:g});"
            f" median max {v['stopped_max_us']:.1f} us against {v['baseline_max_us']:.1f} us"
            f" with no writer, noise {v['noise_us']:.1f} us"
            f" ({'within' if v['within_noise'] else 'NOT within'} noise)"
            f" -> {'met' if v['holds'] else 'missed'}"
        )
        if not v["baseline_under_target"]:
            line += (
                f"; with no writer the reader too reached {v['baseline_worst_max_us']:.1f} us:"
                f" this machine's noise exceeds {TARGET_US:g} us"
            )
        print(line)
    print(f"  -> the target {'holds' if verdict['holds'] else 'does not hold'} on this run")


def find_problems(rows: list[dict[str, Any]]) -> list[str]:
    """Wrong values read, or a stopped writer that ran or whose write was lost."""
    problems = []
    for r in rows:
        where = f"{r['label']} {fmt_size(r['size'])}"
        if r["bad_read_count"]:
            problems.append(f"{where}: {r['bad_read_count']} bad reads, e.g. {r['bad_reads']}")
        if r["scenario"] in STOPPED and not r["writer_stopped_throughout"]:
            problems.append(f"{where}: the writer ran during the window")
        if r["scenario"] == "stopped-writer":
            if not r["new_value_visible"]:
                problems.append(f"{where}: the new value was not visible after SIGCONT")
            if r["written_key_values"]["new"]:
                problems.append(f"{where}: the unpublished value was read")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 repeats instead of 5")
    parser.add_argument("--repeats", type=int, help="repeats of each scenario (default 5)")
    parser.add_argument(
        "--stop-seconds",
        type=float,
        default=1.0,
        metavar="S",
        help="how long the reader is timed, the writer stopped throughout (default 1)",
    )
    parser.add_argument("--keys", type=int, default=1000, help="other keys (default 1000)")
    parser.add_argument("--capacity", default="64MiB", help="cache capacity (default 64MiB)")
    parser.add_argument("--policy", default="wtinylfu", help="eviction policy (default wtinylfu)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random stops")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    if repeats < 1 or args.keys < 1 or args.stop_seconds <= 0:
        parser.error("--repeats, --keys and --stop-seconds must be positive")
    window_ns = int(args.stop_seconds * 1e9)
    rng = random.Random(args.seed)

    t_start = time.monotonic()
    load, ncpu = os.getloadavg()[0], os.cpu_count() or 1
    if load > ncpu / 2:
        print(
            f"note: load average {load:.1f} on {ncpu} CPUs: other work competes for the CPUs,"
            " so the max latencies are unreliable",
            file=sys.stderr,
        )
    cpus = pick_cpus()
    name = f"bench-sw-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    cache = Cache(
        name, capacity=args.capacity, shards=1, policy=args.policy, compress_threshold=None
    )
    try:
        st = cache.stats()
        pin = (
            f"reader on CPU {cpus[0]}, writer on CPU {cpus[1]}"
            if cpus[0] is not None
            else "1 CPU: reader and writer share it"
        )
        print(
            f"bench_stopped_writer: {st.n_shards} shard, {args.keys:,} keys + the written key,"
            f" {args.stop_seconds:g} s windows x {repeats} repeats; {pin};"
            f" cache {args.capacity}, {st.policy}; load average {load:.2f}"
        )
        rows = []
        for size in SIZES:
            setup = Setup(args.keys, size)
            setup.fill(cache)
            reps: dict[str, list[dict[str, Any]]] = {s: [] for s in SCENARIOS}
            for _ in range(repeats):
                for scenario in SCENARIOS:  # interleaved: drift hits every scenario alike
                    reps[scenario].append(run_once(scenario, cache, setup, cpus, window_ns, rng))
            rows.extend(combine(s, size, reps[s]) for s in SCENARIOS)
        verdict = judge(rows, "all")
        verdict_kept = judge(rows, "unpreempted")
        overhead = statistics.median(r["timer_overhead_ns"] for r in rows)
        timer = {
            "median_ns": overhead,
            "p99_ns": statistics.median(r["timer_p99_ns"] for r in rows),
            "p999_ns": statistics.median(r["timer_p999_ns"] for r in rows),
        }
        load_end = os.getloadavg()[0]

        print()
        print(
            f"latency of one get, all gets (median over {repeats} repeats; timer overhead"
            f" {overhead:.0f} ns subtracted; preempt = the reader's involuntary context switches"
            " in its window):"
        )
        print_rows(rows)
        print(
            f"the empty bracket alone ({OVERHEAD_SAMPLES:,} in each reader before its window):"
            f" median {timer['median_ns']:.0f} ns, p99 {timer['p99_ns']:.0f} ns,"
            f" p99.9 {timer['p999_ns'] / 1e3:.2f} us: what the machine adds without any get"
        )
        print()
        print(
            f"the same without the chunks of {2 * CHUNK_KEYS} gets in which the kernel preempted"
            " the reader (what the cache, not the scheduler, makes a reader wait):"
        )
        print_unpreempted(rows)
        print()
        print(
            "the written key only (worst max; values read: the old one, the stopped writer's,"
            " a looping writer's):"
        )
        print_written_key(rows)

        print()
        stopped = [r for r in rows if r["scenario"] == "stopped-writer"]
        at_random = [r for r in rows if r["scenario"] == "random-stop"]
        print(
            "stopped writer: stopped through every window (state T, no CPU time): "
            + ("yes" if all(r["writer_stopped_throughout"] for r in stopped) else "NO")
            + f"; held the shard lock: {sum(sum(r['lock_held']) for r in stopped)}"
            f"/{sum(len(r['lock_held']) for r in stopped)}"
            "; new value visible after SIGCONT: "
            + ("yes" if all(r["new_value_visible"] for r in stopped) else "NO")
        )
        print(
            "stopped at random: stopped through every window: "
            + ("yes" if all(r["writer_stopped_throughout"] for r in at_random) else "NO")
            + f"; inside the locked section: {sum(sum(r['lock_held']) for r in at_random)}"
            f"/{sum(len(r['lock_held']) for r in at_random)}"
        )
        print()
        print(
            f"the target: the stopped writer's worst max under {TARGET_US:g} us, and its median"
            " max above the no-writer one by at most the noise (the spread of the no-writer max"
            " over repeats)"
        )
        print_verdict("all gets", verdict)
        print_verdict("gets not preempted", verdict_kept)
        print(f"load average {load:.2f} at the start, {load_end:.2f} at the end")
        problems = find_problems(rows)
        for p in problems:
            print(f"ERROR: {p}", file=sys.stderr)

        elapsed = time.monotonic() - t_start
        if args.json:
            result = {
                "benchmark": "bench_stopped_writer",
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "elapsed_s": round(elapsed, 2),
                "machine": machine_info(),
                "loadavg_1m_start": load,
                "loadavg_1m_end": load_end,
                "config": {
                    "quick": args.quick,
                    "repeats": repeats,
                    "stop_seconds": args.stop_seconds,
                    "keys": args.keys,
                    "sizes": list(SIZES),
                    "capacity": args.capacity,
                    "policy": st.policy,
                    "n_shards": st.n_shards,
                    "crash_point": CRASH_POINT,
                    "reader_cpu": cpus[0],
                    "writer_cpu": cpus[1],
                    "chunk_gets": 2 * CHUNK_KEYS,
                    "seed": args.seed,
                    "timer_overhead_ns": overhead,
                },
                "timer": timer,
                "scenarios": list(SCENARIOS),
                "rows": rows,
                "target": {"all_gets": verdict, "unpreempted": verdict_kept},
                "problems": problems,
            }
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2) + "\n")
            print()
            print(f"wrote {args.json} ({len(rows)} rows) in {elapsed:.1f}s")
        return 1 if problems else 0
    finally:
        cache.close()
        Cache.destroy(name)


if __name__ == "__main__":
    sys.exit(main())
