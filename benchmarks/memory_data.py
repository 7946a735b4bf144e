"""The data sets bench_memory loads into every store, and the loading helpers
all three stores' measurements share."""

from __future__ import annotations

import math
import random
import sys
import time
from array import array
from collections.abc import Callable, Iterator
from typing import Any

from _common import fmt_size

KiB, MiB = 1024, 1024 * 1024
MIXED_RANGE = (16, 64 * KiB)
KEY_LEN = 24
NOISE_BYTES = MiB + 64 * KiB  # the random block values are sliced from
BATCH_ITEMS = 1000
BATCH_BYTES = 8 * MiB
OVERLOAD = 1.5  # the budget runs load this many times what the budget holds


def log(message: str) -> None:
    """Progress on stderr, so stdout holds only the report."""
    print(message, file=sys.stderr, flush=True)


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
