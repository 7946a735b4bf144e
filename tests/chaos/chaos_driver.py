"""The chaos run's driver: starts metisd and the workers, throws the chaos at
them, winds the run down and checks what is left.

``ChaosRun(config).run()`` returns the ``ChaosReport``. The processes it
starts are in chaos_procs.py, the checks once the chaos is over in
chaos_final_checks.py.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: _workers

from _workers import new_name
from chaos_config import ChaosConfig, config_dict, daemon_sections
from chaos_final_checks import check_final_cache, check_snapshots, fold_worker_reports
from chaos_procs import (
    DaemonProcess,
    WorkerProcess,
    child_env,
    describe_status,
    tail,
    write_daemon_config,
)
from chaos_report import ChaosReport

from metis_shm import Cache

START_TIMEOUT = 60.0  # a metisd must log "ready" within this
CLI_TIMEOUT = 120.0  # a `metis check` / `metis snapshot` must finish within this
WORKER_STOP_TIMEOUT = 30.0
DAEMON_STOP_TIMEOUT = 120.0
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
SNAPSHOT_WRITTEN = re.compile(r"snapshot (\S+) written: ([\d,]+) items, .* in ([\d.]+) s$")
BAD_DAEMON_LINE = re.compile(r" (ERROR|CRITICAL) |Traceback \(most recent call last\)")


def _log_time(line: str) -> float | None:
    """The wall-clock time of a metisd log line (its asctime, local time)."""
    m = LOG_TIME.match(line)
    if not m:
        return None
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


class ChaosRun:
    """One run: its processes, its chaos schedule, its findings."""

    def __init__(self, config: ChaosConfig) -> None:
        self.cfg = config
        self.seed = (
            config.seed if config.seed is not None else random.SystemRandom().randrange(2**32)
        )
        self.rng = random.Random(self.seed)
        self.name = new_name()
        self.report = ChaosReport(seed=self.seed, config=config_dict(config), cache_name=self.name)
        self.failures = self.report.failures
        self.chaos: Counter[str] = Counter()
        self._own_dir = config.run_dir is None
        self.run_dir = Path(config.run_dir or tempfile.mkdtemp(prefix="metis-chaos-"))
        self.snap_dir = self.run_dir / "snapshots"
        self.config_path = self.run_dir / "metisd.toml"
        self.daemons: list[DaemonProcess] = []
        self.daemon: DaemonProcess | None = None
        self.daemon_kill_at: float | None = None
        self.workers: dict[int, WorkerProcess] = {}
        self.retired: list[WorkerProcess] = []
        self.generations: Counter[int] = Counter()
        self.pending_kills: list[float] = []  # monotonic times of worker kills to do
        self.kill_times: list[float] = []  # wall-clock times of worker kills
        self.stop_spans: list[tuple[float, float]] = []  # wall-clock SIGSTOP..SIGCONT
        self.cli: list[tuple[str, subprocess.Popen[bytes], float, Path, float | None]] = []
        self.snapshot_spans: list[tuple[float, float]] = []  # wall-clock, from metisd logs
        self._children_lock = threading.Lock()
        self._finished = threading.Event()
        self._t0 = time.monotonic()

    # ---- setup -----------------------------------------------------------------

    def write_config(self) -> None:
        """The metisd configuration of this run (one cache, snapshots on)."""
        write_daemon_config(self.config_path, daemon_sections(self.cfg, self.name, self.snap_dir))

    def start_daemon(self) -> DaemonProcess:
        """Start a metisd; it becomes the current one."""
        with self._children_lock:
            d = DaemonProcess(len(self.daemons), self.config_path, self.run_dir)
            self.daemons.append(d)
        self.daemon = d
        self.daemon_kill_at = None
        return d

    def wait_daemon_ready(self, timeout: float = START_TIMEOUT) -> bool:
        """Poll until the current metisd logs ready; False if it died or timed out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll_daemon()
            d = self.daemon
            if d is not None and d.ready_at is not None:
                return True
            if d is None or not d.alive():
                return False
            time.sleep(0.02)
        return False

    def start_worker(self, slot: int) -> WorkerProcess:
        """Start the next generation of worker ``slot``."""
        self.generations[slot] += 1
        gen = self.generations[slot]
        seed = (self.seed * 1_000_003 + slot * 10_007 + gen) % 2**63
        with self._children_lock:
            w = WorkerProcess(
                slot,
                gen,
                name=self.name,
                seed=seed,
                n_keys=self.cfg.keys,
                run_dir=self.run_dir,
                profile="hammer" if slot < self.cfg.hammers else "mixed",
            )
            self.workers[slot] = w
        self.chaos["worker processes started"] += 1
        return w

    # ---- polling -----------------------------------------------------------------

    def poll_daemon(self) -> None:
        """Read the daemon's new log lines; restart it if it died on its own."""
        d = self.daemon
        if d is None:
            return
        for line in d.log.read_new():
            self.on_daemon_line(d, line)
        if d.ready_at is None and d.alive() and time.monotonic() - d.started_at > START_TIMEOUT:
            self.failures.append(
                f"metisd #{d.index} not ready after {START_TIMEOUT} s; log tail:\n"
                + "\n".join(d.log.lines[-30:])
            )
            d.kill()
            self.start_daemon()
        elif not d.alive() and not d.killed:
            d.log.read_new()
            self.failures.append(
                f"metisd #{d.index} (pid {d.pid}) exited on its own "
                f"({describe_status(d.proc.returncode)}); log tail:\n"
                + "\n".join(d.log.lines[-30:])
            )
            self.start_daemon()

    def on_daemon_line(self, d: DaemonProcess, line: str) -> None:
        """Note what a metisd log line says: attach, ready, snapshot, error."""
        if "re-attached to the existing segment" in line:
            d.attached = True
        elif re.search(r"cache '.*': (created|replaced) the segment", line):
            d.created = True
            if d.index > 0:
                self.failures.append(f"metisd #{d.index} re-created the segment: {line}")
        elif re.search(r"metis_shm\.daemon: ready \(pid", line):
            d.ready_at = time.monotonic()
            if d.index > 0:
                if d.attached:
                    self.chaos["metisd restarts (re-attached)"] += 1
                else:
                    self.failures.append(f"metisd #{d.index} was ready without re-attaching")
            low, high = self.cfg.daemon_kill_after
            self.daemon_kill_at = d.ready_at + self.rng.uniform(low, high)
        m = SNAPSHOT_WRITTEN.search(line)
        if m:
            end = _log_time(line)
            if end is not None:
                self.snapshot_spans.append((end - float(m.group(3)), end))
            self.chaos["snapshots written by metisd"] += 1
        if BAD_DAEMON_LINE.search(line):
            self.failures.append(f"metisd #{d.index} logged: {line}")

    def poll_workers(self) -> None:
        """Replace workers that ended on their own (a failure: they only end when told)."""
        for slot, w in list(self.workers.items()):
            if w.alive():
                continue
            code = w.finish(timeout=5.0)
            self.failures.append(
                f"worker {w.worker_id} (pid {w.pid}) exited on its own ({describe_status(code)}); "
                f"stderr tail:\n{tail(w.stderr_path)}"
            )
            self.retired.append(w)
            self.start_worker(slot)

    def poll_cli(self, force_wait: bool = False) -> None:
        """Finish the `metis` commands that ended; kill the ones due to be killed."""
        now = time.monotonic()
        still = []
        for what, proc, started, out, kill_at in self.cli:
            if kill_at is not None and now >= kill_at and proc.poll() is None:
                proc.kill()
                self.chaos["metis snapshot processes SIGKILLed"] += 1
            if proc.poll() is None and force_wait:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=max(0.0, started + CLI_TIMEOUT - now))
            code = proc.poll()
            if code is None:
                if now - started > CLI_TIMEOUT:
                    proc.kill()
                    proc.wait(timeout=30)
                    self.failures.append(f"`metis {what}` still running after {CLI_TIMEOUT} s")
                    continue
                still.append((what, proc, started, out, kill_at))
                continue
            self.on_cli_done(what, code, out, killed=kill_at is not None and code < 0)
        self.cli = still

    def on_cli_done(self, what: str, code: int, out: Path, *, killed: bool) -> None:
        """Judge a finished `metis check` or `metis snapshot`."""
        text = out.read_text(errors="replace")
        if killed:
            return
        if what == "check":
            try:
                result = json.loads(text.strip().splitlines()[-1])
            except (ValueError, IndexError):
                result = {"ok": False, "problems": [f"no JSON from metis check: {text[-2000:]}"]}
            if code == 0 and result.get("ok"):
                self.chaos["metis check during chaos: consistent"] += 1
            else:
                self.failures.append(f"`metis check` during chaos: exit {code}: {result}")
        elif code == 0:
            self.chaos["metis snapshot processes completed"] += 1
        else:
            self.failures.append(f"`metis snapshot` exit {code}: {text[-2000:]}")

    # ---- chaos actions -----------------------------------------------------------

    def pick_victim(self) -> int:
        """A worker slot; half the time a hammer's (when there is one), whose
        death most often falls inside a locked write."""
        hammers = [s for s, w in self.workers.items() if w.profile == "hammer"]
        if hammers and self.rng.random() < 0.5:
            return self.rng.choice(hammers)
        return self.rng.choice(sorted(self.workers))

    def kill_worker(self) -> None:
        """SIGKILL a worker (stopped or not) and start its replacement."""
        slot = self.pick_victim()
        w = self.workers[slot]
        was_stopped = w.stopped_until is not None
        self.kill_times.append(time.time())
        w.kill()
        if was_stopped:
            self.chaos["workers SIGKILLed while stopped"] += 1
        self.chaos["workers SIGKILLed"] += 1
        self.retired.append(w)
        self.start_worker(slot)

    def stop_worker(self) -> None:
        """SIGSTOP a worker for a random time (see ``due_stops``)."""
        w = self.workers[self.pick_victim()]
        if w.stopped_until is not None:
            return
        # Mostly short stops (a writer caught inside a few microseconds of
        # locked code is what the robust locks must survive), some long ones.
        length = (
            self.rng.uniform(0.005, 0.2)
            if self.rng.random() < 0.7
            else self.rng.uniform(0.2, self.cfg.max_stop)
        )
        if w.sigstop(time.monotonic() + length):
            self.chaos["workers SIGSTOPped"] += 1
            self.stop_spans.append((time.time(), time.time() + length))

    def due_stops(self) -> None:
        """End the stops that are due: SIGCONT, or SIGKILL while still stopped."""
        now = time.monotonic()
        for w in list(self.workers.values()):
            if w.stopped_until is not None and now >= w.stopped_until:
                if self.rng.random() < self.cfg.kill_stopped_share:
                    self.kill_times.append(time.time())
                    w.kill()
                    self.chaos["workers SIGKILLed while stopped"] += 1
                    self.chaos["workers SIGKILLed"] += 1
                    self.retired.append(w)
                    self.start_worker(w.slot)
                else:
                    w.sigcont()

    def request_snapshot(self) -> None:
        """SIGUSR1 to metisd, and 1-2 worker kills a few ms later."""
        d = self.daemon
        if d is None or d.ready_at is None or not d.alive():
            return  # before its handlers are in, SIGUSR1 would kill metisd
        d.signal(signal.SIGUSR1)
        self.chaos["snapshots asked of metisd (SIGUSR1)"] += 1
        now = time.monotonic()
        for _ in range(self.rng.randint(1, 2)):
            self.pending_kills.append(now + self.rng.uniform(0.002, 0.12))

    def stop_daemon(self) -> None:
        """SIGSTOP metisd for 50 ms to 1 s: perhaps inside a sweep, a roll-up or a
        snapshot's shard copy, holding a shard lock the workers then wait for."""
        d = self.daemon
        if d is None or d.ready_at is None or d.stopped_until is not None:
            return
        length = self.rng.uniform(0.05, 1.0)
        d.signal(signal.SIGSTOP)
        d.stopped_until = time.monotonic() + length
        self.chaos["metisd SIGSTOPped"] += 1

    def due_daemon_stop(self) -> None:
        """End a due metisd stop: SIGCONT, or SIGKILL while still stopped."""
        d = self.daemon
        if d is None or d.stopped_until is None or time.monotonic() < d.stopped_until:
            return
        if self.rng.random() < self.cfg.kill_stopped_share:
            self.chaos["metisd SIGKILLed while stopped"] += 1
            self.kill_daemon()
        else:
            d.signal(signal.SIGCONT)
            d.stopped_until = None

    def kill_daemon(self) -> None:
        """SIGKILL the current metisd and start the next one."""
        d = self.daemon
        if d is None or d.ready_at is None:
            return
        for line in d.log.read_new():
            self.on_daemon_line(d, line)
        d.kill()
        for line in d.log.read_new():
            self.on_daemon_line(d, line)
        self.chaos["metisd SIGKILLed"] += 1
        self.start_daemon()

    def start_cli(self, what: str, *, chaos: bool = True) -> None:
        """Start `metis check` or `metis snapshot` as a separate process."""
        out = self.run_dir / f"cli-{what}-{len(self.cli)}-{time.monotonic_ns()}.out"
        if what == "check":
            args = ["check", self.name, "--json"]
            kill_at = None
        else:
            args = ["snapshot", self.name, "--dir", str(self.snap_dir), "--retention",
                    str(self.cfg.retention), "-q"]  # fmt: skip
            kill_at = (
                time.monotonic() + self.rng.uniform(0.0, 0.3) if self.rng.random() < 0.3 else None
            )
        with open(out, "wb") as f, self._children_lock:
            proc = subprocess.Popen(
                [sys.executable, "-m", "metis_shm", *args],
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                env=child_env(),
                cwd=self.run_dir,
            )
        self.cli.append((what, proc, time.monotonic(), out, kill_at))
        if chaos:
            self.chaos[f"metis {what} processes started"] += 1

    # ---- the loop ------------------------------------------------------------------

    def chaos_loop(self) -> None:
        """Fire the chaos events until ``duration`` has passed."""
        cfg = self.cfg
        rng = self.rng
        start = time.monotonic()
        end = start + cfg.duration
        nxt = {
            "kill": start + rng.expovariate(1 / cfg.kill_every),
            "stop": start + rng.expovariate(1 / cfg.stop_every),
            "snapshot": start + rng.expovariate(1 / cfg.snapshot_every),
            "cli_snapshot": start + rng.expovariate(1 / cfg.cli_snapshot_every),
            "cli_check": start + rng.expovariate(1 / cfg.cli_check_every),
            "daemon_stop": start + rng.expovariate(1 / cfg.daemon_stop_every),
        }
        means = {
            "kill": cfg.kill_every,
            "stop": cfg.stop_every,
            "snapshot": cfg.snapshot_every,
            "cli_snapshot": cfg.cli_snapshot_every,
            "cli_check": cfg.cli_check_every,
            "daemon_stop": cfg.daemon_stop_every,
        }
        next_progress = start + (cfg.progress_every or math.inf)
        while (now := time.monotonic()) < end and not self._finished.is_set():
            self.poll_daemon()
            self.poll_workers()
            self.poll_cli()
            self.due_stops()
            self.due_daemon_stop()
            for when in [t for t in self.pending_kills if t <= now]:
                self.pending_kills.remove(when)
                self.kill_worker()
            if self.daemon_kill_at is not None and now >= self.daemon_kill_at:
                self.kill_daemon()
            for what, when in nxt.items():
                if now < when:
                    continue
                nxt[what] = now + rng.expovariate(1 / means[what])
                if what == "kill":
                    self.kill_worker()
                elif what == "stop":
                    self.stop_worker()
                elif what == "snapshot":
                    self.request_snapshot()
                elif what == "cli_snapshot":
                    self.start_cli("snapshot")
                elif what == "cli_check" and not any(c[0] == "check" for c in self.cli):
                    self.start_cli("check")
                elif what == "daemon_stop":
                    self.stop_daemon()
            if now >= next_progress:
                next_progress = now + (cfg.progress_every or math.inf)
                self.print_progress(now - start)
            wake = [*nxt.values(), *self.pending_kills, now + 0.05]
            wake += [w.stopped_until for w in self.workers.values() if w.stopped_until]
            if self.daemon is not None and self.daemon.stopped_until is not None:
                wake.append(self.daemon.stopped_until)
            if self.daemon_kill_at is not None:
                wake.append(self.daemon_kill_at)
            time.sleep(max(0.0005, min(wake) - time.monotonic()))
        self.report.chaos_seconds = time.monotonic() - start

    def print_progress(self, elapsed: float) -> None:
        """One progress line on stderr."""
        counts = self.aggregate()[0]
        ops = sum(v for k, v in counts.items() if k.startswith("op_"))
        print(
            f"[chaos {elapsed:6.0f} s] ops {ops:,}, reads {counts.get('reads', 0):,}, "
            f"foreign {counts.get('foreign', 0)}, torn {counts.get('torn', 0)}, "
            f"errors {counts.get('errors', 0)}; "
            + ", ".join(f"{k} {v}" for k, v in self.chaos.items())
            + f"; failures {len(self.failures)}",
            file=sys.stderr,
            flush=True,
        )

    # ---- the end -------------------------------------------------------------------

    def wind_down(self) -> None:
        """No more chaos: everyone continued, the daemon ready, the workers stopped."""
        self.pending_kills.clear()
        if self.daemon is not None and self.daemon.stopped_until is not None:
            self.daemon.signal(signal.SIGCONT)
            self.daemon.stopped_until = None
        for w in self.workers.values():
            if w.stopped_until is not None:
                w.sigcont()
        self.poll_cli(force_wait=True)
        if not self.wait_daemon_ready():
            d = self.daemon
            self.failures.append(
                "metisd not ready at the end of the chaos; log tail:\n"
                + ("\n".join(d.log.lines[-30:]) if d else "(none)")
            )
        for w in self.workers.values():
            w.terminated = True
            w.signal(signal.SIGTERM)
        for w in self.workers.values():
            code = w.finish(timeout=WORKER_STOP_TIMEOUT)
            if code is None:
                self.failures.append(
                    f"worker {w.worker_id} (pid {w.pid}) did not stop within "
                    f"{WORKER_STOP_TIMEOUT} s of SIGTERM; stderr tail:\n{tail(w.stderr_path)}"
                )
                w.kill()
            elif code not in (0, -signal.SIGTERM):
                self.failures.append(
                    f"worker {w.worker_id} ended with {describe_status(code)} at SIGTERM; "
                    f"stderr tail:\n{tail(w.stderr_path)}"
                )
            self.retired.append(w)
        self.workers.clear()

    def aggregate(self) -> tuple[Counter[str], list[dict[str, Any]], list[dict[str, Any]]]:
        """Counts, bad values and errors of every worker process of the run."""
        counts: Counter[str] = Counter()
        bad: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for w in [*self.retired, *self.workers.values()]:
            state = w.snapshot_state()
            counts.update(state.counts)
            bad.extend(state.bad)
            errors.extend(state.errors)
            errors.extend({"worker": w.worker_id, "not JSON": g} for g in state.garbage)
        return counts, bad, errors

    def final_checks(self) -> None:
        """`metis check`, Cache.check(), every key verified; then metisd stopped."""
        final = self.report.final
        self.start_cli("check", chaos=False)
        _, proc, _, out, _ = self.cli[-1]
        try:
            proc.wait(timeout=CLI_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        self.cli.pop()
        text = out.read_text(errors="replace")
        try:
            cli_result = json.loads(text.strip().splitlines()[-1])
        except (ValueError, IndexError):
            cli_result = {"ok": False, "problems": [f"no JSON: {text[-2000:]}"]}
        final["metis check (CLI)"] = (
            "consistent" if proc.returncode == 0 and cli_result.get("ok") else cli_result
        )
        if final["metis check (CLI)"] != "consistent":
            self.failures.append(f"`metis check` at the end: exit {proc.returncode}: {cli_result}")
            return  # a shard lock may be stuck: do not block on it here
        check_final_cache(self.name, self.cfg.keys, self.report)
        d = self.daemon
        if d is not None:
            mark = len(d.log.lines)
            code = d.stop(DAEMON_STOP_TIMEOUT)
            for line in d.log.read_new():
                self.on_daemon_line(d, line)
            final["metisd exit"] = describe_status(code)
            if code != 0:
                self.failures.append(
                    f"metisd did not stop cleanly ({describe_status(code)}); log tail:\n"
                    + "\n".join(d.log.lines[-30:])
                )
            shutdown = [ln for ln in d.log.lines[mark:] if SNAPSHOT_WRITTEN.search(ln)]
            final["shutdown snapshot"] = "written" if shutdown else "missing"
            if not shutdown:
                self.failures.append("metisd wrote no snapshot at shutdown")
            self.chaos["snapshots written by metisd"] -= len(shutdown)

    def chaos_evidence(self) -> None:
        """How many snapshots ran while a worker was killed or stopped."""
        with_kill = with_stop = 0
        for begin, end in self.snapshot_spans:
            if any(begin <= t <= end for t in self.kill_times):
                with_kill += 1
            if any(s <= end and begin <= e for s, e in self.stop_spans):
                with_stop += 1
        self.chaos["snapshots with a worker SIGKILLed meanwhile"] = with_kill
        self.chaos["snapshots with a worker SIGSTOPped meanwhile"] = with_stop

    # ---- whole run -------------------------------------------------------------------

    def watchdog(self) -> None:
        """Thread: past the time limit, record a failure and SIGKILL every child."""
        limit = self.cfg.duration + self.cfg.teardown_timeout
        if self._finished.wait(timeout=limit):
            return
        self.failures.append(f"the run overran its {limit:.0f} s limit: every child SIGKILLed")
        self._finished.set()
        self.kill_children()

    def kill_children(self) -> None:
        """SIGKILL every process this run started that still runs."""
        with self._children_lock:
            procs = [d.proc for d in self.daemons]
            procs += [w.proc for w in [*self.retired, *self.workers.values()]]
            procs += [c[1] for c in self.cli]
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)

    def run(self) -> ChaosReport:
        """The whole run; never raises for a finding (it goes to ``failures``)."""
        guard = threading.Thread(target=self.watchdog, name="chaos-watchdog", daemon=True)
        guard.start()
        try:
            self.snap_dir.mkdir(parents=True, exist_ok=True)
            self.write_config()
            self.start_daemon()
            if not self.wait_daemon_ready():
                d = self.daemon
                raise RuntimeError(
                    "the first metisd never became ready; log:\n"
                    + ("\n".join(d.log.lines[-40:]) if d else "")
                )
            for slot in range(self.cfg.workers):
                self.start_worker(slot)
            self.chaos_loop()
            self.wind_down()
            fold_worker_reports(self.report, *self.aggregate())
            self.final_checks()
            check_snapshots(self.snap_dir, self.name, self.cfg.keys, self.report)
            self.chaos_evidence()
        except Exception:
            self.failures.append(f"the chaos driver failed:\n{traceback.format_exc()}")
        finally:
            self._finished.set()
            self.kill_children()
            self.reap_all()
            Cache.destroy(self.name)
            self.report.chaos = dict(self.chaos)
            self.report.total_seconds = time.monotonic() - self._t0
            if self._own_dir and not self.cfg.keep and not self.failures:
                shutil.rmtree(self.run_dir, ignore_errors=True)
            elif self.failures:
                self.report.final["run directory (logs)"] = str(self.run_dir)
        return self.report

    def reap_all(self) -> None:
        """Wait for every child (all were killed or have exited)."""
        for d in self.daemons:
            try:
                d.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.failures.append(f"metisd pid {d.pid} could not be reaped")
        for w in [*self.retired, *self.workers.values()]:
            if w.finish(timeout=30) is None:
                self.failures.append(f"worker pid {w.pid} could not be reaped")
        for _, proc, *_ in self.cli:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.failures.append(f"metis pid {proc.pid} could not be reaped")
