"""bench_memory's measurement of Redis and memcached: each server's own account
of its memory after loading a data set into a fresh one, and the run under a
memory budget (``maxmemory``, ``-m``)."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from memory_data import BATCH_BYTES, BATCH_ITEMS, KEY_LEN, OVERLOAD, DataSet, MiB, round_up, timed
from peer_servers import memcached_server, redis_server


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
