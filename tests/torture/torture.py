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

The pieces: torture_config.py (the configuration and the phases),
torture_driver.py (forks, chaos, every death and report judged),
torture_workers.py (what the children do), torture_final_check.py (the check
after each phase) and torture_report.py (the report). This file is the entry
point: ``run_torture`` and the command line.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from torture_config import KIB, POLICIES, TortureConfig
from torture_driver import TortureRun
from torture_report import TortureReport

__all__ = ["POLICIES", "TortureConfig", "TortureReport", "main", "run_torture"]


def run_torture(cfg: TortureConfig) -> TortureReport:
    """Run ``cfg``; the report lists every failure (none: passed)."""
    return TortureRun(cfg).run()


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
