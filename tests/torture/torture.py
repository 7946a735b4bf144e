"""The torture run: a few hot keys whose values change size all the time, under
real processes that the driver SIGKILLs and SIGSTOPs at random, with every
value read checked.

    python tests/torture/torture.py --duration 600 --seed N [--policy P ...]
        [--shards 1 4] [--phase-seconds 20] [--focused] [--report out.json]

As a library (tests/torture/test_torture.py): ``run_torture(TortureConfig(...))``
returns a ``TortureReport``; ``report.failures`` is empty when the run passed.

Why this shape: a block freed and reused at another alignment while a
lock-free reader is inside it is the case the read path must survive, and it
only comes up often when a handful of keys are rewritten with values of
varying length (0 B to several KiB, now and then 64-200 KiB) in a cache small
enough to evict all the time. The chaos (SIGKILL, SIGSTOP for 1-300 ms) hits
writers, readers and "repairers" (``check()``, ``_repair_shard(i)``,
``sweep()``) alike, so a writer dies mid-write, a reader waits for a stopped
writer, and a repair is itself killed half-way.

Each phase is one policy and one shard count on a fresh segment:

1. fork the workers (torture_workers.py): writers (set, set with TTL,
   delete, add, replace, pop, incr/decr on counter keys, touch, set_many,
   delete_many, a rare clear), readers (get, get_many, ``in``, keys()), one
   repairer; a killed worker is replaced at once;
2. until the phase's time is up, at random (exponential) intervals: SIGKILL a
   worker (some kills wait for a repairer to be inside a burst of repairs),
   SIGSTOP one and SIGCONT it 1-300 ms later (or SIGKILL it instead);
3. stop every worker, then in a forked checker: ``check() == []``, the byte
   accounting of ``stats()``, every surviving value, and after deleting every
   key, that each shard is one free block again.

A failure is: a read that returned a torn value or another key's value, a
counter that is not an int, a worker that died of a signal nobody sent it
(SIGSEGV, SIGBUS, SIGFPE, SIGABRT, ...), an undocumented exception, a
``check()`` that found a problem (during the run or after it), accounting that
does not add up, a worker that made no progress for ``hang_seconds``, and a
read that took longer than ``stall_ms`` while its reader ran and another
worker was SIGSTOPped (a reader waiting for a stopped writer). The first
failure's time is reported.

Every wait is bounded; a SIGALRM watchdog SIGKILLs every child if the run
overruns; children check that the driver is alive and leave when it is not.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import select
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # tests/: _workers

from _workers import OK, ChildFailed, ForkedChild, StopFlag, new_name, wait_status
from torture_workers import (
    F_BUSY,
    F_OP,
    OP_NAMES,
    RAW_MAX,
    Board,
    ChildContext,
    KeySpace,
    PhaseSpec,
    build_value,
    child_main,
    judge,
    role_kind,
)

from metis_shm import Cache

POLICIES = ("wtinylfu", "sieve", "lru", "arc", "2q", "s3fifo")
KIB = 1024
TICK = 0.002  # the driver's longest sleep: SIGCONTs are due to the ms
HANG_CHECK_EVERY = 0.25
STOP_TIMEOUT = 10.0  # workers must leave this long after the stop flag
CHECKER_TIMEOUT = 60.0
REPAIR_AIM_WAIT = 0.02  # a kill aimed at a repair waits this long for a burst
KILL_ROLE_WEIGHTS = {"writer": 0.4, "repairer": 0.3, "reader": 0.3}
STOP_ROLE_WEIGHTS = {"writer": 0.5, "repairer": 0.25, "reader": 0.25}
# Lane counts that each come with a failure line: (line verdict or type, lane field).
UNREPORTED = {
    "torn": "torn",
    "foreign": "foreign",
    "counter": "bad_counter",
    "error": "errors",
    "check": "bad_checks",
}
# Signals a worker dies of only through a bug of its own.
CRASH_SIGNALS = frozenset(
    {
        signal.SIGSEGV,
        signal.SIGBUS,
        signal.SIGFPE,
        signal.SIGABRT,
        signal.SIGILL,
        signal.SIGSYS,
        signal.SIGTRAP,
    }
)


# --------------------------------------------------------------------------
# Configuration and phases
# --------------------------------------------------------------------------


@dataclass
class TortureConfig:
    """A whole run; the defaults are the long run's."""

    duration: float = 600.0  # seconds of chaos over all phases (checks come on top)
    seed: int | None = None  # None: a random one (printed in the report)
    policies: Sequence[str] = POLICIES
    shards: Sequence[int] = (1, 4)
    capacity: int = 256 * KIB  # small: eviction and block reuse all the time
    phase_seconds: float | None = 20.0  # None: one phase per policy x shards
    writers: int = 2
    readers: tuple[int, int] = (4, 5)  # drawn per phase
    repairers: int = 1
    hot_keys: tuple[int, int] = (4, 16)  # drawn per phase
    cold_keys: int = 64
    counters: int = 4
    kill_every: float | None = 0.3  # mean seconds between SIGKILLs (None: none)
    stop_every: float | None = 0.2  # mean seconds between SIGSTOPs (None: none)
    stop_ms: tuple[float, float] = (1.0, 300.0)
    kill_stopped_share: float = 0.2  # of stops that end in SIGKILL, not SIGCONT
    stall_ms: float = 100.0  # 0: reads are not timed
    hang_seconds: float = 5.0
    large_share: float = 0.02
    clear_share: float = 2e-5
    focused: bool = False  # the scenario instead of the family
    stop_on_failure: bool = False
    progress_every: float | None = None  # seconds between progress lines on stderr
    name_factory: Callable[[], str] = new_name


@dataclass
class Phase:
    """One policy x one configuration, on its own segment."""

    policy: str
    shards: int
    capacity: int
    seconds: float
    roles: tuple[tuple[str, int], ...]  # (role, how many)
    spec: PhaseSpec
    compress_threshold: int | None
    kill_every: float | None
    stop_every: float | None

    @property
    def label(self) -> str:
        """What the phase is, in one line."""
        roles = " ".join(f"{role}x{n}" for role, n in self.roles)
        ct = "off" if self.compress_threshold is None else f"{self.compress_threshold // KIB}KiB"
        large = (
            "none"
            if self.spec.large is None
            else "-".join(f"{x // KIB}KiB" for x in self.spec.large)
        )
        return (
            f"{self.policy} {self.shards} shard{'s' if self.shards > 1 else ''} "
            f"{self.capacity // KIB}KiB hot={len(self.spec.space.hot)} {roles} "
            f"compress={ct} large={large}"
        )


def plan_phases(cfg: TortureConfig, rng: random.Random) -> list[Phase]:
    """The phases of a run: every policy x shard count, cycled to fill ``duration``."""
    if cfg.focused:
        return [focused_phase(cfg.duration, cfg.capacity, stall_ms=cfg.stall_ms)]
    combos = [(p, n) for p in cfg.policies for n in cfg.shards]
    n = len(combos)
    if cfg.phase_seconds:
        n = max(n, round(cfg.duration / cfg.phase_seconds))
    seconds = cfg.duration / n
    phases = []
    for i in range(n):
        policy, shards = combos[i % len(combos)]
        shard_bytes = cfg.capacity // shards
        large_max = min(200 * KIB, shard_bytes * 3 // 4)
        large = (min(64 * KIB, large_max // 2), large_max)
        space = KeySpace.build(rng.randint(*cfg.hot_keys), cfg.cold_keys, cfg.counters)
        spec = PhaseSpec(
            space=space,
            value_kind="framed",
            large=large,
            large_share=cfg.large_share,
            stall_seconds=cfg.stall_ms / 1000 if cfg.stall_ms else math.inf,
            clear_share=cfg.clear_share,
        )
        roles = (
            ("writer", cfg.writers),
            ("reader", rng.randint(*cfg.readers)),
            ("repairer", cfg.repairers),
        )
        phases.append(
            Phase(
                policy=policy,
                shards=shards,
                capacity=cfg.capacity,
                seconds=seconds,
                roles=tuple((r, k) for r, k in roles if k > 0),
                spec=spec,
                # Off, the default, or small (most values compressed: other
                # flags and stored lengths). Small is drawn less often: zlib
                # on every set slows the churn twentyfold.
                compress_threshold=rng.choices((None, 16 * KIB, 1 * KIB), (3, 3, 1))[0],
                kill_every=cfg.kill_every,
                stop_every=cfg.stop_every,
            )
        )
    return phases


def focused_phase(seconds: float, capacity: int = 256 * KIB, *, stall_ms: float = 0.0) -> Phase:
    """The issue's scenario exactly: one writer storing random bytes of 0 to
    3000 B under 16 keys, three readers calling get(), one shard, LRU, no chaos."""
    spec = PhaseSpec(
        space=KeySpace.build(16, 0, 0),
        value_kind="raw",
        large=None,
        large_share=0.0,
        stall_seconds=stall_ms / 1000 if stall_ms else math.inf,
        clear_share=0.0,
    )
    return Phase(
        policy="lru",
        shards=1,
        capacity=capacity,
        seconds=seconds,
        roles=(("raw_writer", 1), ("raw_reader", 3)),
        spec=spec,
        compress_threshold=16 * KIB,
        kill_every=None,
        stop_every=None,
    )


# --------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------


@dataclass
class Failure:
    """One failure: when (seconds since the run started), where, what."""

    at: float
    phase: int
    kind: str
    detail: str


@dataclass
class PhaseResult:
    """What one phase did and what its final check found."""

    index: int
    label: str
    seconds: float
    counts: dict[str, int]
    chaos: dict[str, int]
    failures: int
    final: dict[str, Any]


@dataclass
class TortureReport:
    """What a run did and found; ``failures`` empty means it passed."""

    seed: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    chaos_seconds: float = 0.0
    phases: list[PhaseResult] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)
    chaos: dict[str, int] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    failure_kinds: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False

    @property
    def first_failure(self) -> Failure | None:
        """The earliest failure of any kind."""
        return min(self.failures, key=lambda f: f.at, default=None)

    @property
    def first_crash(self) -> Failure | None:
        """The earliest worker death by a signal nobody sent."""
        crashes = [f for f in self.failures if f.kind == "signal"]
        return min(crashes, key=lambda f: f.at, default=None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        d = asdict(self)
        d["failures"] = d["failures"][:1000]
        first, crash = self.first_failure, self.first_crash
        d["first_failure_seconds"] = first.at if first else None
        d["first_crash_seconds"] = crash.at if crash else None
        return d

    def text(self) -> str:
        """The human summary."""
        t = self.totals
        out = [
            f"torture run, seed {self.seed}: {len(self.phases)} phases, "
            f"{self.chaos_seconds:.1f} s of chaos, {self.seconds:.1f} s in all"
            + (" (interrupted)" if self.interrupted else ""),
        ]
        for p in self.phases:
            c = p.counts
            final = "ok" if not p.final.get("problems") else f"{len(p.final['problems'])} problems"
            out.append(
                f"  phase {p.index + 1:>2} {p.label}: {p.seconds:.1f} s, ops {c.get('ops', 0):,}, "
                f"verified {c.get('ok', 0):,}, kills {p.chaos.get('SIGKILL sent', 0)}, "
                f"stops {p.chaos.get('SIGSTOP sent', 0)}, repairs {c.get('repairs', 0):,}, "
                f"failures {p.failures}, final check {final}"
            )
        out.append(
            f"ops {t.get('ops', 0):,}: reads {t.get('reads', 0):,} ({t.get('hits', 0):,} hits; "
            f"verified ok {t.get('ok', 0):,}, torn {t.get('torn', 0)}, foreign "
            f"{t.get('foreign', 0)}, bad counters {t.get('bad_counter', 0)}), writes "
            f"{t.get('writes', 0):,} (refused as ValueTooLarge {t.get('refused', 0):,}), "
            f"repairs {t.get('repairs', 0):,}, checks {t.get('checks', 0):,}, sweeps "
            f"{t.get('sweeps', 0):,}, keys() {t.get('keys_calls', 0):,}, errors "
            f"{t.get('errors', 0)}"
        )
        out.append("chaos: " + ", ".join(f"{k} {v:,}" for k, v in sorted(self.chaos.items())))
        if not self.failures:
            out.append("PASSED: no failure")
            return "\n".join(out)
        first, crash = self.first_failure, self.first_crash
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.failure_kinds.items()))
        out.append(f"FAILED: {sum(self.failure_kinds.values())} failures ({kinds})")
        if first is not None:
            out.append(f"  first failure after {first.at:.2f} s: [{first.kind}] {first.detail}")
        if crash is not None:
            n = self.failure_kinds.get("signal", 0)
            out.append(
                f"  first crash after {crash.at:.2f} s ({n} crashes in "
                f"{self.chaos_seconds:.0f} s): {crash.detail}"
            )
        shown = sorted(self.failures, key=lambda f: f.at)[:25]
        out.extend(
            f"  {f.at:8.2f} s phase {f.phase + 1} [{f.kind}] {f.detail[:600]}" for f in shown
        )
        if len(self.failures) > len(shown):
            out.append(f"  ... and {len(self.failures) - len(shown)} more")
        return "\n".join(out)


# --------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------


@dataclass
class Proc:
    """A forked worker, as the driver knows it."""

    pid: int
    role: str
    lane: int
    started: float
    killed: bool = False  # the driver sent it SIGKILL
    stops: list[list[float]] = field(default_factory=list)  # [SIGSTOP at, SIGCONT at]
    cont_at: float | None = None  # while stopped: when the stop ends
    kill_when_due: bool = False  # the stop ends in SIGKILL
    last_ops: int = -1
    progress_at: float = 0.0
    reported: Counter[str] = field(default_factory=Counter)  # failure lines received

    @property
    def stopped(self) -> bool:
        return self.cont_at is not None


class _Watchdog(BaseException):
    """The run overran its time limit (raised by the SIGALRM handler)."""


class TortureRun:
    """Runs the phases of one config and fills one report."""

    def __init__(self, cfg: TortureConfig) -> None:
        self.cfg = cfg
        seed = cfg.seed if cfg.seed is not None else random.SystemRandom().randrange(2**32)
        self.rng = random.Random(seed)
        self.report = TortureReport(seed=seed, config=_config_dict(cfg))
        self.t0 = time.monotonic()
        self.board = Board()
        self.failure_kinds: Counter[str] = Counter()
        self.procs: dict[int, Proc] = {}  # live workers of the current phase
        self.phase_procs: list[Proc] = []  # every worker of the phase, dead ones too
        self.phase_index = 0
        self.phase_counts: Counter[str] = Counter()
        self.phase_chaos: Counter[str] = Counter()
        self.phase_failures = 0
        self.totals: Counter[str] = Counter()
        self.chaos: Counter[str] = Counter()
        self.stopping = False
        self._buf = b""
        self._ctx: ChildContext | None = None
        self._last_progress = self.t0
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)

    # ---- failures ---------------------------------------------------------

    def fail(self, kind: str, detail: str, at: float | None = None) -> None:
        """Record a failure (``at``: a monotonic time, default now)."""
        when = (at if at is not None else time.monotonic()) - self.t0
        self.failure_kinds[kind] += 1
        self.phase_failures += 1
        if len(self.report.failures) < 5000:
            self.report.failures.append(Failure(round(when, 3), self.phase_index, kind, detail))

    def failed(self) -> bool:
        return bool(self.failure_kinds)

    # ---- the run ----------------------------------------------------------

    def run(self) -> TortureReport:
        """Every phase, then the report (also after a failure or an interrupt)."""
        phases = plan_phases(self.cfg, self.rng)
        planned = sum(p.seconds for p in phases)
        limit = planned + 120.0 + len(phases) * (STOP_TIMEOUT + CHECKER_TIMEOUT)
        chaos_seconds = 0.0
        with self._watchdog(limit):
            try:
                for i, phase in enumerate(phases):
                    self.phase_index = i
                    chaos_seconds += self._run_phase(phase)
                    if self.cfg.stop_on_failure and self.failed():
                        break
            except KeyboardInterrupt:
                self.report.interrupted = True
            except _Watchdog:
                self.fail("hang", f"the run overran its limit of {limit:.0f} s; everything killed")
            finally:
                self._kill_all()
                for fd in (self._read_fd, self._write_fd):
                    with contextlib.suppress(OSError):
                        os.close(fd)
        r = self.report
        r.seconds = round(time.monotonic() - self.t0, 2)
        r.chaos_seconds = round(chaos_seconds, 2)
        r.totals = dict(self.totals)
        r.chaos = dict(self.chaos)
        r.failure_kinds = dict(self.failure_kinds)
        return r

    @contextlib.contextmanager
    def _watchdog(self, seconds: float) -> Iterator[None]:
        """SIGALRM after ``seconds``: its handler raises _Watchdog (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_alarm(signum: int, frame: object) -> None:
            raise _Watchdog()

        old = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)

    def _run_phase(self, phase: Phase) -> float:
        """One phase on a fresh segment; returns its seconds of chaos."""
        self.phase_counts = Counter()
        self.phase_chaos = Counter()
        self.phase_failures = 0
        self.phase_procs = []
        self.stopping = False
        name = self.cfg.name_factory()
        cache = Cache(
            name,
            capacity=phase.capacity,
            shards=phase.shards,
            policy=phase.policy,
            compress_threshold=phase.compress_threshold,
        )
        started = time.monotonic()
        chaos_end = started
        final: dict[str, Any] = {}
        try:
            self._ctx = ChildContext(
                cache=cache,
                spec=phase.spec,
                board=self.board,
                stop=StopFlag(),
                report_fd=self._write_fd,
                read_fd=self._read_fd,
                parent_pid=os.getpid(),
            )
            for role, n in phase.roles:
                for _ in range(n):
                    self._spawn(role)
            self._chaos_loop(phase, started + phase.seconds)
            chaos_end = time.monotonic()
            self._stop_all()
            if not (self.cfg.stop_on_failure and self.failed()):
                final = self._final_check(cache, phase)
        finally:
            self._kill_all()
            self._read_messages()
            cache.close()
            Cache.destroy(name)
        self.report.phases.append(
            PhaseResult(
                index=self.phase_index,
                label=phase.label,
                seconds=round(chaos_end - started, 2),
                counts=dict(self.phase_counts),
                chaos=dict(self.phase_chaos),
                failures=self.phase_failures,
                final=final,
            )
        )
        return chaos_end - started

    # ---- processes --------------------------------------------------------

    def _spawn(self, role: str) -> Proc:
        assert self._ctx is not None
        lane = self.board.take()
        seed = self.rng.randrange(2**62)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            child_main(self._ctx, role, lane, seed)
        now = time.monotonic()
        proc = Proc(pid=pid, role=role, lane=lane, started=now, progress_at=now)
        self.procs[pid] = proc
        self.phase_procs.append(proc)
        return proc

    def _signal(self, proc: Proc, sig: int) -> None:
        if sig == signal.SIGKILL:
            proc.killed = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)

    def _reap(self) -> None:
        for proc in list(self.procs.values()):
            try:
                pid, status = os.waitpid(proc.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = proc.pid, 0
            if pid:
                self._on_death(proc, status)

    def _on_death(self, proc: Proc, status: int) -> None:
        """Fold the lane, judge the death, replace the worker if the phase goes on."""
        # Everything the child wrote is in the pipe now: read it before the
        # lane is compared with what it reported.
        self._read_messages()
        del self.procs[proc.pid]
        now = time.monotonic()
        if proc.stopped:
            proc.stops[-1][1] = now
            proc.cont_at = None
        lane = self.board.lane(proc.lane)
        op = OP_NAMES[lane[F_OP]] if 0 <= lane[F_OP] < len(OP_NAMES) else "?"
        counts = self.board.counts(proc.lane)
        self.board.give_back(proc.lane)
        self.phase_counts.update(counts)
        self.totals.update(counts)
        kind = role_kind(proc.role)
        who = f"{kind} {proc.pid} (up {now - proc.started:.2f} s, {counts['ops']:,} ops, in {op})"
        for verdict, name in UNREPORTED.items():
            missing = counts[name] - proc.reported[verdict]
            if missing > 0:
                self.fail(
                    verdict,
                    f"{who}: {missing} more {verdict} results than it could "
                    "report (line quota or full pipe)",
                    now,
                )
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGKILL and proc.killed:
                pass
            else:
                self.fail(
                    "signal",
                    f"{who} died of {_signal_name(sig)}, which nobody sent it"
                    + ("" if sig in CRASH_SIGNALS else " (not a crash signal)"),
                    now,
                )
        elif os.WIFEXITED(status):
            code = os.WEXITSTATUS(status)
            if code != 0:
                self.fail("exit", f"{who} exited with code {code} (its error is reported above)")
            elif not self.stopping:
                self.fail("exit", f"{who} left before the phase ended")
        if not self.stopping:
            self._count("replacements")
            self._spawn(proc.role)

    def _kill_all(self) -> None:
        """SIGKILL and reap every worker still alive (bounded)."""
        for proc in list(self.procs.values()):
            self._signal(proc, signal.SIGKILL)
        for proc in list(self.procs.values()):
            status = wait_status(proc.pid, 5.0)
            self._on_death_quiet(proc, status)

    def _on_death_quiet(self, proc: Proc, status: int | None) -> None:
        stopping, self.stopping = self.stopping, True
        try:
            if status is None:
                self.procs.pop(proc.pid, None)
                self.fail("hang", f"{role_kind(proc.role)} {proc.pid} survived SIGKILL for 5 s")
            else:
                self._on_death(proc, status)
        finally:
            self.stopping = stopping

    def _stop_all(self) -> None:
        """Ask every worker to leave; SIGKILL (a failure) those that do not in time."""
        assert self._ctx is not None
        self.stopping = True
        self._ctx.stop.set()
        for proc in self.procs.values():
            if proc.stopped:
                self._cont(proc, time.monotonic())
        deadline = time.monotonic() + STOP_TIMEOUT
        while self.procs and time.monotonic() < deadline:
            self._reap()
            self._read_messages()
            time.sleep(TICK)
        for proc in list(self.procs.values()):
            op = OP_NAMES[self.board.lane(proc.lane)[F_OP]]
            self.fail(
                "hang",
                f"{role_kind(proc.role)} {proc.pid} still in {op} "
                f"{STOP_TIMEOUT:.0f} s after the phase ended",
            )
        self._kill_all()
        self._read_messages()

    # ---- chaos ------------------------------------------------------------

    def _count(self, what: str, n: int = 1) -> None:
        self.phase_chaos[what] += n
        self.chaos[what] += n

    def _chaos_loop(self, phase: Phase, end: float) -> None:
        rng = self.rng
        now = time.monotonic()

        def after(mean: float | None) -> float:
            return now + rng.expovariate(1 / mean) if mean else math.inf

        next_kill, next_stop = after(phase.kill_every), after(phase.stop_every)
        next_hang = now + HANG_CHECK_EVERY
        while True:
            now = time.monotonic()
            if now >= end or (self.cfg.stop_on_failure and self.failed()):
                return
            for proc in list(self.procs.values()):
                if proc.cont_at is not None and now >= proc.cont_at:
                    if proc.kill_when_due:
                        self._count("SIGKILL while stopped")
                        self._kill(proc)
                    else:
                        self._cont(proc, now)
            if now >= next_kill:
                self._kill_random()
                next_kill = after(phase.kill_every)
            if now >= next_stop:
                self._stop_random()
                next_stop = after(phase.stop_every)
            self._reap()
            self._read_messages()
            if now >= next_hang:
                self._check_hangs(now)
                next_hang = now + HANG_CHECK_EVERY
            self._progress(now)
            due = [end, next_kill, next_stop, next_hang]
            due += [p.cont_at for p in self.procs.values() if p.cont_at is not None]
            pause = min(TICK, max(0.0, min(due) - time.monotonic()))
            select.select([self._read_fd], [], [], pause)

    def _pick(self, weights: dict[str, float], ok: Callable[[Proc], bool]) -> Proc | None:
        by_kind: dict[str, list[Proc]] = {}
        for proc in self.procs.values():
            if ok(proc):
                by_kind.setdefault(role_kind(proc.role), []).append(proc)
        kinds = [k for k in weights if k in by_kind]
        if not kinds:
            return None
        kind = self.rng.choices(kinds, [weights[k] for k in kinds])[0]
        return self.rng.choice(by_kind[kind])

    def _kill(self, proc: Proc) -> None:
        self._count("SIGKILL sent")
        self._signal(proc, signal.SIGKILL)
        if proc.stopped:
            # It stays frozen until it dies: the stop ends now, no SIGCONT is due.
            proc.stops[-1][1] = time.monotonic()
            proc.cont_at = None

    def _kill_random(self) -> None:
        proc = self._pick(KILL_ROLE_WEIGHTS, lambda p: not p.killed)
        if proc is None:
            return
        if role_kind(proc.role) == "repairer" and not proc.stopped:
            # A repair of a small shard takes microseconds: wait for a burst,
            # so that the kill lands inside one and the next locker repairs
            # after a half-done repair.
            lane = self.board.lane(proc.lane)
            deadline = time.monotonic() + REPAIR_AIM_WAIT
            while not lane[F_BUSY] and time.monotonic() < deadline:
                time.sleep(0.00005)
            if lane[F_BUSY]:
                self._count("SIGKILL during a repair burst")
        self._kill(proc)

    def _stop_random(self) -> None:
        proc = self._pick(STOP_ROLE_WEIGHTS, lambda p: not p.killed and not p.stopped)
        if proc is None:
            return
        now = time.monotonic()
        self._signal(proc, signal.SIGSTOP)
        self._count("SIGSTOP sent")
        proc.stops.append([now, math.inf])
        proc.cont_at = now + self.rng.uniform(*self.cfg.stop_ms) / 1000
        proc.kill_when_due = self.rng.random() < self.cfg.kill_stopped_share

    def _cont(self, proc: Proc, now: float) -> None:
        self._signal(proc, signal.SIGCONT)
        self._count("SIGCONT sent")
        proc.stops[-1][1] = now
        proc.cont_at = None
        proc.progress_at = now

    def _check_hangs(self, now: float) -> None:
        """A worker that is not stopped must finish ops; one that does not is killed."""
        for proc in list(self.procs.values()):
            ops = self.board.lane(proc.lane)[0]
            if proc.stopped or ops != proc.last_ops:
                proc.last_ops = ops
                proc.progress_at = now
                continue
            if not proc.killed and now - proc.progress_at > self.cfg.hang_seconds:
                op = OP_NAMES[self.board.lane(proc.lane)[F_OP]]
                self.fail(
                    "hang",
                    f"{role_kind(proc.role)} {proc.pid} made no progress for "
                    f"{now - proc.progress_at:.1f} s, in {op}; killed",
                )
                self._count("SIGKILL of a hung worker")
                self._signal(proc, signal.SIGKILL)

    def _progress(self, now: float) -> None:
        every = self.cfg.progress_every
        if not every or now - self._last_progress < every:
            return
        self._last_progress = now
        live = Counter(self.totals)
        for proc in self.procs.values():
            live.update(self.board.counts(proc.lane))
        print(
            f"[{now - self.t0:7.1f} s] phase {self.phase_index + 1}: ops {live['ops']:,}, "
            f"verified {live['ok']:,}, kills {self.chaos['SIGKILL sent']:,}, stops "
            f"{self.chaos['SIGSTOP sent']:,}, repairs {live['repairs']:,}, failures "
            f"{sum(self.failure_kinds.values())}"
            + (
                f" ({', '.join(f'{k} {v}' for k, v in sorted(self.failure_kinds.items()))})"
                if self.failure_kinds
                else ""
            ),
            file=sys.stderr,
            flush=True,
        )

    # ---- what children report -----------------------------------------------

    def _read_messages(self) -> None:
        while True:
            try:
                chunk = os.read(self._read_fd, 1 << 16)
            except (BlockingIOError, OSError):
                break
            if not chunk:
                break
            self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            try:
                msg = json.loads(line)
            except ValueError:
                self.fail("error", f"a worker sent an unreadable line: {line[:200]!r}")
                continue
            self._on_message(msg)

    def _on_message(self, msg: dict[str, Any]) -> None:
        who = f"{msg.get('role')} {msg.get('pid')}"
        at = msg.get("at")
        kind = msg.get("type")
        proc = self.procs.get(int(msg.get("pid", 0)))
        if proc is not None:
            proc.reported[msg.get("verdict", kind)] += 1
        if kind == "bad":
            self.fail(
                msg.get("verdict", "bad"),
                f"{who}: {msg.get('op')} of {msg.get('key')} returned a {msg.get('verdict')} "
                f"value ({msg.get('length', '?')} B, starts {str(msg.get('head', ''))[:64]}) "
                f"{msg.get('detail', '')}",
                at,
            )
        elif kind == "error":
            tb = str(msg.get("traceback", "")).strip().splitlines()
            self.fail(
                "error",
                f"{who}: {msg.get('op')} raised {msg.get('detail')} [{' | '.join(tb[-4:])}]",
                at,
            )
        elif kind == "check":
            self.fail("check", f"{who}: check() during the run: {msg.get('detail')}", at)
        elif kind == "slow":
            self._on_slow(msg)

    def _on_slow(self, msg: dict[str, Any]) -> None:
        """A slow read: a failure if the reader ran and another worker was stopped."""
        t0, t1, pid = float(msg["t0"]), float(msg["t1"]), int(msg["pid"])
        procs = {p.pid: p for p in self.phase_procs}
        me = procs.get(pid)

        def overlap(p: Proc) -> float:
            return sum(max(0.0, min(t1, b) - max(t0, a)) for a, b in p.stops)

        if me is not None and overlap(me) > 0:
            self._count("slow reads of a stopped reader")
            return
        blamed = [(overlap(p), p) for p in self.phase_procs if p.pid != pid]
        # A reader that waits for a stopped process waits about as long as
        # the stop; one descheduled on a busy machine merely happens to
        # overlap some stop, and is not blamed on it.
        blamed = [(o, p) for o, p in blamed if o >= 0.5 * (t1 - t0)]
        if not blamed:
            self._count("slow reads, no stop to blame")
            return
        o, p = max(blamed, key=lambda x: x[0])
        self.fail(
            "blocked",
            f"reader {pid}: {msg.get('op')} of {msg.get('key')} took "
            f"{(t1 - t0) * 1000:.0f} ms while {role_kind(p.role)} {p.pid} was SIGSTOPped "
            f"({o * 1000:.0f} ms of it): readers wait for a stopped process",
            t1,
        )

    # ---- after the phase --------------------------------------------------

    def _final_check(self, cache: Cache, phase: Phase) -> dict[str, Any]:
        seed = self.rng.randrange(2**62)
        try:
            result = ForkedChild(verify_phase, cache, phase.spec, seed).join(CHECKER_TIMEOUT)
        except ChildFailed as exc:
            self.fail("final check", f"the checker failed: {str(exc)[:2000]}")
            return {"problems": [f"checker: {exc}"]}
        for problem in result["problems"]:
            self.fail("final check", problem)
        return result


def verify_phase(cache: Cache, spec: PhaseSpec, seed: int) -> dict[str, Any]:
    """Everything that must hold once every worker is gone (run in a forked child).

    check() is clean; each shard's bytes add up; every value left verifies;
    keys() and get() agree; after deleting every key and sweeping, each shard
    holds nothing and is one free block, and the removals counted match the
    items there were; fresh writes read back. Returns problems and figures.
    """
    problems: list[str] = []
    info: dict[str, Any] = {}
    space = spec.space
    rng = random.Random(seed)

    def judge_value(key: Any, value: Any) -> str:
        if key in space.counters:
            return OK if type(value) is int else "counter"
        if key not in space.data:
            return "foreign"
        if spec.value_kind == "raw":
            return OK if isinstance(value, bytes) and len(value) <= RAW_MAX else "torn"
        return judge(key, value, space.hot)

    def accounting(stats: Any, when: str) -> None:
        for i, sh in enumerate(stats.shards):
            if sh.bytes_used + sh.free_bytes != sh.capacity:
                problems.append(
                    f"{when}: shard {i}: used {sh.bytes_used} + free "
                    f"{sh.free_bytes} != capacity {sh.capacity}"
                )
            if not 0 <= sh.largest_free <= sh.free_bytes <= sh.capacity:
                problems.append(
                    f"{when}: shard {i}: largest free {sh.largest_free}, free "
                    f"{sh.free_bytes}, capacity {sh.capacity}"
                )
            if sh.items < 0 or (sh.items == 0 and sh.bytes_used != 0):
                problems.append(f"{when}: shard {i}: {sh.items} items use {sh.bytes_used} B")
        if sum(sh.capacity for sh in stats.shards) != cache.capacity:
            problems.append(f"{when}: shard capacities do not add up to {cache.capacity}")
        if len(cache) != stats.items:
            problems.append(f"{when}: len() is {len(cache)}, stats say {stats.items} items")

    problems += [f"check() after the phase: {p}" for p in cache.check()]
    before = cache.stats()
    accounting(before, "after the phase")
    listed = list(cache.keys())
    listed_set = set(listed)
    info["items"], info["keys"] = before.items, len(listed)
    if len(set(listed)) != len(listed):
        problems.append(f"keys() yielded {len(listed) - len(set(listed))} keys twice")
    known = space.known()
    problems += [f"keys() yielded {k!r}, which nobody stored" for k in listed if k not in known]
    if before.items < len(set(listed)):
        problems.append(f"keys() yielded {len(set(listed))} keys, stats count {before.items}")
    bad = 0
    for key in sorted(known, key=repr):
        value = cache.get(key)
        if value is None:
            continue
        if key not in listed_set:
            problems.append(f"get() finds {key!r}, keys() did not list it")
        verdict = judge_value(key, value)
        if verdict != OK:
            bad += 1
            problems.append(f"surviving value of {key!r} is {verdict}: {repr(value)[:120]}")
    info["values_bad"] = bad

    # Empty the cache by deleting, not clear(): clear() would rebuild the
    # arena and hide a leaked or unmerged block.
    for key in listed:
        cache.delete(key)
    cache.sweep(max_items=2**40)
    after = cache.stats()
    accounting(after, "after deleting every key")
    removed = (after.deletes - before.deletes) + (after.expirations - before.expirations)
    if removed != before.items:
        problems.append(
            f"{before.items} items, but deleting every key and sweeping removed {removed}"
        )
    for i, sh in enumerate(after.shards):
        if sh.items or sh.free_bytes != sh.capacity or sh.largest_free != sh.capacity:
            problems.append(
                f"shard {i} after deleting every key: {sh.items} items, free "
                f"{sh.free_bytes}, largest free block {sh.largest_free} of "
                f"{sh.capacity}"
            )
    if list(cache.keys()):
        problems.append("keys() still yields keys after every key was deleted")
    problems += [f"check() after deleting every key: {p}" for p in cache.check()]

    for key in space.hot:
        if spec.value_kind == "raw":
            value = os.urandom(rng.randint(0, RAW_MAX))
        else:
            value = build_value(key, 1, rng.choice((0, 1, 100, 3000)), rng)
        cache.set(key, value)
        got = cache.get(key)
        if got != value:
            problems.append(f"{key!r} does not read back after the phase: {repr(got)[:120]}")
    problems += [f"check() after fresh writes: {p}" for p in cache.check()]
    info["problems"] = problems
    return info


# --------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------


def run_torture(cfg: TortureConfig) -> TortureReport:
    """Run ``cfg``; the report lists every failure (none: passed)."""
    return TortureRun(cfg).run()


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _config_dict(cfg: TortureConfig) -> dict[str, Any]:
    d = {k: v for k, v in asdict(cfg).items() if k != "name_factory"}
    d["policies"], d["shards"] = list(cfg.policies), list(cfg.shards)
    return d


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="The Metis torture run: hot keys of varying sizes, SIGKILL/SIGSTOP, "
        "every read checked. Exits 1 on any failure."
    )
    p.add_argument("--duration", type=float, default=600.0, help="seconds of chaos in all")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--policy",
        action="append",
        choices=POLICIES,
        help="a policy to run (repeatable; default: all six)",
    )
    p.add_argument("--shards", type=int, nargs="+", default=[1, 4])
    p.add_argument("--capacity", type=int, default=256 * KIB, help="bytes")
    p.add_argument("--phase-seconds", type=float, default=20.0)
    p.add_argument("--readers", type=int, default=None, help="readers per phase (default 4-5)")
    p.add_argument("--writers", type=int, default=2)
    p.add_argument("--repairers", type=int, default=1)
    p.add_argument("--large-share", type=float, default=0.02, help="of writes; 0: none")
    p.add_argument("--kill-every", type=float, default=0.3, help="mean s between SIGKILLs, 0: none")
    p.add_argument("--stop-every", type=float, default=0.2, help="mean s between SIGSTOPs, 0: none")
    p.add_argument(
        "--stall-ms",
        type=float,
        default=100.0,
        help="a read this slow while another worker is stopped fails (0: off)",
    )
    p.add_argument(
        "--focused",
        action="store_true",
        help="the issue's scenario: 1 raw writer, 3 readers, 1 shard, lru, no chaos",
    )
    p.add_argument("--stop-on-failure", action="store_true")
    p.add_argument("--progress", type=float, default=10.0, help="s between progress lines")
    p.add_argument("--report", type=Path, default=None, help="write the report as JSON here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run from the command line: progress on stderr, the summary on stdout."""
    args = _parser().parse_args(argv)
    readers = (args.readers, args.readers) if args.readers else (4, 5)
    cfg = TortureConfig(
        duration=args.duration,
        seed=args.seed,
        policies=tuple(args.policy or POLICIES),
        shards=tuple(args.shards),
        capacity=args.capacity,
        phase_seconds=args.phase_seconds,
        readers=readers,
        writers=args.writers,
        repairers=args.repairers,
        large_share=args.large_share,
        kill_every=args.kill_every or None,
        stop_every=args.stop_every or None,
        stall_ms=args.stall_ms,
        focused=args.focused,
        stop_on_failure=args.stop_on_failure,
        progress_every=args.progress or None,
    )

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    report = run_torture(cfg)
    print(report.text())
    if args.report:
        args.report.write_text(json.dumps(report.to_dict(), indent=1, default=repr))
    if report.interrupted:
        return 130
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
