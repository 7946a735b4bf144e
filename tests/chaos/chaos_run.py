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

The pieces: chaos_config.py (the configuration), chaos_driver.py (the run:
its processes, its chaos schedule, its wind-down), chaos_procs.py (metisd and
worker processes), chaos_worker.py (one worker), chaos_final_checks.py (the
checks once the chaos is over) and chaos_report.py (the report). This file is
the entry point: ``run_chaos`` and the command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chaos_config import ChaosConfig
from chaos_driver import ChaosRun
from chaos_report import ChaosReport

__all__ = ["ChaosConfig", "ChaosReport", "main", "run_chaos"]


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
