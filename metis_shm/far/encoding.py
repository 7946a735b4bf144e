"""How near-tier values are written to the far tier (Redis).

Redis holds bytes. Integers go as decimal ASCII, so Redis's own INCRBY works
on them and other clients read them as numbers. Every other value is framed:
``MAGIC`` + the codec's 4-byte flags + its payload, the same encoding the
near tier stores, so bytes come back as bytes and a dict as a dict. A value
another client wrote (no frame) reads as an int if it is a decimal integer,
else as the bytes Redis holds.
"""

from __future__ import annotations

import re
from typing import Any

from metis_shm.codec import Codec

MAGIC = b"\xfeM1"
_INT = re.compile(rb"-?(0|[1-9][0-9]{0,18})\Z")
_INT64 = range(-(1 << 63), 1 << 63)


def encode(codec: Codec, value: Any) -> bytes:
    """The bytes to store in Redis for ``value``."""
    if type(value) is int and value in _INT64:
        return b"%d" % value
    flags, payload = codec.encode(value)
    return MAGIC + flags.to_bytes(4, "little") + payload


def decode(codec: Codec, data: bytes) -> Any:
    """The value for bytes read from Redis."""
    if data.startswith(MAGIC):
        return codec.decode(int.from_bytes(data[3:7], "little"), data[7:])
    if _INT.match(data):
        n = int(data)
        if n in _INT64:
            return n
    return data
