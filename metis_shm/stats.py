"""Typed statistics read from the segment (``Cache.stats()``)."""

from __future__ import annotations

from typing import Any

import msgspec

# The order of the engine's per-shard tuples (Engine._raw_stats).
_RAW_FIELDS = (
    "hits", "misses", "sets", "deletes", "evictions", "expirations", "items", "bytes_used",
    "capacity", "free_bytes", "largest_free", "lock_waits", "read_retries", "lock_recoveries",
    "repairs", "held_blocks", "held_bytes",
)  # fmt: skip


# What a summary of the totals shows, in this order.
SUMMARY_FIELDS = (
    "hits", "misses", "hit_ratio", "sets", "deletes", "evictions", "expirations", "items",
    "bytes_used", "capacity", "fragmentation", "lock_waits", "read_retries", "lock_recoveries",
    "repairs", "pins", "pinned_bytes", "held_bytes",
)  # fmt: skip


class ShardStats(msgspec.Struct, frozen=True):
    """Counters of one shard (hits/misses/read_retries summed over processes)."""

    hits: int
    misses: int
    sets: int
    deletes: int
    evictions: int
    expirations: int
    items: int
    bytes_used: int
    capacity: int
    free_bytes: int
    largest_free: int
    lock_waits: int
    read_retries: int
    lock_recoveries: int  # lock owners found dead
    repairs: int  # of those, the ones that died mid-change: the shard was rebuilt
    # Blocks taken out of the cache (overwritten, deleted, evicted...) while a
    # view pinned them: kept until the view closes, not reusable till then.
    held_blocks: int = 0
    held_bytes: int = 0

    @property
    def fragmentation(self) -> float:
        """Share of free bytes not in the largest free block (0.0 = none)."""
        if self.free_bytes == 0:
            return 0.0
        return 1.0 - self.largest_free / self.free_bytes

    @property
    def hit_ratio(self) -> float:
        """hits / (hits + misses), 0.0 before any read."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class Stats(ShardStats, frozen=True, kw_only=True):
    """Totals over all shards, plus ``shards`` with each one's counters."""

    name: str
    policy: str
    n_shards: int
    segment_size: int
    fragmentation_total: float = 0.0
    pins: int = 0  # views open now, every process together
    pinned_bytes: int = 0  # the blocks they pin (held or still in the cache)
    shards: list[ShardStats] = []

    @property
    def fragmentation(self) -> float:
        return self.fragmentation_total

    def summary_rows(self) -> list[tuple[str, str]]:
        """(name, formatted value) for each total, ratios included: what
        `metis stats` and the demo print."""
        d = self.to_dict()
        rows = []
        for field in SUMMARY_FIELDS:
            value = d[field]
            rows.append((field, f"{value:.4f}" if isinstance(value, float) else f"{value:,}"))
        return rows

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (derived ratios included)."""
        d: dict[str, Any] = msgspec.structs.asdict(self)
        d.pop("fragmentation_total")
        d["fragmentation"] = self.fragmentation
        d["hit_ratio"] = self.hit_ratio
        d["shards"] = [
            {**msgspec.structs.asdict(s), "fragmentation": s.fragmentation} for s in self.shards
        ]
        return d


def build_stats(
    raw: list[tuple[int, ...]],
    *,
    name: str,
    policy: str,
    segment_size: int,
    pins: tuple[int, int] = (0, 0),
) -> Stats:
    """Stats from the engine's per-shard tuples (and its pin totals)."""
    shards = [ShardStats(**dict(zip(_RAW_FIELDS, row, strict=True))) for row in raw]
    totals = {f: sum(getattr(s, f) for s in shards) for f in _RAW_FIELDS}
    # The largest block that one item could use: blocks of different shards
    # do not add up.
    totals["largest_free"] = max((s.largest_free for s in shards), default=0)
    # Fragmentation of the whole: free bytes outside each shard's largest block.
    free = totals["free_bytes"]
    frag = 1.0 - sum(s.largest_free for s in shards) / free if free else 0.0
    return Stats(
        **totals,
        name=name,
        policy=policy,
        n_shards=len(shards),
        segment_size=segment_size,
        fragmentation_total=frag,
        pins=pins[0],
        pinned_bytes=pins[1],
        shards=shards,
    )
