"""One million items with a short TTL expire through metisd's sweeps while a
reader process runs: items and bytes used fall back to where they were, and
the reader's get latency is measured before and during the sweep.

The latencies are printed (``pytest -s`` shows them), not asserted against
a wall-clock number: a shared CI machine cannot promise one. What is
asserted is that they were measured and that metisd's sweeps removed the
items.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from _metisd import ROOT, python_env, write_config

from metis_shm import Cache

CLIENTS = Path(__file__).with_name("_clients.py")
N_ITEMS = 1_000_000
N_HOT = 10_000
CHUNK = 100_000


def _send(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


@pytest.mark.slow
def test_million_items_expire_through_sweeps(
    tmp_path: Path, daemons: Any, names: Any, record_property: Any
) -> None:
    name = names()
    config = write_config(
        tmp_path / "metisd.toml",
        [{"name": name, "capacity": "256MiB"}],
        sweep={"interval": "50ms", "budget": 100_000},
        heartbeat_interval="200ms",
    )
    d = daemons(config).wait_ready()
    reader = None
    try:
        with Cache(name, create=False) as cache:
            cache.set_many({f"hot:{i}": b"h" * 16 for i in range(N_HOT)})
            baseline = cache.stats()
            reader = subprocess.Popen(
                [sys.executable, str(CLIENTS), "reader", name, str(N_HOT)],
                env=python_env(),
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert reader.stdout is not None
            assert reader.stdout.readline().strip() == "reader ready"

            # How fast does this machine fill? Then every item gets the same
            # expiry, far enough ahead for a quiet "before" window.
            t = time.monotonic()
            cache.set_many({f"cal:{i}": b"c" for i in range(CHUNK // 5)})
            per_item = (time.monotonic() - t) / (CHUNK // 5)
            cache.delete_many([f"cal:{i}" for i in range(CHUNK // 5)])
            fill_estimate = per_item * N_ITEMS
            expire_at = time.time() + 2 * fill_estimate + 3.0

            t_fill = time.monotonic()
            for base in range(0, N_ITEMS, CHUNK):
                batch = {f"t:{i}": b"v" for i in range(base, base + CHUNK)}
                cache.set_many(batch, ttl=expire_at - time.time())
            fill_seconds = time.monotonic() - t_fill
            full = cache.stats()
            assert full.items == N_HOT + N_ITEMS, "evictions or early expiry during the fill"
            swept_before = d.stats()["daemon"]["caches"][name]["swept_items"]

            _send(reader, "before")
            time.sleep(max(0.5, expire_at - time.time() - 0.3))
            _send(reader, "idle")
            time.sleep(max(0.0, expire_at - time.time()))
            _send(reader, "during")
            t_sweep = time.monotonic()
            deadline = t_sweep + 30
            while time.monotonic() < deadline:
                st = cache.stats()
                if st.items == N_HOT and st.bytes_used <= baseline.bytes_used:
                    break
                time.sleep(0.02)
            sweep_seconds = time.monotonic() - t_sweep
            _send(reader, "idle")
            after = cache.stats()
            assert after.items == N_HOT, f"{after.items - N_HOT} items still there"
            assert after.bytes_used <= baseline.bytes_used
            assert full.bytes_used > baseline.bytes_used + N_ITEMS * 16
            assert cache.get("hot:1") == b"h" * 16

        _send(reader, "stop")
        out, _ = reader.communicate(timeout=60)
        assert reader.returncode == 0
        latency = json.loads(out.strip().splitlines()[-1])
    finally:
        if reader is not None and reader.poll() is None:
            reader.kill()
            reader.wait(timeout=10)

    counters = d.stats()["daemon"]["caches"][name]
    swept = counters["swept_items"] - swept_before
    assert swept >= N_ITEMS * 0.99, f"metisd swept only {swept} items"
    assert counters["sweeps"] > 0 and counters["errors"] == 0
    before, during = latency["before"], latency["during"]
    assert before["n"] > 1000 and during["n"] > 100, latency
    assert before["misses"] == 0 and during["misses"] == 0
    ratio = during["p99"] / max(1, before["p99"])
    report = (
        f"1M items: fill {fill_seconds:.2f} s, swept in {sweep_seconds:.2f} s by metisd "
        f"(bytes used {full.bytes_used:,} -> {after.bytes_used:,}); reader get latency p99: "
        f"before {before['p99'] / 1e3:.2f} us (n={before['n']:,}), during the sweep "
        f"{during['p99'] / 1e3:.2f} us (n={during['n']:,}), ratio {ratio:.2f}; "
        f"p50 {before['p50'] / 1e3:.2f} / {during['p50'] / 1e3:.2f} us"
    )
    print(report)
    record_property("sweep_latency", report)
    assert d.stop() == 0
