"""A few processes sharing one Metis cache: ``python -m metis_shm.demo.embedded``.

The demo creates a cache with a unique name, forks worker processes
(``--workers``, default 4) that for ``--seconds`` (default 2) each

* bump a shared page-view counter with ``incr`` (atomic across processes),
* overwrite a shared ``greeting`` key now and then with who they are,
* write their own ``worker:<i>:status`` key and read the other workers' ones,

and print what they saw written by the others. Then it prints the cache's
shared statistics, checks that the counter equals the sum of every worker's
increments, and destroys the cache. It exits 0 when everything added up.

Each worker attaches to the cache by name, as an unrelated process would;
nothing is passed to it but the name.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from metis_shm import Cache

COUNTER = "page_views"
GREETING = "greeting"
#: how many "read what another worker wrote" lines each worker prints at most
MAX_REPORTS = 3


@dataclass
class WorkerResult:
    """What one worker did, sent back to the parent."""

    index: int
    pid: int
    increments: int = 0
    sets: int = 0
    gets: int = 0
    found: int = 0
    seen_writers: int = 0


def say(line: str) -> None:
    """Print one whole line at once, so lines from several processes don't mix."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def status_key(index: int) -> str:
    return f"worker:{index}:status"


def worker(
    index: int,
    n_workers: int,
    name: str,
    seconds: float,
    start: mp.synchronize.Barrier,
    results: mp.queues.Queue[WorkerResult],
) -> None:
    """Body of worker ``index``: run the shared workload until the time is up."""
    pid = os.getpid()
    res = WorkerResult(index=index, pid=pid)
    reported: set[tuple[str, int]] = set()
    with Cache(name, create=False) as cache:
        say(f"worker {index} (pid {pid}) attached to cache {name!r}")
        start.wait(timeout=60)  # every worker attached: go together
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline:
            n += 1
            cache.incr(COUNTER, default=0)
            res.increments += 1

            # my own status record, and now and then the shared greeting
            cache.set(status_key(index), {"worker": index, "pid": pid, "seq": n})
            res.sets += 1
            if n % 64 == index % 64:
                cache.set(
                    GREETING, {"text": f"hello from worker {index}", "worker": index, "pid": pid}
                )
                res.sets += 1

            # read the greeting and another worker's status
            other = (index + 1 + n % max(1, n_workers - 1)) % n_workers
            for key in (GREETING, status_key(other)):
                value = cache.get(key)
                res.gets += 1
                if value is None:
                    continue
                res.found += 1
                writer = value["worker"]
                label = "greeting" if key == GREETING else "status"
                if writer != index and (label, writer) not in reported:
                    reported.add((label, writer))
                    if len(reported) <= MAX_REPORTS:
                        extra = f" (seq {value['seq']})" if label == "status" else ""
                        say(
                            f"worker {index} (pid {pid}) read {label!r}{extra} written by "
                            f"worker {writer} (pid {value['pid']})"
                        )
        res.seen_writers = len({w for _, w in reported})
    results.put(res)


def print_table(rows: Sequence[tuple[str, ...]], header: tuple[str, ...]) -> None:
    """Print ``rows`` as a plain, right-aligned text table."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    say("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    say("  ".join("-" * w for w in widths))
    for r in rows:
        say("  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True)))


def run(n_workers: int, seconds: float, capacity: str = "16MiB") -> int:
    """Run the demo; return the process exit code (0 = the numbers added up)."""
    name = f"demo-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    ctx = mp.get_context("fork")
    cache = Cache(name, capacity=capacity)
    say(f"created cache {name!r} ({capacity}); starting {n_workers} workers for {seconds:g}s")
    procs: list[mp.process.BaseProcess] = []
    try:
        start = ctx.Barrier(n_workers + 1)
        results: mp.queues.Queue[WorkerResult] = ctx.Queue()
        for i in range(n_workers):
            p: mp.process.BaseProcess = ctx.Process(
                target=worker,
                args=(i, n_workers, name, seconds, start, results),
                name=f"metis-demo-{i}",
            )
            p.start()
            procs.append(p)
        start.wait(timeout=60)

        got: list[WorkerResult] = []
        deadline = time.monotonic() + seconds + 30
        while len(got) < n_workers and time.monotonic() < deadline:
            try:
                got.append(results.get(timeout=1.0))
            except queue.Empty:  # check the workers are still alive
                if all(not p.is_alive() for p in procs) and results.empty():
                    break
        for p in procs:
            p.join(timeout=10)
        failed = [p for p in procs if p.exitcode != 0]
        if failed or len(got) < n_workers:
            for p in failed:
                say(f"{p.name} (pid {p.pid}) exited with {p.exitcode}")
            say(f"only {len(got)} of {n_workers} workers reported back")
            return 1

        got.sort(key=lambda r: r.index)
        say("")
        say("per worker:")
        print_table(
            [
                (
                    str(r.index),
                    str(r.pid),
                    f"{r.increments:,}",
                    f"{r.sets:,}",
                    f"{r.gets:,}",
                    f"{r.found:,}",
                    str(r.seen_writers),
                )
                for r in got
            ],
            ("worker", "pid", "incr", "sets", "gets", "found", "saw writers"),
        )

        st = cache.stats()
        say("")
        say(f"cache.stats() for {st.name!r} ({st.policy}, {st.n_shards} shards):")
        print_table(st.summary_rows(), ("stat", "total"))

        total_incr = sum(r.increments for r in got)
        total_ops = sum(r.increments + r.sets + r.gets for r in got)
        counter = cache.get(COUNTER)
        say("")
        say(
            f"{total_ops:,} operations in {seconds:g}s "
            f"({total_ops / seconds:,.0f} ops/s over {n_workers} processes)"
        )
        say(f"{COUNTER!r} = {counter:,}; sum of all workers' increments = {total_incr:,}")
        problems = cache.check()
        if problems:
            say("cache.check() found problems:")
            for line in problems:
                say(f"  {line}")
        if counter != total_incr:
            say("MISMATCH: the shared counter lost or invented increments")
            return 1
        if problems:
            return 1
        say("OK: the shared counter equals the sum of all increments")
        return 0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        cache.close()
        Cache.destroy(name)
        say(f"destroyed cache {name!r}")


def main(argv: list[str] | None = None) -> int:
    """The demo's command line (``--workers``, ``--seconds``); returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m metis_shm.demo.embedded",
        description="Worker processes sharing one Metis cache in shared memory.",
    )
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="how long each worker runs (default 2)"
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    return run(args.workers, args.seconds)


if __name__ == "__main__":
    sys.exit(main())
