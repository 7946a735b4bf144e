"""A small blocking RESP2/RESP3 client connection to one Redis node.

    conn = RespConnection.open("127.0.0.1", 6379, protocol=3, timeout=1.0)
    conn.send("CLIENT", "ID")
    my_id = conn.read(timeout=1.0)

It is what the tracker speaks, not a general client: one TCP socket, one
command at a time or pipelined, every reply parsed into plain Python values
(simple string -> str, integer and big number -> int, bulk -> bytes, null ->
None, array -> list, map -> dict, set -> set, double -> float, boolean ->
bool, verbatim -> bytes without its format, push -> ``Push``). An error reply
raises ``RespError``; one nested inside an aggregate is left there as a
``RespError`` value. Every type is accepted whatever protocol the connection
negotiated: Redis writes the null of a FLUSHALL invalidation in the protocol
of the client whose tracking caused it, so a RESP2 stream can carry ``_``.

Replies are parsed from a buffer that keeps what a timeout interrupted, so a
``read`` that times out halfway through a reply loses nothing. Input that is
not RESP raises ``RespProtocolError`` (a ``ConnectionError``: the connection
is unusable); lengths, counts, lines and nesting are bounded, so a hostile
peer can neither make the parser loop nor make it buffer without end.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote, urlsplit

MAX_BULK: Final = 512 * 1024 * 1024  # Redis's own proto-max-bulk-len default
MAX_LINE: Final = 64 * 1024  # headers and simple strings; Redis's are short
MAX_COUNT: Final = 1 << 32
MAX_DEPTH: Final = 64  # Redis nests four deep at most (CLUSTER SHARDS)
MAX_REPLY: Final = MAX_BULK + MAX_LINE
RECV_SIZE: Final = 64 * 1024

_INT = re.compile(rb"-?[0-9]{1,64}")
_BIG = re.compile(rb"-?[0-9]{1,4096}")
_DOUBLE = re.compile(
    rb"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[-+]?inf|nan", re.IGNORECASE
)
_AGGREGATES: Final = frozenset(b"*~%>|")


class RespError(Exception):
    """An error reply from Redis (``-ERR ...`` or a blob error); ``str(e)`` is its text."""


class RespProtocolError(ConnectionError):
    """The peer sent something that is not RESP; the connection cannot be used further."""


class Push(list[Any]):
    """A RESP3 push message (``>``): out-of-band data, not the reply to a command."""


class _Incomplete(Exception):
    """The buffer ends inside the reply."""


def encode(*args: str | bytes | int) -> bytes:
    """A command as a RESP array of bulk strings (str as UTF-8, int in decimal)."""
    if not args:
        raise ValueError("a command needs at least its name")
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bool):  # an int, but True would go out as "1": surely a mistake
            raise TypeError("a bool is not a Redis argument; pass 0/1 or a string")
        if isinstance(arg, int):
            data = b"%d" % arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, bytes | bytearray | memoryview):
            data = bytes(arg)
        else:
            raise TypeError(f"a Redis argument is str, bytes or int, not {type(arg).__name__}")
        parts += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(parts)


def parse(buf: bytes | bytearray, pos: int = 0) -> tuple[Any, int] | None:
    """The reply starting at ``buf[pos]`` and the position after it, or None if
    the buffer ends before the reply does. An error reply is returned as a
    ``RespError`` value; malformed input raises ``RespProtocolError``."""
    try:
        return _value(buf, pos, 0)
    except _Incomplete:
        return None


def _line(buf: bytes | bytearray, pos: int) -> tuple[bytes, int]:
    end = buf.find(b"\r\n", pos, pos + MAX_LINE + 2)
    if end < 0:
        if len(buf) - pos > MAX_LINE:
            raise RespProtocolError(f"no CRLF within {MAX_LINE} bytes")
        raise _Incomplete
    return bytes(buf[pos:end]), end + 2


def _number(line: bytes, pattern: re.Pattern[bytes], what: str) -> int:
    if pattern.fullmatch(line) is None:
        raise RespProtocolError(f"malformed {what}: {line[:40]!r}")
    return int(line)


def _length(line: bytes, kind: int, limit: int) -> int:
    n = _number(line, _INT, f"length of {chr(kind)!r}")
    if n == -1 and kind in b"$*":  # RESP2's null bulk and null array
        return n
    if not 0 <= n <= limit:
        raise RespProtocolError(f"length {n} of {chr(kind)!r} out of range")
    return n


def _hashable(value: Any) -> Any:
    """A set member or map key: aggregates become tuples (Redis sends none in practice)."""
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _hashable(v)) for k, v in value.items())
    if isinstance(value, set):
        return frozenset(value)
    return value


def _value(buf: bytes | bytearray, pos: int, depth: int) -> tuple[Any, int]:
    if pos >= len(buf):
        raise _Incomplete
    kind = buf[pos]
    line, pos = _line(buf, pos + 1)
    if kind == ord("+"):
        return line.decode("utf-8", "replace"), pos
    if kind == ord("-"):
        return RespError(line.decode("utf-8", "replace")), pos
    if kind == ord(":"):
        return _number(line, _INT, "integer"), pos
    if kind == ord("("):
        return _number(line, _BIG, "big number"), pos
    if kind == ord(","):
        if _DOUBLE.fullmatch(line) is None:
            raise RespProtocolError(f"malformed double: {line[:40]!r}")
        return float(line), pos
    if kind == ord("#"):
        if line not in (b"t", b"f"):
            raise RespProtocolError(f"malformed boolean: {line[:40]!r}")
        return line == b"t", pos
    if kind == ord("_"):
        if line:
            raise RespProtocolError(f"malformed null: {line[:40]!r}")
        return None, pos
    if kind in b"$!=":
        n = _length(line, kind, MAX_BULK)
        if n == -1:
            return None, pos
        end = pos + n
        if len(buf) < end + 2:
            raise _Incomplete
        if buf[end : end + 2] != b"\r\n":
            raise RespProtocolError(f"{chr(kind)!r} of length {n} not followed by CRLF")
        data = bytes(buf[pos:end])
        if kind == ord("!"):
            return RespError(data.decode("utf-8", "replace")), end + 2
        if kind == ord("="):
            if len(data) < 4 or data[3:4] != b":":
                raise RespProtocolError(f"verbatim string without its format: {data[:40]!r}")
            data = data[4:]
        return data, end + 2
    if kind in _AGGREGATES:
        n = _length(line, kind, MAX_COUNT)
        if n == -1:
            return None, pos
        if depth >= MAX_DEPTH:
            raise RespProtocolError(f"aggregates nested deeper than {MAX_DEPTH}")
        items: list[Any] = []
        for _ in range(2 * n if kind in b"%|" else n):
            item, pos = _value(buf, pos, depth + 1)
            items.append(item)
        if kind == ord("*"):
            return items, pos
        if kind == ord(">"):
            return Push(items), pos
        if kind == ord("~"):
            return {_hashable(i) for i in items}, pos
        if kind == ord("%"):
            return {_hashable(k): v for k, v in zip(items[::2], items[1::2], strict=True)}, pos
        return _value(buf, pos, depth + 1)  # "|": attributes describe the value that follows
    raise RespProtocolError(f"unknown RESP type byte {bytes([kind])!r}")


@dataclass(frozen=True)
class RedisAddress:
    """Where a Redis node is and how to log in, from a ``redis://`` URL."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    db: int = 0


def parse_url(url: str) -> RedisAddress:
    """``redis://[[user]:password@]host[:port][/db]``; raises ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise ValueError(f"not a redis:// URL (TLS and unix sockets are not supported): {url!r}")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"the database of {url!r} is not a number: {path!r}")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if username is not None and password is None:
        raise ValueError(f"{url!r} names a user but no password")
    return RedisAddress(parts.hostname or "127.0.0.1", parts.port or 6379, username, password,
                        int(path) if path else 0)  # fmt: skip


class RespConnection:
    """One blocking connection to a Redis node; not thread-safe.

    ``timeout`` bounds every send; each ``read`` takes its own.
    """

    def __init__(self, sock: socket.socket, *, timeout: float = 1.0) -> None:
        self._sock = sock
        self._buf = bytearray()
        self.timeout = timeout
        self.closed = False

    @classmethod
    def open(
        cls,
        host: str,
        port: int,
        *,
        timeout: float = 1.0,
        protocol: int = 2,
        username: str | None = None,
        password: str | None = None,
        db: int = 0,
        name: str | None = None,
    ) -> RespConnection:
        """Connect, then authenticate, switch protocol, name the client and select ``db``.

        RESP3 does it in one ``HELLO 3 [AUTH user pass] [SETNAME name]``;
        RESP2 with ``AUTH`` and ``CLIENT SETNAME``. Raises OSError (also
        TimeoutError) if the node cannot be reached, RespError if it refuses.
        """
        if protocol not in (2, 3):
            raise ValueError(f"protocol is 2 or 3, not {protocol!r}")
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = cls(sock, timeout=timeout)
        try:
            if protocol == 3:
                hello: list[str | int] = ["HELLO", 3]
                if password is not None:
                    hello += ["AUTH", username or "default", password]
                if name:
                    hello += ["SETNAME", name]
                conn.call(*hello)
            else:
                if password is not None:
                    conn.call("AUTH", *([username] if username else []), password)
                if name:
                    conn.call("CLIENT", "SETNAME", name)
            if db:
                conn.call("SELECT", db)
        except BaseException:
            conn.close()
            raise
        return conn

    def fileno(self) -> int:
        """The socket's descriptor, for ``select``; -1 once closed."""
        return self._sock.fileno()

    def send(self, *args: str | bytes | int) -> None:
        """Send one command (see ``encode``); raises OSError on a broken or slow socket."""
        self._sock.settimeout(self.timeout)
        self._sock.sendall(encode(*args))

    def read(self, timeout: float | None) -> Any:
        """The next reply or push, waiting at most ``timeout`` seconds (None: forever).

        Raises TimeoutError when no complete reply arrived in time (bytes of a
        partial one are kept for the next call), ``RespError`` for an error
        reply, ConnectionError at EOF or on malformed input. ``timeout=0``
        takes what is buffered or already waiting in the socket.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        received = False
        while True:
            got = parse(self._buf)
            if got is not None:
                value, end = got
                del self._buf[:end]
                if isinstance(value, RespError):
                    raise value
                return value
            if len(self._buf) > MAX_REPLY:
                raise RespProtocolError(f"a reply longer than {MAX_REPLY} bytes")
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0 and received:
                raise TimeoutError("no complete reply in time")
            self._sock.settimeout(None if remaining is None else max(remaining, 0.0))
            try:
                # Asking for as much as is buffered makes the number of
                # re-parses of a long reply logarithmic, not linear, in its size.
                chunk = self._sock.recv(max(RECV_SIZE, len(self._buf)))
            except (TimeoutError, BlockingIOError):
                raise TimeoutError("no complete reply in time") from None
            if not chunk:
                raise ConnectionError("connection closed by the server")
            self._buf += chunk
            received = True

    def call(self, *args: str | bytes | int, timeout: float | None = None) -> Any:
        """Send a command and return its reply (``timeout`` defaults to the
        connection's). Only for a connection that receives no pushes yet: a
        push in the way raises RespProtocolError rather than being lost."""
        self.send(*args)
        reply = self.read(self.timeout if timeout is None else timeout)
        if isinstance(reply, Push):
            raise RespProtocolError(f"push {reply[:1]!r} where the reply to {args[0]!r} was due")
        return reply

    def close(self) -> None:
        """Close the socket (idempotent); buffered bytes are dropped."""
        self.closed = True
        self._buf.clear()
        self._sock.close()
