"""Client processes of the metisd tests, started as ``python _clients.py MODE ...``.

``rw NAME INDEX STOPFILE OUTFILE``: attach to cache NAME (``create=False``)
and until STOPFILE exists, write keys ``c<INDEX>:<n>`` (4,000 of them,
overwritten round and round) and read back this client's own keys and the
other client's; every exception and every wrong value is an error. Writes
JSON to OUTFILE: ops, errors, and the last value written to each key.

``reader NAME NKEYS``: attach and get keys ``hot:<i>`` (i < NKEYS) as fast as
it can, timing each get; stdin lines switch the phase the timings count for
(``before``, ``during``, anything else = not counted) and ``stop`` ends it:
it then prints JSON {phase: {n, p50, p99, p999, max, misses}} (nanoseconds).
"""

from __future__ import annotations

import json
import os
import random
import select
import sys
import time
from array import array

from metis_shm import Cache

KEYS_PER_CLIENT = 4000


def rw(name: str, index: int, stopfile: str, outfile: str) -> None:
    rng = random.Random(index)
    cache = Cache(name, create=False)
    written: dict[str, bytes] = {}
    errors: list[str] = []
    n_errors = 0
    ops = 0
    other = 1 - index
    while not os.path.exists(stopfile):
        for _ in range(200):
            ops += 1
            key = f"c{index}:{ops % KEYS_PER_CLIENT}"
            value = f"{index}:{ops}:{'x' * (ops % 50)}".encode()
            try:
                cache.set(key, value)
                written[key] = value
                probe = f"c{index}:{rng.randrange(KEYS_PER_CLIENT)}"
                got = cache.get(probe)
                if got != written.get(probe):
                    n_errors += 1
                    errors.append(f"{probe}: read {got!r}, wrote {written.get(probe)!r}")
                theirs = cache.get(f"c{other}:{rng.randrange(KEYS_PER_CLIENT)}")
                if theirs is not None and not theirs.startswith(f"{other}:".encode()):
                    n_errors += 1
                    errors.append(f"other client's key read {theirs!r}")
            except Exception as exc:
                n_errors += 1
                errors.append(f"{type(exc).__name__}: {exc}")
    cache.close()
    with open(outfile, "w") as f:
        json.dump(
            {
                "ops": ops,
                "n_errors": n_errors,
                "errors": errors[:20],
                "written": {k: v.decode() for k, v in written.items()},
            },
            f,
        )


def _summary(samples: array[int], misses: int) -> dict[str, int]:
    if not samples:
        return {"n": 0, "p50": 0, "p99": 0, "p999": 0, "max": 0, "misses": misses}
    ordered = sorted(samples)
    n = len(ordered)

    def pct(p: float) -> int:
        return ordered[min(n - 1, int(p * n))]

    return {
        "n": n,
        "p50": pct(0.50),
        "p99": pct(0.99),
        "p999": pct(0.999),
        "max": ordered[-1],
        "misses": misses,
    }


def reader(name: str, n_keys: int) -> None:
    cache = Cache(name, create=False)
    keys = [f"hot:{i}" for i in range(n_keys)]
    rng = random.Random(7)
    order = [rng.randrange(n_keys) for _ in range(65536)]
    phases: dict[str, array[int]] = {"before": array("q"), "during": array("q")}
    misses = {"before": 0, "during": 0}
    cap = 3_000_000  # samples kept per phase
    phase = ""
    get = cache.get
    clock = time.perf_counter_ns
    stdin = sys.stdin.fileno()
    print("reader ready", flush=True)
    i = 0
    while True:
        if select.select([stdin], [], [], 0)[0]:
            line = sys.stdin.readline().strip()
            if line == "stop" or not line:
                break
            phase = line if line in phases else ""
        samples = phases.get(phase)
        for _ in range(1000):
            key = keys[order[i & 65535]]
            i += 1
            t0 = clock()
            value = get(key)
            dt = clock() - t0
            if samples is not None and len(samples) < cap:
                samples.append(dt)
                if value is None:
                    misses[phase] += 1
    out = {p: _summary(s, misses[p]) for p, s in phases.items()}
    print(json.dumps(out), flush=True)
    cache.close()


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "rw":
        rw(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
    elif mode == "reader":
        reader(sys.argv[2], int(sys.argv[3]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
