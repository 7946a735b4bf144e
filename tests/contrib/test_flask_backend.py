"""The Flask-Caching backend ``metis_shm.contrib.flask.MetisCache``: configured
through ``CACHE_TYPE``, Flask-Caching's timeout semantics, the whole backend
API, ``cache.cached`` / ``cache.memoize``, and sharing with another process."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator

import flask
import flask_caching
import pytest
from _workers import run_in_fork  # tests/ is on sys.path (conftest.py)

from metis_shm import Cache
from metis_shm.contrib.flask import MetisCache


def make_app(cache_name: str, **config: object) -> tuple[flask.Flask, flask_caching.Cache]:
    app = flask.Flask(__name__)
    settings: dict[str, object] = {
        "CACHE_TYPE": "metis_shm.contrib.flask.MetisCache",
        "CACHE_METIS_NAME": cache_name,
        "CACHE_OPTIONS": {"capacity": "8MiB"},
    }
    app.config.update({**settings, **config})
    return app, flask_caching.Cache(app)


@pytest.fixture
def app_cache(cache_name: str) -> Iterator[tuple[flask.Flask, flask_caching.Cache]]:
    app, cache = make_app(cache_name)
    try:
        yield app, cache
    finally:
        cache.cache.close()


@pytest.fixture
def fc(app_cache: tuple[flask.Flask, flask_caching.Cache]) -> flask_caching.Cache:
    return app_cache[1]


def test_cache_type_builds_the_backend(fc: flask_caching.Cache, cache_name: str) -> None:
    backend = fc.cache
    assert isinstance(backend, MetisCache)
    assert backend.metis.name == cache_name
    assert backend.default_timeout == 300
    assert backend.key_prefix == "flask_cache_"  # Flask-Caching's default
    assert backend.metis.capacity <= 8 * 1024 * 1024


def test_config_keys_are_honoured(cache_name: str) -> None:
    _app, fc = make_app(
        cache_name,
        CACHE_DEFAULT_TIMEOUT=dt.timedelta(seconds=90),
        CACHE_KEY_PREFIX="app1:",
        CACHE_IGNORE_ERRORS=True,
    )
    try:
        assert fc.cache.default_timeout == 90
        assert fc.cache.key_prefix == "app1:"
        assert fc.cache.ignore_delete_many_errors is True
        fc.set("k", "v")
        with Cache(cache_name, create=False) as raw:
            assert list(raw.keys()) == ["app1:k"]
    finally:
        fc.cache.close()


def test_cache_args_name_and_factory_function(cache_name: str) -> None:
    app = flask.Flask(__name__)
    app.config.update(
        CACHE_TYPE="metis_shm.contrib.flask.metis",
        CACHE_ARGS=[cache_name],
        CACHE_OPTIONS={"capacity": "4MiB", "policy": "lru"},
    )
    fc = flask_caching.Cache(app)
    try:
        assert fc.cache.metis.name == cache_name
        assert fc.cache.metis.policy == "lru"
    finally:
        fc.cache.close()


def test_unknown_option_is_an_error(cache_name: str) -> None:
    with pytest.raises(TypeError, match="unknown option"):
        make_app(cache_name, CACHE_OPTIONS={"capcity": "8MiB"})


def test_get_set_add_delete_has(fc: flask_caching.Cache, app_cache) -> None:
    app = app_cache[0]
    with app.app_context():
        assert fc.get("missing") is None
        assert fc.set("a", {"x": (1, 2), "when": dt.date(2024, 1, 2)}) is True
        assert fc.get("a") == {"x": (1, 2), "when": dt.date(2024, 1, 2)}  # pickled: types kept
        assert fc.has("a") and not fc.has("missing")
        assert fc.add("a", "other") is False
        assert fc.add("b", b"bytes") is True
        assert fc.get("b") == b"bytes"
        assert fc.delete("a") is True
        assert fc.delete("a") is False
        assert fc.get("a") is None
        fc.set("none", None)
        assert fc.has("none") and fc.get("none") is None
        fc.set("n", 41)
        assert fc.get("n") == 41 and type(fc.get("n")) is int
        fc.set("flag", True)
        assert fc.get("flag") is True


def test_many(fc: flask_caching.Cache) -> None:
    assert sorted(fc.set_many({"a": 1, "b": "two", "c": [3]})) == ["a", "b", "c"]
    assert fc.get_many("a", "b", "missing", "c") == [1, "two", None, [3]]
    assert fc.get_dict("a", "missing") == {"a": 1, "missing": None}
    assert sorted(fc.delete_many("a", "b", "missing")) == ["a", "b", "missing"]
    assert fc.get_many("a", "b", "c") == [None, None, [3]]


def test_inc_dec_are_counters(fc: flask_caching.Cache) -> None:
    backend = fc.cache
    assert backend.inc("hits") == 1
    assert backend.inc("hits", 10) == 11
    assert backend.dec("hits", 2) == 9
    assert backend.dec("fresh") == -1
    assert fc.get("hits") == 9
    fc.set("text", "abc")
    assert backend.inc("text") is None  # not a counter: a backend error, as cachelib says


def test_clear_only_removes_the_prefix(cache_name: str, fc: flask_caching.Cache) -> None:
    fc.set("a", 1)
    fc.set("b", 2)
    with Cache(cache_name, create=False) as raw:
        raw.set("other-app", "kept")
        assert fc.clear() is True
        assert fc.get("a") is None and fc.get("b") is None
        assert raw.get("other-app") == "kept"


def test_clear_without_prefix_clears_everything(cache_name: str) -> None:
    _app, fc = make_app(cache_name, CACHE_KEY_PREFIX="")
    try:
        fc.set("a", 1)
        with Cache(cache_name, create=False) as raw:
            raw.set("other", 1)
            fc.clear()
            assert len(raw) == 0
    finally:
        fc.cache.close()


def test_timeouts(cache_name: str) -> None:
    _app, fc = make_app(cache_name, CACHE_DEFAULT_TIMEOUT=1)
    try:
        fc.set("default", 1)  # None: the default timeout (1 s)
        fc.set("forever", 1, timeout=0)  # 0: never expires
        fc.set("long", 1, timeout=dt.timedelta(minutes=5))
        fc.set("short", 1, timeout=1)
        fc.set("gone", 1)
        fc.set("gone", 2, timeout=-1)  # negative: expired at once, removes the old value
        assert fc.get("gone") is None and not fc.has("gone")
        assert fc.add("neg", 1, timeout=-1) is False
        assert fc.cache.inc("counter") == 1  # created with the default timeout
        time.sleep(1.3)
        assert fc.get("default") is None
        assert fc.get("short") is None
        assert fc.get("counter") is None
        assert fc.get("forever") == 1
        assert fc.get("long") == 1
    finally:
        fc.cache.close()


def test_default_timeout_zero_means_never(cache_name: str) -> None:
    _app, fc = make_app(cache_name, CACHE_DEFAULT_TIMEOUT=0)
    try:
        fc.set("k", "v")
        with Cache(cache_name, create=False) as raw:
            assert raw.get("flask_cache_k") is not None
        time.sleep(0.05)
        assert fc.get("k") == "v"
    finally:
        fc.cache.close()


def test_memoize_and_delete_memoized(app_cache) -> None:
    app, fc = app_cache
    calls: list[tuple[int, int]] = []

    @fc.memoize(timeout=60)
    def add(a: int, b: int) -> dict[str, int]:
        calls.append((a, b))
        return {"sum": a + b}

    with app.app_context():
        assert add(1, 2) == {"sum": 3}
        assert add(1, 2) == {"sum": 3}
        assert add(2, 2) == {"sum": 4}
        assert calls == [(1, 2), (2, 2)]
        fc.delete_memoized(add, 1, 2)
        assert add(1, 2) == {"sum": 3}
        assert calls == [(1, 2), (2, 2), (1, 2)]
        fc.delete_memoized(add)
        add(2, 2)
        assert len(calls) == 4


def test_memoize_result_none_is_cached(app_cache) -> None:
    app, fc = app_cache
    calls = []

    @fc.memoize(cache_none=True)
    def nothing() -> None:
        calls.append(1)

    with app.app_context():
        nothing()
        nothing()
    assert calls == [1]


def test_cached_view(app_cache) -> None:
    app, fc = app_cache
    calls = []

    @app.route("/view")
    @fc.cached(timeout=60, query_string=True)
    def view() -> flask.Response:
        calls.append(flask.request.args.get("q"))
        return flask.jsonify(q=flask.request.args.get("q"), n=len(calls))

    client = app.test_client()
    assert client.get("/view?q=1").get_json() == {"q": "1", "n": 1}
    assert client.get("/view?q=1").get_json() == {"q": "1", "n": 1}
    assert client.get("/view?q=2").get_json() == {"q": "2", "n": 2}
    assert calls == ["1", "2"]


def test_shared_with_another_process(fc: flask_caching.Cache, cache_name: str) -> None:
    fc.set("from-parent", {"pid": os.getpid()})
    fc.cache.inc("count")

    def child() -> tuple[object, int | None]:
        _app2, fc2 = make_app(cache_name)
        seen = fc2.get("from-parent")
        fc2.set("from-child", ["hello"])
        return seen, fc2.cache.inc("count")

    seen, count = run_in_fork(child)
    assert seen == {"pid": os.getpid()}
    assert count == 2
    assert fc.get("from-child") == ["hello"]


def test_an_existing_cache_object(cache: Cache) -> None:
    backend = MetisCache(cache=cache, key_prefix="x:", default_timeout=0)
    backend.set("k", 1)
    assert cache.get("x:k") == 1
    backend.close()  # not ours: stays open
    assert not cache.closed
