"""A small WSGI app whose gunicorn workers share one Metis cache.

Endpoints (all ``GET``, all answer JSON that includes the worker's ``pid``):

* ``/set?key=K&value=V`` stores the string ``V`` under ``K``;
* ``/get?key=K`` returns ``{"found": true, "value": ...}`` or ``"found": false``
  (and, in front of Redis, ``"near": true`` when this machine's copy answered);
* ``/incr?key=K[&delta=N]`` adds ``N`` (default 1) to the counter ``K``, creating
  it at 0 first, and returns the new value;
* ``/info`` tells which process opened this worker's cache (with gunicorn's
  ``--preload`` it is the master, whose Cache the worker inherited through fork)
  and, in front of Redis, the machine's far-tier counters (``far``).

The cache is named by the environment variable ``METIS_CACHE_NAME`` (default
``gunicorn-demo``) and sized by ``METIS_CACHE_CAPACITY`` (default ``16MiB``).
``METIS_CACHE_FAR`` (a ``redis://`` URL, or a JSON object of far settings such
as ``{"url": "redis://127.0.0.1:6379/0", "prefix": "demo:"}``) makes it the
near tier of that Redis: several machines (each its own gunicorn, cache name
and metisd, which reads the same three variables) then share their data
through Redis, and ``/info`` shows the machine's far-tier counters. See
README.md, "Two machines in front of one Redis".
It is opened once per worker, by gunicorn's ``post_fork`` hook (see
``gunicorn.conf.py``) or lazily on the first request when the app runs under
another server.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from urllib.parse import parse_qs

from metis_shm import Cache


def far_setting(text: str | None) -> str | dict | None:
    """``METIS_CACHE_FAR`` as metisd reads it: a URL, or a JSON object."""
    text = (text or "").strip()
    if not text:
        return None
    return json.loads(text) if text.startswith("{") else text


CACHE_NAME = os.environ.get("METIS_CACHE_NAME", "gunicorn-demo")
CACHE_CAPACITY = os.environ.get("METIS_CACHE_CAPACITY", "16MiB")
CACHE_FAR = far_setting(os.environ.get("METIS_CACHE_FAR"))

_cache: Cache | None = None
_opened_in_pid: int | None = None


def open_cache() -> Cache:
    """Return this process's Cache, opening (creating if needed) it on first use.

    A Cache opened before ``fork()`` stays valid in the child, so a worker that
    inherited the master's Cache (``--preload``) reuses it instead of opening
    a second mapping.
    """
    global _cache, _opened_in_pid
    if _cache is None:
        far = {"far": CACHE_FAR} if CACHE_FAR else {}  # a NearCache in front of Redis
        _cache = Cache(CACHE_NAME, capacity=CACHE_CAPACITY, **far)
        _opened_in_pid = os.getpid()
    return _cache


def close_cache() -> None:
    """Detach this process from the cache; the segment stays for the others."""
    global _cache, _opened_in_pid
    if _cache is not None:
        _cache.close()
        _cache = None
        _opened_in_pid = None


StartResponse = Callable[[str, list[tuple[str, str]]], object]


def _reply(start_response: StartResponse, status: str, body: dict) -> list[bytes]:
    body["pid"] = os.getpid()
    data = json.dumps(body, default=repr).encode()  # values set from Python may be any type
    start_response(
        status,
        [("Content-Type", "application/json"), ("Content-Length", str(len(data)))],
    )
    return [data]


def application(environ: dict, start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI entry point (``app:application``)."""
    if environ["REQUEST_METHOD"] != "GET":
        return _reply(start_response, "405 Method Not Allowed", {"error": "GET only"})
    path = environ.get("PATH_INFO", "")
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    cache = open_cache()

    if path == "/info":
        return _reply(
            start_response,
            "200 OK",
            {
                "cache": CACHE_NAME,
                "opened_in_pid": _opened_in_pid,
                "ppid": os.getppid(),
                # one machine's counters (every worker of it shares them)
                "far": cache.far_stats() if hasattr(cache, "far_stats") else None,
            },
        )
    if path not in ("/set", "/get", "/incr"):
        return _reply(start_response, "404 Not Found", {"error": f"no route {path!r}"})
    key = query.get("key")
    if not key:
        return _reply(start_response, "400 Bad Request", {"error": "missing ?key="})

    if path == "/set":
        value = query.get("value", "")
        cache.set(key, value)
        return _reply(start_response, "200 OK", {"key": key, "value": value})
    if path == "/get":
        missing = object()
        # peek: this machine's copy only (a plain cache's peek is its get)
        near = CACHE_FAR is not None and cache.peek(key, missing) is not missing
        value = cache.get(key, missing)
        if value is missing:
            return _reply(start_response, "200 OK", {"key": key, "found": False, "value": None})
        if isinstance(value, (bytes, bytearray)):
            value = bytes(value).decode("utf-8", "replace")
        body = {"key": key, "found": True, "value": value}
        if CACHE_FAR is not None:
            body["near"] = near
        return _reply(start_response, "200 OK", body)
    # /incr
    try:
        delta = int(query.get("delta", "1"))
    except ValueError:
        return _reply(start_response, "400 Bad Request", {"error": "delta must be an int"})
    try:
        value = cache.incr(key, delta, default=0)
    except TypeError as exc:  # NotACounter: the key holds something else
        return _reply(start_response, "409 Conflict", {"error": str(exc)})
    return _reply(start_response, "200 OK", {"key": key, "value": value})
