"""What a torture run found: its failures, each phase's result, the summary.

``TortureReport.text()`` is what the command line prints and ``to_dict()``
what ``--report`` writes; ``failures`` empty means the run passed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Failure:
    """One failure: when (seconds since the run started), where, what."""

    at: float
    phase: int
    kind: str
    detail: str


@dataclass
class PhaseResult:
    """What one phase did and what its final check found."""

    index: int
    label: str
    seconds: float
    counts: dict[str, int]
    chaos: dict[str, int]
    failures: int
    final: dict[str, Any]


@dataclass
class TortureReport:
    """What a run did and found; ``failures`` empty means it passed."""

    seed: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    chaos_seconds: float = 0.0
    phases: list[PhaseResult] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)
    chaos: dict[str, int] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    failure_kinds: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False

    @property
    def first_failure(self) -> Failure | None:
        """The earliest failure of any kind."""
        return min(self.failures, key=lambda f: f.at, default=None)

    @property
    def first_crash(self) -> Failure | None:
        """The earliest worker death by a signal nobody sent."""
        crashes = [f for f in self.failures if f.kind == "signal"]
        return min(crashes, key=lambda f: f.at, default=None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        d = asdict(self)
        d["failures"] = d["failures"][:1000]
        first, crash = self.first_failure, self.first_crash
        d["first_failure_seconds"] = first.at if first else None
        d["first_crash_seconds"] = crash.at if crash else None
        return d

    def text(self) -> str:
        """The human summary."""
        t = self.totals
        out = [
            f"torture run, seed {self.seed}: {len(self.phases)} phases, "
            f"{self.chaos_seconds:.1f} s of chaos, {self.seconds:.1f} s in all"
            + (" (interrupted)" if self.interrupted else ""),
        ]
        for p in self.phases:
            c = p.counts
            final = "ok" if not p.final.get("problems") else f"{len(p.final['problems'])} problems"
            out.append(
                f"  phase {p.index + 1:>2} {p.label}: {p.seconds:.1f} s, ops {c.get('ops', 0):,}, "
                f"verified {c.get('ok', 0):,}, kills {p.chaos.get('SIGKILL sent', 0)}, "
                f"stops {p.chaos.get('SIGSTOP sent', 0)}, repairs {c.get('repairs', 0):,}, "
                f"failures {p.failures}, final check {final}"
            )
        out.append(
            f"ops {t.get('ops', 0):,}: reads {t.get('reads', 0):,} ({t.get('hits', 0):,} hits; "
            f"verified ok {t.get('ok', 0):,}, torn {t.get('torn', 0)}, foreign "
            f"{t.get('foreign', 0)}, bad counters {t.get('bad_counter', 0)}), writes "
            f"{t.get('writes', 0):,} (refused as ValueTooLarge {t.get('refused', 0):,}), "
            f"repairs {t.get('repairs', 0):,}, checks {t.get('checks', 0):,}, sweeps "
            f"{t.get('sweeps', 0):,}, keys() {t.get('keys_calls', 0):,}, errors "
            f"{t.get('errors', 0)}"
        )
        out.append("chaos: " + ", ".join(f"{k} {v:,}" for k, v in sorted(self.chaos.items())))
        if not self.failures:
            out.append("PASSED: no failure")
            return "\n".join(out)
        first, crash = self.first_failure, self.first_crash
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.failure_kinds.items()))
        out.append(f"FAILED: {sum(self.failure_kinds.values())} failures ({kinds})")
        if first is not None:
            out.append(f"  first failure after {first.at:.2f} s: [{first.kind}] {first.detail}")
        if crash is not None:
            n = self.failure_kinds.get("signal", 0)
            out.append(
                f"  first crash after {crash.at:.2f} s ({n} crashes in "
                f"{self.chaos_seconds:.0f} s): {crash.detail}"
            )
        shown = sorted(self.failures, key=lambda f: f.at)[:25]
        out.extend(
            f"  {f.at:8.2f} s phase {f.phase + 1} [{f.kind}] {f.detail[:600]}" for f in shown
        )
        if len(self.failures) > len(shown):
            out.append(f"  ... and {len(self.failures) - len(shown)} more")
        return "\n".join(out)
