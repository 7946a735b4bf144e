"""What a chaos run did and found: ``ChaosReport``.

``text()`` is what the command line prints and ``to_dict()`` what
``--report`` writes; ``failures`` empty means the run passed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ChaosReport:
    """What a run did and found; ``failures`` empty means it passed."""

    seed: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    cache_name: str = ""
    chaos_seconds: float = 0.0
    total_seconds: float = 0.0
    ops: dict[str, int] = field(default_factory=dict)
    reads: dict[str, int] = field(default_factory=dict)  # reads, hits, misses, ok, torn, foreign
    refused_writes: int = 0
    worker_errors: int = 0
    chaos: dict[str, int] = field(default_factory=dict)
    bad_values: list[dict[str, Any]] = field(default_factory=list)
    error_samples: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def torn(self) -> int:
        """Reads that found a value failing its checksum or framing."""
        return self.reads.get("torn", 0)

    @property
    def foreign(self) -> int:
        """Reads that found a value of another key."""
        return self.reads.get("foreign", 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)

    def text(self) -> str:
        """The human report."""
        out = [
            f"chaos run of cache {self.cache_name!r}, seed {self.seed}",
            f"  chaos {self.chaos_seconds:.1f} s, whole run {self.total_seconds:.1f} s, "
            f"{self.config.get('workers')} workers, capacity {self.config.get('capacity')}, "
            f"{self.config.get('keys')} keys",
            "operations (all worker processes, up to each one's last report):",
        ]
        total = sum(self.ops.values())
        out.append(f"  {'total':<12} {total:>12,}")
        for name, n in sorted(self.ops.items(), key=lambda kv: -kv[1]):
            out.append(f"  {name:<12} {n:>12,}")
        r = self.reads
        out.append(
            f"reads checked: {r.get('reads', 0):,} ({r.get('hits', 0):,} hits verified, "
            f"{r.get('misses', 0):,} misses): ok {r.get('ok', 0):,}, "
            f"foreign {self.foreign}, torn {self.torn}"
        )
        out.append(
            f"writes refused (ValueTooLarge, documented): {self.refused_writes}; "
            f"unexpected exceptions: {self.worker_errors}"
        )
        out.append("chaos:")
        for name, n in sorted(self.chaos.items()):
            out.append(f"  {name:<46} {n:>8,}")
        out.append("final state:")
        for name, value in self.final.items():
            out.append(f"  {name:<34} {_short(value)}")
        out.append(f"snapshots left in the directory: {len(self.snapshots)}")
        for snap in self.snapshots:
            out.append(
                f"  {snap['file']}: {snap.get('items', '?')} items, restored "
                f"{snap.get('restored', '?')} (+{snap.get('expired', '?')} expired), "
                f"check {'ok' if snap.get('check') == [] else snap.get('check')}, values "
                f"ok {snap.get('values_ok', '?')} bad {snap.get('values_bad', '?')}"
            )
        for bad in self.bad_values[:10]:
            out.append(f"BAD VALUE: {json.dumps(bad)}")
        for err in self.error_samples[:10]:
            out.append(f"ERROR: {json.dumps(err)[:1500]}")
        if self.failures:
            out.append(f"FAILED ({len(self.failures)}):")
            out.extend(f"  - {f[:3000]}" for f in self.failures)
        else:
            out.append("PASSED: no foreign or torn value, no unexpected error, checks clean")
        return "\n".join(out)


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 300 else text[:300] + "..."
