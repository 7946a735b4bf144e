"""OpenTelemetry metrics and spans for Metis caches (optional: ``pip install metis-shm[otel]``).

    from metis_shm import Cache
    from metis_shm.contrib.opentelemetry import instrument

    cache = Cache("app")
    inst = instrument(cache)                 # metrics on the global MeterProvider
    ...
    inst.uninstrument()

Metrics are observable instruments: at each collection the SDK calls their
callbacks, which read ``cache.stats()`` (shared memory, so every process's
work is counted) once per collection and cache. Nothing is added to the
cache's hot path.

Client spans (``client_spans=True``) are off by default: ``inst.cache`` is
then a thin proxy whose ``get``/``set``/``delete`` start a span for a
``sample_rate`` share of the calls (the rest go straight to the cache).

``daemon_span(name, **attrs)`` is what ``metisd`` wraps its sweeps,
snapshots, restores and reloads in; a no-op when OpenTelemetry is not
installed (and, through the API's default no-op tracer, when no SDK is set up).

OpenTelemetry is imported by this module only, when it is used: importing
``metis_shm`` never needs it. See docs/telemetry.md for every name and unit.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from metis_shm.cache import Cache
from metis_shm.errors import MetisError
from metis_shm.far import report as _far_report
from metis_shm.stats import ShardStats, Stats

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
    from opentelemetry.trace import Span, Tracer, TracerProvider

INSTRUMENTATION_NAME = "metis_shm"
NAMESPACE = "metis.cache"

ATTR_NAME = "metis.cache.name"
ATTR_POLICY = "metis.cache.policy"
ATTR_SHARD = "metis.cache.shard"
ATTR_OPERATION = "metis.cache.operation"
ATTR_HIT = "metis.cache.hit"

_INSTALL_HINT = (
    "metis_shm.contrib.opentelemetry needs OpenTelemetry, which is not installed: "
    "pip install 'metis-shm[otel]' (or opentelemetry-api and opentelemetry-sdk)"
)


def _require_otel() -> None:
    try:
        import opentelemetry.metrics
        import opentelemetry.trace  # noqa: F401
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc


def _version() -> str:
    from metis_shm import __version__

    return __version__


# ---- metrics ---------------------------------------------------------------------


@dataclass(frozen=True)
class MetricSpec:
    """One instrument: its name, kind, unit, description and the Stats field it reads."""

    name: str
    kind: str  # "counter", "updown" or "gauge"
    unit: str
    description: str
    field: str


# The instruments, in registration order. Counters are cumulative (the
# segment's counters only grow, summed over every process).
METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("metis.cache.hits", "counter", "{operation}", "Reads that found a live item.",
               "hits"),
    MetricSpec("metis.cache.misses", "counter", "{operation}", "Reads that found nothing.",
               "misses"),
    MetricSpec("metis.cache.sets", "counter", "{operation}", "Items stored.", "sets"),
    MetricSpec("metis.cache.deletes", "counter", "{operation}", "Items deleted.", "deletes"),
    MetricSpec("metis.cache.evictions", "counter", "{operation}",
               "Items evicted by the policy to make room.", "evictions"),
    MetricSpec("metis.cache.expirations", "counter", "{operation}",
               "Items removed because their TTL passed.", "expirations"),
    MetricSpec("metis.cache.lock.waits", "counter", "{operation}",
               "Writers that found a shard lock taken and had to wait.", "lock_waits"),
    MetricSpec("metis.cache.read.retries", "counter", "{operation}",
               "Lock-free reads retried because a writer changed the item meanwhile.",
               "read_retries"),
    MetricSpec("metis.cache.items", "updown", "{item}", "Items stored (expired ones not yet "
               "swept included).", "items"),
    MetricSpec("metis.cache.memory.used", "updown", "By", "Arena bytes held by items.",
               "bytes_used"),
    MetricSpec("metis.cache.memory.capacity", "updown", "By", "Arena bytes available to items.",
               "capacity"),
    MetricSpec("metis.cache.hit_ratio", "gauge", "1", "hits / (hits + misses) since the "
               "segment was created.", "hit_ratio"),
    MetricSpec("metis.cache.fragmentation", "gauge", "1", "Share of free arena bytes outside "
               "the largest free block.", "fragmentation"),
    MetricSpec("metis.cache.views.open", "updown", "{view}", "Views (Cache.view) open now, "
               "every process together.", "pins"),
    MetricSpec("metis.cache.memory.pinned", "updown", "By", "Arena bytes the open views pin.",
               "pinned_bytes"),
    MetricSpec("metis.cache.memory.held", "updown", "By", "Arena bytes out of the cache but "
               "held back from reuse by open views.", "held_bytes"),
)  # fmt: skip

# A near cache's far tier (metis_shm/far/report.py): one point per cache.
FAR_METRICS: tuple[MetricSpec, ...] = tuple(
    MetricSpec(
        f"metis.far.{key}",
        "counter" if kind == "counter" else "gauge",
        "{operation}" if kind == "counter" else "1",
        help_text,
        key,
    )
    for key, _, kind, help_text in _far_report.FAR_METRICS
)


class _Source:
    """One instrumented cache: reads its stats once per collection."""

    def __init__(self, cache: Cache, per_shard: bool) -> None:
        self.cache = cache
        self.per_shard = per_shard
        self.attributes: dict[str, str] = {ATTR_NAME: cache.name, ATTR_POLICY: cache.policy}
        self._lock = threading.Lock()
        self._stats: Stats | None = None
        self._served: set[str] = set()

    def stats_for(self, instrument: str) -> Stats | None:
        """The stats of the current collection: read afresh when ``instrument``
        has already been served from the last reading (a new collection began)."""
        with self._lock:
            if self._stats is None or instrument in self._served:
                try:
                    self._stats = self.cache.stats()
                except (MetisError, OSError):  # closed or gone: report nothing
                    self._stats = None
                    return None
                self._served = set()
            self._served.add(instrument)
            return self._stats

    def points(self, spec: MetricSpec) -> Iterator[tuple[float, dict[str, Any]]]:
        if spec.name.startswith("metis.far."):
            try:
                if self.cache.gated:
                    yield float(_far_report.far_report(self.cache)[spec.field]), self.attributes
            except (MetisError, OSError):
                pass
            return
        stats = self.stats_for(spec.name)
        if stats is None:
            return
        if not self.per_shard:
            yield _value(stats, spec.field), self.attributes
            return
        for i, shard in enumerate(stats.shards):
            yield _value(shard, spec.field), {**self.attributes, ATTR_SHARD: i}


def _value(stats: ShardStats, name: str) -> float:
    value = getattr(stats, name)
    return float(value) if isinstance(value, float) else int(value)


class _Registry:
    """The instruments of one MeterProvider, shared by every cache instrumented on it.

    (The SDK keeps the first registration of an instrument name and ignores
    the callbacks of later ones, so caches cannot each register their own.)
    """

    def __init__(self, provider: MeterProvider) -> None:
        from opentelemetry.metrics import Observation

        self.sources: list[_Source] = []
        self._lock = threading.Lock()
        meter = provider.get_meter(INSTRUMENTATION_NAME, _version())
        makers = {
            "counter": meter.create_observable_counter,
            "updown": meter.create_observable_up_down_counter,
            "gauge": meter.create_observable_gauge,
        }

        def callback_for(spec: MetricSpec) -> Callable[[CallbackOptions], Iterable[Observation]]:
            def callback(options: CallbackOptions) -> Iterable[Observation]:
                with self._lock:
                    sources = list(self.sources)
                return [
                    Observation(value, attrs)
                    for src in sources
                    for value, attrs in src.points(spec)
                ]

            return callback

        for spec in METRICS + FAR_METRICS:
            makers[spec.kind](
                spec.name, callbacks=[callback_for(spec)], unit=spec.unit,
                description=spec.description,
            )  # fmt: skip

    def add(self, source: _Source) -> None:
        with self._lock:
            self.sources.append(source)

    def remove(self, source: _Source) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self.sources.remove(source)


_registries: dict[int, tuple[object, _Registry]] = {}
_registries_lock = threading.Lock()


def _registry(provider: MeterProvider) -> _Registry:
    with _registries_lock:
        entry = _registries.get(id(provider))
        if entry is None or entry[0] is not provider:
            entry = (provider, _Registry(provider))
            _registries[id(provider)] = entry
        return entry[1]


# ---- client spans ----------------------------------------------------------------


class TracedCache:
    """A proxy of a ``Cache`` whose ``get``, ``set`` and ``delete`` are traced
    for a ``sample_rate`` share of calls; everything else is the cache's own.

    Spans are named ``metis.cache.get`` / ``.set`` / ``.delete`` (kind
    INTERNAL) with ``metis.cache.name``, ``metis.cache.operation`` and, for
    get, ``metis.cache.hit``. Keys and values are never recorded.
    """

    def __init__(
        self, cache: Cache, tracer: Tracer, sample_rate: float, rng: random.Random | None = None
    ) -> None:
        self._cache = cache
        self._tracer = tracer
        self._rate = sample_rate
        self._random = (rng or random.Random()).random
        self._enabled = True
        self._attrs = {ATTR_NAME: cache.name}

    @property
    def wrapped(self) -> Cache:
        """The Cache behind the proxy."""
        return self._cache

    def _sampled(self) -> bool:
        return self._enabled and self._random() < self._rate

    def get(self, key: str | bytes, default: Any = None) -> Any:
        if not self._sampled():
            return self._cache.get(key, default)
        with self._tracer.start_as_current_span(
            "metis.cache.get", attributes={**self._attrs, ATTR_OPERATION: "get"}
        ) as span:
            missing = _MISSING
            value = self._cache.get(key, missing)
            span.set_attribute(ATTR_HIT, value is not missing)
            return default if value is missing else value

    def set(self, key: str | bytes, value: object, ttl: float | None = None) -> None:
        if not self._sampled():
            return self._cache.set(key, value, ttl)
        with self._tracer.start_as_current_span(
            "metis.cache.set", attributes={**self._attrs, ATTR_OPERATION: "set"}
        ):
            return self._cache.set(key, value, ttl)

    def delete(self, key: str | bytes) -> bool:
        if not self._sampled():
            return self._cache.delete(key)
        with self._tracer.start_as_current_span(
            "metis.cache.delete", attributes={**self._attrs, ATTR_OPERATION: "delete"}
        ) as span:
            removed = self._cache.delete(key)
            span.set_attribute("metis.cache.deleted", removed)
            return removed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cache, name)

    def __contains__(self, key: object) -> bool:
        return key in self._cache

    def __len__(self) -> int:
        return len(self._cache)

    def __repr__(self) -> str:
        return f"<TracedCache {self._cache!r} sample_rate={self._rate}>"


_MISSING: Any = object()


# ---- instrument ------------------------------------------------------------------


@dataclass
class Instrumentation:
    """What ``instrument`` returns. ``cache`` is the object to use: the Cache
    itself, or a ``TracedCache`` proxy when client spans are on."""

    cache: Cache | TracedCache
    _source: _Source
    _registry: _Registry
    _proxy: TracedCache | None = None
    _active: bool = field(default=True)

    @property
    def active(self) -> bool:
        return self._active

    def uninstrument(self) -> None:
        """Stop reporting this cache's metrics and tracing its calls (idempotent).
        The proxy stays usable and calls the cache directly."""
        if not self._active:
            return
        self._active = False
        self._registry.remove(self._source)
        if self._proxy is not None:
            self._proxy._enabled = False


def instrument(
    cache: Cache,
    *,
    meter_provider: MeterProvider | None = None,
    tracer_provider: TracerProvider | None = None,
    client_spans: bool = False,
    sample_rate: float = 0.01,
    per_shard: bool = False,
    rng: random.Random | None = None,
) -> Instrumentation:
    """Report ``cache``'s metrics on ``meter_provider`` (default: the global
    one); with ``client_spans``, trace a ``sample_rate`` share of the get, set
    and delete calls made through ``Instrumentation.cache``. ``per_shard``
    reports one point per shard (``metis.cache.shard``) instead of totals.
    ``rng`` is for tests (deterministic sampling)."""
    _require_otel()
    from opentelemetry import metrics, trace

    if not 0.0 <= sample_rate <= 1.0:
        raise ValueError(f"sample_rate: {sample_rate!r} is not between 0.0 and 1.0")
    registry = _registry(meter_provider or metrics.get_meter_provider())
    source = _Source(cache, per_shard)
    registry.add(source)
    proxy: TracedCache | None = None
    if client_spans:
        tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer(
            INSTRUMENTATION_NAME, _version()
        )
        proxy = TracedCache(cache, tracer, sample_rate, rng)
    return Instrumentation(
        cache=proxy if proxy is not None else cache,
        _source=source,
        _registry=registry,
        _proxy=proxy,
    )


# ---- daemon spans ----------------------------------------------------------------


class DaemonSpan:
    """What ``daemon_span`` yields: ``set(key, value)`` adds an attribute
    (same naming as the keyword arguments); a no-op without OpenTelemetry."""

    def __init__(self, span: Span | None, operation: str) -> None:
        self._span = span
        self._operation = operation

    def set(self, key: str, value: str | int | float | bool) -> None:
        if self._span is not None:
            self._span.set_attribute(_attr_name(self._operation, key), value)


def _attr_name(operation: str, key: str) -> str:
    if key == "cache":
        return ATTR_NAME
    return f"metis.{operation}.{key}"


_daemon_tracer_provider: TracerProvider | None = None
_otel_missing: bool | None = None


def set_daemon_tracer_provider(provider: TracerProvider | None) -> None:
    """The TracerProvider ``daemon_span`` uses (None: the global one, which
    ``opentelemetry-instrument`` or the SDK's ``trace.set_tracer_provider`` set)."""
    global _daemon_tracer_provider
    _daemon_tracer_provider = provider


def _daemon_tracer() -> Tracer | None:
    global _otel_missing
    if _otel_missing is None:
        try:
            import opentelemetry.trace  # noqa: F401

            _otel_missing = False
        except ImportError:
            _otel_missing = True
    if _otel_missing:
        return None
    from opentelemetry import trace

    provider = _daemon_tracer_provider or trace.get_tracer_provider()
    return provider.get_tracer(INSTRUMENTATION_NAME, _version())


@contextlib.contextmanager
def daemon_span(name: str, **attrs: str | int | float | bool) -> Iterator[DaemonSpan]:
    """A span ``metis.daemon.<name>`` around daemon work (sweep, snapshot,
    restore, reload). ``cache=`` becomes ``metis.cache.name``; any other
    keyword ``k`` becomes ``metis.<name>.<k>``. An exception is recorded on
    the span (status ERROR) and re-raised. Without OpenTelemetry: no-op."""
    tracer = _daemon_tracer()
    if tracer is None:
        yield DaemonSpan(None, name)
        return
    attributes = {_attr_name(name, k): v for k, v in attrs.items()}
    with tracer.start_as_current_span(f"metis.daemon.{name}", attributes=attributes) as span:
        yield DaemonSpan(span, name)


__all__ = [
    "METRICS",
    "DaemonSpan",
    "Instrumentation",
    "MetricSpec",
    "TracedCache",
    "daemon_span",
    "instrument",
    "set_daemon_tracer_provider",
]
