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
import json
import os
import random
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from _common import machine_info

try:
    from metis_shm import Cache
except ImportError:  # run from a checkout, not installed: use the in-place build
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from metis_shm import Cache


# after the fallback above: these import metis_shm
from stopped_writer_report import (
    combine,
    find_problems,
    judge,
    print_rows,
    print_unpreempted,
    print_verdict,
    print_written_key,
)
from stopped_writer_scenarios import (
    CHUNK_KEYS,
    CRASH_POINT,
    OVERHEAD_SAMPLES,
    SCENARIOS,
    SIZES,
    TARGET_US,
    Setup,
    pick_cpus,
    run_once,
)


def main(argv: list[str] | None = None) -> int:
    """Run every scenario at every size, print the tables (and write the JSON)."""
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
