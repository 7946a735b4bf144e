"""What the end of a chaos run verifies, once the chaos is over: what the
workers reported, the segment itself and every snapshot left behind.

Each check appends what it finds wrong to ``report.failures`` and records
what it saw in ``report.final`` or ``report.snapshots``.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: _workers

from _workers import OK, new_name, verify_value
from chaos_report import ChaosReport
from chaos_worker import counter_keys, key_space

from metis_shm import Cache
from metis_shm.daemon.snapshots.format import list_snapshots, verify_snapshot
from metis_shm.daemon.snapshots.restore import restore

STALE_TEMP_SECONDS = 60.0  # snapshot.py removes a dead writer's temp file after this
FINAL_STATS = ("items", "bytes_used", "sets", "deletes", "evictions", "expirations",
               "lock_waits", "read_retries", "lock_recoveries")  # fmt: skip


def fold_worker_reports(
    report: ChaosReport,
    counts: Counter[str],
    bad: list[dict[str, Any]],
    errors: list[dict[str, Any]],
) -> None:
    """Every worker's counts, bad values and errors into ``report``; a bad
    value or an unexpected error is a failure."""
    report.ops = {k[3:]: v for k, v in counts.items() if k.startswith("op_")}
    report.reads = {
        k: counts.get(k, 0) for k in ("reads", "hits", "misses", "ok", "torn", "foreign")
    }
    report.refused_writes = counts.get("refused", 0)
    report.worker_errors = counts.get("errors", 0)
    report.bad_values = bad[:50]
    report.error_samples = errors[:20]
    foreign, torn, failures = report.foreign, report.torn, report.failures
    if foreign or torn:
        failures.append(f"{foreign} foreign and {torn} torn values read")
    if bad and not (foreign or torn):
        failures.append(f"{len(bad)} bad values reported")
    if report.worker_errors or errors:
        failures.append(f"{max(report.worker_errors, len(errors))} unexpected errors in workers")


def check_final_cache(name: str, n_keys: int, report: ChaosReport) -> None:
    """``Cache.check()`` on the segment, every item verified, the last stats."""
    final = report.final
    with Cache(name, create=False) as cache:
        problems = cache.check()
        final["Cache.check()"] = problems or "consistent"
        if problems:
            report.failures.append(f"Cache.check() at the end: {problems[:20]}")
        final.update(verify_cache(cache, n_keys, report.failures, "final cache"))
        st = cache.stats()
        final["stats"] = {k: getattr(st, k) for k in FINAL_STATS}


def check_snapshots(snap_dir: Path, name: str, n_keys: int, report: ChaosReport) -> None:
    """Every snapshot kept: verified, restored into a fresh segment, checked."""
    failures = report.failures
    paths = list_snapshots(snap_dir, name)
    if not paths:
        failures.append(f"no snapshot in {snap_dir}")
    for path in paths:
        entry: dict[str, Any] = {"file": path.name}
        report.snapshots.append(entry)
        fresh = new_name()
        try:
            info = verify_snapshot(path)
            entry["items"] = info.items
            with Cache(fresh, **info.cache_options()) as cache:
                rr = restore(cache, path)
                entry.update(restored=rr.restored, expired=rr.expired, rejected=rr.rejected)
                if rr.rejected or rr.restored + rr.expired != info.items:
                    failures.append(f"snapshot {path.name}: {entry}")
                entry["check"] = cache.check()
                if entry["check"]:
                    failures.append(f"snapshot {path.name} restored: {entry['check']}")
                found = verify_cache(cache, n_keys, failures, path.name)
                entry["values_ok"] = found["values ok"]
                entry["values_bad"] = found["values bad"]
        except Exception as exc:
            failures.append(f"snapshot {path.name}: {type(exc).__name__}: {exc}")
        finally:
            Cache.destroy(fresh)
    now = time.time()
    temps = [p for p in snap_dir.glob(".metis.*.tmp")]
    stale = [p.name for p in temps if now - p.stat().st_mtime > STALE_TEMP_SECONDS + 10]
    report.final["snapshot temp files left"] = len(temps)
    if stale:
        failures.append(f"stale snapshot temp files not removed: {stale}")


def verify_cache(cache: Cache, n_keys: int, failures: list[str], where: str) -> dict[str, Any]:
    """Every item of ``cache`` read and checked: values under the key space
    must verify, counters must be ints, no other key may exist."""
    keys = set(key_space(n_keys))
    counters = set(counter_keys())
    ok = bad = other = 0
    samples: list[str] = []
    for key in list(cache.keys()):
        value = cache.get(key)
        if value is None:
            continue  # expired or evicted since keys() listed it
        if key in keys:
            verdict = verify_value(key, value)
        elif key in counters:
            verdict = OK if type(value) is int else "not an int"
        else:
            verdict = "unknown key"
            other += 1
        if verdict == OK:
            ok += 1
        else:
            bad += 1
            if len(samples) < 5:
                samples.append(f"{key!r}: {verdict}: {bytes(value)[:64]!r}")
    if bad:
        failures.append(f"{where}: {bad} bad items: {samples}")
    return {"values ok": ok, "values bad": bad, "unknown keys": other}
