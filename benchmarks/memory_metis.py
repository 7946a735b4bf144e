"""bench_memory's measurement of Metis: what a data set costs in a segment,
the capacity and segment that hold it, the headroom rule of docs/memory.md,
and the run under a memory budget."""

from __future__ import annotations

import math
import os
import statistics
import uuid
from dataclasses import dataclass
from typing import Any

from memory_data import KEY_LEN, OVERLOAD, DataSet, round_up, timed

from metis_shm import Cache, _engine
from metis_shm.cache import DEFAULT_MAX_VALUE_SIZE, DEFAULT_POLICY, default_shards
from metis_shm.segment import shm_path
from metis_shm.units import parse_size

ARENA_STEP = 64  # shard arenas are multiples of 64 bytes
MAX_VALUE = parse_size(DEFAULT_MAX_VALUE_SIZE)
POLICY_NUMBER = _engine.POLICIES[DEFAULT_POLICY]


@dataclass
class MetisLoad:
    """What one load into a fresh segment left behind."""

    capacity: int
    n_shards: int
    segment_size: int
    segment_allocated: int  # what /dev/shm says the object holds (st_blocks)
    loaded: int
    items: int
    evictions: int
    bytes_used: int
    free_bytes: int
    fragmentation: float
    shard_bytes_used: list[int]
    payload_held: int


def metis_load(ds: DataSet, capacity: int, shards: int | None, count: int) -> MetisLoad:
    """Load items 0..count-1 into a new segment of ``capacity``; read its stats."""
    name = f"bench-mem-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    cache = Cache(name, capacity=capacity, shards=shards, compress_threshold=None)
    try:
        for batch in ds.batches(count):
            cache.set_many(batch)
        st = cache.stats()
        whole_set = count == ds.n and st.items == ds.n
        payload_held = ds.payload if whole_set else ds.payload_of_keys(cache.keys())
        return MetisLoad(
            capacity=st.capacity,
            n_shards=st.n_shards,
            segment_size=st.segment_size,
            segment_allocated=os.stat(shm_path(name)).st_blocks * 512,
            loaded=count,
            items=st.items,
            evictions=st.evictions,
            bytes_used=st.bytes_used,
            free_bytes=st.free_bytes,
            fragmentation=st.fragmentation,
            shard_bytes_used=[s.bytes_used for s in st.shards],
            payload_held=payload_held,
        )
    finally:
        cache.close()
        Cache.destroy(name)


def metis_capacity_for_segment(budget: int) -> int:
    """The largest capacity whose whole segment (default shards and policy) fits ``budget``."""
    lo, hi = 0, budget
    while hi - lo > ARENA_STEP:
        mid = (lo + hi) // 2
        shards = default_shards(mid, MAX_VALUE)
        cap = mid - mid % (ARENA_STEP * shards)
        try:
            size = _engine.plan_layout(cap, shards, policy=POLICY_NUMBER)["segment_size"]
        except ValueError:  # too small for the shard count
            size = budget + 1
        if size <= budget:
            lo = mid
        else:
            hi = mid
    shards = default_shards(lo, MAX_VALUE)
    return lo - lo % (ARENA_STEP * shards)


def shard_need(load: MetisLoad) -> int:
    """The capacity that holds what ``load`` held in its segment: the shard
    count times the fullest shard's bytes, rounded up to the arena step.

    Exact for a load into an empty segment with no eviction: each shard's
    items were cut one after another from its one free block.
    """
    return load.n_shards * round_up(max(load.shard_bytes_used), ARENA_STEP)


def metis_roomy_loads(ds: DataSet, samples: int) -> list[MetisLoad]:
    """Load the set ``samples`` times into a segment with room to spare.

    Each segment draws its own hash seed, so each load places the keys in
    the shards differently. The shard count is the one ``Cache`` chooses for
    the capacity the set needs; if a load needs more shards than were used,
    the loads are redone with the most any of them needs. The count only
    grows, so this ends; requiring every sample to agree did not (with few
    large items the samples' needs straddle a power of two).
    """
    guess = ds.payload + ds.n * _engine.ITEM_OVERHEAD
    shards = default_shards(guess, MAX_VALUE)
    for _ in range(12):
        roomy_capacity = round_up(2 * guess + shards * 2 * MAX_VALUE, ARENA_STEP * shards)
        loads = [metis_load(ds, roomy_capacity, shards, ds.n) for _ in range(samples)]
        for load in loads:
            if load.items != ds.n or load.evictions:
                raise RuntimeError(f"{ds.label}: {roomy_capacity} B did not hold the set: {load}")
        needed = max(default_shards(shard_need(load), MAX_VALUE) for load in loads)
        if needed <= shards:
            return loads
        shards = needed
    raise RuntimeError(f"{ds.label}: the default shard count did not settle")


def item_block(key_len: int, value_len: int) -> int:
    """Bytes one item takes in a Metis arena (docs/memory.md)."""
    return max(64, round_up(_engine.ITEM_OVERHEAD + key_len + value_len, 8))


def effective_items(ds: DataSet) -> float:
    """(sum of blocks)^2 / sum of blocks^2: the item count that spreads over the
    shards as unevenly as this set's bytes do (``n`` when all sizes are equal)."""
    blocks = [item_block(KEY_LEN, size) for size in ds.sizes]
    return sum(blocks) ** 2 / sum(b * b for b in blocks)


def rule_headroom(n_effective: float, shards: int) -> float:
    """The shard headroom docs/memory.md gives for sizing: 1 + 4 / sqrt(items per shard)."""
    return 1 + 4 / math.sqrt(n_effective / shards)


def measure_metis(ds: DataSet, budget: int, samples: int) -> dict[str, Any]:
    """Metis: bytes per item, the capacity and segment needed, and the budget run."""
    loads = timed(f"metis {samples} roomy loads", lambda: metis_roomy_loads(ds, samples))
    first, shards = loads[0], loads[0].n_shards
    needs = [shard_need(load) for load in loads]
    need = max(needs)
    plan = _engine.plan_layout(need, shards, policy=POLICY_NUMBER)
    fixed = {
        "header_and_slots": plan["index_offset"],
        "index": plan["bitmap_offset"] - plan["index_offset"],
        "hint_bytes": plan["policy_offset"] - plan["bitmap_offset"],
        "policy_regions": plan["arena_offset"] - plan["policy_offset"],
    }
    n_effective = effective_items(ds)
    headroom = rule_headroom(n_effective, shards)
    rule_capacity = round_up(math.ceil(first.bytes_used * headroom), ARENA_STEP * shards)
    rule = timed(
        "metis load at the rule's capacity", lambda: metis_load(ds, rule_capacity, shards, ds.n)
    )
    budget_capacity = metis_capacity_for_segment(budget)
    overload = math.ceil(OVERLOAD * budget / ds.mean_payload())
    run = timed("metis budget load", lambda: metis_load(ds, budget_capacity, None, overload))
    n = ds.n
    return {
        "policy": DEFAULT_POLICY,
        "n_shards": shards,
        "bytes_used": first.bytes_used,
        "bytes_per_item": first.bytes_used / n,
        "overhead_per_item": (first.bytes_used - ds.payload) / n,
        "shard_bytes_used": [load.shard_bytes_used for load in loads],
        "capacity_needed_samples": needs,
        "capacity_needed": need,
        "capacity_needed_over_bytes_used": need / first.bytes_used,
        "capacity_needed_over_bytes_used_median": statistics.median(needs) / first.bytes_used,
        "segment_size": plan["segment_size"],
        "fixed_overhead": plan["segment_size"] - need,
        "fixed_overhead_parts": fixed,
        "segment_bytes_per_item": plan["segment_size"] / n,
        "segment_overhead_per_item": (plan["segment_size"] - ds.payload) / n,
        "rule": {
            "effective_items": n_effective,
            "headroom": headroom,
            "capacity": rule_capacity,
            "covers_samples": sum(need <= rule_capacity for need in needs),
            "holds_all": rule.items == n and rule.evictions == 0,
            "items": rule.items,
            "evictions": rule.evictions,
            "segment_size": rule.segment_size,
            "segment_allocated": rule.segment_allocated,
        },
        "budget": {
            "segment_budget": budget,
            "capacity": run.capacity,
            "segment_size": run.segment_size,
            "loaded": run.loaded,
            "items_held": run.items,
            "payload_held": run.payload_held,
            "payload_held_over_budget": run.payload_held / budget,
            "memory": run.segment_size,
            "bytes_used_over_capacity": run.bytes_used / run.capacity,
            "fragmentation": run.fragmentation,
            "evictions": run.evictions,
        },
    }
