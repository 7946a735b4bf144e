"""A FastAPI app whose uvicorn workers share one Metis cache.

Run from this folder (``uvicorn --workers`` starts one process per worker;
each imports this module and opens the cache by name in its lifespan)::

    PYTHONPATH=../.. uvicorn app:app --workers 4 --host 127.0.0.1 --port 8000

Endpoints (all answer JSON that includes the worker's ``pid``):

* ``/set?key=K&value=V``, ``/get?key=K``, ``/incr?key=K``: the cache itself,
  given to the endpoints by the ``Depends(shared_cache)`` dependency;
* ``/report?n=N``: a slow page cached whole by ``CacheMiddleware``; the
  ``rendered_by`` pid and the ``X-Metis-Cache: hit|miss`` header show which
  worker computed it, ``X-Worker-Pid`` which one answered;
* ``/info``: which process opened this worker's cache.

Settings (environment): ``METIS_CACHE_NAME`` (default ``fastapi-demo``),
``METIS_CACHE_CAPACITY`` (default ``16MiB``), ``METIS_CACHE_FAR`` (unset: a
cache of this machine only; a ``redis://`` URL or a JSON object of far
settings: the near tier of that Redis, shared with other machines through
it, with metisd run with the same variables; README.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response

from metis_shm import Cache
from metis_shm.contrib.asgi import CacheMiddleware, cache_dependency, close_caches, open_cache


def far_setting(text: str | None) -> str | dict[str, Any] | None:
    """``METIS_CACHE_FAR`` as metisd reads it: a URL, or a JSON object."""
    text = (text or "").strip()
    if not text:
        return None
    return json.loads(text) if text.startswith("{") else text


CACHE_NAME = os.environ.get("METIS_CACHE_NAME", "fastapi-demo")
CACHE_CAPACITY = os.environ.get("METIS_CACHE_CAPACITY", "16MiB")
CACHE_FAR = far_setting(os.environ.get("METIS_CACHE_FAR"))  # None: no Redis behind

shared_cache = cache_dependency(CACHE_NAME, capacity=CACHE_CAPACITY, far=CACHE_FAR)
SharedCache = Annotated[Cache, Depends(shared_cache)]  # endpoints declare `cache: SharedCache`
opened_in_pid: int | None = None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the cache once per worker process at startup, detach at shutdown."""
    global opened_in_pid
    cache = open_cache(CACHE_NAME, capacity=CACHE_CAPACITY, far=CACHE_FAR)
    opened_in_pid = os.getpid()
    print(f"metis: worker {os.getpid()} uses cache {cache.name!r}", flush=True)
    yield
    close_caches()


app = FastAPI(lifespan=lifespan)
# Whole responses of /report are cached for every worker; the `live` routes
# send Cache-Control: no-store, so the middleware does not store them.
app.add_middleware(
    CacheMiddleware, cache=CACHE_NAME, far=CACHE_FAR, ttl=60, vary_headers=("accept",)
)


@app.middleware("http")  # added last, so outside the cache: runs on hits too
async def worker_pid_header(request: Request, call_next: Any) -> Any:
    """``X-Worker-Pid``: the worker that answered (a hit's body names the renderer)."""
    response = await call_next(request)
    response.headers["X-Worker-Pid"] = str(os.getpid())
    return response


def reply(**body: Any) -> dict[str, Any]:
    return {"pid": os.getpid(), **body}


async def no_store(response: Response) -> None:
    """Tell the response cache (and browsers) not to keep this answer."""
    response.headers["Cache-Control"] = "no-store"


live = APIRouter(dependencies=[Depends(no_store)])


@live.get("/info")
async def info() -> dict[str, Any]:
    cache = open_cache(CACHE_NAME, far=CACHE_FAR)
    far = cache.far_stats() if hasattr(cache, "far_stats") else None  # this machine's counters
    return reply(cache=CACHE_NAME, opened_in_pid=opened_in_pid, ppid=os.getppid(), far=far)


@live.get("/set")
async def set_value(cache: SharedCache, key: str, value: str = "") -> Any:
    cache.set(key, value)
    return reply(key=key, value=value)


@live.get("/get")
async def get_value(cache: SharedCache, key: str) -> Any:
    missing = object()
    # peek: this machine's copy only (in front of Redis: did the near tier answer?)
    near = CACHE_FAR is not None and cache.peek(key, missing) is not missing
    value = cache.get(key, missing)
    extra = {"near": near} if CACHE_FAR is not None else {}
    return reply(
        key=key, found=value is not missing, value=None if value is missing else value, **extra
    )


@live.get("/incr")
async def incr(cache: SharedCache, key: str, delta: int = 1) -> Any:
    return reply(key=key, value=cache.incr(key, delta, default=0))


@app.get("/report")
async def report(cache: SharedCache, n: int = 10) -> Any:
    cache.incr("report-renders", default=0)
    await asyncio.sleep(0.05)  # the expensive part
    return reply(n=n, total=sum(range(n)), rendered_by=os.getpid(), rendered_at=time.time())


app.include_router(live)
