"""The chaos run at CI length: 35 s of SIGKILL/SIGSTOP against a real metisd and
four worker processes (chaos_run.py; the 10-minute run is in docs/chaos.md).

Passes when no read saw another key's value or a torn value, no operation
raised anything undocumented, ``metis check`` and ``Cache.check()`` find the
segment consistent at the end, every kept snapshot restores into a fresh
segment that checks clean, and the chaos really happened: enough kills and
stops, at least one metisd restart that re-attached, at least one snapshot
written while a worker was being SIGKILLed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from chaos_run import ChaosConfig, run_chaos

CHAOS_SECONDS = 35.0
TEARDOWN_LIMIT = 150.0  # the run's watchdog kills everything past 35 + 150 s
MIN_KILLS = 10  # expected about 35 / 0.8 = 44, plus the kills that follow snapshot requests
MIN_STOPS = 10  # expected about 35 / 0.5 = 70 (a stop of an already stopped worker is skipped)


@pytest.mark.slow
@pytest.mark.integration
def test_chaos_run(tmp_path: Path, seed: int) -> None:
    """35 s of chaos: no foreign or torn value, clean checks, real chaos."""
    report = run_chaos(
        ChaosConfig(
            duration=CHAOS_SECONDS,
            workers=4,
            seed=seed,
            run_dir=tmp_path,
            teardown_timeout=TEARDOWN_LIMIT,
            daemon_kill_after=(4.0, 10.0),
        )
    )
    text = report.text()
    print(text)
    assert report.failures == [], text
    assert report.foreign == 0 and report.torn == 0, text
    assert report.reads["hits"] > 10_000, text  # the workers really read and verified
    assert report.final["metis check (CLI)"] == "consistent", text
    assert report.final["Cache.check()"] == "consistent", text
    assert report.final["values bad"] == 0 and report.final["values ok"] > 100, text
    assert report.snapshots and all(s["check"] == [] for s in report.snapshots), text
    chaos = report.chaos
    assert chaos.get("workers SIGKILLed", 0) >= MIN_KILLS, text
    assert chaos.get("workers SIGSTOPped", 0) >= MIN_STOPS, text
    assert chaos.get("metisd restarts (re-attached)", 0) >= 1, text
    assert chaos.get("snapshots written by metisd", 0) >= 1, text
    assert chaos.get("snapshots with a worker SIGKILLed meanwhile", 0) >= 1, text
