"""The torture run's driver: forks the workers of each phase, throws SIGKILL
and SIGSTOP at them, reads what they report and judges every death.

``TortureRun(cfg).run()`` runs every phase of ``plan_phases(cfg)`` and returns
the ``TortureReport``. The workers' loops are in torture_workers.py, the check
after each phase in torture_final_check.py.
"""

from __future__ import annotations

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: _workers

from _workers import ChildFailed, ForkedChild, StopFlag, wait_status
from torture_config import Phase, TortureConfig, config_dict, plan_phases
from torture_final_check import verify_phase
from torture_report import Failure, PhaseResult, TortureReport
from torture_workers import F_BUSY, F_OP, OP_NAMES, Board, ChildContext, child_main, role_kind

from metis_shm import Cache

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
        """SIGSTOPped, with its SIGCONT (or SIGKILL) still to come."""
        return self.cont_at is not None


class _Watchdog(BaseException):
    """The run overran its time limit (raised by the SIGALRM handler)."""


class TortureRun:
    """Runs the phases of one config and fills one report."""

    def __init__(self, cfg: TortureConfig) -> None:
        self.cfg = cfg
        seed = cfg.seed if cfg.seed is not None else random.SystemRandom().randrange(2**32)
        self.rng = random.Random(seed)
        self.report = TortureReport(seed=seed, config=config_dict(cfg))
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
        """Has the run recorded any failure yet?"""
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


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"
