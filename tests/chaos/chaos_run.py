"""The chaos run: a real metisd and worker processes, with SIGKILL and SIGSTOP
thrown at them at random, and every value read checked.

    python tests/chaos/chaos_run.py --duration 600 [--workers 4 --seed S
        --capacity 16MiB --keys 3000 --report chaos.json]

As a library (tests/chaos/test_chaos.py): ``run_chaos(ChaosConfig(...))``
returns a ``ChaosReport``; ``report.failures`` is empty when the run passed.

What happens (docs/chaos.md has the long form):

1. A metisd is started on a fresh cache name; it creates the segment, sweeps
   TTLs, rolls up stats (taking every shard lock) and writes snapshots on its
   interval. Then ``workers`` worker processes (chaos_worker.py) run random
   operations on one key space, verifying every value they read.
2. The chaos loop, until ``duration`` has passed, at random intervals:
   SIGKILLs a random worker (a replacement starts at once); SIGSTOPs a random
   worker for 5 ms to 2 s, then SIGCONTs it (or, one time in five, SIGKILLs
   it while stopped); SIGSTOPs metisd for 50 ms to 1 s (and sometimes
   SIGKILLs it while stopped); SIGKILLs metisd and starts a new one, which
   must re-attach to the segment, not create one; sends metisd SIGUSR1 (a
   snapshot now) and SIGKILLs a worker a few ms later, so that snapshots run
   while writers die; runs ``metis snapshot`` (and sometimes SIGKILLs it) and
   ``metis check`` as separate processes.
3. At the end: every worker SIGCONTed and stopped with SIGTERM; ``metis
   check`` and ``Cache.check()`` on the segment; every key read and verified;
   metisd stopped (its shutdown snapshot written); every snapshot left in the
   directory verified, restored into a fresh segment, checked and its values
   verified. A failure anywhere is listed in ``report.failures``.

Every wait is bounded; a watchdog thread SIGKILLs every child if the run
overruns ``duration + teardown_timeout``, which unblocks whatever waited.
"""

from __future__ import annotations

import argparse
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
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # tests/: _workers

from _workers import OK, new_name, verify_value
from chaos_procs import (
    DaemonProcess,
    WorkerProcess,
    child_env,
    describe_status,
    tail,
    write_daemon_config,
)
from chaos_worker import counter_keys, key_space

from metis_shm import Cache
from metis_shm.daemon.snapshots.format import list_snapshots, verify_snapshot
from metis_shm.daemon.snapshots.restore import restore

START_TIMEOUT = 60.0  # a metisd must log "ready" within this
CLI_TIMEOUT = 120.0  # a `metis check` / `metis snapshot` must finish within this
WORKER_STOP_TIMEOUT = 30.0
DAEMON_STOP_TIMEOUT = 120.0
STALE_TEMP_SECONDS = 60.0  # snapshot.py removes a dead writer's temp file after this
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
SNAPSHOT_WRITTEN = re.compile(r"snapshot (\S+) written: ([\d,]+) items, .* in ([\d.]+) s$")
FINAL_STATS = ("items", "bytes_used", "sets", "deletes", "evictions", "expirations",
               "lock_waits", "read_retries", "lock_recoveries")  # fmt: skip
BAD_DAEMON_LINE = re.compile(r" (ERROR|CRITICAL) |Traceback \(most recent call last\)")


@dataclass
class ChaosConfig:
    """Everything a chaos run is made of; the defaults are the long run's."""

    duration: float = 600.0  # seconds of chaos (setup and final checks come on top)
    workers: int = 4
    hammers: int = 1  # of the workers, how many run the write-heavy "hammer" profile
    seed: int | None = None  # None: a random one (printed in the report)
    capacity: str = "8MiB"  # small next to the key space: eviction all along
    keys: int = 4000
    run_dir: Path | None = None  # None: a temp dir, removed at the end unless keep
    keep: bool = False
    snapshot_interval: float = 5.0  # metisd's own schedule, besides SIGUSR1
    retention: int = 4
    sweep_interval: float = 0.2
    heartbeat_interval: float = 0.5  # each heartbeat's roll-up takes every shard lock
    # Mean seconds between chaos events of each kind (exponential intervals).
    kill_every: float = 0.8
    stop_every: float = 0.5
    snapshot_every: float = 4.0
    cli_snapshot_every: float = 20.0
    cli_check_every: float = 15.0
    daemon_stop_every: float = 10.0
    daemon_kill_after: tuple[float, float] = (5.0, 12.0)  # uniform, from the last ready
    max_stop: float = 2.0
    kill_stopped_share: float = 0.2  # of SIGSTOPs end in SIGKILL instead of SIGCONT
    teardown_timeout: float = 300.0
    progress_every: float | None = None  # seconds between progress lines on stderr


@dataclass
class ChaosReport:
    """What a run did and found; ``failures`` empty means it passed."""

    seed: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    cache_name: str = ""
    chaos_seconds: float = 0.0
    total_seconds: float = 0.0
    ops: dict[str, int] = field(default_factory=dict)
    reads: dict[str, int] = field(default_factory=dict)  # reads, hits, misses, ok, torn, foreign
    refused_writes: int = 0
    worker_errors: int = 0
    chaos: dict[str, int] = field(default_factory=dict)
    bad_values: list[dict[str, Any]] = field(default_factory=list)
    error_samples: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def torn(self) -> int:
        """Reads that found a value failing its checksum or framing."""
        return self.reads.get("torn", 0)

    @property
    def foreign(self) -> int:
        """Reads that found a value of another key."""
        return self.reads.get("foreign", 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)

    def text(self) -> str:
        """The human report."""
        out = [
            f"chaos run of cache {self.cache_name!r}, seed {self.seed}",
            f"  chaos {self.chaos_seconds:.1f} s, whole run {self.total_seconds:.1f} s, "
            f"{self.config.get('workers')} workers, capacity {self.config.get('capacity')}, "
            f"{self.config.get('keys')} keys",
            "operations (all worker processes, up to each one's last report):",
        ]
        total = sum(self.ops.values())
        out.append(f"  {'total':<12} {total:>12,}")
        for name, n in sorted(self.ops.items(), key=lambda kv: -kv[1]):
            out.append(f"  {name:<12} {n:>12,}")
        r = self.reads
        out.append(
            f"reads checked: {r.get('reads', 0):,} ({r.get('hits', 0):,} hits verified, "
            f"{r.get('misses', 0):,} misses): ok {r.get('ok', 0):,}, "
            f"foreign {self.foreign}, torn {self.torn}"
        )
        out.append(
            f"writes refused (ValueTooLarge, documented): {self.refused_writes}; "
            f"unexpected exceptions: {self.worker_errors}"
        )
        out.append("chaos:")
        for name, n in sorted(self.chaos.items()):
            out.append(f"  {name:<46} {n:>8,}")
        out.append("final state:")
        for name, value in self.final.items():
            out.append(f"  {name:<34} {_short(value)}")
        out.append(f"snapshots left in the directory: {len(self.snapshots)}")
        for snap in self.snapshots:
            out.append(
                f"  {snap['file']}: {snap.get('items', '?')} items, restored "
                f"{snap.get('restored', '?')} (+{snap.get('expired', '?')} expired), "
                f"check {'ok' if snap.get('check') == [] else snap.get('check')}, values "
                f"ok {snap.get('values_ok', '?')} bad {snap.get('values_bad', '?')}"
            )
        for bad in self.bad_values[:10]:
            out.append(f"BAD VALUE: {json.dumps(bad)}")
        for err in self.error_samples[:10]:
            out.append(f"ERROR: {json.dumps(err)[:1500]}")
        if self.failures:
            out.append(f"FAILED ({len(self.failures)}):")
            out.extend(f"  - {f[:3000]}" for f in self.failures)
        else:
            out.append("PASSED: no foreign or torn value, no unexpected error, checks clean")
        return "\n".join(out)


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 300 else text[:300] + "..."


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
        self.report = ChaosReport(seed=self.seed, config=_config_dict(config), cache_name=self.name)
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
        cfg = self.cfg
        write_daemon_config(
            self.config_path,
            {
                "": {"log_level": "INFO", "heartbeat_interval": cfg.heartbeat_interval},
                "sweep": {"interval": cfg.sweep_interval, "budget": 20_000},
                "snapshot": {
                    "enabled": True,
                    "path": str(self.snap_dir),
                    "interval": cfg.snapshot_interval,
                    "retention": cfg.retention,
                    "on_shutdown": True,
                },
                "health": {"address": "127.0.0.1:0"},
                "caches": {"name": self.name, "capacity": cfg.capacity},
            },
        )

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

    def summarize_workers(self) -> None:
        """Fold every worker's reports into the report; bad values are failures."""
        counts, bad, errors = self.aggregate()
        r = self.report
        r.ops = {k[3:]: v for k, v in counts.items() if k.startswith("op_")}
        r.reads = {
            k: counts.get(k, 0) for k in ("reads", "hits", "misses", "ok", "torn", "foreign")
        }
        r.refused_writes = counts.get("refused", 0)
        r.worker_errors = counts.get("errors", 0)
        r.bad_values = bad[:50]
        r.error_samples = errors[:20]
        if r.foreign or r.torn:
            self.failures.append(f"{r.foreign} foreign and {r.torn} torn values read")
        if bad and not (r.foreign or r.torn):
            self.failures.append(f"{len(bad)} bad values reported")
        if r.worker_errors or errors:
            self.failures.append(
                f"{max(r.worker_errors, len(errors))} unexpected errors in workers"
            )

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
        with Cache(self.name, create=False) as cache:
            problems = cache.check()
            final["Cache.check()"] = problems or "consistent"
            if problems:
                self.failures.append(f"Cache.check() at the end: {problems[:20]}")
            final.update(verify_cache(cache, self.cfg.keys, self.failures, "final cache"))
            st = cache.stats()
            final["stats"] = {k: getattr(st, k) for k in FINAL_STATS}
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

    def check_snapshots(self) -> None:
        """Every snapshot kept: verified, restored into a fresh segment, checked."""
        paths = list_snapshots(self.snap_dir, self.name)
        if not paths:
            self.failures.append(f"no snapshot in {self.snap_dir}")
        for path in paths:
            entry: dict[str, Any] = {"file": path.name}
            self.report.snapshots.append(entry)
            fresh = new_name()
            try:
                info = verify_snapshot(path)
                entry["items"] = info.items
                with Cache(fresh, **info.cache_options()) as cache:
                    rr = restore(cache, path)
                    entry.update(restored=rr.restored, expired=rr.expired, rejected=rr.rejected)
                    if rr.rejected or rr.restored + rr.expired != info.items:
                        self.failures.append(f"snapshot {path.name}: {entry}")
                    entry["check"] = cache.check()
                    if entry["check"]:
                        self.failures.append(f"snapshot {path.name} restored: {entry['check']}")
                    found = verify_cache(cache, self.cfg.keys, self.failures, path.name)
                    entry["values_ok"] = found["values ok"]
                    entry["values_bad"] = found["values bad"]
            except Exception as exc:
                self.failures.append(f"snapshot {path.name}: {type(exc).__name__}: {exc}")
            finally:
                Cache.destroy(fresh)
        now = time.time()
        temps = [p for p in self.snap_dir.glob(".metis.*.tmp")]
        stale = [p.name for p in temps if now - p.stat().st_mtime > STALE_TEMP_SECONDS + 10]
        self.report.final["snapshot temp files left"] = len(temps)
        if stale:
            self.failures.append(f"stale snapshot temp files not removed: {stale}")

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
            self.summarize_workers()
            self.final_checks()
            self.check_snapshots()
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


def verify_cache(cache: Cache, n_keys: int, failures: list[str], where: str) -> dict[str, Any]:
    """Every item of ``cache`` read and checked: values under the key space
    must verify, counters must be ints, no other key may exist."""
    keys = set(key_space(n_keys))
    counters = set(counter_keys())
    ok = bad = other = 0
    samples: list[str] = []
    for key in list(cache.keys()):
        value = cache.get(key)
        if value is None:
            continue  # expired or evicted since keys() listed it
        if key in keys:
            verdict = verify_value(key, value)
        elif key in counters:
            verdict = OK if type(value) is int else "not an int"
        else:
            verdict = "unknown key"
            other += 1
        if verdict == OK:
            ok += 1
        else:
            bad += 1
            if len(samples) < 5:
                samples.append(f"{key!r}: {verdict}: {bytes(value)[:64]!r}")
    if bad:
        failures.append(f"{where}: {bad} bad items: {samples}")
    return {"values ok": ok, "values bad": bad, "unknown keys": other}


def _config_dict(config: ChaosConfig) -> dict[str, Any]:
    d = asdict(config)
    d["run_dir"] = str(config.run_dir) if config.run_dir else None
    return d


def run_chaos(config: ChaosConfig) -> ChaosReport:
    """Run the chaos described by ``config``; see the module docstring."""
    return ChaosRun(config).run()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Chaos run against a real metisd and worker processes (docs/chaos.md)."
    )
    p.add_argument("--duration", type=float, default=600.0, help="seconds of chaos (600)")
    p.add_argument("--workers", type=int, default=4, help="worker processes (4)")
    p.add_argument("--seed", type=int, default=None, help="seed of the chaos schedule")
    p.add_argument("--hammers", type=int, default=1, help="write-heavy workers among them (1)")
    p.add_argument("--capacity", default="8MiB", help="cache capacity (8MiB)")
    p.add_argument("--keys", type=int, default=4000, help="size of the key space (4000)")
    p.add_argument("--report", type=Path, default=None, help="write the report as JSON here")
    p.add_argument("--run-dir", type=Path, default=None, help="logs and snapshots (a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the run directory")
    p.add_argument("--progress", type=float, default=30.0, help="seconds between progress lines")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run and print the report; exit status 1 if anything failed."""
    args = _parser().parse_args(argv)
    config = ChaosConfig(
        duration=args.duration,
        workers=args.workers,
        hammers=args.hammers,
        seed=args.seed,
        capacity=args.capacity,
        keys=args.keys,
        run_dir=args.run_dir,
        keep=args.keep,
        progress_every=args.progress or None,
    )
    run = ChaosRun(config)
    print(f"chaos run: seed {run.seed}, {config.duration:.0f} s, cache {run.name!r}", flush=True)
    report = run.run()
    print(report.text(), flush=True)
    if args.report is not None:
        args.report.write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
