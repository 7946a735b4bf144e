"""The check after each torture phase, run in a forked child once every worker
is gone: the segment consistent, its byte accounting whole, every surviving
value verified, and every shard one free block again once emptied.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: _workers

from _workers import OK
from torture_workers import RAW_MAX, PhaseSpec, build_value, judge

from metis_shm import Cache


def verify_phase(cache: Cache, spec: PhaseSpec, seed: int) -> dict[str, Any]:
    """Everything that must hold once every worker is gone (run in a forked child).

    check() is clean; each shard's bytes add up; every value left verifies;
    keys() and get() agree; after deleting every key and sweeping, each shard
    holds nothing and is one free block, and the removals counted match the
    items there were; fresh writes read back. Returns problems and figures.
    """
    problems: list[str] = []
    info: dict[str, Any] = {}
    space = spec.space
    rng = random.Random(seed)

    def judge_value(key: Any, value: Any) -> str:
        if key in space.counters:
            return OK if type(value) is int else "counter"
        if key not in space.data:
            return "foreign"
        if spec.value_kind == "raw":
            return OK if isinstance(value, bytes) and len(value) <= RAW_MAX else "torn"
        return judge(key, value, space.hot)

    def accounting(stats: Any, when: str) -> None:
        for i, sh in enumerate(stats.shards):
            if sh.bytes_used + sh.free_bytes != sh.capacity:
                problems.append(
                    f"{when}: shard {i}: used {sh.bytes_used} + free "
                    f"{sh.free_bytes} != capacity {sh.capacity}"
                )
            if not 0 <= sh.largest_free <= sh.free_bytes <= sh.capacity:
                problems.append(
                    f"{when}: shard {i}: largest free {sh.largest_free}, free "
                    f"{sh.free_bytes}, capacity {sh.capacity}"
                )
            if sh.items < 0 or (sh.items == 0 and sh.bytes_used != 0):
                problems.append(f"{when}: shard {i}: {sh.items} items use {sh.bytes_used} B")
        if sum(sh.capacity for sh in stats.shards) != cache.capacity:
            problems.append(f"{when}: shard capacities do not add up to {cache.capacity}")
        if len(cache) != stats.items:
            problems.append(f"{when}: len() is {len(cache)}, stats say {stats.items} items")

    problems += [f"check() after the phase: {p}" for p in cache.check()]
    before = cache.stats()
    accounting(before, "after the phase")
    listed = list(cache.keys())
    listed_set = set(listed)
    info["items"], info["keys"] = before.items, len(listed)
    if len(set(listed)) != len(listed):
        problems.append(f"keys() yielded {len(listed) - len(set(listed))} keys twice")
    known = space.known()
    problems += [f"keys() yielded {k!r}, which nobody stored" for k in listed if k not in known]
    if before.items < len(set(listed)):
        problems.append(f"keys() yielded {len(set(listed))} keys, stats count {before.items}")
    bad = 0
    for key in sorted(known, key=repr):
        value = cache.get(key)
        if value is None:
            continue
        if key not in listed_set:
            problems.append(f"get() finds {key!r}, keys() did not list it")
        verdict = judge_value(key, value)
        if verdict != OK:
            bad += 1
            problems.append(f"surviving value of {key!r} is {verdict}: {repr(value)[:120]}")
    info["values_bad"] = bad

    # Empty the cache by deleting, not clear(): clear() would rebuild the
    # arena and hide a leaked or unmerged block.
    for key in listed:
        cache.delete(key)
    cache.sweep(max_items=2**40)
    # Readers killed holding views left blocks held back: every worker is
    # gone now, so their pins go and the blocks come back (as metisd would).
    cache._reap_pins()
    after = cache.stats()
    if after.held_blocks:
        problems.append(f"{after.held_blocks} blocks still held back with no process alive")
    accounting(after, "after deleting every key")
    removed = (after.deletes - before.deletes) + (after.expirations - before.expirations)
    if removed != before.items:
        problems.append(
            f"{before.items} items, but deleting every key and sweeping removed {removed}"
        )
    for i, sh in enumerate(after.shards):
        if sh.items or sh.free_bytes != sh.capacity or sh.largest_free != sh.capacity:
            problems.append(
                f"shard {i} after deleting every key: {sh.items} items, free "
                f"{sh.free_bytes}, largest free block {sh.largest_free} of "
                f"{sh.capacity}"
            )
    if list(cache.keys()):
        problems.append("keys() still yields keys after every key was deleted")
    problems += [f"check() after deleting every key: {p}" for p in cache.check()]

    for key in space.hot:
        if spec.value_kind == "raw":
            value = os.urandom(rng.randint(0, RAW_MAX))
        else:
            value = build_value(key, 1, rng.choice((0, 1, 100, 3000)), rng)
        cache.set(key, value)
        got = cache.get(key)
        if got != value:
            problems.append(f"{key!r} does not read back after the phase: {repr(got)[:120]}")
    problems += [f"check() after fresh writes: {p}" for p in cache.check()]
    info["problems"] = problems
    return info
