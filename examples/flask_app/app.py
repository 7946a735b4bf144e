"""A Flask app whose gunicorn workers share one Flask-Caching cache in shared
memory (the Metis backend).

Endpoints (all ``GET``, all answer JSON that includes the worker's ``pid``):

* ``/set?key=K&value=V`` and ``/get?key=K``: ``cache.set`` / ``cache.get``;
* ``/incr?key=K``: ``cache.inc``, one atomic counter for all workers;
* ``/square?x=N``: a ``@cache.memoize``-d function; ``computed_by`` is the pid
  of the worker that ran it, whichever worker answers;
* ``/time``: a ``@cache.cached`` view;
* ``/info``: which process opened this worker's cache.

Settings (environment): ``METIS_CACHE_NAME`` (default ``flask-demo``),
``METIS_CACHE_CAPACITY`` (default ``16MiB``).
"""

from __future__ import annotations

import os
import time

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue
from flask_caching import Cache

CACHE_NAME = os.environ.get("METIS_CACHE_NAME", "flask-demo")

app = Flask(__name__)
app.config.update(
    CACHE_TYPE="metis_shm.contrib.flask.MetisCache",
    CACHE_METIS_NAME=CACHE_NAME,
    CACHE_DEFAULT_TIMEOUT=300,
    CACHE_KEY_PREFIX="demo:",
    CACHE_OPTIONS={"capacity": os.environ.get("METIS_CACHE_CAPACITY", "16MiB")},
)
# Opens (or creates) the segment now: in each worker, or once in the gunicorn
# master with --preload (the workers then inherit it through fork).
cache = Cache(app)
OPENED_IN_PID = os.getpid()


def reply(**body: object) -> ResponseReturnValue:
    return jsonify(pid=os.getpid(), **body)


@app.get("/info")
def info() -> ResponseReturnValue:
    return reply(cache=CACHE_NAME, opened_in_pid=OPENED_IN_PID, ppid=os.getppid())


@app.get("/set")
def set_value() -> ResponseReturnValue:
    key, value = request.args["key"], request.args.get("value", "")
    cache.set(key, value)
    return reply(key=key, value=value)


@app.get("/get")
def get_value() -> ResponseReturnValue:
    key = request.args["key"]
    return reply(key=key, found=cache.has(key), value=cache.get(key))


@app.get("/incr")
def incr() -> ResponseReturnValue:
    key = request.args["key"]
    return reply(key=key, value=cache.cache.inc(key, int(request.args.get("delta", "1"))))


@cache.memoize(timeout=600)
def slow_square(x: int) -> dict[str, int]:
    cache.cache.inc("square-computations")
    time.sleep(0.05)
    return {"square": x * x, "computed_by": os.getpid()}


@app.get("/square")
def square() -> ResponseReturnValue:
    return reply(**slow_square(int(request.args["x"])))


@app.get("/time")
@cache.cached(timeout=600)
def cached_time() -> ResponseReturnValue:
    return reply(rendered_at=time.time(), rendered_by=os.getpid())
