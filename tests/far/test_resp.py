"""The far tier's RESP connection (metis_shm/far/resp.py), with no server:
every reply type, replies split at every byte, hostile input, URLs."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metis_shm.far.resp import (
    MAX_DEPTH,
    MAX_LINE,
    Push,
    RespConnection,
    RespError,
    RespProtocolError,
    encode,
    parse,
    parse_url,
)

# --------------------------------------------------------------------

SAMPLES: list[tuple[bytes, Any]] = [
    (b"+OK\r\n", "OK"),
    (b":-42\r\n", -42),
    (b"$5\r\nhe\r\no\r\n", b"he\r\no"),
    (b"$0\r\n\r\n", b""),
    (b"$-1\r\n", None),
    (b"*-1\r\n", None),
    (b"_\r\n", None),
    (b"*3\r\n:1\r\n$1\r\na\r\n*1\r\n+x\r\n", [1, b"a", ["x"]]),
    (b"*0\r\n", []),
    (b"%2\r\n$1\r\nk\r\n:1\r\n+s\r\n#t\r\n", {b"k": 1, "s": True}),
    (b"~2\r\n:1\r\n$1\r\nb\r\n", {1, b"b"}),
    (b"#f\r\n", False),
    (b",3.25\r\n", 3.25),
    (b",-inf\r\n", float("-inf")),
    (b",1e3\r\n", 1000.0),
    (
        b"(3492890328409238509324850943850943825024385\r\n",
        3492890328409238509324850943850943825024385,
    ),
    (b"=8\r\ntxt:some\r\n", b"some"),
    (b"|1\r\n+ttl\r\n:3\r\n:7\r\n", 7),  # an attribute is dropped, the value kept
    (b">2\r\n$10\r\ninvalidate\r\n*1\r\n$3\r\nk:1\r\n", Push([b"invalidate", [b"k:1"]])),
    (b">2\r\n$10\r\ninvalidate\r\n_\r\n", Push([b"invalidate", None])),
]


@pytest.mark.parametrize(("raw", "value"), SAMPLES)
def test_parse_every_type(raw: bytes, value: Any) -> None:
    got = parse(raw)
    assert got == (value, len(raw))
    assert type(got[0]) is type(value)
    assert parse(raw + b"+next\r\n") == (value, len(raw))


def test_parse_errors_top_level_and_nested() -> None:
    got = parse(b"-ERR wrong\r\n")
    assert got is not None and isinstance(got[0], RespError) and str(got[0]) == "ERR wrong"
    got = parse(b"*2\r\n!7\r\nERR bad\r\n:1\r\n")
    assert got is not None and isinstance(got[0][0], RespError) and got[0][1] == 1


def pair() -> tuple[RespConnection, socket.socket]:
    ours, theirs = socket.socketpair()
    return RespConnection(ours, timeout=1.0), theirs


def test_reply_split_at_every_byte_survives_timeouts() -> None:
    stream = b"".join(raw for raw, _ in SAMPLES) + b"-ERR last\r\n"
    values = [v for _, v in SAMPLES]
    ends = [sum(len(raw) for raw, _ in SAMPLES[: i + 1]) for i in range(len(SAMPLES))]
    for cut in range(1, len(stream)):
        conn, peer = pair()
        try:
            got: list[Any] = []
            peer.sendall(stream[:cut])
            while True:  # what is complete comes out, the rest stays buffered
                try:
                    got.append(conn.read(0.0))
                except TimeoutError:
                    break
            assert got == values[: sum(end <= cut for end in ends)]
            peer.sendall(stream[cut:])
            while len(got) < len(values):
                got.append(conn.read(1.0))
            assert got == values
            with pytest.raises(RespError, match="ERR last"):
                conn.read(1.0)
        finally:
            conn.close()
            peer.close()


def test_every_prefix_is_incomplete_not_an_error() -> None:
    for raw, _ in SAMPLES:
        for cut in range(len(raw)):
            assert parse(raw[:cut]) is None, raw[:cut]


MALFORMED = [
    b"?what\r\n",
    b":12a\r\n",
    b":\r\n",
    b": 1\r\n",
    b"$-2\r\n",
    b"$3\r\nabcd\r\n",
    b"$99999999999\r\n",
    b"*-2\r\n",
    b"%-1\r\n",
    b"#x\r\n",
    b"_x\r\n",
    b",1.2.3\r\n",
    b",infinity\r\n",
    b"=3\r\nabc\r\n",
    b"(12x\r\n",
    b"*1\r\n" * (MAX_DEPTH + 1) + b":1\r\n",
    b"|0\r\n" * (MAX_DEPTH + 1) + b":1\r\n",  # attributes before attributes
    b"+" + b"a" * (MAX_LINE + 10),
    b"$3\r\n" + b"abc" + b"xy",
]


@pytest.mark.parametrize("raw", MALFORMED, ids=lambda r: repr(r[:16]))
def test_malformed_input_raises(raw: bytes) -> None:
    with pytest.raises(RespProtocolError):
        parse(raw)
    conn, peer = pair()
    try:
        peer.sendall(raw)
        with pytest.raises(RespProtocolError):
            conn.read(1.0)
    finally:
        conn.close()
        peer.close()


@settings(max_examples=400, deadline=None)
@given(
    st.binary(max_size=64) | st.sampled_from([r for r, _ in SAMPLES]).map(lambda r: r[:-1] + b"x")
)
def test_any_bytes_parse_or_raise_the_protocol_error(raw: bytes) -> None:
    try:
        got = parse(raw)
    except RespProtocolError:
        return
    assert got is None or 0 < got[1] <= len(raw)


def test_eof_and_encode() -> None:
    conn, peer = pair()
    peer.sendall(b"$5\r\nab")
    peer.close()
    with pytest.raises(ConnectionError, match="closed"):
        conn.read(1.0)
    conn.close()
    assert (
        encode("SET", b"k\r\n", 12, "é")
        == b"*4\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$2\r\n12\r\n$2\r\n\xc3\xa9\r\n"
    )
    with pytest.raises(TypeError):
        encode("SET", True)
    with pytest.raises(ValueError):
        encode()


def test_parse_url() -> None:
    a = parse_url("redis://us%40r:p%3Ass@example.org:6390/2")
    assert (a.host, a.port, a.username, a.password, a.db) == (
        "example.org",
        6390,
        "us@r",
        "p:ss",
        2,
    )
    a = parse_url("redis://:secret@127.0.0.1")
    assert (a.port, a.username, a.password, a.db) == (6379, None, "secret", 0)
    for bad in ("http://x", "redis://x/abc", "redis://user@x", "rediss://x"):
        with pytest.raises(ValueError):
            parse_url(bad)
