"""Replay a cache-access trace through the engine's own eviction policies.

For every (policy, size) pair, ``simulate`` creates a real ``Cache`` in
shared memory (``max_entries=size``, a byte capacity large enough never to
bind, values of 0 bytes, no compression) and replays the trace as a
read-through cache does: ``get``, and on a miss ``set``. It counts hits and
misses itself and checks them against ``cache.stats()``; every segment it
creates is destroyed before it returns.

    >>> from metis_shm.sim.simulator import simulate
    >>> result = simulate("lirs-cs.trace.gz", [563], ["lru"])  # doctest: +SKIP
    >>> print(result.table())                               # doctest: +SKIP

(a bare trace name is one of ``benchmarks/traces/``: ``metis_shm.sim.traces.find_trace``.)

With ``shards > 1`` the engine bounds every shard to ``ceil(size / shards)``
items, as it does for any cache created with ``max_entries``.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable, Iterable, Sequence

import msgspec

from metis_shm import _engine
from metis_shm.cache import Cache
from metis_shm.errors import InvalidConfig
from metis_shm.sim.traces import StrPath, load_trace, trace_name

__all__ = [
    "Progress",
    "SimulationResult",
    "SimulationRow",
    "available_policies",
    "default_shard_count",
    "simulate",
]

#: ``progress(done, total)``: requests replayed so far over all (policy, size) runs
Progress = Callable[[int, int], None]

_MIB = 1 << 20
_MIN_SHARD_BYTES = 4 * _MIB
_BYTES_PER_ENTRY = 256
_MISSING = object()
DRAIN_EVERY = 8  # hits between explicit drains (a ring stripe holds 15)


class SimulationRow(msgspec.Struct, frozen=True):
    """One replay: a trace through one policy at one size."""

    trace: str
    policy: str
    size: int  # max_entries of the cache
    shards: int
    requests: int
    hits: int
    hit_ratio: float  # percent, 0-100
    seconds: float  # wall time of the replay (cache creation excluded)

    @property
    def misses(self) -> int:
        return self.requests - self.hits


class SimulationResult(msgspec.Struct):
    """The rows of one or more ``simulate`` calls."""

    rows: list[SimulationRow] = msgspec.field(default_factory=list)

    @classmethod
    def concat(cls, results: Iterable[SimulationResult]) -> SimulationResult:
        """One result holding the rows of all ``results``, in order."""
        return cls([row for r in results for row in r.rows])

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = msgspec.to_builtins(self)
        return out

    def to_json(self, indent: int = 2) -> str:
        """The rows as JSON: ``{"rows": [{"trace": ..., "hit_ratio": ...}, ...]}``."""
        return msgspec.json.format(msgspec.json.encode(self), indent=indent).decode()

    @classmethod
    def from_json(cls, data: str | bytes) -> SimulationResult:
        return msgspec.json.decode(data, type=cls)

    def hit_ratio(self, trace: str, policy: str, size: int, shards: int | None = None) -> float:
        """The hit ratio (%) of the first row that matches; ``KeyError`` if none."""
        for row in self.rows:
            if (row.trace, row.policy, row.size) == (trace, policy, size) and (
                shards is None or row.shards == shards
            ):
                return row.hit_ratio
        raise KeyError((trace, policy, size, shards))

    def table(self) -> str:
        """A plain-text table, one line per row."""
        head = ("trace", "policy", "size", "shards", "requests", "hits", "hit %", "seconds")
        body = [
            (
                r.trace,
                r.policy,
                str(r.size),
                str(r.shards),
                str(r.requests),
                str(r.hits),
                f"{r.hit_ratio:.2f}",
                f"{r.seconds:.3f}",
            )
            for r in self.rows
        ]
        widths = [max(len(c) for c in col) for col in zip(head, *body, strict=True)]
        left = {0, 1}

        def line(cells: Sequence[str]) -> str:
            return "  ".join(
                c.ljust(w) if i in left else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()

        rule = "  ".join("-" * w for w in widths)
        return "\n".join([line(head), rule, *(line(b) for b in body)])


def available_policies() -> list[str]:
    """The engine's policy names, in the engine's order."""
    return list(_engine.POLICIES)


def default_shard_count() -> int:
    """The shard count a ``Cache(name)`` with default settings gets on this machine."""
    from metis_shm import cache as cache_module
    from metis_shm.units import parse_size

    return cache_module.default_shards(
        parse_size(cache_module.DEFAULT_CAPACITY, "capacity"),
        parse_size(cache_module.DEFAULT_MAX_VALUE_SIZE, "max_value_size"),
    )


def hash_key(seed: int) -> tuple[int, int]:
    """The SipHash key a simulation with ``seed`` gives its caches."""
    digest = hashlib.blake2b(b"metis-simulate-%d" % seed, digest_size=16).digest()
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")


def simulate(
    trace: StrPath | Sequence[bytes | str],
    sizes: Iterable[int],
    policies: Iterable[str] | None = None,
    *,
    shards: int | None = 1,
    progress: Progress | None = None,
    name: str | None = None,
    format: str | None = None,
    csv_column: str | int | None = None,
    seed: int | None = 0,
) -> SimulationResult:
    """Hit ratios of the engine's ``policies`` on ``trace`` at each of ``sizes``.

    ``trace``: a trace file (read with ``metis_shm.sim.traces.load_trace``, with
    ``format`` and ``csv_column``) or a sequence of keys. ``sizes``: cache
    sizes in entries. ``policies``: engine policy names, ``None`` for all of
    them. ``shards``: shards per cache, 1 for exact comparisons, ``None`` for
    the default shard count (``default_shard_count()``). ``progress(done,
    total)`` is called about every 1% of all the requests to replay.
    ``name``: the trace's name in the rows (default: from the file name).
    ``seed``: the caches' hash key, so which keys share a bucket, a sketch
    counter or a shard, is derived from it: the same seed gives the same hits
    (``None``: a random key, as a real cache has).
    """
    if isinstance(trace, str | os.PathLike):
        keys: Sequence[bytes | str] = load_trace(trace, format, csv_column=csv_column)
        label = name or trace_name(trace)
    else:
        keys = trace
        label = name or "trace"
    size_list = _check_sizes(sizes)
    policy_list = _check_policies(policies)
    n_shards = default_shard_count() if shards is None else shards
    per_entry = _bytes_per_entry(keys)

    total = len(keys) * len(size_list) * len(policy_list)
    step = max(1, total // 100)
    done = 0
    if progress is not None:
        progress(0, total)
    rows: list[SimulationRow] = []
    for size in size_list:
        for policy in policy_list:
            per_shard = -(-size // n_shards) * per_entry
            per_shard = max(_MIN_SHARD_BYTES, -(-per_shard // _MIB) * _MIB)
            seg = f"sim-{os.getpid()}-{uuid.uuid4().hex[:12]}"
            try:
                cache = Cache(
                    seg,
                    capacity=per_shard * n_shards,
                    shards=n_shards,
                    policy=policy,
                    max_entries=size,
                    max_key_size=65536,
                    compress_threshold=None,
                    _hash_key=None if seed is None else hash_key(seed),
                )
                try:
                    get, put, drain = cache.get, cache.set, cache.drain
                    hits = 0
                    undrained = 0
                    start = time.perf_counter()
                    for lo in range(0, len(keys), step):
                        for key in keys[lo : lo + step]:
                            if get(key, _MISSING) is _MISSING:
                                put(key, b"")
                            else:
                                hits += 1
                                undrained += 1
                                # Readers only record hits in a 15-entry ring
                                # stripe; apply them before it can overflow,
                                # as metisd's periodic drain does, so every
                                # hit counts and LRU is exact.
                                if undrained == DRAIN_EVERY:
                                    drain()
                                    undrained = 0
                        if progress is not None:
                            progress(done + min(lo + step, len(keys)), total)
                    seconds = time.perf_counter() - start
                    stats = cache.stats()
                    used_shards = cache.n_shards
                finally:
                    cache.close()
            finally:
                Cache.destroy(seg)
            misses = len(keys) - hits
            if (stats.hits, stats.misses) != (hits, misses):
                raise AssertionError(
                    f"{label} {policy}@{size}: counted {hits} hits / {misses} misses but "
                    f"cache.stats() says {stats.hits} / {stats.misses}"
                )
            done += len(keys)
            rows.append(
                SimulationRow(
                    trace=label,
                    policy=policy,
                    size=size,
                    shards=used_shards,
                    requests=len(keys),
                    hits=hits,
                    hit_ratio=round(100.0 * hits / len(keys), 4) if keys else 0.0,
                    seconds=round(seconds, 4),
                )
            )
    if progress is not None and total == 0:
        progress(0, 0)
    return SimulationResult(rows)


def _check_sizes(sizes: Iterable[int]) -> list[int]:
    out = list(sizes)
    if not out:
        raise InvalidConfig("sizes: no cache size given", context={"field": "sizes"})
    for s in out:
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise InvalidConfig(
                f"sizes: {s!r} is not valid; expected positive numbers of entries",
                context={"field": "sizes", "value": s},
            )
    return out


def _check_policies(policies: Iterable[str] | None) -> list[str]:
    known = available_policies()
    if policies is None:
        return known
    out = list(policies)
    if not out:
        raise InvalidConfig("policies: no policy given", context={"field": "policies"})
    for p in out:
        if p not in _engine.POLICIES:
            raise InvalidConfig(
                f"policies: {p!r} is not a policy of the engine; expected one of "
                f"{', '.join(known)}",
                context={"field": "policies", "value": p},
            )
    return out


def _bytes_per_entry(keys: Sequence[bytes | str]) -> int:
    """Bytes of arena to allow per entry: enough that ``max_entries`` alone bounds the cache."""
    longest = max((len(k) if isinstance(k, bytes) else 4 * len(k) for k in keys), default=0)
    need = 2 * (_engine.ITEM_OVERHEAD + longest + 16)
    return max(_BYTES_PER_ENTRY, -(-need // 64) * 64)
