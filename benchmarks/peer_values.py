"""Self-describing benchmark values and the checks that catch wrong reads.

A value of ``size`` bytes is ``stamp | body | stamp``. The 24-byte stamp holds
a magic, the key's index, the writer's id, the writer's sequence number, the
size and a CRC-32 of those fields; the body is the CRC's 4 bytes repeated. So
a value names the key it was written for and who wrote it when, and any byte
out of place (a torn copy, a mix of two writes, a value of another key) makes
it differ from ``make_value`` of the stamp it claims.

The fill written before the timed cells has writer 0, sequence 0.
"""

from __future__ import annotations

import struct
import zlib
from collections import Counter
from collections.abc import Callable, Hashable, Mapping
from typing import Any, NamedTuple

MAGIC = b"MTv1"
_FIELDS = struct.Struct("<4sIHHII")  # magic, key index, writer, 0, sequence, size
_CRC = struct.Struct("<I")
STAMP_LEN = _FIELDS.size + _CRC.size  # 24
MIN_SIZE = 2 * STAMP_LEN
FILL_WRITER = 0

# What a read can be found to be, besides right.
MISSING = "missing"  # None where the key must be present
PHANTOM = "phantom"  # a value where the key was never written
TORN = "torn"  # not a value any writer wrote: mixed, cut or corrupted bytes
FOREIGN = "foreign"  # a whole value, but of another key
STALE = "stale"  # a whole value of this key, but older than one already seen or written
BAD_READS = (PHANTOM, TORN, FOREIGN, STALE)


class Stamp(NamedTuple):
    """Who wrote a value: the key's index, the writer's id and its sequence number."""

    key_index: int
    writer: int
    seq: int


def make_value(key_index: int, writer: int, seq: int, size: int) -> bytes:
    """The value that ``writer`` writes for key ``key_index`` at sequence ``seq``."""
    if size < MIN_SIZE:
        raise ValueError(f"values must be at least {MIN_SIZE} bytes, not {size}")
    fields = _FIELDS.pack(MAGIC, key_index, writer, 0, seq, size)
    crc = zlib.crc32(fields)
    stamp = fields + _CRC.pack(crc)
    n_body = size - 2 * STAMP_LEN
    body = (_CRC.pack(crc) * (n_body // 4 + 1))[:n_body]
    return stamp + body + stamp


def read_stamp(value: bytes) -> Stamp | None:
    """The stamp of a whole, intact value; None for anything else (torn, cut, corrupted)."""
    if not isinstance(value, bytes | bytearray) or len(value) < MIN_SIZE:
        return None
    try:
        magic, key_index, writer, _, seq, size = _FIELDS.unpack_from(value)
    except struct.error:
        return None
    if magic != MAGIC or size != len(value):
        return None
    stamp = Stamp(key_index, writer, seq)
    if make_value(key_index, writer, seq, size) != value:
        return None
    return stamp


def ends(value: bytes) -> bytes:
    """The two stamps of a value, what a read in place returns (``in_place``)."""
    return value[:STAMP_LEN] + value[-STAMP_LEN:]


def in_place(buffer: Any) -> bytes | None:
    """What a zero-copy peer's get returns for a buffer into its store: the
    stamps at both ends, copied (48 bytes whatever the size), so the loop can
    check the read as it checks a copy while nothing else is copied."""
    if buffer is None:
        return None
    return bytes(buffer[:STAMP_LEN]) + bytes(buffer[-STAMP_LEN:])


def from_ends(got: Any) -> Any:
    """The whole value two stamps stand for, if they are one intact value's
    (the value is a function of its stamp); else what was read, to diagnose."""
    if (
        not isinstance(got, bytes)
        or len(got) != 2 * STAMP_LEN
        or got[:STAMP_LEN] != got[STAMP_LEN:]
    ):
        return got
    try:
        magic, index, writer, _, seq, size = _FIELDS.unpack_from(got)
    except struct.error:
        return got
    if magic != MAGIC or size < MIN_SIZE:
        return got
    value = make_value(index, writer, seq, size)
    return value if ends(value) == got else got


def key_index(key: str | bytes) -> int:
    """The index of a benchmark key (``key:00000042`` or its bytes -> 42)."""
    return int(key[-8:])


def diagnose(value: Any, key_idx: int, allowed: tuple[Stamp, ...]) -> str | None:
    """Why ``value`` is not a right read of key ``key_idx``; None if it is one of ``allowed``.

    ``allowed`` are the stamps the key may hold at this point; a whole value of
    this key with any other stamp is STALE.
    """
    if value is None:
        return MISSING
    stamp = read_stamp(value)
    if stamp is None:
        return TORN
    if stamp.key_index != key_idx:
        return FOREIGN
    if stamp not in allowed:
        return STALE
    return None


class ReadChecker:
    """Counts wrong reads by kind; keeps the first few for the report.

    The timed loops compare each read with the value they expect using ``!=``
    (a memcmp) and call one of these methods only when that fails, so a right
    read costs the same small amount for every peer.

    ``unwrap`` turns what a peer's ``get`` returns into the value (theine
    returns ``(value, found)``).
    """

    def __init__(self, unwrap: Callable[[Any], Any] = lambda r: r) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: list[str] = []
        self.unwrap = unwrap

    def _bad(self, kind: str, key: Hashable, detail: str) -> None:
        self.counts[kind] += 1
        if len(self.examples) < 5:
            self.examples.append(f"{kind}: {key!r}: {detail}")

    def hit(self, key: str | bytes, got: Any, expected: bytes) -> None:
        """A get of a present key returned something other than ``expected``."""
        value = self.unwrap(got)
        want = read_stamp(expected)
        assert want is not None
        kind = diagnose(value, key_index(key), (want,))
        if kind is not None:
            self._bad(kind, key, f"got {_describe(value)}, want {want}")

    def phantom(self, key: str | bytes, got: Any) -> None:
        """A get of an absent key returned something."""
        value = self.unwrap(got)
        if value is not None:
            self._bad(PHANTOM, key, f"got {_describe(value)}")

    def mix_read(
        self, key: str | bytes, got: Any, last: dict[Any, Any], new: Mapping[Any, Any]
    ) -> None:
        """A get in the mix returned something other than the last value this process saw.

        The key may move forward once, from what it held before the cell
        (``last``) to the value its writer writes in this cell (``new``); then
        ``last`` follows. Anything else is wrong: going back to the old value
        after the new one was seen (or written by this process) is STALE.
        """
        want_new = new.get(key)
        if want_new is not None and got == want_new:
            last[key] = want_new
            return
        value = self.unwrap(got)
        prev = read_stamp(self.unwrap(last[key]))
        assert prev is not None
        kind = diagnose(value, key_index(key), (prev,))
        if kind is None:  # equal stamps mean equal bytes: cannot happen after a failed !=
            kind = TORN
        self._bad(kind, key, f"got {_describe(value)}, last seen {prev}")

    def merge(self, other: Mapping[str, int]) -> None:
        """Add counts from another process."""
        self.counts.update(other)

    @property
    def bad_reads(self) -> int:
        """Reads that returned a value they must not (missing ones are counted apart)."""
        return sum(self.counts[k] for k in BAD_READS)


def lost_updates(
    read: Callable[[Any], Any], expected: Mapping[Any, bytes], unwrap: Callable[[Any], Any]
) -> tuple[int, list[str]]:
    """How many keys do not hold the last value written to them, and the first few.

    Run after every writer has finished: ``expected`` maps each key a writer
    wrote to the last value it wrote there; ``read`` is a get on the store.
    """
    lost = 0
    examples: list[str] = []
    for key, want in expected.items():
        got = unwrap(read(key))
        if got != want:
            lost += 1
            if len(examples) < 5:
                examples.append(f"lost: {key!r}: holds {_describe(got)}, want {read_stamp(want)}")
    return lost, examples


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    stamp = read_stamp(value)
    if stamp is not None:
        return str(stamp)
    size = len(value) if isinstance(value, bytes | bytearray) else "?"
    return f"{type(value).__name__} of {size} bytes that no writer wrote"
