"""Flask-Caching's ``CACHE_SERIALIZER`` on ``metis_shm.contrib.flask.MetisCache``.

It is honoured: every value but a 64-bit int goes through the serializer's
``dumps`` (stored as the bytes it returns) and comes back through ``loads``,
so with ``JSONSerializer`` nothing is pickled. Ints stay Metis counters
(``inc``/``dec`` atomic), as cachelib's Redis serializer keeps ints plain for
``INCRBY``. Without ``CACHE_SERIALIZER`` values are pickled as before. Values
the serializer cannot encode are not stored (``set`` returns ``False`` and
removes the old value). Something that is not a serializer is refused at the
app's init.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import warnings
from collections.abc import Iterator
from typing import Any

import flask
import flask_caching
import pytest
from _workers import run_in_fork  # tests/ is on sys.path (conftest.py)
from cachelib.serializers import BaseSerializer, JSONSerializer

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
    with warnings.catch_warnings():
        # Flask-Caching warns "CACHE_SERIALIZER is set but ... does not use a
        # serializer" for a backend that ignores it: that must not happen.
        warnings.simplefilter("error")
        return app, flask_caching.Cache(app)


@pytest.fixture
def json_app(cache_name: str) -> Iterator[tuple[flask.Flask, flask_caching.Cache]]:
    app, fc = make_app(cache_name, CACHE_SERIALIZER=JSONSerializer)
    try:
        yield app, fc
    finally:
        fc.cache.close()


@pytest.fixture
def fc(json_app: tuple[flask.Flask, flask_caching.Cache]) -> flask_caching.Cache:
    return json_app[1]


class Recording(BaseSerializer):
    """JSON, counting its calls: shows which values go through the serializer."""

    def __init__(self) -> None:
        self.dumped: list[Any] = []
        self.loaded: list[bytes] = []

    def dumps(self, value: Any, *args: Any, **kwargs: Any) -> bytes:
        self.dumped.append(value)
        return json.dumps(value).encode()

    def loads(self, bvalue: bytes, *args: Any, **kwargs: Any) -> Any:
        self.loaded.append(bvalue)
        return json.loads(bvalue)


def test_without_cache_serializer_values_are_pickled(cache_name: str) -> None:
    _app, fc = make_app(cache_name)
    try:
        assert fc.cache.serializer is None
        fc.set("t", (1, 2))
        assert fc.get("t") == (1, 2)  # pickled: the tuple stays a tuple
        with Cache(cache_name, create=False) as raw:
            assert pickle.loads(raw.get("flask_cache_t")) == (1, 2)
    finally:
        fc.cache.close()


def test_cache_serializer_class_is_instantiated_and_used(fc: flask_caching.Cache) -> None:
    assert isinstance(fc.cache.serializer, JSONSerializer)
    fc.set("t", (1, 2))
    assert fc.get("t") == [1, 2]  # JSON: a tuple comes back a list


def test_values_are_stored_as_the_serializers_bytes(fc: flask_caching.Cache, cache_name: str):
    fc.set("doc", {"a": [1, 2.5, None, True], "b": "x"})
    fc.set("flag", True)
    fc.set("none", None)
    fc.set("text", "héllo")
    with Cache(cache_name, create=False) as raw:
        assert (
            raw.get("flask_cache_doc") == json.dumps({"a": [1, 2.5, None, True], "b": "x"}).encode()
        )
        assert raw.get("flask_cache_flag") == b"true"  # a bool is not a counter
        assert raw.get("flask_cache_none") == b"null"
        assert raw.get("flask_cache_text") == json.dumps("héllo").encode()
    assert fc.get("doc") == {"a": [1, 2.5, None, True], "b": "x"}
    assert fc.get("flag") is True
    assert fc.has("none") and fc.get("none") is None
    assert fc.get("text") == "héllo"


def test_every_method_goes_through_the_serializer(cache_name: str) -> None:
    serializer = Recording()
    _app, fc = make_app(cache_name, CACHE_SERIALIZER=serializer)
    try:
        assert fc.cache.serializer is serializer  # an instance is used as it is
        assert fc.set("a", ["x"]) is True
        assert fc.add("b", {"k": "v"}) is True
        assert fc.add("b", "other") is False
        assert sorted(fc.set_many({"c": "three", "d": 4.5})) == ["c", "d"]
        assert serializer.dumped == [["x"], {"k": "v"}, "other", "three", 4.5]
        assert fc.get("a") == ["x"]
        assert fc.get_many("b", "missing", "c") == [{"k": "v"}, None, "three"]
        assert fc.get_dict("d") == {"d": 4.5}
        assert sorted(serializer.loaded) == sorted([b'["x"]', b'{"k": "v"}', b'"three"', b"4.5"])
    finally:
        fc.cache.close()


def test_ints_stay_counters(fc: flask_caching.Cache, cache_name: str) -> None:
    backend = fc.cache
    fc.set("n", 5)
    assert backend.inc("n") == 6
    assert backend.dec("n", 2) == 4
    assert backend.inc("fresh", 3) == 3
    assert fc.get("n") == 4 and type(fc.get("n")) is int
    assert fc.get_many("n", "fresh") == [4, 3]
    with Cache(cache_name, create=False) as raw:
        assert raw.get("flask_cache_n") == 4  # a Metis counter, not b"4"
    fc.set("big", 2**70)  # past 64 bits: through the serializer
    assert fc.get("big") == 2**70
    assert backend.inc("big") is None  # not a counter


def test_a_value_the_serializer_cannot_encode_is_not_stored(
    fc: flask_caching.Cache, caplog: pytest.LogCaptureFixture
) -> None:
    fc.set("k", "old")
    with caplog.at_level(logging.WARNING):
        assert fc.set("k", object()) is False  # JSONSerializer logs and returns None
        assert fc.add("new", {1, 2}) is False
        assert fc.set_many({"ok": [1], "bad": b"bytes"}) == ["ok"]
    assert "exception has been raised" in caplog.text
    assert fc.get("k") is None and not fc.has("k"), "no stale value stays"
    assert not fc.has("new") and not fc.has("bad")
    assert fc.get("ok") == [1]


def test_a_value_not_written_by_the_serializer_is_a_miss(fc: flask_caching.Cache, cache_name):
    with Cache(cache_name, create=False) as raw:
        raw.set("flask_cache_pickled", pickle.dumps({"not": "json"}))
    assert fc.get("pickled") is None  # never unpickled


def test_memoize_and_cached_through_the_serializer(json_app) -> None:
    app, fc = json_app
    calls: list[object] = []

    @fc.memoize(timeout=60)
    def profile(user_id: int) -> dict[str, Any]:
        calls.append(user_id)
        return {"id": user_id, "tags": ["a", "b"]}

    @app.route("/users/<int:user_id>")
    @fc.cached(timeout=60)
    def page(user_id: int) -> dict[str, Any]:
        calls.append(f"page {user_id}")
        return {"id": user_id}

    @app.route("/response")
    @fc.cached(timeout=60)
    def response() -> flask.Response:
        calls.append("response")
        return flask.jsonify(ok=True)  # a Response: JSON cannot encode it

    with app.app_context():
        assert profile(1) == profile(1) == {"id": 1, "tags": ["a", "b"]}
    assert calls == [1]
    client = app.test_client()
    assert client.get("/users/2").get_json() == {"id": 2}
    assert client.get("/users/2").get_json() == {"id": 2}
    assert calls == [1, "page 2"]  # the view's dict was cached as JSON
    assert client.get("/response").get_json() == {"ok": True}
    assert client.get("/response").get_json() == {"ok": True}
    assert calls == [1, "page 2", "response", "response"]  # not cached, not an error


def test_shared_with_another_process(fc: flask_caching.Cache, cache_name: str) -> None:
    fc.set("from-parent", {"pid": os.getpid()})

    def child() -> object:
        _app2, fc2 = make_app(cache_name, CACHE_SERIALIZER=JSONSerializer)
        fc2.set("from-child", ["hello"])
        return fc2.get("from-parent")

    assert run_in_fork(child) == {"pid": os.getpid()}
    assert fc.get("from-child") == ["hello"]


def test_direct_construction_and_cache_options(cache_name: str) -> None:
    backend = MetisCache(
        cache_name, key_prefix="flask_cache_", serializer=JSONSerializer(), capacity="8MiB"
    )
    try:
        backend.set("k", (1,))
        assert backend.get("k") == [1]
    finally:
        backend.close()
    _app, fc = make_app(cache_name, CACHE_OPTIONS={"serializer": JSONSerializer()})
    try:
        assert fc.get("k") == [1]
    finally:
        fc.cache.close()


@pytest.mark.parametrize(
    "bad", ["msgpack", "json", object(), 3], ids=["msgpack", "json", "object", "int"]
)
def test_not_a_serializer_is_refused(cache_name: str, bad: object) -> None:
    with pytest.raises(TypeError, match=r"CACHE_SERIALIZER.*dumps\(\) and loads\(\)"):
        MetisCache(cache_name, serializer=bad)
    with pytest.raises(TypeError, match="CACHE_SERIALIZER"):
        make_app(cache_name, CACHE_OPTIONS={"serializer": bad})
    assert not Cache.exists(cache_name), "refused before the segment is created"
    # Flask-Caching itself refuses a CACHE_SERIALIZER that is not a BaseSerializer
    with pytest.raises(ValueError, match="CACHE_SERIALIZER"):
        make_app(cache_name, CACHE_SERIALIZER=bad)


def test_dumps_returning_something_else_is_an_error(cache_name: str) -> None:
    class Wrong(BaseSerializer):
        def dumps(self, value: Any, *args: Any, **kwargs: Any) -> Any:
            return {"not": "bytes"}

    _app, fc = make_app(cache_name, CACHE_SERIALIZER=Wrong)
    try:
        with pytest.raises(TypeError, match=r"Wrong.dumps\(\) returned dict"):
            fc.set("k", "v")
    finally:
        fc.cache.close()
