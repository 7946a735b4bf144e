"""The Django, Flask-Caching and ASGI integrations with a far tier: each
backend, configured with its own far setting, against a real redis-server
and a real metisd vouching for its near tier (tests/far/_machines.py).

For each: a value set through the backend is in Redis (framed as
metis_shm/far/encoding.py says, with the backend's TTL), and a write by a
plain redis client is seen through the backend once the invalidation has
removed the near copy.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import django
import flask
import flask_caching
import pytest
from _machines import GATE_TIMEOUT, wait_until
from _metisd import Metisd, config_text
from _workers import new_name
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from metis_shm import Cache
from metis_shm.contrib import asgi
from metis_shm.contrib.django import MetisCache as DjangoMetisCache
from metis_shm.contrib.flask import MetisCache as FlaskMetisCache
from metis_shm.errors import InvalidConfig
from metis_shm.far import encoding
from metis_shm.far.near import NearCache
from metis_shm.far.settings import FarSettings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's TestClient on httpx
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration

if not settings.configured:
    settings.configure(
        SECRET_KEY="metis-tests",
        USE_TZ=True,
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
    )
    django.setup()

BOUND = 1.0  # FarSettings.staleness_bound's default
CAPACITY = "8MiB"


@dataclass
class Machine:
    """A metisd vouching for the near cache ``name`` in front of ``far``."""

    name: str
    far: dict[str, Any]
    daemon: Metisd

    def key(self, key: str) -> bytes:
        """The Redis key of a near key."""
        return (self.far["prefix"] + key).encode()


@pytest.fixture
def machine(tmp_path: Path, redis_server: Any, daemons: Any, request: Any) -> Iterator[Machine]:
    serializer = getattr(request, "param", "msgpack")
    name = new_name()
    far = {"url": redis_server.url, "prefix": f"{name}:"}
    config = tmp_path / f"{name}.toml"
    cache = {"name": name, "capacity": CAPACITY, "serializer": serializer, "far": far}
    config.write_text(config_text([cache], heartbeat_interval=0.2))
    daemon = daemons(config)
    daemon.wait_ready()
    try:
        yield Machine(name, far, daemon)
    finally:
        Cache.destroy(name)


def wait_vouched(near: Cache) -> None:
    assert isinstance(near, NearCache)
    wait_until(lambda: near.gate_open, GATE_TIMEOUT, "metisd vouches for the near tier")


def wait_invalidated(near: Cache, key: str) -> float:
    """Until the near copy of ``key`` is gone (Redis's invalidation came)."""
    return wait_until(lambda: near.peek(key) is None, BOUND, f"near copy of {key!r} dies")


# ---- Django ---------------------------------------------------------------------


@pytest.mark.parametrize("machine", ["pickle"], indirect=True)
def test_django_far(machine: Machine, redis_server: Any) -> None:
    backend = DjangoMetisCache(
        machine.name,
        {"TIMEOUT": 300, "OPTIONS": {"capacity": CAPACITY, "FAR": machine.far}},
    )
    r = redis_server.client()
    try:
        assert backend.far == FarSettings.build(machine.far)
        near = backend.cache
        wait_vouched(near)
        made = backend.make_key("user")  # ":1:user"

        backend.set("user", {"name": "Ada", "ids": (1, 2)})
        raw = r.get(machine.key(made))
        assert raw is not None and raw.startswith(encoding.MAGIC)
        assert pickle.loads(raw[7:]) == {"name": "Ada", "ids": (1, 2)}  # Django pickles
        assert 299_000 < r.pttl(machine.key(made)) <= 300_000  # TIMEOUT went to Redis
        assert backend.get("user") == {"name": "Ada", "ids": (1, 2)}
        assert near.peek(made) is not None  # filled: the next read is near

        # A plain client rewrites the key: the near copy dies, the new value shows.
        r.set(machine.key(made), 42)
        wait_invalidated(near, made)
        assert backend.get("user") == 42
        assert backend.incr("user", 8) == 50  # Redis's INCRBY
        assert r.get(machine.key(made)) == b"50"
        r.set(machine.key(made), encoding.encode(near._codec_obj, ["framed", b"bytes"]))
        wait_invalidated(near, made)
        assert backend.get("user") == ["framed", b"bytes"]
        r.delete(machine.key(made))
        wait_invalidated(near, made)
        assert backend.get("user", "gone") == "gone"
        assert not backend.has_key("user")

        # The rest of the API goes to Redis too.
        assert backend.add("user", "first") and not backend.add("user", "second")
        backend.set_many({"a": 1, "b": "two"}, timeout=60)
        assert backend.get_many(["a", "b", "c"]) == {"a": 1, "b": "two"}
        assert r.get(machine.key(backend.make_key("a"))) == b"1"
        backend.delete_many(["a", "b"])
        assert r.exists(machine.key(backend.make_key("a"))) == 0
        assert backend.touch("user", 10) and 0 < r.pttl(machine.key(made)) <= 10_000
        # TIMEOUT 0 means "do not cache", in Redis as near (no 1 ms PX).
        backend.set("user", "kept")
        backend.set("user", "not kept", timeout=0)
        assert backend.get("user") is None and r.exists(machine.key(made)) == 0
        assert backend.cache.far_stats()["far_writes"] > 0
    finally:
        backend.detach()
        r.close()


def test_django_far_url_and_bad_settings(machine: Machine, redis_server: Any) -> None:
    url = redis_server.url
    backend = DjangoMetisCache(
        machine.name, {"OPTIONS": {"capacity": CAPACITY, "serializer": "msgpack", "FAR": url}}
    )
    try:
        assert backend.far == FarSettings(url=url)
        assert isinstance(backend.cache, NearCache)
    finally:
        backend.detach()
    for far, expect in [
        ({"url": "http://127.0.0.1:1"}, "far.url"),
        ({"url": url, "prefx": "x"}, "prefx"),
        ({"prefix": "x"}, "far.url: missing"),
        (42, "expected a redis:// URL"),
    ]:
        with pytest.raises(ImproperlyConfigured, match="OPTIONS FAR") as err:
            DjangoMetisCache("never-opened", {"OPTIONS": {"FAR": far}})
        assert expect in str(err.value)
    with pytest.raises(ImproperlyConfigured, match="FAR or far"):
        DjangoMetisCache("never-opened", {"OPTIONS": {"FAR": url, "far": url}})


# ---- Flask-Caching ------------------------------------------------------------------


def test_flask_far(machine: Machine, redis_server: Any) -> None:
    app = flask.Flask(__name__)
    app.config.update(
        CACHE_TYPE="metis_shm.contrib.flask.MetisCache",
        CACHE_METIS_NAME=machine.name,
        CACHE_OPTIONS={"capacity": CAPACITY},
        CACHE_METIS_FAR=machine.far,
        CACHE_KEY_PREFIX="fl:",
        CACHE_DEFAULT_TIMEOUT=120,
    )
    fc = flask_caching.Cache(app)
    backend = fc.cache
    r = redis_server.client()
    try:
        assert isinstance(backend, FlaskMetisCache)
        assert backend.far == FarSettings.build(machine.far)
        near = backend.metis
        wait_vouched(near)

        assert fc.set("page", {"title": "home"})
        raw = r.get(machine.key("fl:page"))
        assert raw is not None  # pickled by the backend, framed as bytes by the near tier
        assert pickle.loads(encoding.decode(near._codec_obj, raw)) == {"title": "home"}
        assert 119_000 < r.pttl(machine.key("fl:page")) <= 120_000
        assert fc.get("page") == {"title": "home"}
        assert near.peek("fl:page") is not None

        r.set(machine.key("fl:page"), 7)
        wait_invalidated(near, "fl:page")
        assert fc.get("page") == 7
        assert backend.inc("page", 3) == 10 and r.get(machine.key("fl:page")) == b"10"
        r.set(machine.key("fl:page"), encoding.encode(near._codec_obj, pickle.dumps("plain")))
        wait_invalidated(near, "fl:page")
        assert fc.get("page") == "plain"

        assert backend.inc("hits") == 1 and r.get(machine.key("fl:hits")) == b"1"
        assert fc.add("once", 1) and not fc.add("once", 2)
        assert fc.set("gone", "x", timeout=-1) is True  # negative: already expired
        assert fc.get("gone") is None and r.exists(machine.key("fl:gone")) == 0

        calls = []

        @fc.memoize(timeout=30)
        def square(n: int) -> int:
            calls.append(n)
            return n * n

        with app.app_context():
            assert square(4) == 16 and square(4) == 16
        assert calls == [4]
    finally:
        backend.close()
        r.close()


def test_flask_far_url_and_bad_settings(machine: Machine, redis_server: Any) -> None:
    backend = FlaskMetisCache(machine.name, far=redis_server.url, capacity=CAPACITY)
    try:
        assert isinstance(backend.metis, NearCache)
        assert backend.metis.far.url == redis_server.url
    finally:
        backend.close()
    with pytest.raises(InvalidConfig, match=r"far\.tracking"):
        FlaskMetisCache("never-opened", far={"url": redis_server.url, "tracking": "nope"})
    with Cache(new_name(), capacity="1MiB") as plain:
        with pytest.raises(TypeError, match="far= or cache="):
            FlaskMetisCache(cache=plain, far=redis_server.url)
        Cache.destroy(plain.name)


# ---- ASGI -----------------------------------------------------------------------------


def test_asgi_far(machine: Machine, redis_server: Any) -> None:
    renders = []

    async def page(request: Request) -> Response:
        renders.append(1)
        return PlainTextResponse(f"render {len(renders)}")

    shared = asgi.cache_dependency(machine.name, far=machine.far, capacity=CAPACITY)

    async def value(request: Request) -> Response:
        cache = await shared()
        return JSONResponse(
            {"value": cache.get(request.query_params["key"])},
            headers={"Cache-Control": "no-store"},
        )

    inner = Starlette(routes=[Route("/page", page), Route("/value", value)])
    app = asgi.CacheMiddleware(inner, cache=machine.name, far=machine.far, ttl=60)
    assert app.far == FarSettings.build(machine.far)
    r = redis_server.client()
    try:
        with TestClient(app) as client:
            near = app.cache
            assert isinstance(near, NearCache)
            wait_vouched(near)
            first = client.get("/page")
            assert first.text == "render 1" and first.headers["x-metis-cache"] == "miss"
            second = client.get("/page")
            assert second.text == "render 1" and second.headers["x-metis-cache"] == "hit"

            # The stored response is in Redis, with the middleware's TTL.
            stored = list(r.scan_iter(match=machine.key("asgi:GET:/page:*")))
            assert len(stored) == 1
            entry = encoding.decode(near._codec_obj, r.get(stored[0]))
            assert entry["s"] == 200 and entry["b"] == b"render 1"
            assert 59_000 < r.pttl(stored[0]) <= 60_000

            # Another client deletes it: the next request renders again.
            key = stored[0][len(machine.far["prefix"]) :].decode()
            assert near.peek(key) is not None
            r.delete(stored[0])
            wait_invalidated(near, key)
            third = client.get("/page")
            assert third.text == "render 2" and third.headers["x-metis-cache"] == "miss"

            # The dependency's cache is the same near cache, written to by Redis.
            assert client.get("/value", params={"key": "n"}).json() == {"value": None}
            r.set(machine.key("n"), 5)
            wait_until(
                lambda: client.get("/value", params={"key": "n"}).json() == {"value": 5},
                BOUND,
                "a plain client's write is seen by the endpoint",
            )
            assert asgi.open_cache(machine.name) is near
            with pytest.raises(ValueError, match="same far"):
                asgi.open_cache(machine.name, far={**machine.far, "prefix": "other:"})
    finally:
        asgi.close_caches()
        r.close()


def test_asgi_far_bad_settings(redis_server: Any) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
        pass

    with pytest.raises(InvalidConfig, match=r"far\.prefix"):
        asgi.CacheMiddleware(app, cache=new_name(), far={"url": redis_server.url, "prefix": 1})
    with pytest.raises(InvalidConfig, match=r"far\.url"):
        asgi.cache_dependency(new_name(), far="http://nowhere")
    name = new_name()
    with Cache(name, capacity="1MiB") as plain:
        with pytest.raises(ValueError, match="not an open Cache"):
            asgi.CacheMiddleware(app, cache=plain, far=redis_server.url)
        # A process that opened the name without far is not handed a plain
        # cache when it asks for the near tier.
        assert asgi.open_cache(name) is not plain
        with pytest.raises(ValueError, match="without a far tier"):
            asgi.open_cache(name, far=redis_server.url)
        asgi.close_caches()
    Cache.destroy(name)
