"""A history checker for the far tier: record what many processes of several
machines saw, then check it against docs/far-tier.md's claim.

The claim: every read returns a value some write produced, and no read that
begins more than the staleness bound after a write completed returns a value
older than that write.

Recording. ``run_history`` starts worker processes (this file run as a
script), each opening its machine's near cache by name with the machine's
far settings. They do random operations on a few keys (Zipf-ish, so there is
contention): ``get`` (most), ``get_many`` (logged as one read per key),
``set`` of a unique value ("A0.1234:17": the process, its pid and a sequence
number, so every value names the write that produced it), ``delete``, and
``incr`` (by 1, from 0) on separate counter keys. Each op is logged with
``time.monotonic_ns()`` just before the call and just after the return
(CLOCK_MONOTONIC is one clock for every process of the host), its result,
and whether it raised FarUnavailable (the outcome is then unknown). Each
process writes its own log; ``run_history`` merges them, with the writes
that preloaded every key before the start, and runs the failures a test
injects (events) while the workers run.

Checking. ``check(history)`` is a pure function over a list of ``Op``
records. Per register key (set/delete):

1. every read returns a value a write of that key produced, or None (the
   initial state, or a delete), and not from the future: the write's call
   time is before the read's return time;
2. staleness: a read that returned the value of write w is stale by
   ``read.call - w2.ret`` for every write w2 (set or delete) of the key with
   ``w.ret < w2.call`` (w2 strictly after w in real time) and ``w2.ret <
   read.call``. A read of None is explained by the initial state or by any
   delete called before the read returned, whichever makes it least stale.

A write that raised has an unknown outcome: its value may appear at any time
after its call (it may also land much later, once a stopped Redis runs
again, so nothing counts as strictly after it), and it never counts as w2.

Counter keys (incr only) use Redis's own order, which their values reveal: a
read of n saw the counter after n increments, so it is stale by ``read.call
- w2.ret`` for every successful incr w2 that returned more than n. A value
no successful incr returned must be explained by one that raised.

The history passes with bound B if no read is stale by more than B; the
measured staleness is the smallest such B.
"""

from __future__ import annotations

import bisect
import json
import os
import random
import select
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INF = 1 << 62  # "never returned": a write with an unknown outcome
NEG = -(1 << 62)  # the initial state: before everything

REGISTER_OPS = ("set", "delete")
READS = ("get", "get_many")  # one get_many of n keys is logged as n reads
KINDS = ("get", "get_many", "set", "delete", "incr")


# ---- records -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Op:
    """One operation as its process saw it.

    ``value``: for set, the value written; for get and incr, the result
    (None if it raised); for delete, None. ``call``/``ret``: monotonic ns
    just before the call and just after it returned (or raised). ``ok``:
    False if it raised FarUnavailable.
    """

    proc: str
    key: str
    kind: str
    value: Any
    call: int
    ret: int
    ok: bool = True

    @property
    def eff_ret(self) -> int:
        """When the write is known to have taken effect by: INF if it raised."""
        return self.ret if self.ok else INF

    def describe(self, t0: int = 0) -> str:
        """``A0 set k1='A0.12:3' [1.234567, 1.234890] s`` (times from t0)."""
        what = f"{self.kind} {self.key}"
        if self.kind == "set":
            what += f"={self.value!r}"
        elif self.kind in (*READS, "incr") and self.ok:
            what += f" -> {self.value!r}"
        status = "" if self.ok else " RAISED"
        span = f"[{(self.call - t0) / 1e9:.6f}, {(self.ret - t0) / 1e9:.6f}] s"
        return f"{self.proc} {what} {span}{status}"

    def to_json(self) -> list[Any]:
        return [self.proc, self.key, self.kind, self.value, self.call, self.ret, self.ok]

    @classmethod
    def from_json(cls, row: Sequence[Any]) -> Op:
        return cls(*row)


@dataclass(frozen=True)
class Stale:
    """A read that returned the value of ``producer`` (None: the initial
    state) after ``newer`` (strictly after it) had completed."""

    key: str
    read: Op
    producer: Op | None
    newer: Op
    staleness_ns: int

    def describe(self, t0: int = 0) -> str:
        made = self.producer.describe(t0) if self.producer else "the initial state"
        return (
            f"key {self.key!r}: read {self.read.describe(t0)} is stale by "
            f"{self.staleness_ns / 1e6:.3f} ms: it returned the value of {made}, "
            f"but {self.newer.describe(t0)} completed before the read began"
        )


@dataclass(frozen=True)
class Violation:
    """A read no correct near tier could have returned."""

    kind: str  # "unknown-value", "future-read", "stale-read", "duplicate-result"
    key: str
    ops: tuple[Op, ...]
    message: str

    def describe(self, t0: int = 0) -> str:
        lines = [f"{self.kind} on key {self.key!r}: {self.message}"]
        lines += [f"    {op.describe(t0)}" for op in self.ops]
        return "\n".join(lines)


@dataclass
class Checked:
    """What ``check`` found."""

    ops: int = 0
    counts: Counter[tuple[str, bool]] = field(default_factory=Counter)  # (kind, ok) -> n
    keys: int = 0
    errors: list[Violation] = field(default_factory=list)  # never acceptable, whatever B
    stale: list[Stale] = field(default_factory=list)  # every read stale by more than 0
    t0: int = 0  # times in messages are relative to it

    @property
    def reads(self) -> int:
        return sum(self.counts[(k, True)] for k in READS)

    @property
    def writes(self) -> int:
        return sum(self.counts[(k, True)] for k in ("set", "delete", "incr"))

    @property
    def raised(self) -> int:
        return sum(n for (_, ok), n in self.counts.items() if not ok)

    @property
    def staleness_ns(self) -> int:
        """The measured staleness: the smallest bound the history passes with."""
        return max((s.staleness_ns for s in self.stale), default=0)

    @property
    def worst(self) -> Stale | None:
        return max(self.stale, key=lambda s: s.staleness_ns, default=None)

    def violations(self, bound_ns: int) -> list[Violation]:
        """The errors, then every read stale by more than ``bound_ns``, stalest first."""
        out = list(self.errors)
        for s in sorted(self.stale, key=lambda s: -s.staleness_ns):
            if s.staleness_ns > bound_ns:
                ops = (s.read, s.newer) if s.producer is None else (s.read, s.producer, s.newer)
                out.append(Violation("stale-read", s.key, ops, s.describe(self.t0)))
        return out

    def passes(self, bound_ns: int) -> bool:
        return not self.violations(bound_ns)

    def assert_passes(self, bound_ns: int, limit: int = 5) -> None:
        """AssertionError naming the key and the ops of the first ``limit`` violations."""
        bad = self.violations(bound_ns)
        if bad:
            text = "\n".join(v.describe(self.t0) for v in bad[:limit])
            more = f"\n... and {len(bad) - limit} more" if len(bad) > limit else ""
            raise AssertionError(
                f"the history fails with bound {bound_ns / 1e6:g} ms: {len(bad)} violation(s)\n"
                f"{text}{more}"
            )

    def table(self) -> str:
        """A few lines of what was measured."""
        rows = [f"{'op':<8}{'ok':>9}{'raised':>9}"]
        for kind in KINDS:
            ok, bad = self.counts[(kind, True)], self.counts[(kind, False)]
            if ok or bad:
                rows.append(f"{kind:<8}{ok:>9}{bad:>9}")
        stale = [s.staleness_ns for s in self.stale]
        rows.append(
            f"reads {self.reads}, writes {self.writes}, raised {self.raised}, keys {self.keys}"
        )
        rows.append(
            f"measured staleness {self.staleness_ns / 1e6:.3f} ms; stale reads "
            f"{len(stale)} (> 1 ms: {sum(1 for s in stale if s > 1_000_000)}, "
            f"> 10 ms: {sum(1 for s in stale if s > 10_000_000)})"
        )
        if self.worst is not None:
            rows.append(f"stalest: {self.worst.describe(self.t0)}")
        if self.errors:
            rows.append(f"ERRORS: {len(self.errors)}")
        return "\n".join(rows)


class MalformedHistory(ValueError):
    """The history cannot be checked (two writes of one value, a key both set and incremented)."""


# ---- the checker ---------------------------------------------------------------


def check(history: Iterable[Op], t0: int | None = None) -> Checked:
    """Check a history (any order): validity errors, and every stale read.
    Times in messages are relative to ``t0`` (default: the first call)."""
    ops = list(history)
    out = Checked(ops=len(ops), t0=min((o.call for o in ops), default=0) if t0 is None else t0)
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.kind not in KINDS:
            raise MalformedHistory(f"unknown op kind {op.kind!r}: {op}")
        if op.ret < op.call:
            raise MalformedHistory(f"an op returned before its call: {op}")
        out.counts[(op.kind, op.ok)] += 1
        by_key[op.key].append(op)
    out.keys = len(by_key)
    for key, key_ops in sorted(by_key.items()):
        kinds = {o.kind for o in key_ops}
        if "incr" in kinds:
            if kinds & set(REGISTER_OPS):
                raise MalformedHistory(f"key {key!r} is both a counter and a register")
            _check_counter(key, key_ops, out)
        else:
            _check_register(key, key_ops, out)
    return out


class _Newer:
    """Among successful writes, the one returning first whose call is after
    a given time: ``after(t)``. (Sorted by call; suffix minimum of ret.)"""

    def __init__(self, writes: Iterable[Op], order: Callable[[Op], int]) -> None:
        ws = sorted(writes, key=order)
        self.keys = [order(w) for w in ws]
        self.best: list[Op | None] = [None] * (len(ws) + 1)
        best: Op | None = None
        for i in range(len(ws) - 1, -1, -1):
            if best is None or ws[i].ret < best.ret:
                best = ws[i]
            self.best[i] = best

    def after(self, t: int) -> Op | None:
        """The write with the smallest ret among those whose key is > t."""
        return self.best[bisect.bisect_right(self.keys, t)]


def _stale(out: Checked, key: str, read: Op, producer: Op | None, newer: Op | None) -> None:
    if newer is not None and newer.ret < read.call:
        out.stale.append(Stale(key, read, producer, newer, read.call - newer.ret))


def _check_register(key: str, ops: list[Op], out: Checked) -> None:
    writes = [o for o in ops if o.kind in REGISTER_OPS]
    newer = _Newer((w for w in writes if w.ok), lambda w: w.call)
    by_value: dict[Any, Op] = {}
    for w in writes:
        if w.kind == "set":
            if w.value in by_value:
                raise MalformedHistory(f"two writes of {w.value!r}: {by_value[w.value]} and {w}")
            by_value[w.value] = w
    # Deletes by call, with the prefix maximum of eff_ret: the delete that
    # best explains a read of None among those called before the read returned.
    deletes = sorted((w for w in writes if w.kind == "delete"), key=lambda w: w.call)
    del_calls = [d.call for d in deletes]
    latest: list[Op] = []
    for d in deletes:
        latest.append(d if not latest or d.eff_ret > latest[-1].eff_ret else latest[-1])
    for r in ops:
        if r.kind not in READS or not r.ok:
            continue
        producer: Op | None
        if r.value is None:
            i = bisect.bisect_left(del_calls, r.ret)
            producer = latest[i - 1] if i else None  # None: the initial state
        else:
            try:
                producer = by_value.get(r.value)
            except TypeError:  # an unhashable value: no set wrote it
                producer = None
            if producer is None:
                out.errors.append(
                    Violation(
                        "unknown-value", key, (r,), f"no write of {key!r} produced {r.value!r}"
                    )
                )
                continue
            if producer.call >= r.ret:
                out.errors.append(
                    Violation(
                        "future-read",
                        key,
                        (r, producer),
                        "the read returned before the write of its value was called",
                    )
                )
                continue
        eff = NEG if producer is None else producer.eff_ret
        _stale(out, key, r, producer, None if eff == INF else newer.after(eff))


def _check_counter(key: str, ops: list[Op], out: Checked) -> None:
    incrs = [o for o in ops if o.kind == "incr"]
    ok = [o for o in incrs if o.ok]
    by_result: dict[int, Op] = {}
    for w in ok:
        if w.value in by_result:
            out.errors.append(
                Violation(
                    "duplicate-result", key, (by_result[w.value], w), "two incrs returned one value"
                )
            )
        by_result[w.value] = w
    newer = _Newer(ok, lambda w: w.value)  # ordered by result: Redis's order
    calls = sorted(o.call for o in incrs)
    failed_calls = sorted(o.call for o in incrs if not o.ok)
    for r in ops:
        if r.kind not in READS or not r.ok:
            continue
        v = r.value
        producer: Op | None = None
        if v is not None:
            if type(v) is not int or v < 1:
                out.errors.append(Violation("unknown-value", key, (r,), f"a counter read {v!r}"))
                continue
            started = bisect.bisect_left(calls, r.ret)  # incrs called before the read returned
            producer = by_result.get(v)
            if v > started or (producer is not None and producer.call >= r.ret):
                ops_ = (r,) if producer is None else (r, producer)
                out.errors.append(
                    Violation(
                        "future-read",
                        key,
                        ops_,
                        f"the counter read {v} but only {started} incr(s) had been called",
                    )
                )
                continue
            if producer is None and bisect.bisect_left(failed_calls, r.ret) == 0:
                out.errors.append(
                    Violation(
                        "unknown-value",
                        key,
                        (r,),
                        f"no incr of {key!r} returned {v}, and none that raised was called before",
                    )
                )
                continue
        _stale(out, key, r, producer, newer.after(0 if v is None else v))


# ---- recording -------------------------------------------------------------------


@dataclass
class Workload:
    """What each worker does: ``keys`` register keys (Zipf-ish, exponent
    ``zipf``), ``counters`` counter keys; the op mix; a mean pause between
    ops (seconds, exponential) so the trackers and Redis get the CPU too.
    ``first_get_many``: the first op is a get_many of every key (a read on a
    connection that has not read anything yet)."""

    keys: int = 8
    counters: int = 2
    zipf: float = 1.1
    p_set: float = 0.10
    p_delete: float = 0.03
    p_incr: float = 0.04
    p_get_many: float = 0.04  # a get_many of up to 3 keys, logged as one read per key
    p_counter_read: float = 0.15  # of the gets
    pause: float = 0.0004
    first_get_many: bool = True


@dataclass
class Run:
    """A recorded run: the merged history, the events injected and each
    machine's counters over the run (differences of stats() and far_stats()
    taken before the start and after the workers exited)."""

    history: list[Op]
    start_ns: int
    stop_ns: int
    events: list[tuple[str, int, int]]  # label, began, ended (monotonic ns)
    machines: dict[str, dict[str, Any]]

    def table(self) -> str:
        lines = []
        for label, m in self.machines.items():
            lines.append(
                f"machine {label}: near hit ratio {m['hit_ratio']:.3f} of {m['gets']} gets "
                f"(engine: {m['engine_hit_ratio']:.3f} of {m['hits'] + m['misses']} probes); "
                f"far hits {m['far_hits']}, far misses {m['far_misses']}, fills {m['fills']} "
                f"(dropped {m['fills_dropped']}), single-flight waits "
                f"{m['single_flight_waits']}, invalidations {m['invalidations']}, "
                f"generation bumps {m['generation_bumps']}, far errors {m['far_errors']}"
            )
        for label, began, ended in self.events:
            at = f"{(began - self.start_ns) / 1e9:6.3f} s"
            if ended - began > 1_000_000:
                at += f" to {(ended - self.start_ns) / 1e9:6.3f} s"
            lines.append(f"event at {at}: {label}")
        return "\n".join(lines)


_COUNTERS = (
    "far_hits",
    "far_misses",
    "fills",
    "fills_dropped",
    "invalidations",
    "generation_bumps",
    "far_errors",
    "single_flight_waits",
    "far_writes",
)


def _counters(cache: Any) -> dict[str, int]:
    st = cache.stats()
    fs = cache.far_stats()
    out = {"hits": st.hits, "misses": st.misses}
    out.update({k: fs[k] for k in _COUNTERS})
    return out


def run_history(
    machines: Sequence[tuple[str, Any]],
    workdir: Path,
    *,
    procs: int = 3,
    duration: float = 10.0,
    seed: int = 0,
    workload: Workload | dict[str, Workload] | None = None,
    preload: bool = True,
    events: Sequence[tuple[float, str, Callable[[], None]]] = (),
    env: dict[str, str] | None = None,
    ready_timeout: float = 60.0,
) -> Run:
    """Run ``procs`` workers per machine for ``duration`` seconds.

    ``machines``: (label, machine) with ``.name``, ``.far`` (the far settings
    dict) and ``.cache`` (a handle open in this process, for the counters).
    ``workload``: one for every machine, or one per machine label.
    ``preload``: before the start, set every register key once through the
    first machine (logged as the ops of process "S"), so the first reads
    find values.
    ``events``: (seconds after the start, label, action), run in this process
    in order while the workers run; an action that overruns delays the next.
    Everything is bounded: the workers' start (``ready_timeout``), the run,
    and their exit.
    """
    loads = dict(workload) if isinstance(workload, dict) else {}
    for label, _ in machines:
        loads.setdefault(label, workload if isinstance(workload, Workload) else Workload())
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    workers: list[tuple[str, subprocess.Popen[bytes], Path, Path]] = []
    try:
        for label, m in machines:
            for i in range(procs):
                proc = f"{label}{i}"
                out = workdir / f"{proc}.jsonl"
                err = workdir / f"{proc}.stderr"
                spec = {
                    "proc": proc,
                    "name": m.name,
                    "far": m.far,
                    "capacity": m.cache.capacity,
                    "seed": rng.randrange(2**32),
                    "out": str(out),
                    "workload": loads[label].__dict__,
                }
                with err.open("wb") as err_f:
                    p = subprocess.Popen(
                        [sys.executable, __file__, json.dumps(spec)],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=err_f,
                        env=env,
                    )
                workers.append((proc, p, out, err))
        _wait_ready(workers, ready_timeout)
        history: list[Op] = []
        if preload:
            history += _preload(machines[0][1].cache, loads.values())
        before = {label: _counters(m.cache) for label, m in machines}
        start = time.monotonic_ns() + 50_000_000
        stop = start + int(duration * 1e9)
        for _, p, _, _ in workers:
            assert p.stdin is not None
            p.stdin.write(b"%d %d\n" % (start, stop))
            p.stdin.close()
        done: list[tuple[str, int, int]] = []
        for at, label, action in sorted(events, key=lambda e: e[0]):
            _sleep_until(start + int(at * 1e9))
            began = time.monotonic_ns()
            action()
            done.append((label, began, time.monotonic_ns()))
        _sleep_until(stop)
        deadline = time.monotonic() + 30.0
        for proc, p, out, err in workers:
            try:
                code = p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    f"worker {proc} did not finish: {err.read_text()[-2000:]}"
                ) from None
            if code != 0:
                raise AssertionError(f"worker {proc} exited with {code}: {err.read_text()[-3000:]}")
            history.extend(load(out))
        after = {label: _counters(m.cache) for label, m in machines}
    finally:
        for _, p, _, _ in workers:
            if p.poll() is None:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()
    stats = {}
    for label, _ in machines:
        d: dict[str, Any] = {k: after[label][k] - before[label][k] for k in after[label]}
        # The engine counts every probe (the single-flight leases' too), so
        # its ratio is not the reads': a read is served near unless it made
        # a Redis round trip of its own (far_hits + far_misses).
        total = d["hits"] + d["misses"]
        d["engine_hit_ratio"] = d["hits"] / total if total else 0.0
        gets = sum(1 for o in history if o.kind in READS and o.proc.startswith(label))
        d["gets"] = gets
        d["hit_ratio"] = 1 - (d["far_hits"] + d["far_misses"]) / gets if gets else 0.0
        stats[label] = d
    return Run(history, start, stop, done, stats)


def _preload(cache: Any, loads: Iterable[Workload]) -> list[Op]:
    keys = sorted({k for w in loads for k in key_names(w)[0]})
    tag = f"S.{os.getpid()}"
    ops = []
    for i, key in enumerate(keys):
        value = f"{tag}:{i}"
        call = time.monotonic_ns()
        cache.set(key, value)
        ops.append(Op("S", key, "set", value, call, time.monotonic_ns()))
    return ops


def _wait_ready(
    workers: list[tuple[str, subprocess.Popen[bytes], Path, Path]], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    waiting = {p.stdout.fileno(): (proc, p, err) for proc, p, _, err in workers if p.stdout}
    while waiting:
        left = deadline - time.monotonic()
        if left <= 0:
            names = [w[0] for w in waiting.values()]
            raise AssertionError(f"workers {names} not ready within {timeout} s")
        readable, _, _ = select.select(list(waiting), [], [], min(left, 0.5))
        for fd in readable:
            proc, p, err = waiting.pop(fd)
            assert p.stdout is not None
            line = p.stdout.readline()
            if line.strip() != b"ready":
                p.wait(timeout=5)
                raise AssertionError(
                    f"worker {proc} did not start: {line!r} {err.read_text()[-3000:]}"
                )


def _sleep_until(t_ns: int) -> None:
    while (left := t_ns - time.monotonic_ns()) > 0:
        time.sleep(min(left / 1e9, 0.05))


def load(path: Path) -> list[Op]:
    """The ops of one worker's log."""
    with path.open() as f:
        return [Op.from_json(json.loads(line)) for line in f if line.strip()]


def save(history: Iterable[Op], path: Path) -> None:
    with path.open("w") as f:
        for op in history:
            f.write(json.dumps(op.to_json()) + "\n")


# ---- the worker (this file run as a script) --------------------------------------


def key_names(workload: Workload) -> tuple[list[str], list[str]]:
    return [f"k{i}" for i in range(workload.keys)], [f"c{i}" for i in range(workload.counters)]


def _worker(spec: dict[str, Any]) -> None:
    from metis_shm import Cache
    from metis_shm.errors import FarUnavailable

    w = Workload(**spec["workload"])
    proc = spec["proc"]
    rng = random.Random(spec["seed"])
    keys, counters = key_names(w)
    cum: list[float] = []
    total = 0.0
    for i in range(len(keys)):
        total += 1 / (i + 1) ** w.zipf
        cum.append(total)
    cache = Cache(spec["name"], capacity=spec["capacity"], far=spec["far"])
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    start, stop = (int(x) for x in sys.stdin.readline().split())
    _sleep_until(start)
    tag = f"{proc}.{os.getpid()}"
    rows: list[list[Any]] = []
    seq = 0
    now = time.monotonic_ns
    p_set, p_del, p_incr = w.p_set, w.p_set + w.p_delete, w.p_set + w.p_delete + w.p_incr
    p_many = p_incr + w.p_get_many
    first = w.first_get_many
    while now() < stop:
        x = rng.random()
        value: Any = None
        if first:
            first = False
            kind, key, many = "get_many", "", keys + counters
        elif x < p_set:
            kind, key = "set", rng.choices(keys, cum_weights=cum)[0]
            seq += 1
            value = f"{tag}:{seq}"
        elif x < p_del:
            kind, key = "delete", rng.choices(keys, cum_weights=cum)[0]
        elif x < p_incr and counters:
            kind, key = "incr", rng.choice(counters)
        elif x < p_many:
            kind, key = "get_many", ""
            many = sorted(set(rng.choices(keys, cum_weights=cum, k=3)))
            if counters and rng.random() < w.p_counter_read:
                many.append(rng.choice(counters))
        elif counters and rng.random() < w.p_counter_read:
            kind, key = "get", rng.choice(counters)
        else:
            kind, key = "get", rng.choices(keys, cum_weights=cum)[0]
        ok = True
        call = now()
        try:
            if kind == "get":
                value = cache.get(key)
            elif kind == "set":
                cache.set(key, value)
            elif kind == "delete":
                cache.delete(key)
            elif kind == "incr":
                value = cache.incr(key, 1, default=0)
            else:
                value = cache.get_many(many)
        except FarUnavailable:
            ok = False
            if kind != "set":
                value = None
        ret = now()
        if kind == "get_many":
            got = value or {}
            rows += ([proc, k, kind, got.get(k), call, ret, ok] for k in many)
        else:
            rows.append([proc, key, kind, value, call, ret, ok])
        if w.pause:
            time.sleep(rng.expovariate(1 / w.pause))
    cache.close()
    with open(spec["out"], "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    _worker(json.loads(sys.argv[1]))
