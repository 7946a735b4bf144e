"""metisd's HTTP endpoints: ``/healthz``, ``/stats`` and ``/metrics``.

* ``/healthz``: ``200`` when the daemon is ready and its maintenance loop
  runs, ``503`` otherwise; the JSON body says why (``reasons``) and what
  deserves a look without making the daemon unhealthy (``warnings``).
* ``/stats``: JSON, every cache's ``Stats.to_dict()`` under ``caches`` and the
  daemon's own counters under ``daemon``. ``/stats?shards=0`` leaves out the
  per-shard lists.
* ``/metrics``: the Prometheus text exposition format (version 0.0.4) of the
  same numbers, built by ``render_metrics``.

Served by the standard library's ``ThreadingHTTPServer`` on a TCP address
(keep it on loopback) and optionally on a unix socket, each in a daemon
thread. The server knows nothing of caches: it asks an ``Endpoints`` object
for each answer (the daemon's: status.py).

Metric names follow Prometheus conventions: a ``metis_`` namespace, base
units in the name (``_bytes``, ``_seconds``), ``_total`` on counters, the
cache as the ``cache`` label. The full list is in docs/daemon.md.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import socketserver
import stat
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import msgspec

from metis_shm.stats import Stats

log = logging.getLogger("metis_shm.daemon")

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
JSON_CONTENT_TYPE = "application/json"
REQUEST_TIMEOUT = 10.0  # seconds a client may take to send its request


class Endpoints(Protocol):
    """What the server asks the daemon."""

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, the JSON body of /healthz)."""
        ...

    def stats(self, *, shards: bool = True) -> dict[str, Any]:
        """The JSON body of /stats."""
        ...

    def metrics(self) -> str:
        """The body of /metrics."""
        ...


# ---- Prometheus text exposition ----------------------------------------------


@dataclass
class Family:
    """One metric family: its samples share a name, a type and a help line."""

    name: str
    type: str  # "counter" or "gauge"
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> None:
        self.samples.append((labels, value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def format_families(families: Iterable[Family]) -> str:
    """The text exposition of ``families`` (families without samples are left out)."""
    lines: list[str] = []
    for fam in families:
        if not fam.samples:
            continue
        lines.append(f"# HELP {fam.name} {_escape_help(fam.help)}")
        lines.append(f"# TYPE {fam.name} {fam.type}")
        for labels, value in fam.samples:
            if labels:
                inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
                lines.append(f"{fam.name}{{{inner}}} {_number(value)}")
            else:
                lines.append(f"{fam.name} {_number(value)}")
    return "\n".join(lines) + "\n"


# (Stats field, metric name, type, help)
CACHE_METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("hits", "metis_cache_hits_total", "counter", "Reads that found a live item."),
    (
        "misses",
        "metis_cache_misses_total",
        "counter",
        "Reads that found nothing (or an expired item).",
    ),
    (
        "sets",
        "metis_cache_sets_total",
        "counter",
        "Items stored (set, add, replace, incr creating).",
    ),
    ("deletes", "metis_cache_deletes_total", "counter", "Items removed by delete or pop."),
    (
        "evictions",
        "metis_cache_evictions_total",
        "counter",
        "Items evicted by the policy to make room.",
    ),
    (
        "expirations",
        "metis_cache_expirations_total",
        "counter",
        "Expired items removed (sweeps and accesses).",
    ),
    (
        "lock_waits",
        "metis_cache_lock_waits_total",
        "counter",
        "Times a writer found its shard lock taken.",
    ),
    (
        "read_retries",
        "metis_cache_read_retries_total",
        "counter",
        "Lock-free reads retried because a writer reclaimed a block meanwhile.",
    ),
    (
        "lock_recoveries",
        "metis_cache_lock_recoveries_total",
        "counter",
        "Shard locks taken over from a lock holder that died.",
    ),
    (
        "repairs",
        "metis_cache_repairs_total",
        "counter",
        "Shards rebuilt because their lock holder died in the middle of a change.",
    ),
    ("items", "metis_cache_items", "gauge", "Items stored (expired ones not yet swept included)."),
    ("bytes_used", "metis_cache_used_bytes", "gauge", "Bytes of the item arenas in use."),
    ("capacity", "metis_cache_capacity_bytes", "gauge", "Bytes available to items, all shards."),
    ("free_bytes", "metis_cache_free_bytes", "gauge", "Free bytes in the item arenas."),
    (
        "largest_free",
        "metis_cache_largest_free_block_bytes",
        "gauge",
        "The largest free block of any shard.",
    ),
    (
        "segment_size",
        "metis_cache_segment_size_bytes",
        "gauge",
        "Size of the shared-memory segment.",
    ),
    ("n_shards", "metis_cache_shards", "gauge", "Shards of the segment."),
    (
        "fragmentation",
        "metis_cache_fragmentation_ratio",
        "gauge",
        "Share of free bytes outside the largest free blocks (0-1).",
    ),
    (
        "hit_ratio",
        "metis_cache_hit_ratio",
        "gauge",
        "hits / (hits + misses) since the segment was created (0-1).",
    ),
    ("pins", "metis_cache_views_open", "gauge", "Views (Cache.view) open now, all processes."),
    ("pinned_bytes", "metis_cache_pinned_bytes", "gauge", "Arena bytes the open views pin."),
    (
        "held_bytes",
        "metis_cache_held_bytes",
        "gauge",
        "Arena bytes out of the cache but held back from reuse by open views.",
    ),
)

# (daemon cache-counter key, metric name, type, help)
DAEMON_CACHE_METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("sweeps", "metis_daemon_sweeps_total", "counter", "Sweeps run by metisd (one per tick)."),
    (
        "sweep_slices",
        "metis_daemon_sweep_slices_total",
        "counter",
        "Sweep calls; each holds one shard lock for at most 1024 items.",
    ),
    (
        "sweeps_cut_short",
        "metis_daemon_sweeps_cut_short_total",
        "counter",
        "Sweeps stopped before their budget at half the sweep interval.",
    ),
    (
        "swept_items",
        "metis_daemon_swept_items_total",
        "counter",
        "Expired items removed by metisd's sweeps.",
    ),
    ("sweep_seconds_total", "metis_daemon_sweep_seconds_total", "counter", "Time spent sweeping."),
    (
        "last_sweep_seconds",
        "metis_daemon_last_sweep_duration_seconds",
        "gauge",
        "Duration of the last tick's sweep.",
    ),
    ("drains", "metis_daemon_drains_total", "counter", "Access-buffer drains run by metisd."),
    (
        "drained_shards",
        "metis_daemon_drained_shards_total",
        "counter",
        "Shards that had recorded hits to apply when drained.",
    ),
    (
        "drain_seconds_total",
        "metis_daemon_drain_seconds_total",
        "counter",
        "Time spent draining access buffers.",
    ),
    (
        "heartbeats",
        "metis_daemon_heartbeats_total",
        "counter",
        "Heartbeats written into the segment header.",
    ),
    (
        "last_heartbeat",
        "metis_daemon_last_heartbeat_timestamp_seconds",
        "gauge",
        "Unix time of the last heartbeat.",
    ),
    (
        "rollups",
        "metis_daemon_rollups_total",
        "counter",
        "Stats roll-ups (each takes every shard's lock, repairing a dead holder's shard).",
    ),
    (
        "lock_recoveries",
        "metis_daemon_lock_recoveries_seen_total",
        "counter",
        "Shard repairs seen by metisd since it started.",
    ),
    (
        "slots_reclaimed",
        "metis_daemon_slots_reclaimed_total",
        "counter",
        "Stats slots of exited processes freed (psutil says their owner is gone).",
    ),
    (
        "held_blocks_freed",
        "metis_daemon_held_blocks_freed_total",
        "counter",
        "Blocks held back by views (closed, or of dead processes) that metisd freed.",
    ),
    (
        "attached_processes",
        "metis_daemon_attached_processes",
        "gauge",
        "Live processes with the cache open (stats slots in use), metisd excluded.",
    ),
    ("snapshots_written", "metis_daemon_snapshots_written_total", "counter", "Snapshots written."),
    (
        "snapshots_failed",
        "metis_daemon_snapshots_failed_total",
        "counter",
        "Snapshots that failed.",
    ),
    (
        "snapshots_skipped",
        "metis_daemon_snapshots_skipped_total",
        "counter",
        "Scheduled snapshots skipped because the previous one still ran.",
    ),
    (
        "last_snapshot_seconds",
        "metis_daemon_last_snapshot_duration_seconds",
        "gauge",
        "Duration of the last snapshot written.",
    ),
    (
        "last_snapshot_at",
        "metis_daemon_last_snapshot_timestamp_seconds",
        "gauge",
        "Unix time of the last snapshot written.",
    ),
    (
        "last_snapshot_items",
        "metis_daemon_last_snapshot_items",
        "gauge",
        "Items in the last snapshot written.",
    ),
    (
        "last_snapshot_file_bytes",
        "metis_daemon_last_snapshot_size_bytes",
        "gauge",
        "File size of the last snapshot written.",
    ),
    (
        "restored_items",
        "metis_daemon_restored_items",
        "gauge",
        "Items loaded from a snapshot at warm-up.",
    ),
    (
        "restore_expired_items",
        "metis_daemon_restore_expired_items",
        "gauge",
        "Snapshot items already expired at warm-up (not loaded).",
    ),
    (
        "restore_rejected_items",
        "metis_daemon_restore_rejected_items",
        "gauge",
        "Snapshot items this cache refused at warm-up (over its limits).",
    ),
    ("errors", "metis_daemon_errors_total", "counter", "Maintenance steps that failed."),
)


def _metric_value(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return value
    return None


def render_metrics(caches: Mapping[str, Stats], daemon: Mapping[str, Any] | None) -> str:
    """/metrics: every cache's stats and, when given, the daemon section of /stats."""
    families: list[Family] = []
    info = Family("metis_cache_info", "gauge", "A cache and its eviction policy (value 1).")
    for name, st in caches.items():
        info.add(1, cache=name, policy=st.policy)
    families.append(info)
    families += _per_cache(CACHE_METRICS, {name: st.to_dict() for name, st in caches.items()})
    if daemon is not None:
        families.extend(_daemon_families(daemon))
        # The far tier's numbers of the near caches (metis_shm/far/report.py).
        from metis_shm.far.report import FAR_METRICS

        per_cache = daemon.get("caches", {})
        families += _per_cache(
            FAR_METRICS, {n: c["far"] for n, c in per_cache.items() if c.get("far")}
        )
    return format_families(families)


def _per_cache(
    table: Iterable[tuple[str, str, str, str]], values: Mapping[str, Mapping[str, Any]]
) -> list[Family]:
    """One family per row of ``table`` (key, metric, type, help), a sample
    per cache of ``values`` (cache name -> {key: value})."""
    families = []
    for key, metric, kind, help_text in table:
        fam = Family(metric, kind, help_text)
        for name, d in values.items():
            value = _metric_value(d.get(key))
            if value is not None:
                fam.add(value, cache=name)
        families.append(fam)
    return families


def _daemon_families(daemon: Mapping[str, Any]) -> list[Family]:
    families: list[Family] = []
    build = Family("metis_daemon_build_info", "gauge", "metisd's version (value 1).")
    build.add(1, version=str(daemon.get("version", "")))
    families.append(build)
    ready = Family("metis_daemon_ready", "gauge", "1 when metisd has warmed up and serves.")
    ready.add(1 if daemon.get("state") == "ready" else 0)
    families.append(ready)
    start = Family("metis_daemon_start_time_seconds", "gauge", "Unix time metisd started.")
    start.add(float(daemon.get("started_at", 0.0)))
    families.append(start)
    loop = daemon.get("loop", {})
    for key, metric, kind, help_text in (
        ("ticks", "metis_daemon_ticks_total", "counter", "Maintenance ticks run."),
        ("overruns", "metis_daemon_tick_overruns_total", "counter",
         "Ticks that took longer than the sweep interval."),
        ("tick_seconds_total", "metis_daemon_tick_seconds_total", "counter",
         "Time spent in maintenance ticks."),
        ("last_tick_seconds", "metis_daemon_last_tick_duration_seconds", "gauge",
         "Duration of the last maintenance tick."),
        ("watchdog_pings", "metis_daemon_watchdog_pings_total", "counter",
         "WATCHDOG=1 messages sent to systemd."),
    ):  # fmt: skip
        value = _metric_value(loop.get(key))
        if value is not None:
            fam = Family(metric, kind, help_text)
            fam.add(value)
            families.append(fam)
    config = daemon.get("config", {})
    sweep = config.get("sweep", {})
    for key, metric, help_text in (
        ("interval", "metis_daemon_sweep_interval_seconds", "Time between sweeps (live setting)."),
        (
            "budget",
            "metis_daemon_sweep_budget_items",
            "Items examined per sweep tick (live setting).",
        ),
    ):
        value = _metric_value(sweep.get(key))
        if value is not None:
            fam = Family(metric, "gauge", help_text)
            fam.add(value)
            families.append(fam)
    reloads = daemon.get("reloads", {})
    fam = Family("metis_daemon_reloads_total", "counter", "SIGHUP reloads, by result.")
    fam.add(int(reloads.get("ok", 0)), result="ok")
    fam.add(int(reloads.get("failed", 0)), result="failed")
    families.append(fam)
    families += _per_cache(DAEMON_CACHE_METRICS, daemon.get("caches", {}))
    return families


# ---- the HTTP server -----------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server_version = "metisd"
    protocol_version = "HTTP/1.1"
    timeout = REQUEST_TIMEOUT

    @property
    def endpoints(self) -> Endpoints:
        return self.server.endpoints  # type: ignore[attr-defined, no-any-return]

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, *, body: bool) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        try:
            if url.path == "/healthz":
                ok, data = self.endpoints.health()
                status = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
                self._send(status, JSON_CONTENT_TYPE, _json(data), body)
            elif url.path == "/stats":
                shards = query.get("shards", ["1"])[-1].lower() not in ("0", "false", "no")
                data = self.endpoints.stats(shards=shards)
                self._send(HTTPStatus.OK, JSON_CONTENT_TYPE, _json(data), body)
            elif url.path == "/metrics":
                text = self.endpoints.metrics()
                self._send(HTTPStatus.OK, METRICS_CONTENT_TYPE, text.encode(), body)
            elif url.path == "/":
                data = {"endpoints": ["/healthz", "/stats", "/metrics"]}
                self._send(HTTPStatus.OK, JSON_CONTENT_TYPE, _json(data), body)
            else:
                data = {"error": f"no such endpoint: {url.path}",
                        "endpoints": ["/healthz", "/stats", "/metrics"]}  # fmt: skip
                self._send(HTTPStatus.NOT_FOUND, JSON_CONTENT_TYPE, _json(data), body)
        except Exception as exc:
            log.exception("health endpoint %s failed", url.path)
            data = {"error": f"{type(exc).__name__}: {exc}"}
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, JSON_CONTENT_TYPE, _json(data), body)

    def _send(self, status: HTTPStatus, content_type: str, payload: bytes, body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def address_string(self) -> str:
        # A unix-socket client has no (host, port).
        if isinstance(self.client_address, tuple) and self.client_address:
            return str(self.client_address[0])
        return "unix"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s " + format, self.address_string(), *args)


def _json(data: Any) -> bytes:
    return msgspec.json.encode(data) + b"\n"


class _TCPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], family: int, endpoints: Endpoints) -> None:
        self.address_family = family
        self.endpoints = endpoints
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind asks getfqdn(host): a DNS lookup that can
        # stall the start on a machine with a slow resolver. Not needed.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = host.decode() if isinstance(host, bytes) else str(host)
        self.server_port = int(port)


class _UnixServer(ThreadingHTTPServer):
    daemon_threads = True
    address_family = socket.AF_UNIX

    def __init__(self, path: str, endpoints: Endpoints) -> None:
        self.endpoints = endpoints
        super().__init__(path, _Handler)  # type: ignore[arg-type]

    def server_bind(self) -> None:
        # HTTPServer.server_bind wants (host, port); a socket path has neither.
        self.socket.bind(self.server_address)
        self.server_name = "localhost"
        self.server_port = 0


def parse_address(address: str) -> tuple[str, int, int]:
    """``"127.0.0.1:9464"`` / ``"[::1]:9464"`` -> (host, port, address family)."""
    host, _, port = address.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1], int(port), socket.AF_INET6
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return host, int(port), family


def _is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return all(str(info[4][0]).startswith("127.") or str(info[4][0]) == "::1" for info in infos)


class HealthServer:
    """The endpoints on ``address`` (HOST:PORT; port 0 = any free port) and,
    if given, on the unix socket ``unix_socket`` (mode 0660, replaced if a
    stale socket is there)."""

    def __init__(
        self,
        endpoints: Endpoints,
        address: str | None,
        unix_socket: str | None = None,
        *,
        socket_mode: int = 0o660,
    ) -> None:
        self._endpoints = endpoints
        self._address = address
        self._unix_path = unix_socket
        self._socket_mode = socket_mode
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Bind and serve; ``OSError`` (e.g. address in use) if a bind fails."""
        try:
            if self._address:
                host, port, family = parse_address(self._address)
                self._servers.append(_TCPServer((host, port), family, self._endpoints))
                if not _is_loopback(host):
                    log.warning(
                        "health endpoints listen on %s, which is not a loopback address: "
                        "anyone who can reach it can read the caches' statistics",
                        self._address,
                    )
            if self._unix_path:
                _remove_stale_socket(self._unix_path)
                unix_server = _UnixServer(self._unix_path, self._endpoints)
                os.chmod(self._unix_path, self._socket_mode)
                self._servers.append(unix_server)
        except BaseException:
            self.close()
            raise
        for server in self._servers:
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.25},
                name=f"metisd-http-{len(self._threads)}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    @property
    def url(self) -> str | None:
        """``http://HOST:PORT`` actually bound (None without a TCP address)."""
        for server in self._servers:
            if isinstance(server, _TCPServer):
                host, port = server.server_address[:2]
                host = host.decode() if isinstance(host, bytes) else str(host)
                shown = f"[{host}]" if ":" in host else host
                return f"http://{shown}:{port}"
        return None

    @property
    def unix_socket(self) -> str | None:
        return self._unix_path if any(isinstance(s, _UnixServer) for s in self._servers) else None

    def close(self) -> None:
        """Stop serving and close the sockets (removing the unix socket file)."""
        for server, thread in zip(self._servers, self._threads, strict=False):
            server.shutdown()
            thread.join(timeout=5)
        for server in self._servers:
            server.server_close()
            if isinstance(server, _UnixServer) and self._unix_path:
                with contextlib.suppress(OSError):
                    os.unlink(self._unix_path)
        self._servers.clear()
        self._threads.clear()


def _remove_stale_socket(path: str) -> None:
    """A socket file left by an earlier run (nothing listens on it) goes; any
    other kind of file is an error."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(f"{path} exists and is not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: stale
    else:
        raise OSError(f"{path}: another process serves on this socket")
    finally:
        probe.close()


__all__ = [
    "CACHE_METRICS",
    "DAEMON_CACHE_METRICS",
    "Endpoints",
    "Family",
    "HealthServer",
    "format_families",
    "parse_address",
    "render_metrics",
]
