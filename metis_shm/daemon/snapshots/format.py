"""The snapshot file: a cache's live items written to a file, read and checked back.

``write_snapshot(cache, directory)`` writes ``metis.<name>.<UTC time>.snap``
atomically (a temp file in the same directory, fsync, rename, fsync of the
directory) and keeps the newest ``retention`` snapshots of that cache.
``verify_snapshot(path)`` reads one from end to end and checks it;
``read_snapshot_info(path)`` reads its header and trailer only. Loading one
into a cache is restore.py's (``restore``, ``restore_latest``); what metisd
does when is schedule.py's.

File format (version 1; integers little-endian)::

    prelude   8s magic b"METISNAP", u32 format version, u32 header length
    header    MessagePack map: cache, created_ns, layout_version, policy,
              capacity, settings (what recreates the cache), metis_version
    chunks    repeated: u32 length (> 0), MessagePack array of items
              [key bytes, flags, expire_ns, value bytes]
    end       u32 0
    trailer   MessagePack map: items, bytes, chunks, finished_ns
    u32       trailer length
    checksum  BLAKE2b (32 bytes) of every byte before it

The item count and byte count sit in the trailer, not the header: they are
known only once every shard has been exported, and the checksum is computed
as the file is streamed out. ``read_snapshot_info`` reads both ends of the
file (not the items in between).

Items are stored as the engine keeps them (the flags word records the key
type, the value kind and the compression codec), so a restore stores the
same bytes and every value reads back as it was written; expire times are
wall-clock nanoseconds (``CLOCK_REALTIME``), so TTLs survive a reboot.
Each shard is exported under its lock: a consistent cut of that shard, taken
one shard after the other.

Encryption (``keys=`` with a write key): the same byte stream, sealed with
AES-256-GCM in records (crypto.py); readers given the keys see the
plain stream, so every check above applies to encrypted files too, after
each record has been authenticated. A record that fails authentication is a
corrupt snapshot (skipped by ``restore_latest`` like a bad checksum); a file
whose key is not configured raises ``SnapshotKeyError`` (never skipped: an
older snapshot would silently bring back older data).

Permissions: files are created 0600, or 0640 and given to ``group``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Protocol

import msgspec
import psutil

from metis_shm import segment
from metis_shm.cache import Cache
from metis_shm.codec import SERIALIZERS
from metis_shm.daemon.snapshots.crypto import (
    MAGIC_ENCRYPTED,
    DecryptedSource,
    EncryptingWriter,
    SnapshotKeys,
)
from metis_shm.errors import InvalidConfig, SnapshotCorrupt, SnapshotNotFound

log = logging.getLogger("metis_shm")

MAGIC = b"METISNAP"
FORMAT_VERSION = 1
SUFFIX = ".snap"
CHUNK_BYTES = 2 << 20  # a chunk holds about this many bytes of items
DIGEST_SIZE = 32
_ITEM_OVERHEAD = 24  # MessagePack framing of one item, roughly
_MAX_HEADER = 1 << 20

_PRELUDE = struct.Struct("<8sII")
_U32 = struct.Struct("<I")
_TAIL_SIZE = _U32.size + DIGEST_SIZE
_MIN_SIZE = _PRELUDE.size + _U32.size + _TAIL_SIZE
_STAMP = r"\d{8}T\d{6}\.\d{6}Z"

Progress = Callable[[int, int], None]
Item = tuple[bytes, int, int, bytes]


class SnapshotInfo(msgspec.Struct):
    """What a snapshot holds, from its header and trailer.

    ``items`` and ``bytes`` (keys plus stored values) count what was written;
    ``settings`` has what recreates a cache like the one snapshotted (see
    ``cache_options``).
    """

    path: str
    cache: str
    created_ns: int
    items: int
    bytes: int
    layout_version: int
    format_version: int
    policy: str = ""
    capacity: int = 0
    file_size: int = 0
    settings: dict[str, Any] = {}
    key_id: str | None = None
    """The id of the key the file is encrypted with (None: not encrypted)."""

    def cache_options(self) -> dict[str, Any]:
        """Keyword arguments for ``Cache(name, **options)`` that create a cache
        with the snapshotted cache's settings (capacity, shards, policy,
        limits, serializer, default TTL)."""
        s = self.settings
        options: dict[str, Any] = {"capacity": s.get("capacity", self.capacity)}
        if s.get("n_shards"):
            options["shards"] = s["n_shards"]
        if self.policy:
            options["policy"] = self.policy
        if s.get("max_entries"):
            options["max_entries"] = s["max_entries"]
        for field in ("max_key_size", "max_value_size", "serializer"):
            if s.get(field):
                options[field] = s[field]
        if "compress_threshold" in s:
            options["compress_threshold"] = s["compress_threshold"] or None
        if s.get("default_ttl_ns"):
            options["default_ttl"] = s["default_ttl_ns"] / 1e9
        return options


class _Header(msgspec.Struct):
    cache: str
    created_ns: int
    layout_version: int
    policy: str
    capacity: int
    settings: dict[str, Any] = {}
    metis_version: str = ""


class _Trailer(msgspec.Struct):
    items: int
    bytes: int
    chunks: int
    finished_ns: int = 0


_encoder = msgspec.msgpack.Encoder()
_header_decoder = msgspec.msgpack.Decoder(_Header)
_trailer_decoder = msgspec.msgpack.Decoder(_Trailer)
_U32_INT = Annotated[int, msgspec.Meta(ge=0, lt=2**32)]
_U64_INT = Annotated[int, msgspec.Meta(ge=0)]  # MessagePack ints stop at 2**64 - 1
_items_decoder = msgspec.msgpack.Decoder(list[tuple[bytes, _U32_INT, _U64_INT, bytes]])


# ---- names -------------------------------------------------------------------


def snapshot_name(name: str, created_ns: int) -> str:
    """The file name of a snapshot of cache ``name`` taken at ``created_ns``:
    ``metis.<name>.<YYYYmmddTHHMMSS.ffffff>Z.snap`` (UTC; sorts by time)."""
    seconds, rest = divmod(created_ns, 10**9)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(seconds))
    return f"metis.{name}.{stamp}.{rest // 1000:06d}Z{SUFFIX}"


def _snapshot_pattern(name: str) -> re.Pattern[str]:
    # Anchored at both ends with the stamp right before the suffix: cache
    # "a" never matches the files of cache "a.b".
    return re.compile(rf"^metis\.{re.escape(name)}\.({_STAMP})\.snap$")


def _temp_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"^\.metis\.{re.escape(name)}\.{_STAMP}\.(\d+)\.tmp$")


def list_snapshots(directory: str | os.PathLike[str], name: str) -> list[Path]:
    """The snapshot files of cache ``name`` in ``directory``, newest first
    (an empty list if the directory does not exist)."""
    segment.validate_name(name)
    directory = Path(directory)
    pattern = _snapshot_pattern(name)
    found: list[tuple[str, str]] = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                m = pattern.match(entry.name)
                if m and entry.is_file():
                    found.append((m.group(1), entry.name))
    except (FileNotFoundError, NotADirectoryError):
        return []
    found.sort(reverse=True)
    return [directory / file_name for _, file_name in found]


# ---- writing -----------------------------------------------------------------


class _Sink(Protocol):
    def write(self, data: bytes, /) -> Any: ...


class _HashingWriter:
    def __init__(self, f: _Sink) -> None:
        self.f = f
        self.hash = hashlib.blake2b(digest_size=DIGEST_SIZE)
        self.size = 0

    def write(self, data: bytes) -> None:
        self.f.write(data)
        self.hash.update(data)
        self.size += len(data)


def _header_for(cache: Cache, created_ns: int) -> _Header:
    from metis_shm import __version__

    h = cache.settings
    serializer = next((k for k, v in SERIALIZERS.items() if v == h["serializer"]), "msgpack")
    settings = {
        "capacity": h["capacity"],
        "n_shards": h["n_shards"],
        "max_entries": h["max_entries"],
        "max_key_size": h["max_key_size"],
        "max_value_size": h["max_value_size"],
        "compress_threshold": h["compress_threshold"],
        "serializer": serializer,
        "default_ttl_ns": h["default_ttl_ns"],
    }
    return _Header(
        cache=cache.name,
        created_ns=created_ns,
        layout_version=h["layout_version"],
        policy=cache.policy,
        capacity=h["capacity"],
        settings=settings,
        metis_version=__version__,
    )


def write_snapshot(
    cache: Cache,
    directory: str | os.PathLike[str],
    *,
    retention: int = 3,
    progress: Progress | None = None,
    mode: int = 0o600,
    keys: SnapshotKeys | None = None,
    group: int | str | None = None,
) -> SnapshotInfo:
    """Write a snapshot of ``cache``'s live items into ``directory`` (created
    if missing) and keep only the newest ``retention`` snapshots of this
    cache there (other caches' files are never touched).

    Atomic: the items go to a temp file (``O_EXCL``, ``mode``) that is
    fsynced and then renamed to its final name, and the directory is fsynced;
    if anything fails (or ``progress`` raises) the temp file is removed and
    the existing snapshots are as they were.

    ``progress(done, total)`` is called about every 1% of the items: ``total``
    is ``len(cache)`` when the snapshot starts (it counts expired items not yet
    swept, so it is an estimate); the last call has ``done == total``.

    ``keys`` with a write key: the file is encrypted (AES-256-GCM) with it.
    ``group`` (a name or gid): the file is given to that group, mode 0640
    (group may read: restore it; a finished snapshot is never written again).
    """
    if isinstance(retention, bool) or not isinstance(retention, int) or retention < 1:
        raise InvalidConfig(
            f"retention: {retention!r} is not valid; expected a number of snapshots >= 1",
            context={"field": "retention", "value": retention},
        )
    gid = segment.resolve_group(group, "group")
    encrypt = keys is not None and keys.write_key is not None
    directory = Path(directory)
    _make_directory(directory, gid)
    name = cache.name
    created_ns = time.time_ns()
    header = _header_for(cache, created_ns)
    _remove_stale_temps(directory, name)
    tmp = directory / f".{snapshot_name(name, created_ns)[: -len(SUFFIX)]}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as f:
            if gid is not None:
                segment.apply_group(f.fileno(), gid, f"snapshot {str(tmp)!r}")
            # exactly this mode, whatever the umask
            os.fchmod(f.fileno(), mode | 0o040 if gid is not None else mode)
            if encrypt:
                assert keys is not None
                sealed = EncryptingWriter(f, keys)
                trailer = _write_body(cache, header, sealed, progress)
                sealed.finish()
            else:
                trailer = _write_body(cache, header, f, progress)
            f.flush()
            os.fsync(f.fileno())
        final = _free_name(directory, name, created_ns)
        os.rename(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)
    try:
        _apply_retention(directory, name, retention, keep=final)
    except OSError as exc:  # the snapshot itself is written and durable
        log.warning("snapshot retention in %s failed: %s", directory, exc)
    return SnapshotInfo(
        path=str(final),
        cache=name,
        created_ns=created_ns,
        items=trailer.items,
        bytes=trailer.bytes,
        layout_version=header.layout_version,
        format_version=FORMAT_VERSION,
        policy=header.policy,
        capacity=header.capacity,
        file_size=final.stat().st_size,
        settings=header.settings,
        key_id=keys.write_key_id if encrypt and keys is not None else None,
    )


def _make_directory(directory: Path, gid: int | None) -> None:
    """Create the snapshot directory (0700; 0750 and given to the group) if missing."""
    if directory.is_dir():
        return
    directory.mkdir(parents=True, exist_ok=True, mode=0o750 if gid is not None else 0o700)
    if gid is not None:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            segment.apply_group(fd, gid, f"snapshot directory {str(directory)!r}")
            os.fchmod(fd, 0o750)
        finally:
            os.close(fd)


def _write_body(cache: Cache, header: _Header, f: _Sink, progress: Progress | None) -> _Trailer:
    w = _HashingWriter(f)
    header_bytes = _encoder.encode(header)
    w.write(_PRELUDE.pack(MAGIC, FORMAT_VERSION, len(header_bytes)))
    w.write(header_bytes)
    total = len(cache)
    step = max(1, total // 100)  # items per chunk at most, and between progress calls
    done = n_bytes = n_chunks = 0
    next_report = step
    if progress is not None:
        progress(0, total)
    for shard in range(cache.n_shards):
        items = cache._export_shard(shard)
        start = chunk_bytes = 0
        last = len(items)
        for i, (key, _flags, _expire_ns, value) in enumerate(items, 1):
            chunk_bytes += len(key) + len(value)
            full = chunk_bytes + _ITEM_OVERHEAD * (i - start) >= CHUNK_BYTES or i - start >= step
            if not full and i < last:
                continue
            chunk = _encoder.encode(items[start:i])
            w.write(_U32.pack(len(chunk)))
            w.write(chunk)
            n_chunks += 1
            n_bytes += chunk_bytes
            done += i - start
            start, chunk_bytes = i, 0
            if progress is not None and done >= next_report and done < total:
                progress(done, total)
                next_report = done + step
        del items
    w.write(_U32.pack(0))
    trailer = _Trailer(items=done, bytes=n_bytes, chunks=n_chunks, finished_ns=time.time_ns())
    trailer_bytes = _encoder.encode(trailer)
    w.write(trailer_bytes)
    w.write(_U32.pack(len(trailer_bytes)))
    f.write(w.hash.digest())
    if progress is not None:
        progress(done, done)
    return trailer


def _free_name(directory: Path, name: str, created_ns: int) -> Path:
    """The final path; a microsecond later if a snapshot of that instant exists."""
    while True:
        path = directory / snapshot_name(name, created_ns)
        if not path.exists():
            return path
        created_ns += 1000


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _apply_retention(directory: Path, name: str, retention: int, keep: Path) -> list[Path]:
    """Remove all but the newest ``retention`` snapshots of ``name``; ``keep``
    (the one just written) stays even if the clock went back."""
    removed = []
    others = [p for p in list_snapshots(directory, name) if p != keep]
    for old in others[retention - 1 :]:
        with contextlib.suppress(FileNotFoundError):
            old.unlink()
            removed.append(old)
            log.info("snapshot retention: removed %s", old)
    if removed:
        _fsync_dir(directory)
    return removed


def _remove_stale_temps(directory: Path, name: str, older_than: float = 60.0) -> None:
    """Temp files of this cache left by a writer that died (its pid is gone
    and the file has not changed for a minute)."""
    pattern = _temp_pattern(name)
    now = time.time()
    with os.scandir(directory) as entries:
        for entry in entries:
            m = pattern.match(entry.name)
            if not m or int(m.group(1)) == os.getpid() or psutil.pid_exists(int(m.group(1))):
                continue
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime > older_than:
                    os.unlink(entry.path)
                    log.info("removed the temp file of an unfinished snapshot: %s", entry.path)


# ---- reading -----------------------------------------------------------------


def _corrupt(path: Path, reason: str, offset: int | None = None) -> SnapshotCorrupt:
    context: dict[str, Any] = {"path": str(path), "reason": reason}
    if offset is not None:
        context["offset"] = offset
    return SnapshotCorrupt(f"snapshot {str(path)!r} is unusable: {reason}", context=context)


class _Source(Protocol):
    """The plain snapshot stream of a file: its size, reads anywhere, reads in order."""

    size: int
    file_size: int
    key_id: str | None

    def pread(self, n: int, offset: int) -> bytes: ...
    def read(self, n: int) -> bytes: ...
    def seek(self, offset: int) -> Any: ...


class _PlainSource:
    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.size = self.file_size = os.fstat(f.fileno()).st_size
        self.key_id: str | None = None

    def pread(self, n: int, offset: int) -> bytes:
        return os.pread(self._f.fileno(), n, offset)

    def read(self, n: int) -> bytes:
        return self._f.read(n)

    def seek(self, offset: int) -> Any:
        return self._f.seek(offset)


def _source(f: BinaryIO, path: Path, keys: SnapshotKeys | None) -> _Source:
    """The plain stream of an open snapshot file, decrypted if it is encrypted."""
    size = os.fstat(f.fileno()).st_size
    if os.pread(f.fileno(), len(MAGIC_ENCRYPTED), 0) == MAGIC_ENCRYPTED:

        def corrupt(reason: str, offset: int | None = None) -> SnapshotCorrupt:
            return _corrupt(path, reason, offset)

        return DecryptedSource(f, size, keys, corrupt, str(path))
    return _PlainSource(f)


def _open_file(path: Path) -> BinaryIO:
    try:
        return open(path, "rb", buffering=1 << 20)
    except FileNotFoundError as exc:
        raise SnapshotNotFound(
            f"snapshot {str(path)!r} does not exist", context={"path": str(path)}
        ) from exc
    except IsADirectoryError as exc:
        raise _corrupt(path, "is a directory") from exc


def _pread(src: _Source, n: int, offset: int, path: Path, what: str) -> bytes:
    data = src.pread(n, offset)
    if len(data) != n:
        raise _corrupt(path, f"truncated: {what} at offset {offset} is cut short", offset)
    return data


def _check_prelude(path: Path, data: bytes, size: int) -> tuple[int, int]:
    """Format version and header length, once the magic and version are checked."""
    magic, version, header_len = _PRELUDE.unpack(data)
    if magic != MAGIC:
        raise _corrupt(path, f"not a Metis snapshot (magic {magic!r}, expected {MAGIC!r})", 0)
    if version > FORMAT_VERSION:
        raise _corrupt(
            path, f"format version {version} is newer than this Metis reads ({FORMAT_VERSION})"
        )
    if version < 1:
        raise _corrupt(path, f"format version {version} is not valid")
    if header_len > min(_MAX_HEADER, size - _MIN_SIZE):
        raise _corrupt(path, f"header length {header_len} does not fit the file ({size} bytes)")
    return int(version), int(header_len)


def _decode(decoder: msgspec.msgpack.Decoder[Any], data: bytes, path: Path, what: str,
            offset: int) -> Any:  # fmt: skip
    try:
        return decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise _corrupt(path, f"{what} at offset {offset} does not decode ({exc})", offset) from exc


def _read_info(src: _Source, path: Path) -> SnapshotInfo:
    """Header and trailer (both ends of the file), checked for shape only."""
    size = src.size
    if size < _MIN_SIZE:
        raise _corrupt(path, f"truncated: {size} bytes is too short for a snapshot")
    version, header_len = _check_prelude(path, _pread(src, _PRELUDE.size, 0, path, "prelude"), size)
    header: _Header = _decode(
        _header_decoder, _pread(src, header_len, _PRELUDE.size, path, "header"), path, "header",
        _PRELUDE.size,
    )  # fmt: skip
    body_start = _PRELUDE.size + header_len
    (trailer_len,) = _U32.unpack(_pread(src, _U32.size, size - _TAIL_SIZE, path, "tail"))
    trailer_at = size - _TAIL_SIZE - trailer_len
    if trailer_len == 0 or trailer_at - _U32.size < body_start:
        raise _corrupt(path, "truncated or damaged: no trailer at the end of the file")
    end = _U32.unpack(_pread(src, _U32.size, trailer_at - _U32.size, path, "end marker"))[0]
    if end != 0:
        raise _corrupt(path, "truncated or damaged: no end marker before the trailer")
    trailer: _Trailer = _decode(
        _trailer_decoder, _pread(src, trailer_len, trailer_at, path, "trailer"), path, "trailer",
        trailer_at,
    )  # fmt: skip
    return SnapshotInfo(
        path=str(path),
        cache=header.cache,
        created_ns=header.created_ns,
        items=trailer.items,
        bytes=trailer.bytes,
        layout_version=header.layout_version,
        format_version=version,
        policy=header.policy,
        capacity=header.capacity,
        file_size=src.file_size,
        settings=header.settings,
        key_id=src.key_id,
    )


class _HashingReader:
    def __init__(self, f: _Source, path: Path, size: int) -> None:
        self.f = f
        self.path = path
        self.limit = size - DIGEST_SIZE
        self.pos = 0
        self.hash = hashlib.blake2b(digest_size=DIGEST_SIZE)

    def read(self, n: int, what: str) -> bytes:
        if self.pos + n > self.limit:
            raise _corrupt(
                self.path,
                f"truncated or damaged: {what} at offset {self.pos} ({n} bytes) runs past "
                f"the end of the data",
                self.pos,
            )
        data = self.f.read(n)
        if len(data) != n:
            raise _corrupt(self.path, f"truncated: {what} at offset {self.pos}", self.pos)
        self.hash.update(data)
        self.pos += n
        return data


def _scan(
    f: _Source,
    path: Path,
    info: SnapshotInfo,
    on_items: Callable[[list[Item]], None] | None,
) -> None:
    """Read the whole file from the start, checking its framing, that every
    chunk decodes to well-formed items, their count and the checksum; hand
    each chunk's items to ``on_items`` if given."""
    size = f.size
    f.seek(0)
    r = _HashingReader(f, path, size)
    _version, header_len = _check_prelude(path, r.read(_PRELUDE.size, "prelude"), size)
    r.read(header_len, "header")
    items = 0
    while True:
        (n,) = _U32.unpack(r.read(_U32.size, "chunk length"))
        if n == 0:
            break
        at = r.pos
        chunk = r.read(n, "chunk")
        decoded: list[Item] = _decode(_items_decoder, chunk, path, "chunk", at)
        count = len(decoded)
        if on_items is not None:
            on_items(decoded)
        del decoded
        items += count
    trailer_len = r.limit - r.pos - _U32.size
    if trailer_len <= 0:
        raise _corrupt(path, f"truncated: no trailer after the end marker at {r.pos}", r.pos)
    r.read(trailer_len, "trailer")
    (stated,) = _U32.unpack(r.read(_U32.size, "trailer length"))
    if stated != trailer_len:
        raise _corrupt(path, f"damaged: trailer length {stated}, found {trailer_len} bytes")
    digest = f.read(DIGEST_SIZE)
    if len(digest) != DIGEST_SIZE or f.read(1):
        raise _corrupt(path, "truncated: the checksum is cut short")
    if digest != r.hash.digest():
        raise _corrupt(path, "checksum mismatch: the file was damaged after it was written")
    if items != info.items:
        raise _corrupt(path, f"holds {items} items; its trailer says {info.items}")


def _open_verified(
    path: str | os.PathLike[str], keys: SnapshotKeys | None
) -> tuple[BinaryIO, _Source, SnapshotInfo]:
    """The snapshot open (at its start) once its whole checksum has been checked."""
    p = Path(path)
    f = _open_file(p)
    try:
        src = _source(f, p, keys)
        info = _read_info(src, p)
        _scan(src, p, info, None)
        src.seek(0)
    except BaseException:
        f.close()
        raise
    return f, src, info


def read_snapshot_info(
    path: str | os.PathLike[str], *, keys: SnapshotKeys | None = None
) -> SnapshotInfo:
    """A snapshot's header and trailer: magic and format version checked,
    the items and the checksum not (``verify_snapshot`` does that). An
    encrypted snapshot needs its key in ``keys`` (else ``SnapshotKeyError``)."""
    p = Path(path)
    with _open_file(p) as f:
        return _read_info(_source(f, p, keys), p)


def verify_snapshot(
    path: str | os.PathLike[str], *, keys: SnapshotKeys | None = None
) -> SnapshotInfo:
    """Read the whole snapshot and check its framing, item count and checksum
    (and, encrypted, every record's authentication tag).

    Raises ``SnapshotCorrupt`` (``context["reason"]`` says what is wrong),
    ``SnapshotNotFound``, or ``SnapshotKeyError`` (encrypted, key not given).
    """
    f, _src, info = _open_verified(path, keys)
    f.close()
    return info


__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "Progress",
    "SnapshotInfo",
    "list_snapshots",
    "read_snapshot_info",
    "snapshot_name",
    "verify_snapshot",
    "write_snapshot",
]
