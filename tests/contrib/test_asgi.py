"""``metis_shm.contrib.asgi``: the response cache middleware (keys,
Cache-Control both ways, ETag and 304, vary headers, what is not stored) and
the FastAPI dependencies, through Starlette's TestClient (httpx)."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator
from typing import Any

import fastapi  # noqa: F401 - a test dependency (the test extra)
import httpx  # noqa: F401 - a test dependency (the test extra)
import pytest
from _workers import run_in_fork  # tests/ is on sys.path (conftest.py)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from metis_shm import Cache
from metis_shm.contrib import asgi
from metis_shm.contrib.asgi import CacheMiddleware, cache_dependency, get_cache

with warnings.catch_warnings():
    # newer starlette warns when its TestClient runs on httpx instead of httpx2
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> int:
        self.n += 1
        return self.n


def build(cache: Cache, **options: Any) -> tuple[TestClient, Counter]:
    calls = Counter()

    async def plain(request: Request) -> Response:
        n = calls()
        headers = {}
        if "cc" in request.query_params:
            headers["Cache-Control"] = request.query_params["cc"]
        if "vary" in request.query_params:
            headers["Vary"] = request.query_params["vary"]
        if "cookie" in request.query_params:
            headers["Set-Cookie"] = "session=1"
        if "etag" in request.query_params:
            headers["ETag"] = request.query_params["etag"]
        status = int(request.query_params.get("status", "200"))
        lang = request.headers.get("accept-language", "-")
        return PlainTextResponse(f"call {n} {lang}", status_code=status, headers=headers)

    async def write(request: Request) -> Response:
        return PlainTextResponse(f"wrote {calls()}")

    async def stream(request: Request) -> Response:
        calls()

        async def parts():
            for i in range(3):
                yield f"part{i} ".encode()

        return StreamingResponse(parts(), media_type="text/plain")

    async def big(request: Request) -> Response:
        return PlainTextResponse("x" * 5000 + str(calls()))

    app = Starlette(
        routes=[
            Route("/plain", plain),
            Route("/write", write, methods=["POST", "GET"]),
            Route("/stream", stream),
            Route("/big", big),
        ]
    )
    return TestClient(CacheMiddleware(app, cache=cache, **options)), calls


@pytest.fixture
def client(cache: Cache) -> Iterator[tuple[TestClient, Counter]]:
    c, calls = build(cache, vary_headers=("Accept-Language",))
    with c:
        yield c, calls


def test_second_get_is_a_hit(client) -> None:
    c, calls = client
    first = c.get("/plain")
    assert first.status_code == 200 and first.text == "call 1 -"
    assert first.headers["x-metis-cache"] == "miss"
    second = c.get("/plain")
    assert second.text == "call 1 -"
    assert second.headers["x-metis-cache"] == "hit"
    assert second.headers["content-type"] == first.headers["content-type"]
    assert second.headers["etag"] == first.headers["etag"]
    assert "age" in second.headers
    assert calls.n == 1


def test_key_has_path_query_method_and_vary_headers(client) -> None:
    c, calls = client
    assert c.get("/plain?a=1").text == "call 1 -"
    assert c.get("/plain?a=2").text == "call 2 -"
    assert c.get("/plain?a=1").text == "call 1 -"
    fr = c.get("/plain?a=1", headers={"Accept-Language": "fr"})
    assert fr.text == "call 3 fr" and fr.headers["x-metis-cache"] == "miss"
    assert c.get("/plain?a=1", headers={"Accept-Language": "fr"}).text == "call 3 fr"
    head = c.head("/plain?a=1")  # HEAD has its own entry
    assert head.status_code == 200 and head.headers["x-metis-cache"] == "miss"
    assert c.head("/plain?a=1").headers["x-metis-cache"] == "hit"
    assert calls.n == 4


def test_other_methods_pass_through(client) -> None:
    c, _calls = client
    assert c.post("/write").text == "wrote 1"
    r = c.post("/write")
    assert r.text == "wrote 2" and "x-metis-cache" not in r.headers


def test_methods_option(cache: Cache) -> None:
    c, _calls = build(cache, methods=("GET", "POST"))
    assert c.post("/write").text == "wrote 1"
    assert c.post("/write").headers["x-metis-cache"] == "hit"


def test_error_responses_are_not_stored_unless_asked(cache: Cache) -> None:
    c, calls = build(cache)
    for status in (404, 500):
        assert c.get(f"/plain?status={status}").status_code == status
        r = c.get(f"/plain?status={status}")
        assert r.headers["x-metis-cache"] == "miss"
    assert calls.n == 4
    c2, calls2 = build(cache, statuses={200, 404}, key_prefix="other:")
    c2.get("/plain?status=404")
    r = c2.get("/plain?status=404")
    assert (r.status_code, r.headers["x-metis-cache"]) == (404, "hit")
    assert calls2.n == 1


@pytest.mark.parametrize(
    "cc", ["no-store", "no-cache", "private", "max-age=0", "private, max-age=60"]
)
def test_response_cache_control_forbids_storing(client, cc: str) -> None:
    c, calls = client
    c.get("/plain", params={"cc": cc})
    r = c.get("/plain", params={"cc": cc})
    assert r.headers["x-metis-cache"] == "miss" and calls.n == 2
    assert r.headers["cache-control"] == cc


def test_set_cookie_and_vary_star_are_not_stored(client) -> None:
    c, _calls = client
    for query in ({"cookie": "1"}, {"vary": "*"}, {"vary": "Accept-Encoding"}):
        c.get("/plain", params=query)
        assert c.get("/plain", params=query).headers["x-metis-cache"] == "miss"
    # a Vary the middleware keys on is fine
    c.get("/plain", params={"vary": "accept-language"})
    assert c.get("/plain", params={"vary": "accept-language"}).headers["x-metis-cache"] == "hit"


def test_response_max_age_is_the_ttl(cache: Cache) -> None:
    c, _calls = build(cache, ttl=300)
    c.get("/plain", params={"cc": "max-age=1"})
    c.get("/plain", params={"cc": "public, max-age=300, s-maxage=1"})  # s-maxage wins
    c.get("/plain")  # the middleware's ttl
    assert c.get("/plain", params={"cc": "max-age=1"}).headers["x-metis-cache"] == "hit"
    time.sleep(1.3)
    assert c.get("/plain", params={"cc": "max-age=1"}).headers["x-metis-cache"] == "miss"
    s_maxage = c.get("/plain", params={"cc": "public, max-age=300, s-maxage=1"})
    assert s_maxage.headers["x-metis-cache"] == "miss"
    assert c.get("/plain").headers["x-metis-cache"] == "hit"


def test_default_ttl_expires(cache: Cache) -> None:
    c, _calls = build(cache, ttl=1)
    c.get("/plain")
    assert c.get("/plain").headers["x-metis-cache"] == "hit"
    time.sleep(1.3)
    assert c.get("/plain").headers["x-metis-cache"] == "miss"


def test_request_cache_control(client) -> None:
    c, _calls = client
    c.get("/plain")  # call 1, stored
    r = c.get("/plain", headers={"Cache-Control": "no-store"})
    assert (r.text, r.headers["x-metis-cache"]) == ("call 2 -", "bypass")
    assert c.get("/plain").text == "call 1 -"  # no-store did not replace it
    r = c.get("/plain", headers={"Cache-Control": "no-cache"})
    assert (r.text, r.headers["x-metis-cache"]) == ("call 3 -", "miss")
    assert c.get("/plain").text == "call 3 -"  # no-cache refetched and stored
    time.sleep(1.1)
    assert c.get("/plain", headers={"Cache-Control": "max-age=60"}).text == "call 3 -"
    r = c.get("/plain", headers={"Cache-Control": "max-age=0"})
    assert r.text == "call 4 -"
    r = c.get("/nothing-here", headers={"Cache-Control": "only-if-cached"})
    assert r.status_code == 504
    r = c.get("/plain", headers={"Cache-Control": "only-if-cached"})
    assert (r.status_code, r.text) == (200, "call 4 -")


def test_authorization_needs_public(client) -> None:
    c, _calls = client
    auth = {"Authorization": "Bearer x"}
    c.get("/plain", headers=auth)
    assert c.get("/plain", headers=auth).headers["x-metis-cache"] == "miss"
    c.get("/plain", headers=auth, params={"cc": "public, max-age=60"})
    r = c.get("/plain", headers=auth, params={"cc": "public, max-age=60"})
    assert r.headers["x-metis-cache"] == "hit"


def test_etag_and_304(client) -> None:
    c, calls = client
    first = c.get("/plain")
    etag = first.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"') and len(etag) > 10
    r = c.get("/plain", headers={"If-None-Match": etag})
    assert r.status_code == 304 and r.content == b""
    assert r.headers["etag"] == etag and r.headers["x-metis-cache"] == "hit"
    assert "content-length" not in r.headers or r.headers["content-length"] == "0"
    r = c.get("/plain", headers={"If-None-Match": f'"nope", W/{etag}'})
    assert r.status_code == 304  # weak comparison, list
    r = c.get("/plain", headers={"If-None-Match": '"nope"'})
    assert r.status_code == 200 and r.text == "call 1 -"
    # on a miss too: the ETag is known before the answer goes out
    r = c.get("/plain", params={"etag": '"v9"'}, headers={"If-None-Match": '"v9"'})
    assert r.status_code == 304 and r.headers["x-metis-cache"] == "miss"
    assert calls.n == 2
    # a changed body gets a new ETag
    fresh = c.get("/plain", headers={"Cache-Control": "no-cache"})
    assert fresh.text == "call 3 -" and fresh.headers["etag"] != etag
    assert c.get("/plain", headers={"If-None-Match": etag}).status_code == 200


def test_app_etag_is_kept(client) -> None:
    c, _calls = client
    r = c.get("/plain", params={"etag": '"v7"'})
    assert r.headers["etag"] == '"v7"'
    r = c.get("/plain", params={"etag": '"v7"'}, headers={"If-None-Match": '"v7"'})
    assert r.status_code == 304 and r.headers["x-metis-cache"] == "hit"


def test_streaming_and_large_responses(cache: Cache) -> None:
    c, calls = build(cache, max_body_size=1000)
    assert c.get("/stream").text == "part0 part1 part2 "
    r = c.get("/stream")
    assert r.text == "part0 part1 part2 " and r.headers["x-metis-cache"] == "hit"
    big = c.get("/big")
    assert len(big.content) == 5001 and big.headers["x-metis-cache"] == "miss"
    assert c.get("/big").headers["x-metis-cache"] == "miss"
    assert calls.n == 3


def test_cache_by_name_and_no_header(cache_name: str) -> None:
    c, calls = build(cache_name, header=None)  # type: ignore[arg-type]
    try:
        c.get("/plain")
        r = c.get("/plain")
        assert "x-metis-cache" not in r.headers and calls.n == 1
        assert Cache.exists(cache_name)
    finally:
        asgi.close_caches()


def test_non_http_scopes_pass_through(cache: Cache) -> None:
    seen = []

    async def app(scope, receive, send) -> None:
        seen.append(scope["type"])
        if scope["type"] == "lifespan":
            msg = await receive()
            assert msg["type"] == "lifespan.startup"
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})

    with TestClient(CacheMiddleware(app, cache=cache)):
        pass
    assert seen == ["lifespan"]


def test_shared_across_processes(cache: Cache) -> None:
    c, _calls = build(cache)
    c.get("/plain?shared=1")

    def child() -> tuple[str, str]:
        c2, _ = build(Cache(cache.name, create=False))
        r = c2.get("/plain?shared=1")
        return r.text, r.headers["x-metis-cache"]

    assert run_in_fork(child) == ("call 1 -", "hit")


def test_bad_ttl(cache_name: str) -> None:
    with pytest.raises(ValueError):
        CacheMiddleware(Starlette(), cache=cache_name, ttl=0)


# ---- FastAPI dependencies --------------------------------------------------------


def test_fastapi_dependency(cache_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi import Depends, FastAPI

    shared = cache_dependency(cache_name, capacity="4MiB")
    app = FastAPI()

    @app.get("/incr")
    async def incr(cache: Cache = Depends(shared)) -> dict[str, int]:  # noqa: B008
        return {"value": cache.incr("n", default=0), "id": id(cache), "pid": os.getpid()}

    monkeypatch.setenv("METIS_CACHE_NAME", cache_name)

    @app.get("/default")
    async def default(cache: Cache = Depends(get_cache)) -> dict[str, Any]:  # noqa: B008
        return {"name": cache.name, "n": cache.get("n")}

    try:
        with TestClient(app) as c:
            a, b = c.get("/incr").json(), c.get("/incr").json()
            assert (a["value"], b["value"]) == (1, 2)
            assert a["id"] == b["id"]  # opened once per process
            assert c.get("/default").json() == {"name": cache_name, "n": 2}
        assert asgi.open_cache(cache_name) is asgi.open_cache(cache_name)

        def child() -> tuple[int, bool]:
            mine = asgi.open_cache(cache_name)
            return mine.incr("n"), id(mine) != a["id"]

        assert run_in_fork(child) == (3, True)
    finally:
        asgi.close_caches()


def test_fastapi_app_with_middleware(cache: Cache) -> None:
    from fastapi import FastAPI

    app = FastAPI()
    hits = Counter()

    @app.get("/items/{item}")
    async def item(item: int) -> JSONResponse:
        return JSONResponse({"item": item, "n": hits()})

    app.add_middleware(CacheMiddleware, cache=cache, ttl=30)
    with TestClient(app) as c:
        assert c.get("/items/1").json() == {"item": 1, "n": 1}
        r = c.get("/items/1")
        assert r.json() == {"item": 1, "n": 1} and r.headers["x-metis-cache"] == "hit"
        assert c.get("/items/2").json() == {"item": 2, "n": 2}
