"""Record histories of cache operations from several forked processes.

Each child runs a plan drawn in the parent (so a seed replays it): a random
mix of get/set/add/replace/incr/delete/touch on a few hot keys, int values,
and optionally large ``bytes`` values under other keys (not recorded) to put
the cache under eviction pressure.  Around every recorded call it reads
``time.monotonic_ns()`` (CLOCK_MONOTONIC, one clock for every process of the
machine) immediately before the call and after the return, and sends the list
of operations back to the parent through ``_workers.ForkedChild``'s pipe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import time
from collections.abc import Sequence
from typing import Any

from _workers import ForkedChild, StopFlag
from checker import Op, overlapping

from metis_shm import Cache

# op kinds in a plan; BIG is a set of a large bytes value, not recorded
GET, SET, ADD, REPLACE, INCR, DELETE, TOUCH, BIG = range(8)
_NAMES = ("get", "set", "add", "replace", "incr", "delete", "touch")
LONG_TTL = 3600  # seconds: nothing expires during a run

KEYS = [f"k{i}" for i in range(6)]
KEY_WEIGHTS = [45, 30, 10, 5, 5, 5]  # most operations on k0 and k1
OP_WEIGHTS = {GET: 30, SET: 15, ADD: 9, REPLACE: 9, INCR: 17, DELETE: 10, TOUCH: 10}


@dataclasses.dataclass
class Workload:
    procs: int = 4
    ops_per_proc: int = 2500
    keys: Sequence[str] = tuple(KEYS)
    key_weights: Sequence[int] = tuple(KEY_WEIGHTS)
    # a fraction of extra operations that set a large bytes value under one of
    # `big_keys`: eviction pressure on a small cache
    big_fraction: float = 0.0
    big_keys: Sequence[str] = tuple(f"big{i}" for i in range(16))
    big_sizes: tuple[int, int] = (30_000, 120_000)


def make_plan(
    w: Workload, proc: int, rng: random.Random, first: int = 0
) -> list[tuple[int, str, Any]]:
    """The operations process ``proc`` will run: (kind, key, argument).

    Values written are unique in the history: ``(proc + 1) * 10**12 + 1000 * i``
    for the ``i``-th recorded operation of the process (counting from
    ``first``), far from one another so that incr results do not meet them.
    """
    kinds = list(OP_WEIGHTS)
    weights = list(OP_WEIGHTS.values())
    base = (proc + 1) * 10**12
    plan: list[tuple[int, str, Any]] = []
    n = first
    while n < first + w.ops_per_proc:
        if w.big_fraction and rng.random() < w.big_fraction:
            plan.append((BIG, rng.choice(w.big_keys), rng.randint(*w.big_sizes)))
            continue
        n += 1
        kind = rng.choices(kinds, weights)[0]
        key = rng.choices(w.keys, w.key_weights)[0]
        if kind in (SET, ADD, REPLACE):
            arg: Any = base + n * 1000
        elif kind == INCR:
            arg = rng.choice((1, 2, 3))
        else:
            arg = None
        plan.append((kind, key, arg))
    return plan


def run_plan(
    cache: Cache | str, proc: int, plan: list[tuple[int, str, Any]], start: StopFlag
) -> list[tuple[Any, ...]]:
    """Run ``plan`` in this process; the history as ``Op`` tuples.

    ``cache``: the Cache inherited over fork, or a name to attach to.
    """
    own = isinstance(cache, str)
    c = Cache(cache, create=False) if own else cache
    big = [arg for kind, _, arg in plan if kind == BIG]
    blob = os.urandom(max(big)) if big else b""
    now = time.monotonic_ns
    get, set_, add, replace = c.get, c.set, c.add, c.replace
    incr, delete, touch = c.incr, c.delete, c.touch
    out: list[tuple[Any, ...]] = []
    append = out.append
    while not start.is_set():
        time.sleep(0.0002)
    try:
        for kind, key, arg in plan:
            if kind == BIG:
                set_(key, blob[:arg])  # a prefix of random bytes: incompressible
                continue
            error = None
            try:
                if kind == GET:
                    t0 = now()
                    r = get(key)
                    t1 = now()
                elif kind == SET:
                    t0 = now()
                    r = set_(key, arg, ttl=LONG_TTL)
                    t1 = now()
                elif kind == ADD:
                    t0 = now()
                    r = add(key, arg, ttl=LONG_TTL)
                    t1 = now()
                elif kind == REPLACE:
                    t0 = now()
                    r = replace(key, arg, ttl=LONG_TTL)
                    t1 = now()
                elif kind == INCR:
                    t0 = now()
                    r = incr(key, arg, default=0)
                    t1 = now()
                elif kind == DELETE:
                    t0 = now()
                    r = delete(key)
                    t1 = now()
                else:
                    t0 = now()
                    r = touch(key, ttl=LONG_TTL)
                    t1 = now()
            except Exception as exc:  # recorded: the checker fails on it
                t1 = now()
                r = None
                error = repr(exc)
            append((proc, _NAMES[kind], key, arg, r, t0, t1, error))
    finally:
        if own:
            c.close()
    return out


def _run_round(
    cache: Cache, name: str, plans: list[list[tuple[int, str, Any]]], timeout: float
) -> list[Op]:
    start = StopFlag()
    children = [
        ForkedChild(run_plan, cache if p % 2 == 0 else name, p, plan, start)
        for p, plan in enumerate(plans)
    ]
    start.set()
    history: list[Op] = []
    try:
        for child in children:
            history += [Op(*t) for t in child.join(timeout)]
    except BaseException:
        for child in children:
            if child.status is None:
                with contextlib.suppress(ChildProcessError):
                    child.kill()
        raise
    return history


def record(
    name: str,
    workload: Workload,
    seed: int,
    *,
    min_overlapping: int = 0,
    max_rounds: int = 5,
    timeout: float = 60.0,
    **cache_kwargs: Any,
) -> tuple[list[Op], Cache]:
    """Create cache ``name``, run ``workload`` in forked children, return the history.

    Even-numbered children use the Cache inherited over fork, odd ones attach
    by name.  If fewer than ``min_overlapping`` operations overlap another on
    their key (the children hardly ran at the same time, as on a busy
    machine), run the workload again on the same cache, up to ``max_rounds``
    rounds in all: the rounds follow one another, so together they are one
    history.  The caller closes the returned cache (and destroys the segment).
    """
    rng = random.Random(seed)
    cache = Cache(name, **cache_kwargs)
    history: list[Op] = []
    try:
        for rnd in range(max_rounds):
            first = rnd * workload.ops_per_proc
            plans = [make_plan(workload, p, rng, first) for p in range(workload.procs)]
            history += _run_round(cache, name, plans, timeout)
            if overlapping(history) >= min_overlapping:
                break
    except BaseException:
        cache.close()
        raise
    return history, cache
