"""numpy arrays as stored values: dtype, shape and the raw buffer.

numpy is optional (the ``numpy`` extra); nothing here imports it until an
array is stored or read. The payload of an array item (kind KIND_NDARRAY):

    u16 header length H | header: MessagePack [descr, shape, fortran]
    | zero padding | the array's bytes, C order (F order if fortran)

``descr`` is numpy's own description of the dtype (``numpy.lib.format``,
what ``.npy`` files hold): a string such as ``"<f8"``, or a list of fields
for a structured dtype. The padding puts the array's bytes at an 8-byte
aligned address in the segment, so ``Cache.view_array`` hands out aligned
arrays for every dtype whose alignment is at most 8 (all but float128 and
complex256, which numpy reads unaligned).

Reading never trusts the payload: a dtype that holds Python objects (whose
raw bytes would be pointers), a shape that does not match the byte count,
or a malformed header raises ``SerializationFailed``; nothing is read
outside the payload.
"""

from __future__ import annotations

import math
import struct
import sys
from typing import Any, NamedTuple

import msgspec

from metis_shm._engine import ITEM_OVERHEAD
from metis_shm.errors import SerializationFailed

DATA_ALIGN = 8  # the alignment of an item in the arena
MAX_NDIM = 64  # numpy's own limit

_HEAD = struct.Struct("<H")
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


def is_array(value: object) -> bool:
    """True if ``value`` is a numpy ndarray (or memmap) we store raw.

    numpy is looked up in ``sys.modules``: a process that never imported it
    holds no arrays, and pays nothing for the question.
    """
    np = sys.modules.get("numpy")
    return np is not None and type(value) in (np.ndarray, np.memmap)


_np: Any = None


def numpy() -> Any:
    """The numpy module, or an ImportError that names the extra."""
    global _np
    if _np is None:
        try:
            import numpy as np
        except ImportError as exc:
            raise ImportError(
                "numpy arrays need numpy: pip install 'metis-shm[numpy]'", name="numpy"
            ) from exc
        _np = np
    return _np


def encode_array(value: Any, key_len: int) -> bytes:
    """The payload for an ndarray stored under a key of ``key_len`` bytes."""
    np = numpy()
    if value.dtype.hasobject:
        raise SerializationFailed(
            f"cannot store an array of dtype {value.dtype} raw: it holds Python objects; "
            f"convert it, or store it with serializer='pickle' as a list",
            context={"dtype": str(value.dtype)},
        )
    fortran = value.ndim > 1 and value.flags.f_contiguous and not value.flags.c_contiguous
    raw = value.T if fortran else np.ascontiguousarray(value)
    header = _encoder.encode(
        [np.lib.format.dtype_to_descr(value.dtype), list(value.shape), fortran]
    )
    # The payload starts right after the item header and the key; pad so the
    # data after it does too on an 8-byte boundary.
    start = ITEM_OVERHEAD + key_len + _HEAD.size + len(header)
    pad = -start % DATA_ALIGN
    try:
        data: Any = memoryview(raw).cast("B")
    except (TypeError, ValueError, BufferError):
        data = raw.tobytes()  # dtypes the buffer protocol cannot express (datetime64)
    return b"".join((_HEAD.pack(len(header)), header, bytes(pad), data))


def _dtype_descr(descr: Any) -> Any:
    """numpy's descr back from MessagePack, which made its tuples lists."""
    if isinstance(descr, str):
        return descr
    if not isinstance(descr, list):
        raise TypeError(f"bad dtype description {descr!r}")
    return [_field_descr(field) for field in descr]


def _field_descr(field: Any) -> tuple[Any, ...]:
    name, sub, *rest = field
    out: tuple[Any, ...] = (tuple(name) if isinstance(name, list) else name, _dtype_descr(sub))
    if rest:
        out += (tuple(rest[0]),)
    return out


class _Layout(NamedTuple):
    """What an array header says, checked: how to lay an array over the data."""

    dtype: Any
    shape: tuple[int, ...]
    fortran: bool
    n_items: int
    nbytes: int


# Parsed headers by their bytes: the same few shapes and dtypes are read
# over and over, and parsing one costs more than reading the array.
_layouts: dict[bytes, _Layout] = {}
_LAYOUTS_MAX = 256


def _layout(header: bytes) -> _Layout:
    known = _layouts.get(header)
    if known is not None:
        return known
    np = numpy()
    try:
        descr, shape, fortran = _decoder.decode(header)
        dtype = np.lib.format.descr_to_dtype(_dtype_descr(descr))
        shape = tuple(shape)
        if len(shape) > MAX_NDIM or not all(type(d) is int and d >= 0 for d in shape):
            raise ValueError(f"bad shape {shape!r}")
        if type(fortran) is not bool:
            raise ValueError("bad order flag")
    except (msgspec.DecodeError, ValueError, TypeError, KeyError) as exc:
        raise SerializationFailed(
            f"a stored array's header does not decode: {exc}", context={"kind": "ndarray"}
        ) from exc
    if dtype.hasobject:
        raise SerializationFailed(
            "a stored array claims a dtype of Python objects; refusing to read pointers",
            context={"dtype": str(dtype)},
        )
    count = math.prod(shape)
    layout = _Layout(dtype, shape, fortran, count, count * dtype.itemsize)
    if len(_layouts) >= _LAYOUTS_MAX:
        _layouts.clear()
    _layouts[header] = layout
    return layout


def array_from_buffer(buffer: Any, copy: bool) -> Any:
    """The ndarray an array payload describes.

    Without ``copy`` it is an array over ``buffer`` itself, which it holds
    (read-only if the buffer is). With ``copy`` it is a writable copy.
    """
    np = _np or numpy()
    mv = buffer if type(buffer) is memoryview else memoryview(buffer)
    try:
        (hlen,) = _HEAD.unpack_from(mv, 0)
    except struct.error as exc:
        raise SerializationFailed(
            f"a stored array's header does not decode: {exc}", context={"kind": "ndarray"}
        ) from exc
    offset = _HEAD.size + hlen
    lay = _layout(bytes(mv[_HEAD.size : offset]))
    pad = len(mv) - offset - lay.nbytes
    if not 0 <= pad < DATA_ALIGN:
        raise SerializationFailed(
            f"a stored array of shape {lay.shape} and dtype {lay.dtype} needs {lay.nbytes} "
            f"bytes; the item holds {len(mv) - offset}",
            context={"kind": "ndarray"},
        )
    if lay.nbytes == 0:
        empty = np.empty(lay.shape, lay.dtype, order="F" if lay.fortran else "C")
        empty.flags.writeable = copy or not mv.readonly
        return empty
    # frombuffer, not ndarray(buffer=...): numpy's constructor lets go of
    # the buffer and keeps only its exporter, which would drop a view's pin
    # while the array still shows the block. frombuffer's array holds a
    # memoryview, and the memoryview the buffer.
    arr = np.frombuffer(mv, dtype=lay.dtype, count=lay.n_items, offset=offset + pad)
    if lay.fortran:
        arr = arr.reshape(lay.shape[::-1]).T
    elif len(lay.shape) != 1:
        arr = arr.reshape(lay.shape)
    return arr.copy(order="K") if copy else arr
