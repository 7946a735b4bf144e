"""The far tier in numbers: NearCache.far_stats(), metisd's /stats and
/metrics, `metis top` and OpenTelemetry, after known operations on two real
machines in front of a real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _machines import start_machine, wait_until
from _metisd import python_env
from _workers import new_name
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client.parser import text_string_to_metric_families

from metis_shm import Cache
from metis_shm.contrib.opentelemetry import instrument
from metis_shm.far.report import FAR_METRICS

pytestmark = pytest.mark.integration


def test_far_numbers_everywhere(tmp_path: Path, redis_server: Any, daemons: Any) -> None:
    far = {"url": redis_server.url, "prefix": f"obs{os.getpid()}:"}
    a = start_machine(tmp_path, new_name(), far, daemons)
    b = start_machine(tmp_path, new_name(), far, daemons)
    try:
        for i in range(20):
            a.cache.set(f"k{i}", i)
        for i in range(20):
            assert b.cache.get(f"k{i}") == i  # far hits, fills
        assert b.cache.get("absent") is None  # a far miss
        for i in range(20):
            a.cache.set(f"k{i}", -i)  # invalidates B's copies
        wait_until(lambda: b.cache.far_stats()["invalidations"] >= 20, 2.0, "B hears A's writes")

        b.wait_gate()  # a loaded tracker may fall a bound behind for a moment
        st = b.cache.far_stats()
        assert st["far_hits"] >= 20 and st["far_misses"] >= 1 and st["fills"] >= 1
        assert st["tracker_state"] == "subscribed" and st["gate_open"]
        assert st["generation_bumps"] >= 1  # the subscription's own bump
        assert 0 <= st["vouched_for_seconds"] <= 1.0  # at most one bound ahead

        assert b.daemon is not None
        code, _, body = b.daemon.get("/stats")
        assert code == 200
        section = json.loads(body)["daemon"]["caches"][b.name]["far"]
        assert section["invalidations"] >= 20 and section["tracker_state"] == "subscribed"

        code, _, text = b.daemon.get("/metrics")
        families = {f.name: f for f in text_string_to_metric_families(text)}
        for _, metric, kind, _ in FAR_METRICS:
            name = metric[: -len("_total")] if kind == "counter" else metric
            assert name in families, metric
            assert any(s.labels.get("cache") == b.name for s in families[name].samples), metric
        up = [s.value for s in families["metis_far_tracker_up"].samples]
        assert up in ([1.0], [0.0])  # 0 only while a loaded tracker is a bound behind

        top = subprocess.run(
            [sys.executable, "-m", "metis_shm", "top", b.name, "--once", "--interval", "0.2"],
            capture_output=True, text=True, timeout=60, env=python_env(),
        )  # fmt: skip
        assert top.returncode == 0, top.stderr
        assert "far tier: tracker subscribed, near tier serving" in top.stdout
        assert "invalidations" in top.stdout

        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        inst = instrument(b.cache, meter_provider=provider)
        try:
            data = reader.get_metrics_data()
            assert data is not None
            seen = {
                m.name: [p.value for p in m.data.data_points]
                for rm in data.resource_metrics
                for sm in rm.scope_metrics
                for m in sm.metrics
            }
            assert seen["metis.far.far_hits"][0] >= 20
            assert seen["metis.far.tracker_up"] in ([1.0], [0.0])
        finally:
            inst.uninstrument()
            provider.shutdown()
    finally:
        for m in (a, b):
            m.cache.close()
            Cache.destroy(m.name)
