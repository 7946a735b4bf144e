"""Views of the Metis Django demo. Every answer is JSON with the worker's ``pid``.

* ``/set?key=K&value=V[&timeout=S]``: ``cache.set(K, V, S)``;
* ``/get?key=K``: ``{"found": ..., "value": ...}``;
* ``/incr?key=K[&delta=N]``: ``cache.incr`` (atomic across workers), creating
  the counter at 0 with ``cache.add`` first;
* ``/page``: a view under ``cache_page(60)``: whichever worker renders it
  first, every worker then serves that same response (``rendered_by``), while
  the ``X-Worker-Pid`` header tells which worker answered;
* ``/info``: the pid, the parent pid and the backend.
"""

import os
import time
from collections.abc import Callable

from django.core.cache import cache, caches
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import cache_page


def _json(data: dict, status: int = 200) -> JsonResponse:
    return JsonResponse({**data, "pid": os.getpid()}, status=status)


def _key(request: HttpRequest) -> str | None:
    return request.GET.get("key") or None


def set_value(request: HttpRequest) -> JsonResponse:
    key = _key(request)
    if key is None:
        return _json({"error": "missing ?key="}, 400)
    value = request.GET.get("value", "")
    timeout = request.GET.get("timeout")
    cache.set(key, value, None if timeout is None else float(timeout))
    return _json({"key": key, "value": value})


def get_value(request: HttpRequest) -> JsonResponse:
    key = _key(request)
    if key is None:
        return _json({"error": "missing ?key="}, 400)
    missing = object()
    value = cache.get(key, missing)
    if value is missing:
        return _json({"key": key, "found": False, "value": None})
    return _json({"key": key, "found": True, "value": value})


def incr(request: HttpRequest) -> JsonResponse:
    key = _key(request)
    if key is None:
        return _json({"error": "missing ?key="}, 400)
    try:
        delta = int(request.GET.get("delta", "1"))
    except ValueError:
        return _json({"error": "delta must be an int"}, 400)
    cache.add(key, 0, None)  # no-op when the counter exists
    try:
        return _json({"key": key, "value": cache.incr(key, delta)})
    except TypeError as exc:  # the key holds something that does not add
        return _json({"error": str(exc)}, 409)


@cache_page(60)
def page(request: HttpRequest) -> JsonResponse:
    return _json({"rendered_by": os.getpid(), "rendered_at": time.time()})


def info(request: HttpRequest) -> JsonResponse:
    backend = caches["default"]
    return _json(
        {
            "ppid": os.getppid(),
            "backend": f"{type(backend).__module__}.{type(backend).__qualname__}",
            "cache": getattr(backend, "location", None),
        }
    )


class WorkerPidMiddleware:
    """Adds ``X-Worker-Pid`` to every response (cached ones included)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        response["X-Worker-Pid"] = str(os.getpid())
        return response
