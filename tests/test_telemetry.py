"""OpenTelemetry: metrics read with the SDK's InMemoryMetricReader and spans
with its InMemorySpanExporter, after known operations on a real cache."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import opentelemetry.sdk  # noqa: F401 - a test dependency (the test extra)
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from metis_shm import Cache
from metis_shm.contrib.opentelemetry import (
    METRICS,
    TracedCache,
    daemon_span,
    instrument,
    set_daemon_tracer_provider,
)

EXPECTED_UNITS = {
    "metis.cache.hits": "{operation}",
    "metis.cache.misses": "{operation}",
    "metis.cache.sets": "{operation}",
    "metis.cache.deletes": "{operation}",
    "metis.cache.evictions": "{operation}",
    "metis.cache.expirations": "{operation}",
    "metis.cache.lock.waits": "{operation}",
    "metis.cache.read.retries": "{operation}",
    "metis.cache.items": "{item}",
    "metis.cache.memory.used": "By",
    "metis.cache.memory.capacity": "By",
    "metis.cache.hit_ratio": "1",
    "metis.cache.fragmentation": "1",
    "metis.cache.views.open": "{view}",
    "metis.cache.memory.pinned": "By",
    "metis.cache.memory.held": "By",
}


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    r = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[r])
    yield r
    provider.shutdown()


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def collect(reader: InMemoryMetricReader) -> dict[str, tuple[str, str, list[Any]]]:
    """{metric name: (unit, data type name, [(attributes, value), ...])}"""
    data = reader.get_metrics_data()
    out: dict[str, tuple[str, str, list[Any]]] = {}
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            assert sm.scope.name == "metis_shm"
            for m in sm.metrics:
                points = [(dict(p.attributes or {}), p.value) for p in m.data.data_points]
                out[m.name] = (m.unit or "", type(m.data).__name__, points)
    return out


def value_for(metrics: dict[str, Any], name: str, cache: str) -> Any:
    matches = [v for attrs, v in metrics[name][2] if attrs.get("metis.cache.name") == cache]
    assert len(matches) == 1, (name, metrics[name])
    return matches[0]


def make_meter_provider() -> tuple[MeterProvider, InMemoryMetricReader]:
    r = InMemoryMetricReader()
    return MeterProvider(metric_readers=[r]), r


def test_metric_names_units_and_values(cache: Cache) -> None:
    provider, reader = make_meter_provider()
    inst = instrument(cache, meter_provider=provider)
    try:
        cache.set("a", b"1")
        cache.set("b", b"22")
        cache.set("c", b"333")
        assert cache.get("a") == b"1"
        assert cache.get("b") == b"22"
        assert cache.get("a") == b"1"
        assert cache.get("missing") is None
        assert cache.delete("c")
        metrics = collect(reader)
        assert set(metrics) == set(EXPECTED_UNITS)
        for name, unit in EXPECTED_UNITS.items():
            assert metrics[name][0] == unit, name
        kinds = {name: kind for name, (_, kind, _) in metrics.items()}
        assert kinds["metis.cache.hits"] == "Sum" and kinds["metis.cache.items"] == "Sum"
        assert kinds["metis.cache.hit_ratio"] == "Gauge"
        stats = cache.stats()
        assert value_for(metrics, "metis.cache.hits", cache.name) == 3
        assert value_for(metrics, "metis.cache.misses", cache.name) == 1
        assert value_for(metrics, "metis.cache.sets", cache.name) == 3
        assert value_for(metrics, "metis.cache.deletes", cache.name) == 1
        assert value_for(metrics, "metis.cache.evictions", cache.name) == 0
        assert value_for(metrics, "metis.cache.items", cache.name) == 2
        assert value_for(metrics, "metis.cache.memory.used", cache.name) == stats.bytes_used > 0
        assert value_for(metrics, "metis.cache.memory.capacity", cache.name) == cache.capacity
        assert value_for(metrics, "metis.cache.hit_ratio", cache.name) == pytest.approx(0.75)
        assert 0.0 <= value_for(metrics, "metis.cache.fragmentation", cache.name) <= 1.0
        attrs = metrics["metis.cache.hits"][2][0][0]
        assert attrs == {"metis.cache.name": cache.name, "metis.cache.policy": cache.policy}
        # Counters are cumulative and monotonic; the next collection sees new work.
        cache.get("a")
        metrics = collect(reader)
        assert value_for(metrics, "metis.cache.hits", cache.name) == 4
        assert value_for(metrics, "metis.cache.hit_ratio", cache.name) == pytest.approx(0.8)
    finally:
        inst.uninstrument()
        provider.shutdown()


def test_stats_read_once_per_collection(cache: Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    provider, reader = make_meter_provider()
    inst = instrument(cache, meter_provider=provider)
    calls = [0]
    real = Cache.stats

    def counting(self: Cache) -> Any:
        calls[0] += 1
        return real(self)

    monkeypatch.setattr(Cache, "stats", counting)
    try:
        collect(reader)
        assert calls[0] == 1
        collect(reader)
        assert calls[0] == 2
    finally:
        inst.uninstrument()
        provider.shutdown()


def test_two_caches_one_provider_and_uninstrument(cache: Cache, cache_name: str) -> None:
    other_name = cache_name + "-b"
    other = Cache(other_name, capacity="4MiB", policy="lru")
    provider, reader = make_meter_provider()
    try:
        a = instrument(cache, meter_provider=provider)
        b = instrument(other, meter_provider=provider)
        cache.set("x", 1)
        other.set_many({"y": 1, "z": 2})
        metrics = collect(reader)
        assert value_for(metrics, "metis.cache.items", cache.name) == 1
        assert value_for(metrics, "metis.cache.items", other_name) == 2
        policies = {p[0]["metis.cache.policy"] for p in metrics["metis.cache.items"][2]}
        assert policies == {cache.policy, "lru"}
        b.uninstrument()
        b.uninstrument()  # idempotent
        assert not b.active
        metrics = collect(reader)
        names = {p[0]["metis.cache.name"] for p in metrics["metis.cache.items"][2]}
        assert names == {cache.name}
        a.uninstrument()
    finally:
        provider.shutdown()
        other.close()
        Cache.destroy(other_name)


def test_per_shard_points(cache_name: str) -> None:
    c = Cache(cache_name, capacity="4MiB", shards=4)
    provider, reader = make_meter_provider()
    inst = instrument(c, meter_provider=provider, per_shard=True)
    try:
        c.set_many({f"k{i}": i for i in range(40)})
        points = collect(reader)["metis.cache.items"][2]
        assert sorted(attrs["metis.cache.shard"] for attrs, _ in points) == [0, 1, 2, 3]
        assert sum(v for _, v in points) == 40
    finally:
        inst.uninstrument()
        provider.shutdown()
        c.close()


def test_closed_cache_reports_nothing(cache_name: str) -> None:
    c = Cache(cache_name, capacity="4MiB")
    provider, reader = make_meter_provider()
    inst = instrument(c, meter_provider=provider)
    c.close()
    try:
        data = reader.get_metrics_data()
        points = [
            p
            for rm in (data.resource_metrics if data else [])
            for sm in rm.scope_metrics
            for m in sm.metrics
            for p in m.data.data_points
        ]
        assert points == []
    finally:
        inst.uninstrument()
        provider.shutdown()


def test_client_spans_off_by_default(cache: Cache) -> None:
    provider, _ = make_meter_provider()
    inst = instrument(cache, meter_provider=provider)
    assert inst.cache is cache
    inst.uninstrument()
    provider.shutdown()


def test_client_spans_sampled(
    cache: Cache, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    tracer_provider, exporter = spans
    provider, _ = make_meter_provider()
    inst = instrument(
        cache,
        meter_provider=provider,
        tracer_provider=tracer_provider,
        client_spans=True,
        sample_rate=1.0,
    )
    try:
        traced = inst.cache
        assert isinstance(traced, TracedCache) and traced.wrapped is cache
        traced.set("k", b"v", ttl=60)
        assert traced.get("k") == b"v"
        assert traced.get("nope", "dflt") == "dflt"
        assert traced.delete("k") is True
        assert traced.name == cache.name and len(traced) == 0  # the rest is the cache's
        finished = exporter.get_finished_spans()
        assert [s.name for s in finished] == [
            "metis.cache.set",
            "metis.cache.get",
            "metis.cache.get",
            "metis.cache.delete",
        ]
        for s in finished:
            assert s.attributes is not None
            assert s.attributes["metis.cache.name"] == cache.name
            assert s.instrumentation_scope is not None
            assert s.instrumentation_scope.name == "metis_shm"
        assert [s.attributes.get("metis.cache.hit") for s in finished[1:3]] == [True, False]  # type: ignore[union-attr]
        assert finished[0].attributes["metis.cache.operation"] == "set"  # type: ignore[index]
        # After uninstrument the proxy still works, without spans.
        inst.uninstrument()
        exporter.clear()
        traced.set("k2", 1)
        assert traced.get("k2") == 1
        assert exporter.get_finished_spans() == ()
    finally:
        provider.shutdown()


def test_client_span_sampling_rate(
    cache: Cache, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    tracer_provider, exporter = spans
    provider, _ = make_meter_provider()
    inst = instrument(
        cache,
        meter_provider=provider,
        tracer_provider=tracer_provider,
        client_spans=True,
        sample_rate=0.1,
        rng=random.Random(7),
    )
    try:
        for i in range(2000):
            inst.cache.get(f"k{i}")
        n = len(exporter.get_finished_spans())
        assert 120 < n < 280, n  # 10 % of 2000, loosely
        assert cache.stats().misses == 2000  # every call reached the cache
    finally:
        inst.uninstrument()
        provider.shutdown()
    with pytest.raises(ValueError, match="sample_rate"):
        instrument(cache, client_spans=True, sample_rate=1.5)


def test_daemon_span(spans: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    tracer_provider, exporter = spans
    set_daemon_tracer_provider(tracer_provider)
    try:
        with daemon_span("sweep", cache="app") as span:
            span.set("removed", 12)
        with pytest.raises(RuntimeError), daemon_span("snapshot", cache="app"):
            raise RuntimeError("disk full")
    finally:
        set_daemon_tracer_provider(None)
    sweep, snap = exporter.get_finished_spans()
    assert sweep.name == "metis.daemon.sweep"
    assert dict(sweep.attributes or {}) == {"metis.cache.name": "app", "metis.sweep.removed": 12}
    assert snap.name == "metis.daemon.snapshot"
    assert snap.status.status_code is StatusCode.ERROR
    assert [e.name for e in snap.events] == ["exception"]


def test_daemon_spans_from_the_supervisor(
    tmp_path: Any, cache_name: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    """The real Daemon's sweep, snapshot, restore and reload each make a span."""
    from metis_shm.daemon.config import load_config
    from metis_shm.daemon.lifecycle import Daemon
    from metis_shm.daemon.systemd import Notifier

    tracer_provider, exporter = spans
    overrides = {
        "caches[0]": {"name": cache_name, "capacity": "4MiB"},
        "snapshot.path": str(tmp_path),
        "health.enabled": False,
    }
    set_daemon_tracer_provider(tracer_provider)
    try:
        loaded = load_config(env={}, overrides=overrides)
        daemon = Daemon(loaded, overrides=overrides, notifier=Notifier({}))
        daemon.start()
        try:
            daemon.tick()
            managed = daemon.caches[cache_name]
            managed.cache.set("k", b"v")
            assert daemon.snapshot(managed)
            assert daemon.reload()
        finally:
            daemon.shutdown(snapshot=False)
    finally:
        set_daemon_tracer_provider(None)
    names = [s.name for s in exporter.get_finished_spans()]
    for want in ("metis.daemon.restore", "metis.daemon.sweep", "metis.daemon.snapshot",
                 "metis.daemon.reload"):  # fmt: skip
        assert want in names, names
    snap = next(s for s in exporter.get_finished_spans() if s.name == "metis.daemon.snapshot")
    assert dict(snap.attributes or {}) == {
        "metis.cache.name": cache_name,
        "metis.snapshot.items": 1,
    }


def test_metric_table_matches_the_docs() -> None:
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "telemetry.md").read_text()
    for spec in METRICS:
        assert f"`{spec.name}`" in doc and spec.unit in doc


def test_clear_error_without_opentelemetry(cache: Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import metis_shm.contrib.opentelemetry as telemetry

    monkeypatch.setitem(sys.modules, "opentelemetry.metrics", None)
    monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)
    with pytest.raises(ImportError, match=r"metis-shm\[otel\]"):
        instrument(cache)
    monkeypatch.setattr(telemetry, "_otel_missing", None)
    with daemon_span("sweep", cache="x") as span:  # a no-op, no error
        span.set("removed", 1)
    monkeypatch.setattr(telemetry, "_otel_missing", None)
