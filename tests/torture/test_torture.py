"""The torture run at CI length (torture.py; the long run is in docs/testing.md).

Two tests:

* ``test_torture_every_policy``: 36 s of chaos, one phase per policy and
  shard count (six policies x 1 and 4 shards of a 256 KiB cache), writers,
  readers and a repairer SIGKILLed and SIGSTOPped at random. Passes when no
  read returned a torn or foreign value, no worker died of a signal it was not
  sent, ``check()`` stayed clean during and after every phase, the byte
  accounting adds up, no read waited for a stopped process, and the chaos
  really happened.
* ``test_issue_scenario_readers_survive``: the scenario of the report that
  started the torture family, as it was given: one writer storing random bytes
  of 0 to 3000 B under 16 keys, three readers calling get(), one shard, LRU,
  256 KiB, for 8 s. Layout version 1 readers died of SIGSEGV in it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from torture import POLICIES, TortureConfig, TortureReport, run_torture

CI_SECONDS = 36.0  # of chaos; the final checks add about a second in all
FOCUSED_SECONDS = 8.0
MIN_KILLS = 40  # expected about 36 / 0.3 = 120
MIN_STOPS = 40  # expected about 36 / 0.2 = 180
MIN_VERIFIED = 100_000  # reads whose value was judged whole


def _summary(report: TortureReport) -> str:
    text = report.text()
    print(text)
    return text


@pytest.mark.slow
def test_torture_every_policy(names: Callable[[], str], seed: int) -> None:
    """36 s over every policy x {1, 4} shards: no failure, and real chaos."""
    report = run_torture(
        TortureConfig(duration=CI_SECONDS, seed=seed, phase_seconds=None, name_factory=names)
    )
    text = _summary(report)
    assert report.failures == [], text
    assert {p.label.split()[0] for p in report.phases} == set(POLICIES), text
    assert all("items" in p.final for p in report.phases), text  # every final check ran
    t, chaos = report.totals, report.chaos
    assert t.get("ok", 0) >= MIN_VERIFIED, text
    assert t.get("writes", 0) >= MIN_VERIFIED, text
    assert t.get("repairs", 0) >= 1000 and t.get("checks", 0) >= 100, text
    assert chaos.get("SIGKILL sent", 0) >= MIN_KILLS, text
    assert chaos.get("SIGSTOP sent", 0) >= MIN_STOPS, text
    assert chaos.get("SIGKILL during a repair burst", 0) >= 1, text


@pytest.mark.slow
def test_issue_scenario_readers_survive(names: Callable[[], str], seed: int) -> None:
    """1 writer of random bytes (0-3000 B) under 16 keys, 3 readers, 1 shard, LRU: 8 s."""
    report = run_torture(
        TortureConfig(duration=FOCUSED_SECONDS, seed=seed, focused=True, name_factory=names)
    )
    text = _summary(report)
    crashes = [f for f in report.failures if f.kind == "signal"]
    assert crashes == [], f"{len(crashes)} readers died of a signal:\n{text}"
    assert report.failures == [], text
    assert report.totals.get("ok", 0) >= 10_000, text
