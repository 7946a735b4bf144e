"""What the benchmark scripts share: the key sequences, forking timed workers,
summing up their rounds, the machine description and table printing."""

from __future__ import annotations

import bisect
import itertools
import multiprocessing as mp
import os
import platform
import random
import statistics
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

ZIPF_S = 0.99
SET_FRACTION = 0.10

Span = tuple[int, int, int]  # (start ns, end ns, operations) of one timed round in one process


def zipf_indices(n_keys: int, count: int, s: float, rng: random.Random) -> list[int]:
    """``count`` key ranks in ``[0, n_keys)`` drawn from Zipf(``s``) (CDF + bisect)."""
    cdf = list(itertools.accumulate(1.0 / (i + 1) ** s for i in range(n_keys)))
    total = cdf[-1]
    last = n_keys - 1
    return [min(bisect.bisect_left(cdf, rng.random() * total), last) for _ in range(count)]


class KeySequence:
    """The keys every contender is timed on: ``n_ops`` Zipf(ZIPF_S) draws over
    ``n_keys`` keys, the same draws over absent keys, and which draws of the
    90/10 mix are sets."""

    def __init__(self, n_keys: int, n_ops: int, seed: int) -> None:
        rng = random.Random(seed)
        self.n_keys = n_keys
        self.n_ops = n_ops
        self.keys = [f"key:{i:08d}" for i in range(n_keys)]
        self.miss_keys = [f"absent:{i:08d}" for i in range(n_keys)]
        idx = zipf_indices(n_keys, n_ops, ZIPF_S, rng)
        self.idx = idx
        self.hit_seq = [self.keys[i] for i in idx]
        self.miss_seq = [self.miss_keys[i] for i in idx]
        self.is_set = [rng.random() < SET_FRACTION for _ in range(n_ops)]
        self.mix_seq = list(zip(self.is_set, self.hit_seq, strict=True))
        self.distinct = len(set(idx))


def run_forked(
    target: Callable[..., Any], procs: int, args: tuple[Any, ...], timeout: float, what: str
) -> list[Any]:
    """Fork ``procs`` children running ``target(index, barrier, *args)``; return
    what each returned, in index order.

    The barrier (of ``procs`` parties) lets the children start their timed
    rounds together. A child that raises makes this raise with its traceback;
    one that does not answer within ``timeout`` seconds is killed.
    """
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(procs)
    children = []
    for index in range(procs):
        recv, send = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_child, args=(target, index, barrier, args, send))
        p.start()
        send.close()
        children.append((p, recv))
    results = []
    try:
        for p, recv in children:
            if not recv.poll(timeout):
                raise RuntimeError(f"{what}: worker {p.pid} did not answer in {timeout:g} s")
            status, payload = recv.recv()
            if status != "ok":
                raise RuntimeError(f"{what}: worker failed:\n{payload}")
            results.append(payload)
    finally:
        for p, _ in children:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()
    return results


def _child(
    target: Callable[..., Any], index: int, barrier: Any, args: tuple[Any, ...], conn: Any
) -> None:
    try:
        result = target(index, barrier, *args)
        conn.send(("ok", result))
    except BaseException:  # tell the parent what went wrong, then fail as usual
        conn.send(("error", traceback.format_exc()))
        raise
    finally:
        conn.close()


def summarize_spans(all_spans: Sequence[Sequence[Span]], procs: int) -> dict[str, Any]:
    """Median over rounds of the per-process ns/op (mean over processes) and ops/s.

    For one process ops/s is 1e9 / ns; for several it is the median of each
    round's total operations divided by the round's wall time (first start to
    last end), the throughput of all of them together.
    """
    rounds = min(len(s) for s in all_spans)
    ns_rounds, tput_rounds = [], []
    for r in range(rounds):
        spans = [s[r] for s in all_spans]
        ns_rounds.append(statistics.fmean((end - start) / ops for start, end, ops in spans))
        wall = max(end for _, end, _ in spans) - min(start for start, _, _ in spans)
        tput_rounds.append(sum(ops for _, _, ops in spans) * 1e9 / wall)
    ns = statistics.median(ns_rounds)
    ops_s = 1e9 / ns if procs == 1 else statistics.median(tput_rounds)
    return {"ns_per_op": ns, "ops_per_s": ops_s, "rounds_ns_per_op": ns_rounds}


def machine_info(libraries: Sequence[str] = ()) -> dict[str, Any]:
    """Where the numbers came from; ``libraries`` adds those distributions' versions."""
    from importlib import metadata

    cpu_model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "cpu model")):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    versions: dict[str, str | None] = {}
    for dist in ("metis-shm", *libraries):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    info = {
        "platform": platform.platform(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "metis_shm_version": versions["metis-shm"],
        "loadavg_1m": os.getloadavg()[0],
    }
    if libraries:
        info["libraries"] = versions
    return info


def fmt_size(n: int) -> str:
    """``4096`` -> ``"4 KiB"``, ``100`` -> ``"100 B"``."""
    return f"{n // 1024} KiB" if n >= 1024 and n % 1024 == 0 else f"{n} B"


def print_table(header: Sequence[str], lines: Sequence[Sequence[str]], left: int = 0) -> None:
    """Print columns right-aligned to their widest cell; the first ``left`` columns left-aligned."""
    widths = [max(len(x[i]) for x in [header, *lines]) for i in range(len(header))]

    def row(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    print(row(header))
    print("  ".join("-" * w for w in widths))
    for x in lines:
        print(row(x))
