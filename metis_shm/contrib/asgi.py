"""ASGI integration: a response cache middleware and FastAPI/Starlette
dependencies, on a Metis cache shared by every worker process of the server
(``uvicorn --workers N``, gunicorn with uvicorn workers, ...).

* :class:`CacheMiddleware` wraps any ASGI app (FastAPI, Starlette, Quart,
  plain ASGI) and caches whole responses in Metis, so a response computed by
  one worker is served by all of them.
* :func:`cache_dependency` / :func:`get_cache` give endpoints the
  :class:`metis_shm.Cache` itself (``Depends(get_cache)``), opened once per
  process.

Both take ``far=`` (a ``redis://`` URL or a dict of ``FarSettings`` fields):
the cache is then the near tier of Redis (docs/far-tier.md), shared by the
machines of a fleet, one copy per machine.

The cache calls are synchronous but take microseconds (shared memory, no
I/O), so they run on the event loop directly.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, MutableMapping
from typing import Any

from metis_shm.cache import Cache
from metis_shm.far.settings import FarSettings

__all__ = [
    "DEFAULT_CACHEABLE_STATUSES",
    "DEFAULT_NAME",
    "CacheMiddleware",
    "cache_dependency",
    "close_caches",
    "get_cache",
    "open_cache",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_NAME = "asgi-cache"
# Statuses RFC 9111 lets a cache store by default, minus the client and
# server errors: those are cached only when asked (``statuses=``).
DEFAULT_CACHEABLE_STATUSES = frozenset({200, 203, 204, 300, 301, 308})

# Response headers never stored with a cached response (hop-by-hop, or ours).
_NOT_STORED = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"age",
    }
)
# Headers a 304 carries over from the full response (RFC 9110 15.4.5).
_KEPT_ON_304 = frozenset(
    {b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary"}
)
_DIRECTIVE = re.compile(r"\s*([A-Za-z-]+)\s*(?:=\s*\"?([^\",]*)\"?)?\s*(?:,|$)")


# ---- per-process caches, for the middleware and the dependencies -----------

_caches: dict[tuple[int, str], Cache] = {}
_caches_lock = threading.Lock()


def open_cache(name: str = DEFAULT_NAME, **cache_kwargs: Any) -> Cache:
    """This process's :class:`Cache` called ``name``, opened on first use.

    Later calls (from any thread) get the same object; ``cache_kwargs``
    (``capacity``, ``policy``, ...) only matter to the call that opens it,
    except ``far``: ``far="redis://..."`` (or a dict of ``FarSettings``
    fields) opens the near tier of that Redis (docs/far-tier.md), and a
    later call naming another far tier (or none was opened) raises
    ``ValueError`` rather than hand out the wrong cache.
    A forked child opens its own.
    """
    key = (os.getpid(), name)
    cache = _caches.get(key)
    if cache is not None and not cache.closed:
        if cache_kwargs.get("far") is not None:
            _check_far(cache, cache_kwargs["far"])
        return cache
    with _caches_lock:
        cache = _caches.get(key)
        if cache is None or cache.closed:
            if cache_kwargs.get("far") is None:
                cache_kwargs.pop("far", None)  # Cache.__init__ has no far argument
            cache = _caches[key] = Cache(name, **cache_kwargs)
        elif cache_kwargs.get("far") is not None:
            _check_far(cache, cache_kwargs["far"])
        return cache


def _check_far(cache: Cache, far: Any) -> None:
    have = getattr(cache, "far", None)
    want = far if isinstance(far, FarSettings) else FarSettings.build(far)
    if have is not None and have == want:
        return
    raise ValueError(
        f"open_cache({cache.name!r}): this process opened it "
        + (f"as the near tier of {have.url!r}" if have is not None else "without a far tier")
        + f", and is now asked for far={far!r}: give every opener of a name the same far"
    )


def close_caches() -> None:
    """Detach this process from every cache :func:`open_cache` opened (segments stay)."""
    with _caches_lock:
        pid = os.getpid()
        for (owner, _), cache in list(_caches.items()):
            if owner == pid:
                cache.close()
        _caches.clear()


def cache_dependency(
    name: str = DEFAULT_NAME, **cache_kwargs: Any
) -> Callable[[], Awaitable[Cache]]:
    """A FastAPI dependency giving endpoints the cache ``name``.

    ``cache_kwargs`` go to :class:`Cache` the first time the process opens it::

        shared = cache_dependency("myapp", capacity="128MiB")

        @app.get("/items/{id}")
        async def item(id: int, cache: Cache = Depends(shared)): ...

    With ``far="redis://..."`` (or a dict of ``FarSettings`` fields) the
    endpoints get the near tier of that Redis (a ``NearCache``).
    """
    if cache_kwargs.get("far") is not None:
        cache_kwargs["far"] = FarSettings.build(cache_kwargs["far"])  # checked once, now

    async def dependency() -> Cache:
        return open_cache(name, **cache_kwargs)

    dependency.__name__ = f"metis_cache_{name}"
    return dependency


async def get_cache() -> Cache:
    """``Depends(get_cache)``: the cache named by ``$METIS_CACHE_NAME`` (default
    ``asgi-cache``), opened once per process."""
    return open_cache(os.environ.get("METIS_CACHE_NAME", DEFAULT_NAME))


# ---- Cache-Control ------------------------------------------------------------


def parse_cache_control(value: str) -> dict[str, str | None]:
    """``"public, max-age=60"`` -> ``{"public": None, "max-age": "60"}`` (names lower-cased)."""
    return {m.group(1).lower(): m.group(2) for m in _DIRECTIVE.finditer(value) if m.group(1)}


def _seconds(value: str | None) -> int | None:
    try:
        return max(0, int(value)) if value is not None else None
    except ValueError:
        return 0  # an unreadable age counts as stale


def _etag_matches(if_none_match: str, etag: str) -> bool:
    """Weak comparison (RFC 9110 13.1.2) of an If-None-Match list and one ETag."""
    if if_none_match.strip() == "*":
        return True
    want = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == want for tag in if_none_match.split(","))


# ---- the middleware -----------------------------------------------------------


class CacheMiddleware:
    """Cache whole HTTP responses of ``app`` in a Metis cache.

    :param app: the ASGI application.
    :param cache: a :class:`Cache`, or a cache name opened once per process on
        the first request (default ``"asgi-cache"``).
    :param ttl: seconds a response is kept when it does not say
        (``Cache-Control: s-maxage`` then ``max-age`` win over it).
    :param vary_headers: request headers that are part of the key (e.g.
        ``("accept", "accept-language")``). A response whose ``Vary`` names a
        header not listed here is not stored.
    :param methods: methods whose responses are cached (others pass through).
    :param statuses: response statuses that may be stored.
    :param key_prefix: prefix of the cache keys.
    :param max_body_size: larger responses are streamed through, not stored.
    :param header: response header telling ``hit``, ``miss`` or ``bypass``
        (``None``: no header).
    :param far: when ``cache`` is a name: the far tier, a ``redis://`` URL
        or a dict of ``FarSettings`` fields. The cache is then the near tier
        of Redis (docs/far-tier.md): a response stored by one machine is
        served by every machine, and one a plain Redis client deletes or
        rewrites is seen as such. Give an open near cache as ``cache``
        instead, if you have one.

    Keys are made of method, path, query string and the ``vary_headers``.
    Not stored: responses with ``Cache-Control`` ``no-store``, ``no-cache``,
    ``private`` or ``max-age=0``, with ``Set-Cookie``, with ``Vary: *``;
    answers to requests with ``Authorization`` unless the response says
    ``public`` or ``s-maxage``. Requests with ``Cache-Control: no-store`` bypass
    the cache; ``no-cache`` or ``max-age=N`` refetch when the stored response
    is older (and store the new one); ``only-if-cached`` gets a 504 on a miss.
    Every stored response has an ``ETag`` (the app's, or a hash of the body),
    and ``If-None-Match`` is answered with ``304 Not Modified``.
    """

    def __init__(
        self,
        app: ASGIApp,
        cache: Cache | str = DEFAULT_NAME,
        *,
        ttl: float = 60.0,
        vary_headers: Iterable[str] = (),
        methods: Iterable[str] = ("GET", "HEAD"),
        statuses: Collection[int] = DEFAULT_CACHEABLE_STATUSES,
        key_prefix: str = "asgi:",
        max_body_size: int = 1 << 20,
        header: str | None = "x-metis-cache",
        far: str | dict[str, Any] | FarSettings | None = None,
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"ttl must be positive, got {ttl!r}")
        if far is not None and isinstance(cache, Cache):
            raise ValueError("CacheMiddleware: far= goes with a cache name, not an open Cache")
        #: The far tier's settings (checked now, so a typo fails at startup), or None.
        self.far = FarSettings.build(far) if far is not None else None
        self.app = app
        self._cache = cache if isinstance(cache, Cache) else None
        self._cache_name = cache.name if isinstance(cache, Cache) else cache
        self.ttl = ttl
        self.vary_headers = tuple(sorted({h.lower() for h in vary_headers}))
        self._vary_bytes = frozenset(h.encode("latin-1") for h in self.vary_headers)
        self.methods = frozenset(m.upper() for m in methods)
        self.statuses = frozenset(statuses)
        self.key_prefix = key_prefix
        self.max_body_size = max_body_size
        self.header = header.lower().encode("latin-1") if header else None

    @property
    def cache(self) -> Cache:
        """The cache (opened by this process on first use when given by name)."""
        if self._cache is not None and not self._cache.closed:
            return self._cache
        return open_cache(self._cache_name, far=self.far)

    def key_for(self, scope: Scope) -> str:
        """The cache key of a request: method, path, query string, vary headers."""
        headers = _headers(scope)
        h = hashlib.blake2b(digest_size=20)
        for part in (
            scope["method"].encode(),
            scope.get("root_path", "").encode("utf-8", "surrogateescape"),
            scope["path"].encode("utf-8", "surrogateescape"),
            scope.get("query_string", b""),
        ):
            h.update(len(part).to_bytes(4, "big") + part)
        for name in self.vary_headers:
            value = b",".join(headers.get(name.encode("latin-1"), []))
            h.update(len(value).to_bytes(4, "big") + value)
        return f"{self.key_prefix}{scope['method']}:{scope['path'][:200]}:{h.hexdigest()}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in self.methods:
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        request_cc = parse_cache_control(_joined(headers, b"cache-control"))
        if "no-store" in request_cc:
            await self.app(scope, receive, self._tagging(send, b"bypass"))
            return
        key = self.key_for(scope)
        cache = self.cache
        entry = cache.get(key)
        if isinstance(entry, dict) and self._fresh_enough(entry, request_cc):
            await self._send_stored(entry, headers, send)
            return
        if "only-if-cached" in request_cc:
            await _send_simple(send, 504, b"not in cache", self._tag(b"miss"))
            return
        await self._fetch_and_store(scope, receive, send, key, headers, cache)

    # ---- hits --------------------------------------------------------------------

    def _fresh_enough(self, entry: dict[str, Any], request_cc: dict[str, str | None]) -> bool:
        if "no-cache" in request_cc:
            return False
        max_age = _seconds(request_cc.get("max-age")) if "max-age" in request_cc else None
        return max_age is None or time.time() - float(entry["t"]) <= max_age

    async def _send_stored(
        self, entry: dict[str, Any], req_headers: dict[bytes, list[bytes]], send: Send
    ) -> None:
        stored: list[tuple[bytes, bytes]] = [(bytes(k), bytes(v)) for k, v in entry["h"]]
        age = str(max(0, int(time.time() - float(entry["t"])))).encode()
        inm = _joined(req_headers, b"if-none-match")
        if inm and 200 <= int(entry["s"]) < 300 and _etag_matches(inm, entry["e"]):
            kept = [(k, v) for k, v in stored if k in _KEPT_ON_304]
            await send(
                {
                    "type": "http.response.start",
                    "status": 304,
                    "headers": [*kept, (b"age", age), *self._tag(b"hit")],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        await send(
            {
                "type": "http.response.start",
                "status": int(entry["s"]),
                "headers": [*stored, (b"age", age), *self._tag(b"hit")],
            }
        )
        await send({"type": "http.response.body", "body": bytes(entry["b"])})

    # ---- misses ------------------------------------------------------------------

    async def _fetch_and_store(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        key: str,
        req_headers: dict[bytes, list[bytes]],
        cache: Cache,
    ) -> None:
        authorized = b"authorization" in req_headers and b"authorization" not in self._vary_bytes
        start: Message | None = None
        ttl: float | None = None  # None: this response is not stored
        chunks: list[bytes] = []
        size = 0
        passing = False  # forwarding as it comes (not stored)

        async def wrapped(message: Message) -> None:
            nonlocal start, ttl, size, passing
            if passing:
                await send(message)
                return
            if message["type"] == "http.response.start":
                start = message
                ttl = self._storable_ttl(message, authorized)
                if ttl is None:
                    passing = True
                    await send(_with_headers(message, self._tag(b"miss")))
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            body = bytes(message.get("body", b""))
            chunks.append(body)
            size += len(body)
            more = bool(message.get("more_body", False))
            if size > self.max_body_size:  # too large to store: stream it out
                passing = True
                await send(_with_headers(start, self._tag(b"miss")))
                await send(
                    {"type": "http.response.body", "body": b"".join(chunks), "more_body": more}
                )
                chunks.clear()
                return
            if not more:
                await self._finish(start, b"".join(chunks), key, ttl, req_headers, cache, send)

        await self.app(scope, receive, wrapped)

    def _storable_ttl(self, start: Message, authorized: bool) -> float | None:
        """How long this response may be stored; None if it may not be."""
        if int(start["status"]) not in self.statuses:
            return None
        headers = _header_dict(start.get("headers", []))
        if b"set-cookie" in headers:
            return None
        cc = parse_cache_control(_joined(headers, b"cache-control"))
        if {"no-store", "no-cache", "private"} & cc.keys():
            return None
        if authorized and not ({"public", "s-maxage"} & cc.keys()):
            return None
        vary = {v.strip().lower() for v in _joined(headers, b"vary").split(",") if v.strip()}
        if "*" in vary or not vary <= set(self.vary_headers):
            return None
        for directive in ("s-maxage", "max-age"):
            if directive in cc:
                seconds = _seconds(cc[directive])
                return float(seconds) if seconds else None
        return self.ttl

    async def _finish(
        self,
        start: Message,
        body: bytes,
        key: str,
        ttl: float | None,
        req_headers: dict[bytes, list[bytes]],
        cache: Cache,
        send: Send,
    ) -> None:
        headers = [
            (bytes(k).lower(), bytes(v))
            for k, v in start.get("headers", [])
            if bytes(k).lower() not in _NOT_STORED and bytes(k).lower() != self.header
        ]
        etag = _joined(_header_dict(headers), b"etag")
        if not etag:
            etag = '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'
            headers.append((b"etag", etag.encode()))
        if ttl is not None:
            entry = {
                "s": int(start["status"]),
                "h": headers,
                "b": body,
                "e": etag,
                "t": time.time(),
            }
            # larger than the cache's max_value_size (ValueTooLarge): serve, don't store
            with contextlib.suppress(ValueError):
                cache.set(key, entry, ttl=ttl)
        inm = _joined(req_headers, b"if-none-match")
        if inm and 200 <= int(start["status"]) < 300 and _etag_matches(inm, etag):
            kept = [(k, v) for k, v in headers if k in _KEPT_ON_304]
            await send(
                {
                    "type": "http.response.start",
                    "status": 304,
                    "headers": [*kept, *self._tag(b"miss")],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        await send(_with_headers({**start, "headers": headers}, self._tag(b"miss")))
        await send({"type": "http.response.body", "body": body})

    # ---- the status header ---------------------------------------------------------

    def _tag(self, value: bytes) -> list[tuple[bytes, bytes]]:
        return [(self.header, value)] if self.header else []

    def _tagging(self, send: Send, value: bytes) -> Send:
        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = _with_headers(message, self._tag(value))
            await send(message)

        return tagged


def _headers(scope: Scope) -> dict[bytes, list[bytes]]:
    return _header_dict(scope.get("headers", []))


def _header_dict(raw: Iterable[Any]) -> dict[bytes, list[bytes]]:
    found: dict[bytes, list[bytes]] = {}
    for k, v in raw:
        found.setdefault(bytes(k).lower(), []).append(bytes(v))
    return found


def _joined(headers: dict[bytes, list[bytes]], name: bytes) -> str:
    return b", ".join(headers.get(name, [])).decode("latin-1")


def _with_headers(start: Message, extra: list[tuple[bytes, bytes]]) -> Message:
    return {**start, "headers": [*start.get("headers", []), *extra]}


async def _send_simple(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
