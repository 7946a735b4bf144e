"""Values to bytes and back: the serializers and compression codecs.

The engine stores bytes, str and 64-bit ints itself (fast path) and hands
every other value to ``Codec.encode``; on read it hands back whatever it did
not decode itself. The item's flags word records how a value was written, so
any process decodes what any other wrote:

    bits 0-7    kind (KIND_*; KIND_NDARRAY: a numpy array, arrays.py)
    bits 8-11   compression codec (CODEC_*)
    bit  12     key is str (the engine's; never set here)
    bits 16-23  registered type id (KIND_REGISTERED)

MessagePack (msgspec) is the default: fast, and decoding it never runs code.
Pickle is used only by a cache opened with ``serializer="pickle"``; decoding
pickle runs code chosen by whoever wrote the item, so only use it when every
process that can write the segment is trusted.
"""

from __future__ import annotations

import pickle
import zlib
from collections.abc import Callable
from typing import Any

import msgspec

from metis_shm import arrays
from metis_shm.errors import InvalidConfig, SerializationFailed

KIND_BYTES = 0
KIND_BYTEARRAY = 1
KIND_STR = 2
KIND_INT = 3
KIND_MSGPACK = 4
KIND_PICKLE = 5
KIND_REGISTERED = 6
KIND_TUPLE = 7
KIND_SET = 8
KIND_FROZENSET = 9
KIND_NDARRAY = 10

CODEC_NONE = 0x000
CODEC_ZLIB = 0x100
CODEC_MASK = 0xF00
KIND_MASK = 0xFF
TYPE_ID_SHIFT = 16

SERIALIZERS = {"msgpack": 0, "pickle": 1}

_registry_by_type: dict[type, int] = {}
_registry_by_id: dict[int, tuple[type, msgspec.msgpack.Decoder[Any]]] = {}
_COLLECTIONS: dict[type, int] = {tuple: KIND_TUPLE, set: KIND_SET, frozenset: KIND_FROZENSET}
_COLLECTION_TYPES: dict[int, Callable[[Any], Any]] = {
    KIND_TUPLE: tuple,
    KIND_SET: set,
    KIND_FROZENSET: frozenset,
}


def register_type(cls: type, type_id: int) -> None:
    """Let values of ``cls`` read back as ``cls`` (not as a dict).

    ``cls`` must be something msgspec can encode and decode by type: a
    ``msgspec.Struct``, a dataclass, an attrs class, a TypedDict... The
    ``type_id`` (1-255) is stored in each item, so every process that reads
    these values must register the same class under the same id (the
    analogue of gob's type registration).
    """
    if not 1 <= type_id <= 255:
        raise InvalidConfig(f"type_id must be 1..255, not {type_id}", context={"field": "type_id"})
    known = _registry_by_id.get(type_id)
    if known is not None and known[0] is not cls:
        raise InvalidConfig(
            f"type_id {type_id} is already registered for {known[0].__qualname__}",
            context={"field": "type_id", "value": type_id},
        )
    _registry_by_type[cls] = type_id
    _registry_by_id[type_id] = (cls, msgspec.msgpack.Decoder(cls))


class Codec:
    """Encodes values the engine does not store raw, and decodes them back."""

    def __init__(self, serializer: str = "msgpack", compress_threshold: int = 0) -> None:
        if serializer not in SERIALIZERS:
            raise InvalidConfig(
                f"serializer must be one of {sorted(SERIALIZERS)}, not {serializer!r}",
                context={"field": "serializer", "value": serializer},
            )
        self.serializer = serializer
        self.compress_threshold = compress_threshold
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder()

    def encode(self, value: object, key_len: int = 0) -> tuple[int, bytes]:
        """Flags and payload for ``value``, stored under a key of ``key_len`` bytes.

        numpy arrays are stored raw and never compressed, so that
        ``Cache.view_array`` reads them in place; ``key_len`` lets their
        data start aligned in the segment (arrays.py).
        """
        if arrays.is_array(value):
            return KIND_NDARRAY, arrays.encode_array(value, key_len)
        kind, payload = self._serialize(value)
        if self.compress_threshold and len(payload) >= self.compress_threshold:
            packed = zlib.compress(payload, 1)
            if len(packed) < len(payload):
                return kind | CODEC_ZLIB, packed
        return kind, payload

    def _serialize(self, value: object) -> tuple[int, bytes]:
        t = type(value)
        if t is bytes:
            return KIND_BYTES, value  # type: ignore[return-value]
        if t is str:
            return KIND_STR, value.encode()  # type: ignore[attr-defined]
        if t is bytearray:
            return KIND_BYTEARRAY, bytes(value)  # type: ignore[call-overload]
        if t is memoryview:
            return KIND_BYTES, value.tobytes()  # type: ignore[attr-defined]
        if self.serializer == "pickle":
            return KIND_PICKLE, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            type_id = _registry_by_type.get(t)
            if type_id is not None:
                return KIND_REGISTERED | (type_id << TYPE_ID_SHIFT), self._encoder.encode(value)
            kind = _COLLECTIONS.get(t)
            if kind is not None:
                return kind, self._encoder.encode(list(value))  # type: ignore[call-overload]
            return KIND_MSGPACK, self._encoder.encode(value)
        except (TypeError, OverflowError, msgspec.EncodeError) as exc:
            raise SerializationFailed(
                f"cannot encode a {t.__qualname__} with MessagePack ({exc}); "
                f"register its type, convert it, or open the cache with serializer='pickle'",
                context={"type": t.__qualname__},
            ) from exc

    def decode(self, flags: int, data: bytes | bytearray) -> Any:
        """The value for an item's flags and payload.

        A payload that does not decode as its flags say (an item damaged, or
        planted by a crafted snapshot) raises ``SerializationFailed``, never
        the decoder's own exception.
        """
        try:
            return self._decode(flags, data)
        except SerializationFailed:
            raise
        except (zlib.error, msgspec.DecodeError, ValueError, TypeError) as exc:
            if flags & KIND_MASK == KIND_PICKLE and not isinstance(exc, zlib.error):
                raise  # unpickling runs the writer's code; its errors are its own
            raise SerializationFailed(
                f"a stored value does not decode as its flags {flags:#x} say: {exc}",
                context={"flags": flags},
            ) from exc

    def decompress(self, flags: int, data: bytes) -> bytes:
        """The payload of a compressed item, uncompressed (views)."""
        try:
            return bytes(self._uncompressed(flags, data))
        except zlib.error as exc:
            raise SerializationFailed(
                f"a stored value does not decompress as its flags {flags:#x} say: {exc}",
                context={"flags": flags},
            ) from exc

    def _uncompressed(self, flags: int, data: bytes | bytearray) -> bytes | bytearray:
        if flags & CODEC_MASK == CODEC_ZLIB:
            return zlib.decompress(data)
        if flags & CODEC_MASK:
            raise SerializationFailed(
                f"unknown compression codec {flags & CODEC_MASK:#x}", context={"flags": flags}
            )
        return data

    def _decode(self, flags: int, data: bytes | bytearray) -> Any:
        data = self._uncompressed(flags, data)
        kind = flags & KIND_MASK
        if kind == KIND_BYTES:
            return data
        if kind == KIND_STR:
            return data.decode()
        if kind == KIND_BYTEARRAY:
            return data if type(data) is bytearray else bytearray(data)
        if kind == KIND_INT:
            return int.from_bytes(data, "little", signed=True)
        if kind == KIND_MSGPACK:
            return self._decoder.decode(data)
        if kind in _COLLECTION_TYPES:
            return _COLLECTION_TYPES[kind](self._decoder.decode(data))
        if kind == KIND_NDARRAY:
            # The engine copies an array's payload into a bytearray: the
            # array is made over it, writable, with no second copy.
            return arrays.array_from_buffer(data, copy=type(data) is not bytearray)
        if kind == KIND_REGISTERED:
            type_id = (flags >> TYPE_ID_SHIFT) & 0xFF
            entry = _registry_by_id.get(type_id)
            if entry is None:
                raise SerializationFailed(
                    f"item was written with registered type id {type_id}, which this "
                    f"process has not registered (metis_shm.register_type)",
                    context={"type_id": type_id},
                )
            return entry[1].decode(data)
        if kind == KIND_PICKLE:
            if self.serializer != "pickle":
                raise SerializationFailed(
                    "item was written with pickle; only a cache opened with "
                    "serializer='pickle' unpickles (pickle runs the writer's code)",
                    context={"kind": kind},
                )
            return pickle.loads(data)
        raise SerializationFailed(f"unknown value kind {kind}", context={"flags": flags})
