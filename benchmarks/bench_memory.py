"""Memory per item: Metis against Redis and memcached, value sizes 16 B to 1 MiB.

What it measures
    For each value size (16 B, 64 B, ... 1 MiB, and one mixed-size set) the
    same data set -- the same 24-byte keys and the same value bytes -- is
    loaded into Metis, into a fresh redis-server and into a fresh memcached,
    and each one's own account of its memory is read:

    * Metis, ``Cache.stats()``: ``bytes_used`` (the blocks that hold items:
      56-byte item header, key, value, padding to 8, at least 64 B), per
      shard; and the segment's ``segment_size`` (header, stats slots, index,
      hint bytes, policy regions and the arenas). A Metis segment is sized up
      front and reserves all its pages at creation, so the memory it costs is
      ``segment_size`` however full it is. Shards fill unevenly, so the
      capacity that holds the whole set is the fullest shard's bytes times
      the shard count; each segment draws its own hash seed, so the script
      loads the set into ``--samples`` segments and reports the largest
      figure (and the median), then checks the headroom rule that
      docs/memory.md gives for sizing by loading the set at that capacity.
    * Redis, ``INFO memory`` before and after loading: ``used_memory`` (what
      Redis has allocated, as jemalloc's size classes round it, main hash
      table included; not the RSS fragmentation), ``used_memory_dataset``,
      ``used_memory_rss``, ``mem_fragmentation_ratio``; and ``MEMORY STATS``.
    * memcached, ``stats`` and ``stats slabs``: ``bytes`` (the items' own
      sizes: item header, key, value, CAS), the chunks the items occupy
      (``chunk_size x used_chunks`` per slab class: slab rounding), the slab
      pages allocated (``total_malloced``, allocated by 1 MiB page) and the
      hash table (``hash_bytes``).

    Per item: bytes = memory / items; overhead = bytes - (key + value).

    A second measurement gives each store the same memory budget and loads
    1.5 times as much data as the budget can hold, so each one evicts: Metis
    the largest capacity whose whole segment fits the budget, Redis
    ``maxmemory`` with ``allkeys-lru``, memcached ``-m``. It reports the items
    and payload each one keeps, and Metis's fragmentation after that churn
    (``1 - largest free block / free bytes``, summed over shards: the
    definition ``Stats.fragmentation`` uses).

Method
    Keys are ``m<8 chars>:<14 digits>``, 24 bytes. A value is its item's
    number (8 bytes) followed by a slice of a fixed random block, so values
    are distinct and incompressible; Metis runs with compression off (Redis
    and memcached do not compress), its default policy and its default shard
    count for the capacity. A data set holds about ``--payload`` bytes of
    key + value (64 MiB), at least ``--min-items`` items (128). The mixed set
    draws each value size log-uniformly from 16 B to 64 KiB. Everything is
    loaded in batches: ``Cache.set_many``, a redis-py pipeline, pymemcache
    ``set_many``. Servers run on unix sockets; each data set gets fresh ones.

Not a pass/fail test. ``--quick`` (the 16 B, 4 KiB, 1 MiB and mixed sets at
1 MiB, a 4 MiB budget, 2 samples) takes about 20 s; the JSON (``--json``)
holds every figure and the machine.

    python benchmarks/bench_memory.py [--quick] [--json PATH] [--plot PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import fmt_size, machine_info, print_table
from peer_servers import memcached_server, redis_server

try:
    from metis_shm import Cache, _engine
except ImportError:  # run from a checkout, not installed: use the in-place build
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from metis_shm import Cache, _engine

from metis_shm.cache import DEFAULT_MAX_VALUE_SIZE, DEFAULT_POLICY, default_shards
from metis_shm.segment import shm_path
from metis_shm.units import parse_size

KiB, MiB = 1024, 1024 * 1024
SIZES = (16, 64, 256, KiB, 4 * KiB, 16 * KiB, 64 * KiB, 256 * KiB, MiB)
MIXED_RANGE = (16, 64 * KiB)
QUICK_SETS = ("16", "4KiB", "1MiB", "mixed")  # the smallest, a middle, the largest, mixed
KEY_LEN = 24
NOISE_BYTES = MiB + 64 * KiB  # the random block values are sliced from
BATCH_ITEMS = 1000
BATCH_BYTES = 8 * MiB
OVERLOAD = 1.5  # the budget runs load this many times what the budget holds
ARENA_STEP = 64  # shard arenas are multiples of 64 bytes
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "memory.json"
MAX_VALUE = parse_size(DEFAULT_MAX_VALUE_SIZE)
POLICY_NUMBER = _engine.POLICIES[DEFAULT_POLICY]


def log(message: str) -> None:
    """Progress on stderr, so stdout holds only the report."""
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data


class DataSet:
    """The items every store gets: item ``i`` is (key(i), value(i)).

    Item numbers past ``n`` (the budget runs load more than the set) reuse
    the value sizes cyclically but have keys and values of their own.
    """

    def __init__(self, label: str, tag: str, sizes: array, seed: int) -> None:
        assert len(tag) == 8, tag
        self.label = label
        self.tag = tag
        self.sizes = sizes
        self.n = len(sizes)
        self.noise = random.Random(seed).randbytes(NOISE_BYTES)
        self.value_bytes = sum(sizes)
        self.payload = self.n * KEY_LEN + self.value_bytes

    @classmethod
    def uniform(cls, size: int, payload: int, min_items: int, seed: int) -> DataSet:
        """Items of one value size, about ``payload`` bytes of key + value."""
        n = max(min_items, round(payload / (KEY_LEN + size)))
        label = f"{size // MiB} MiB" if size >= MiB else fmt_size(size)
        return cls(label, f"{size:08d}", array("I", [size]) * n, seed)

    @classmethod
    def mixed(cls, payload: int, min_items: int, seed: int) -> DataSet:
        """Value sizes drawn log-uniformly from MIXED_RANGE, to about ``payload`` bytes."""
        rng = random.Random(seed)
        lo, hi = (math.log(x) for x in MIXED_RANGE)
        sizes = array("I")
        total = 0
        while total < payload or len(sizes) < min_items:
            size = round(math.exp(rng.uniform(lo, hi)))
            sizes.append(size)
            total += KEY_LEN + size
        return cls("mixed", "mixed-lu", sizes, seed)

    def key(self, i: int) -> str:
        """Item ``i``'s key, KEY_LEN ASCII characters."""
        return f"m{self.tag}:{i:014d}"

    def size(self, i: int) -> int:
        """Item ``i``'s value size."""
        return self.sizes[i % self.n]

    def value(self, i: int) -> bytes:
        """Item ``i``'s value: its number, then a slice of the random block."""
        size = self.size(i)
        start = (i * 2654435761) % (NOISE_BYTES - size + 9)
        return i.to_bytes(8, "little") + self.noise[start : start + size - 8]

    def mean_payload(self) -> float:
        """Mean key + value bytes of an item."""
        return self.payload / self.n

    def batches(
        self, count: int, max_bytes: int = BATCH_BYTES
    ) -> Iterator[list[tuple[str, bytes]]]:
        """Items 0 .. count-1 in batches of at most BATCH_ITEMS items and about
        ``max_bytes`` bytes of values."""
        batch: list[tuple[str, bytes]] = []
        held = 0
        for i in range(count):
            value = self.value(i)
            batch.append((self.key(i), value))
            held += len(value)
            if len(batch) >= BATCH_ITEMS or held >= max_bytes:
                yield batch
                batch, held = [], 0
        if batch:
            yield batch

    def payload_of_keys(self, keys: Iterator[str]) -> int:
        """Key + value bytes of the items named by ``keys`` (numbers parsed from them)."""
        return sum(KEY_LEN + self.size(int(k.rsplit(":", 1)[1])) for k in keys)


def round_up(n: int, step: int) -> int:
    """``n`` rounded up to a multiple of ``step``."""
    return -(-n // step) * step


def timed(what: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn``, log how long it took."""
    t0 = time.monotonic()
    result = fn()
    log(f"  {what}: {time.monotonic() - t0:.1f}s")
    return result


# --------------------------------------------------------------------------- metis


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


def uniform_payload_or(ds: DataSet, items: int, enumerate_keys: Callable[[], Iterator[str]]) -> int:
    """Key + value bytes of ``items`` resident items: counted for one value size,
    summed over the resident keys (``enumerate_keys``) for mixed sizes."""
    if min(ds.sizes) == max(ds.sizes):
        return items * (KEY_LEN + ds.sizes[0])
    return ds.payload_of_keys(enumerate_keys())


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# --------------------------------------------------------------------------- redis


def redis_memory(client: Any) -> dict[str, Any]:
    """INFO memory once it has settled (incremental rehashing and client buffers
    shrink in the background), with MEMORY STATS' client buffers."""
    info = client.info("memory")
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        time.sleep(0.3)
        again = client.info("memory")
        if again["used_memory"] == info["used_memory"]:
            break
        info = again
    stats = client.memory_stats()
    return {
        "used_memory": info["used_memory"],
        "used_memory_dataset": info["used_memory_dataset"],
        "used_memory_overhead": info["used_memory_overhead"],
        "used_memory_rss": info["used_memory_rss"],
        "mem_fragmentation_ratio": info["mem_fragmentation_ratio"],
        "clients_normal": stats["clients.normal"],
        "keys_count": stats["keys.count"],
        "keys_bytes_per_key": stats["keys.bytes-per-key"],
        "hashtable_main": stats.get("db.0", {}).get("overhead.hashtable.main", 0),
    }


def redis_load(client: Any, ds: DataSet, count: int, max_bytes: int = BATCH_BYTES) -> None:
    """MSET items 0..count-1, one command per batch of at most ``max_bytes``
    (with maxmemory, Redis evicts before a command, not during one)."""
    for batch in ds.batches(count, max_bytes):
        client.mset(dict(batch))


def measure_redis(ds: DataSet, budget: int, workdir: Path) -> dict[str, Any]:
    """Redis: used_memory (less client buffers) before and after loading the set."""
    with redis_server(workdir) as server:
        client = server.client(unix=True)
        before = redis_memory(client)
        timed("redis load", lambda: redis_load(client, ds, ds.n))
        after = redis_memory(client)
        items = client.dbsize()
        rss_after = rss_bytes(server.pid)
        client.close()
    if items != ds.n:
        raise RuntimeError(f"{ds.label}: redis holds {items} of {ds.n} items")
    data = (after["used_memory"] - after["clients_normal"]) - (
        before["used_memory"] - before["clients_normal"]
    )
    overload = math.ceil(OVERLOAD * budget / ds.mean_payload())
    with redis_server(workdir, maxmemory=str(budget)) as server:
        client = server.client(unix=True)
        timed("redis budget load", lambda: redis_load(client, ds, overload, budget // 64))
        held_info = redis_memory(client)
        held = client.dbsize()
        payload_held = uniform_payload_or(
            ds, held, lambda: (k.decode() for k in client.scan_iter(count=10_000))
        )
        client.close()
    return {
        "before": before,
        "after": after,
        "rss_after": rss_after,
        "memory": data,
        "bytes_per_item": data / ds.n,
        "overhead_per_item": (data - ds.payload) / ds.n,
        "budget": {
            "maxmemory": budget,
            "loaded": overload,
            "items_held": held,
            "payload_held": payload_held,
            "payload_held_over_budget": payload_held / budget,
            "memory": held_info["used_memory"],
        },
    }


# --------------------------------------------------------------------------- memcached


def _decode(d: dict[Any, Any]) -> dict[str, Any]:
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def memcached_memory(client: Any) -> dict[str, Any]:
    """``stats`` and ``stats slabs``: item bytes, slab chunks in use, pages, hash table.

    Read once the hash table has stopped growing: memcached doubles it in a
    background thread when it holds 1.5 items per bucket.
    """
    stats = _decode(client.stats())
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        time.sleep(0.3)
        again = _decode(client.stats())
        settled = again["hash_bytes"] == stats["hash_bytes"]
        stats = again
        if settled and not stats["hash_is_expanding"]:
            break
    slabs = _decode(client.stats("slabs"))
    chunks, classes = 0, {}
    for key, value in slabs.items():
        cls, _, field = key.partition(":")
        if field in ("chunk_size", "used_chunks", "total_pages"):
            classes.setdefault(int(cls), {})[field] = int(value)
    for c in classes.values():
        chunks += c["chunk_size"] * c["used_chunks"]
    return {
        "curr_items": int(stats["curr_items"]),
        "evictions": int(stats["evictions"]),
        "bytes": int(stats["bytes"]),
        "limit_maxbytes": int(stats["limit_maxbytes"]),
        "hash_bytes": int(stats["hash_bytes"]),
        "chunk_bytes": chunks,
        "total_malloced": int(slabs["total_malloced"]),
        "slab_classes": {str(k): classes[k] for k in sorted(classes)},
    }


def memcached_load(client: Any, ds: DataSet, count: int) -> int:
    """set_many items 0..count-1; returns how many sets memcached refused.

    With ``noreply``: pymemcache sends a whole batch before it reads a reply,
    and on a unix socket a few hundred small replies fill the socket's send
    buffer (each counts a whole buffer's size), so memcached would stop
    reading while the client is still sending. Refusals are counted from
    memcached's own stats instead.
    """
    for batch in ds.batches(count):
        client.set_many(dict(batch), noreply=True)
    stats = _decode(client.stats())
    return int(stats["store_too_large"]) + int(stats["store_no_memory"])


def memcached_resident_keys(client: Any, ds: DataSet, count: int) -> Iterator[str]:
    """Which of items 0..count-1 memcached still holds (it cannot list its keys)."""
    for start in range(0, count, BATCH_ITEMS):
        keys = [ds.key(i) for i in range(start, min(count, start + BATCH_ITEMS))]
        yield from (k.decode() if isinstance(k, bytes) else k for k in client.get_many(keys))


def measure_memcached(ds: DataSet, budget: int, workdir: Path) -> dict[str, Any]:
    """memcached: stats and stats slabs after loading the set into a fresh server."""
    memory_mb = max(64, 2 * round_up(ds.payload, MiB) // MiB + 64)
    with memcached_server(workdir, unix=True, memory_mb=memory_mb, item_size_max="2m") as server:
        client = server.client()
        empty = memcached_memory(client)
        failed = timed("memcached load", lambda: memcached_load(client, ds, ds.n))
        full = memcached_memory(client)
        rss_after = rss_bytes(server.pid)
        client.close()
    if failed or full["curr_items"] != ds.n or full["evictions"]:
        raise RuntimeError(f"{ds.label}: memcached holds {full['curr_items']} of {ds.n} items")
    overload = math.ceil(OVERLOAD * budget / ds.mean_payload())
    budget_mb = budget // MiB
    with memcached_server(workdir, unix=True, memory_mb=budget_mb, item_size_max="2m") as server:
        client = server.client()
        timed("memcached budget load", lambda: memcached_load(client, ds, overload))
        held = memcached_memory(client)
        payload_held = uniform_payload_or(
            ds, held["curr_items"], lambda: memcached_resident_keys(client, ds, overload)
        )
        client.close()
    memory = full["total_malloced"] + full["hash_bytes"]
    n = ds.n
    return {
        "memory_mb": memory_mb,
        "empty": empty,
        "full": full,
        "rss_after": rss_after,
        "memory": memory,
        "bytes_per_item": memory / n,
        "overhead_per_item": (memory - ds.payload) / n,
        "item_bytes_per_item": full["bytes"] / n,
        "chunk_bytes_per_item": full["chunk_bytes"] / n,
        "slab_rounding_per_item": (full["chunk_bytes"] - full["bytes"]) / n,
        "budget": {
            "memory_mb": budget_mb,
            "loaded": overload,
            "items_held": held["curr_items"],
            "payload_held": payload_held,
            "payload_held_over_budget": payload_held / budget,
            "memory": held["total_malloced"] + held["hash_bytes"],
            "total_malloced": held["total_malloced"],
            "hash_bytes": held["hash_bytes"],
        },
    }


# --------------------------------------------------------------------------- report


def measure(ds: DataSet, budget: int, samples: int, workdir: Path) -> dict[str, Any]:
    """One data set through all three stores: a row of the report."""
    log(f"{ds.label}: {ds.n:,} items, {ds.payload / MiB:.1f} MiB of key + value")
    metis = measure_metis(ds, budget, samples)
    redis = measure_redis(ds, budget, workdir)
    memcached = measure_memcached(ds, budget, workdir)
    return {
        "set": ds.label,
        "value_size": ds.sizes[0] if min(ds.sizes) == max(ds.sizes) else None,
        "value_size_range": [min(ds.sizes), max(ds.sizes)],
        "items": ds.n,
        "key_bytes": KEY_LEN,
        "value_bytes": ds.value_bytes,
        "payload": ds.payload,
        "payload_per_item": ds.mean_payload(),
        "metis": metis,
        "redis": redis,
        "memcached": memcached,
        "metis_over_redis": metis["segment_size"] / redis["memory"],
        "metis_over_memcached": metis["segment_size"] / memcached["memory"],
        "metis_items_over_redis": metis["bytes_used"] / redis["memory"],
        "metis_items_over_memcached": metis["bytes_used"] / memcached["memory"],
    }


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%"


def print_report(report: dict[str, Any]) -> None:
    """The four tables, each under a line that says what its figures are."""
    rows = report["rows"]
    print(
        "bytes per item (memory / items; metis items = bytes_used, metis segment = the whole "
        "segment at the capacity that holds the set, redis = used_memory delta, "
        "memcached = slab pages + hash table):\n"
    )
    print_table(
        ("set", "items", "payload MiB", "key+value B", "metis items", "metis segment",
         "redis", "memcached"),
        [(r["set"], f"{r['items']:,}", f"{r['payload'] / MiB:.1f}", f"{r['payload_per_item']:.0f}",
          f"{r['metis']['bytes_per_item']:.0f}", f"{r['metis']['segment_bytes_per_item']:.0f}",
          f"{r['redis']['bytes_per_item']:.0f}", f"{r['memcached']['bytes_per_item']:.0f}")
         for r in rows],
    )  # fmt: skip
    print(
        "\noverhead per item beyond key + value, bytes (% of key + value); ratios are of the "
        "whole memory: metis segment / redis, metis segment / memcached:\n"
    )
    print_table(
        ("set", "metis items", "metis segment", "redis", "memcached", "mc slab rounding",
         "metis/redis", "metis/memcached"),
        [(r["set"],
          *(f"{o:.0f} ({_pct(o, r['payload_per_item'])})" for o in (
              r["metis"]["overhead_per_item"], r["metis"]["segment_overhead_per_item"],
              r["redis"]["overhead_per_item"], r["memcached"]["overhead_per_item"])),
          f"{r['memcached']['slab_rounding_per_item']:.0f}",
          f"{r['metis_over_redis']:.2f}", f"{r['metis_over_memcached']:.2f}")
         for r in rows],
    )  # fmt: skip
    print(
        "\nmetis: the capacity that holds the whole set (the fullest shard times the shard "
        f"count; the largest of {report['config']['metis_samples']} segments, each with its own "
        "hash seed; needed/used median and largest), the segment it makes, and the headroom "
        "rule of docs/memory.md: the samples its capacity covers, and whether it held the set "
        "in one more segment:\n"
    )
    print_table(
        ("set", "shards", "bytes used MiB", "capacity needed MiB", "needed/used med",
         "needed/used max", "segment MiB", "fixed MiB", "rule headroom", "rule covers",
         "rule holds all"),
        [(r["set"], str(m["n_shards"]), f"{m['bytes_used'] / MiB:.2f}",
          f"{m['capacity_needed'] / MiB:.2f}",
          f"{m['capacity_needed_over_bytes_used_median']:.3f}",
          f"{m['capacity_needed_over_bytes_used']:.3f}",
          f"{m['segment_size'] / MiB:.2f}", f"{m['fixed_overhead'] / MiB:.2f}",
          f"{m['rule']['headroom']:.3f}",
          f"{m['rule']['covers_samples']}/{len(m['capacity_needed_samples'])}",
          "yes" if m["rule"]["holds_all"] else "NO")
         for r in rows for m in [r["metis"]]],
    )  # fmt: skip
    print(
        f"\nsame memory budget, {OVERLOAD:g} x what it holds loaded: items kept (payload kept / "
        "budget); memory each one used (metis segment, redis used_memory, memcached slab pages "
        "+ hash table); metis frag = Stats.fragmentation after the churn:\n"
    )
    print_table(
        ("set", "budget MiB", "loaded", "metis held", "redis held", "memcached held",
         "metis MiB", "redis MiB", "memcached MiB", "metis frag"),
        [(r["set"], f"{r['metis']['budget']['segment_budget'] / MiB:.0f}",
          f"{r['metis']['budget']['loaded']:,}",
          *(f"{b['items_held']:,} ({100 * b['payload_held_over_budget']:.0f}%)" for b in bs),
          *(f"{b['memory'] / MiB:.1f}" for b in bs),
          f"{r['metis']['budget']['fragmentation']:.3f}")
         for r in rows
         for bs in [(r["metis"]["budget"], r["redis"]["budget"], r["memcached"]["budget"])]],
    )  # fmt: skip


def plot(report: dict[str, Any], path: Path) -> None:
    """Memory per byte of key + value, per data set and store, as a PNG."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install metis-shm[plot]") from None
    rows = report["rows"]
    series = {
        "Metis segment (capacity that holds the set)": [
            r["metis"]["segment_size"] / r["payload"] for r in rows
        ],
        "Metis items (bytes_used)": [r["metis"]["bytes_used"] / r["payload"] for r in rows],
        "Redis used_memory": [r["redis"]["memory"] / r["payload"] for r in rows],
        "memcached slab pages + hash table": [
            r["memcached"]["memory"] / r["payload"] for r in rows
        ],
    }
    fig = Figure(figsize=(9.0, 4.8))
    ax = fig.subplots()
    xs = range(len(rows))
    for (label, ys), marker in zip(series.items(), "osD^", strict=True):
        ax.plot(xs, ys, marker=marker, label=label)
    ax.axhline(1.0, color="grey", linestyle="dashed", linewidth=1, label="key + value only")
    ax.set_xticks(list(xs), labels=[r["set"] for r in rows])
    ax.set_xlabel(f"value size ({KEY_LEN}-byte keys)")
    ax.set_ylabel("memory / (key + value bytes)")
    ax.set_ylim(bottom=0.9)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title("Memory per byte stored: Metis, Redis, memcached")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    """Measure every data set, print the tables, write the JSON (and the PNG)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sets, about 20 s")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, metavar="PATH",
                        help=f"where to write the results (default {DEFAULT_JSON})")  # fmt: skip
    parser.add_argument("--plot", type=Path, metavar="PATH", help="also draw a PNG chart")
    parser.add_argument("--payload", help="key + value bytes per data set (default 64MiB)")
    parser.add_argument("--min-items", type=int, help="items per data set at least (default 128)")
    parser.add_argument("--budget", help="memory budget of the eviction runs (default 64MiB)")
    parser.add_argument("--sizes", help="value sizes to run, comma-separated, 'mixed' allowed")
    parser.add_argument(
        "--samples", type=int, help="Metis segments (hash seeds) per data set (default 5)"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    args = parser.parse_args(argv)
    payload = parse_size(args.payload or ("1MiB" if args.quick else "64MiB"))
    budget = parse_size(args.budget or ("4MiB" if args.quick else "64MiB"))
    min_items = args.min_items or (4 if args.quick else 128)
    samples = args.samples or (2 if args.quick else 5)
    if samples < 1:
        parser.error("--samples must be positive")
    if budget % MiB or budget < 2 * MiB:
        parser.error("--budget must be a whole number of MiB, at least 2MiB (memcached's -m)")
    default_sets = QUICK_SETS if args.quick else (*map(str, SIZES), "mixed")
    wanted = args.sizes.split(",") if args.sizes else default_sets
    t_start = time.monotonic()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        for item in wanted:
            if item == "mixed":
                ds = DataSet.mixed(payload, min_items, args.seed)
            else:
                ds = DataSet.uniform(parse_size(item), payload, min_items, args.seed)
            rows.append(measure(ds, budget, samples, Path(tmp)))
    elapsed = time.monotonic() - t_start
    report = {
        "benchmark": "bench_memory",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "elapsed_s": round(elapsed, 1),
        "machine": machine_info(("redis", "hiredis", "pymemcache")),
        "config": {
            "quick": args.quick,
            "payload": payload,
            "min_items": min_items,
            "metis_samples": samples,
            "budget": budget,
            "overload": OVERLOAD,
            "key_bytes": KEY_LEN,
            "mixed_range": list(MIXED_RANGE),
            "seed": args.seed,
            "metis_policy": DEFAULT_POLICY,
            "metis_item_header": _engine.ITEM_OVERHEAD,
            "metis_compression": "off",
        },
        "versions": server_versions(),
        "rows": rows,
    }
    print_report(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json} ({len(rows)} rows) in {elapsed:.1f}s")
    if args.plot:
        plot(report, args.plot)
        print(f"wrote {args.plot}")
    return 0


def server_versions() -> dict[str, str]:
    """The redis-server and memcached that ran, as their binaries tell."""
    import subprocess

    out = {}
    for name, flag in (("redis-server", "--version"), ("memcached", "-V")):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out[name] = subprocess.run(
                [name, flag], capture_output=True, text=True, timeout=10, check=False
            ).stdout.strip()
    return out


if __name__ == "__main__":
    sys.exit(main())
