"""Readers of cache-access traces: one key per request, as ``bytes``.

Formats (``FORMATS``), as in ``benchmarks/traces/README.md``:

* ``lirs``: one decimal key per line; white space trimmed (CRLF too); empty
  lines and ``*`` lines (checkpoint markers) skipped.
* ``int32``: a flat stream of big-endian signed 32-bit integers.
* ``int64``: a flat stream of big-endian signed 64-bit integers.
* ``text``: one key per line, any bytes; white space trimmed, empty lines skipped.
* ``csv``: one column of a CSV file (``csv_column``: a header name, or a
  0-based index); rows whose field is empty are skipped.

Every file may be compressed with gzip, xz or bzip2: the compression is
recognised from the file's first bytes, not its name. Numeric keys are
yielded as the decimal ASCII of the integer (``b"-7"``), so a key is the
same whatever format it came from.

The format is guessed from the file name (``detect_format``) unless given:
``lirs-*`` -> lirs, ``*.trace.xz`` (cache2k) -> int32, ``corda-*`` -> int64,
``*.csv[.gz|.xz|.bz2]`` -> csv, anything else -> text.

Where a trace is found (``find_trace``): a path that names a file is that
file. A bare name (no directory part) that is not a file in the current
directory is looked up in ``trace_dir()``: the folder named by the
environment variable ``METIS_TRACES``, else the ``benchmarks/traces/``
folder of the source checkout this package runs from (the traces the
project's tests, docs and benchmarks use; an installed wheel has none). A
name there may drop its suffixes: ``lirs-cs`` is ``lirs-cs.trace.gz``.

    >>> from metis_shm.sim.traces import read_trace
    >>> for key in read_trace("lirs-cs.trace.gz"):  # doctest: +SKIP
    ...     ...
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import lzma
import os
import sys
import zlib
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

from metis_shm.errors import TraceFormatError, TraceNotFound

FORMATS: tuple[str, ...] = ("lirs", "int32", "int64", "text", "csv")

#: bytes per record of the binary formats, and the array typecode of that width
_BINARY: dict[str, tuple[int, str]] = {"int32": (4, "i"), "int64": (8, "q")}
_CHUNK = 1 << 16  # records per read of a binary trace
_COMPRESSED_SUFFIXES = (".gz", ".xz", ".bz2", ".lzma")

StrPath = str | os.PathLike[str]

#: The environment variable that names the folder bare trace names resolve to.
TRACES_ENV = "METIS_TRACES"
#: ``benchmarks/traces/`` of a source checkout: metis_shm/sim/traces.py is two
#: levels below the checkout's root (in an installed wheel this does not exist).
CHECKOUT_TRACES = Path(__file__).resolve().parent.parent.parent / "benchmarks" / "traces"


def trace_dir() -> Path | None:
    """The folder bare trace names resolve to: ``$METIS_TRACES`` when it is
    set and not empty, else ``CHECKOUT_TRACES`` when it exists, else ``None``."""
    env = os.environ.get(TRACES_ENV)
    if env:
        return Path(env)
    return CHECKOUT_TRACES if CHECKOUT_TRACES.is_dir() else None


def find_trace(path: StrPath) -> Path:
    """The trace file ``path`` names (module docstring, "Where a trace is
    found"), or ``TraceNotFound`` saying where it looked."""
    p = Path(path)
    if p.is_file():
        return p
    shown = os.fspath(path)
    folder = trace_dir()
    bare = p.name == shown and shown not in ("", ".", "..")
    if bare and folder is not None:
        if (folder / shown).is_file():
            return folder / shown
        prefix = f"{shown}.trace"
        matches = (
            sorted(f for f in folder.iterdir() if f.name.startswith(prefix) and f.is_file())
            if folder.is_dir()
            else []
        )
        if len(matches) == 1:
            return matches[0]
    where = ""
    if bare:
        if folder is None:
            where = f" (and no trace folder: set {TRACES_ENV}=DIR)"
        else:
            where = f" here or in the trace folder {os.fspath(folder)!r}"
    raise TraceNotFound(
        f"trace {shown!r}: no such file{where}",
        context={"path": shown, "trace_dir": None if folder is None else os.fspath(folder)},
    )


def detect_format(path: StrPath) -> str:
    """The format a trace file's name implies (see the module docstring)."""
    name = os.path.basename(os.fspath(path)).lower()
    bare = name
    for suffix in _COMPRESSED_SUFFIXES:
        if bare.endswith(suffix):
            bare = bare[: -len(suffix)]
            break
    if name.startswith("lirs-"):
        return "lirs"
    if name.startswith("corda-"):
        return "int64"
    if name.endswith(".trace.xz"):
        return "int32"
    if bare.endswith((".csv", ".tsv")):
        return "csv"
    return "text"


def trace_name(path: StrPath) -> str:
    """A short name for a trace file: its base name without the
    ``.trace``/``.txt``/``.log``/``.csv`` and compression suffixes (``lirs-cs``)."""
    name = os.path.basename(os.fspath(path))
    changed = True
    while changed:
        changed = False
        for suffix in (*_COMPRESSED_SUFFIXES, ".trace", ".txt", ".log", ".csv", ".tsv", ".bin"):
            if name.lower().endswith(suffix) and len(name) > len(suffix):
                name = name[: -len(suffix)]
                changed = True
    return name


def read_trace(
    path: StrPath,
    format: str | None = None,
    *,
    csv_column: str | int | None = None,
    csv_header: bool | None = None,
    csv_delimiter: str = ",",
) -> Iterator[bytes]:
    """Iterate lazily over the keys of a trace file, one ``bytes`` per request.

    ``format``: one of ``FORMATS``; ``None`` guesses it from the file name,
    or is ``"csv"`` when ``csv_column`` is given. ``csv_column``: a column
    name (the first row is then a header) or a 0-based index (an ``int`` or
    a string of digits; the first row is data unless ``csv_header=True``).

    ``path`` is resolved by ``find_trace`` (a bare name may be one of the
    bundled traces). A missing file or an unknown format raises here, at the call; errors in
    the content (``TraceFormatError``) raise while iterating, when reached.
    """
    p = find_trace(path)
    if format is None:
        format = "csv" if csv_column is not None else detect_format(p)
    if format not in FORMATS:
        raise TraceFormatError(
            f"trace {os.fspath(path)!r}: unknown format {format!r}; "
            f"expected one of {', '.join(FORMATS)}",
            context={"path": os.fspath(path), "format": format},
        )
    if format == "csv":
        if csv_column is None:
            raise TraceFormatError(
                f"trace {os.fspath(path)!r}: a CSV trace needs a column "
                "(csv_column / --csv-column NAME_OR_INDEX)",
                context={"path": os.fspath(path), "format": format},
            )
        return _read_csv(p, csv_column, csv_header, csv_delimiter)
    if csv_column is not None:
        raise TraceFormatError(
            f"trace {os.fspath(path)!r}: csv_column given for format {format!r}",
            context={"path": os.fspath(path), "format": format},
        )
    if format in _BINARY:
        return _read_binary(p, format)
    return _read_lines(p, numeric=format == "lirs")


def load_trace(
    path: StrPath,
    format: str | None = None,
    *,
    csv_column: str | int | None = None,
    csv_header: bool | None = None,
    csv_delimiter: str = ",",
) -> list[bytes]:
    """The whole trace as a list (``read_trace``'s arguments)."""
    return list(
        read_trace(
            path, format, csv_column=csv_column, csv_header=csv_header,
            csv_delimiter=csv_delimiter,
        )
    )  # fmt: skip


# ---- internals ---------------------------------------------------------------


def _open(path: Path) -> io.BufferedIOBase:
    """The file's bytes, decompressed according to its magic number."""
    try:
        with open(path, "rb") as raw:
            magic = raw.read(6)
    except FileNotFoundError as exc:
        raise TraceNotFound(
            f"trace {os.fspath(path)!r}: no such file", context={"path": os.fspath(path)}
        ) from exc
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open(path, "rb")
    if magic.startswith(b"\xfd7zXZ\x00") or magic.startswith(b"\x5d\x00\x00"):
        return lzma.open(path, "rb")
    if magic.startswith(b"BZh"):
        return bz2.open(path, "rb")
    return open(path, "rb")


def _decompress_error(path: Path, exc: Exception) -> TraceFormatError:
    return TraceFormatError(
        f"trace {os.fspath(path)!r}: cannot decompress: {exc}",
        context={"path": os.fspath(path)},
    )


# gzip lets zlib.error through for a damaged deflate stream (not an OSError).
_DECOMPRESS_ERRORS = (OSError, EOFError, lzma.LZMAError, zlib.error)


def _read_exact(stream: io.BufferedIOBase, n: int) -> bytes:
    """Up to ``n`` bytes; fewer only at the end of the stream."""
    data = stream.read(n)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = stream.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _read_binary(path: Path, format: str) -> Iterator[bytes]:
    width, typecode = _BINARY[format]
    swap = sys.byteorder == "little"
    offset = 0
    with _open(path) as stream:
        while True:
            try:
                chunk = _read_exact(stream, width * _CHUNK)
            except _DECOMPRESS_ERRORS as exc:
                raise _decompress_error(path, exc) from exc
            if not chunk:
                return
            whole = len(chunk) - len(chunk) % width
            if whole != len(chunk):
                raise TraceFormatError(
                    f"trace {os.fspath(path)!r}: {format} records are {width} bytes but the "
                    f"data ends {len(chunk) - whole} bytes into a record "
                    f"(at byte {offset + whole} of the decompressed stream)",
                    context={"path": os.fspath(path), "format": format, "offset": offset + whole},
                )
            values = array(typecode)
            values.frombytes(chunk)
            if swap:
                values.byteswap()
            for v in values:
                yield b"%d" % v
            offset += len(chunk)


def _read_lines(path: Path, *, numeric: bool) -> Iterator[bytes]:
    with _open(path) as stream:
        lineno = 0
        try:
            for raw in stream:
                lineno += 1
                key = raw.strip()
                if not key or (numeric and key == b"*"):
                    continue
                if numeric and not (key.isdigit() or (key[:1] == b"-" and key[1:].isdigit())):
                    raise TraceFormatError(
                        f"trace {os.fspath(path)!r} line {lineno}: {key[:40]!r} is not a "
                        "decimal key (LIRS text format); pass another format?",
                        context={"path": os.fspath(path), "format": "lirs", "line": lineno},
                    )
                yield key
        except _DECOMPRESS_ERRORS as exc:
            raise _decompress_error(path, exc) from exc


def _column_index(path: Path, column: str | int, header: list[str] | None) -> int:
    if isinstance(column, int) or (isinstance(column, str) and column.isdigit()):
        return int(column)
    assert header is not None
    if column not in header:
        raise TraceFormatError(
            f"trace {os.fspath(path)!r}: no CSV column {column!r}; the header has "
            f"{', '.join(repr(h) for h in header) or 'no columns'}",
            context={"path": os.fspath(path), "format": "csv", "column": column},
        )
    return header.index(column)


def _read_csv(
    path: Path, column: str | int, header: bool | None, delimiter: str
) -> Iterator[bytes]:
    by_index = isinstance(column, int) or column.isdigit()
    if isinstance(column, int) and column < 0:
        raise TraceFormatError(
            f"trace {os.fspath(path)!r}: CSV column index {column} is negative",
            context={"path": os.fspath(path), "format": "csv", "column": column},
        )
    has_header = (not by_index) if header is None else header
    if not by_index and not has_header:
        raise TraceFormatError(
            f"trace {os.fspath(path)!r}: CSV column {column!r} is a name but the file "
            "has no header row; give a 0-based index",
            context={"path": os.fspath(path), "format": "csv", "column": column},
        )
    with _open(path) as stream:
        text = io.TextIOWrapper(
            cast(BinaryIO, stream), encoding="utf-8", errors="surrogateescape", newline=""
        )
        rows: Any = csv.reader(text, delimiter=delimiter)
        try:
            index = -1
            if has_header:
                first = next(rows, None)
                if first is None:
                    raise TraceFormatError(
                        f"trace {os.fspath(path)!r}: empty CSV file, no header row",
                        context={"path": os.fspath(path), "format": "csv"},
                    )
                index = _column_index(path, column, [h.strip() for h in first])
            else:
                index = _column_index(path, column, None)
            for row in rows:
                if not row:
                    continue
                if index >= len(row):
                    raise TraceFormatError(
                        f"trace {os.fspath(path)!r} line {rows.line_num}: the row has "
                        f"{len(row)} columns, no column {column!r} (index {index})",
                        context={
                            "path": os.fspath(path), "format": "csv",
                            "line": rows.line_num, "column": column,
                        },
                    )  # fmt: skip
                value = row[index].strip()
                if value:
                    yield value.encode("utf-8", "surrogateescape")
        except csv.Error as exc:
            raise TraceFormatError(
                f"trace {os.fspath(path)!r} line {rows.line_num}: bad CSV: {exc}",
                context={"path": os.fspath(path), "format": "csv", "line": rows.line_num},
            ) from exc
        except _DECOMPRESS_ERRORS as exc:
            raise _decompress_error(path, exc) from exc
