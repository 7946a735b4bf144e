"""What a torture run is made of: its configuration and its phases.

``plan_phases`` turns a ``TortureConfig`` into the phases the driver runs,
each one policy and one shard count on its own segment; ``focused_phase`` is
the scenario of the report that started the torture family, as it was given.
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: _workers

from _workers import new_name
from torture_workers import KeySpace, PhaseSpec

POLICIES = ("wtinylfu", "sieve", "lru", "arc", "2q", "s3fifo")
KIB = 1024


@dataclass
class TortureConfig:
    """A whole run; the defaults are the long run's."""

    duration: float = 600.0  # seconds of chaos over all phases (checks come on top)
    seed: int | None = None  # None: a random one (printed in the report)
    policies: Sequence[str] = POLICIES
    shards: Sequence[int] = (1, 4)
    capacity: int = 256 * KIB  # small: eviction and block reuse all the time
    phase_seconds: float | None = 20.0  # None: one phase per policy x shards
    writers: int = 2
    readers: tuple[int, int] = (4, 5)  # drawn per phase
    repairers: int = 1
    hot_keys: tuple[int, int] = (4, 16)  # drawn per phase
    cold_keys: int = 64
    counters: int = 4
    kill_every: float | None = 0.3  # mean seconds between SIGKILLs (None: none)
    stop_every: float | None = 0.2  # mean seconds between SIGSTOPs (None: none)
    stop_ms: tuple[float, float] = (1.0, 300.0)
    kill_stopped_share: float = 0.2  # of stops that end in SIGKILL, not SIGCONT
    stall_ms: float = 100.0  # 0: reads are not timed
    hang_seconds: float = 5.0
    large_share: float = 0.02
    clear_share: float = 2e-5
    focused: bool = False  # the scenario instead of the family
    stop_on_failure: bool = False
    progress_every: float | None = None  # seconds between progress lines on stderr
    name_factory: Callable[[], str] = new_name


@dataclass
class Phase:
    """One policy x one configuration, on its own segment."""

    policy: str
    shards: int
    capacity: int
    seconds: float
    roles: tuple[tuple[str, int], ...]  # (role, how many)
    spec: PhaseSpec
    compress_threshold: int | None
    kill_every: float | None
    stop_every: float | None

    @property
    def label(self) -> str:
        """What the phase is, in one line."""
        roles = " ".join(f"{role}x{n}" for role, n in self.roles)
        ct = "off" if self.compress_threshold is None else f"{self.compress_threshold // KIB}KiB"
        large = (
            "none"
            if self.spec.large is None
            else "-".join(f"{x // KIB}KiB" for x in self.spec.large)
        )
        return (
            f"{self.policy} {self.shards} shard{'s' if self.shards > 1 else ''} "
            f"{self.capacity // KIB}KiB hot={len(self.spec.space.hot)} {roles} "
            f"compress={ct} large={large}"
        )


def plan_phases(cfg: TortureConfig, rng: random.Random) -> list[Phase]:
    """The phases of a run: every policy x shard count, cycled to fill ``duration``."""
    if cfg.focused:
        return [focused_phase(cfg.duration, cfg.capacity, stall_ms=cfg.stall_ms)]
    combos = [(p, n) for p in cfg.policies for n in cfg.shards]
    n = len(combos)
    if cfg.phase_seconds:
        n = max(n, round(cfg.duration / cfg.phase_seconds))
    seconds = cfg.duration / n
    phases = []
    for i in range(n):
        policy, shards = combos[i % len(combos)]
        shard_bytes = cfg.capacity // shards
        large_max = min(200 * KIB, shard_bytes * 3 // 4)
        large = (min(64 * KIB, large_max // 2), large_max)
        space = KeySpace.build(rng.randint(*cfg.hot_keys), cfg.cold_keys, cfg.counters)
        spec = PhaseSpec(
            space=space,
            value_kind="framed",
            large=large,
            large_share=cfg.large_share,
            stall_seconds=cfg.stall_ms / 1000 if cfg.stall_ms else math.inf,
            clear_share=cfg.clear_share,
        )
        roles = (
            ("writer", cfg.writers),
            ("reader", rng.randint(*cfg.readers)),
            ("repairer", cfg.repairers),
        )
        phases.append(
            Phase(
                policy=policy,
                shards=shards,
                capacity=cfg.capacity,
                seconds=seconds,
                roles=tuple((r, k) for r, k in roles if k > 0),
                spec=spec,
                # Off, the default, or small (most values compressed: other
                # flags and stored lengths). Small is drawn less often: zlib
                # on every set slows the churn twentyfold.
                compress_threshold=rng.choices((None, 16 * KIB, 1 * KIB), (3, 3, 1))[0],
                kill_every=cfg.kill_every,
                stop_every=cfg.stop_every,
            )
        )
    return phases


def focused_phase(seconds: float, capacity: int = 256 * KIB, *, stall_ms: float = 0.0) -> Phase:
    """The issue's scenario exactly: one writer storing random bytes of 0 to
    3000 B under 16 keys, three readers calling get(), one shard, LRU, no chaos."""
    spec = PhaseSpec(
        space=KeySpace.build(16, 0, 0),
        value_kind="raw",
        large=None,
        large_share=0.0,
        stall_seconds=stall_ms / 1000 if stall_ms else math.inf,
        clear_share=0.0,
    )
    return Phase(
        policy="lru",
        shards=1,
        capacity=capacity,
        seconds=seconds,
        roles=(("raw_writer", 1), ("raw_reader", 3)),
        spec=spec,
        compress_threshold=16 * KIB,
        kill_every=None,
        stop_every=None,
    )


def config_dict(cfg: TortureConfig) -> dict[str, Any]:
    """``cfg`` as the report records it (JSON-ready; the name factory left out)."""
    d = {k: v for k, v in asdict(cfg).items() if k != "name_factory"}
    d["policies"], d["shards"] = list(cfg.policies), list(cfg.shards)
    return d
