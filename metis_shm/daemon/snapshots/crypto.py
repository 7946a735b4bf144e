"""Encrypted snapshots: AES-256-GCM around the plain snapshot format.

An encrypted snapshot is the plain snapshot byte stream (format.py: prelude,
header, chunks, trailer, BLAKE2b checksum) cut into records of
``record_bytes`` plaintext bytes, each sealed with AES-256-GCM::

    prelude   8s magic b"METISENC", u32 format version (1), u32 envelope length
    envelope  MessagePack map: key_id, cipher "AES-256-GCM", kdf "HKDF-SHA256",
              salt (32 random bytes), record_bytes
    records   ciphertext + 16-byte tag; every record but the last holds exactly
              record_bytes of plaintext, the last 1 to record_bytes

Keys and nonces: the configured 256-bit key is never used directly. Each
file gets its own key, HKDF-SHA256(key, salt=the file's random 32-byte salt),
and record ``i`` is sealed with the 96-bit nonce ``i`` (big-endian). A
(key, nonce) pair therefore never repeats: the counter never repeats within
a file, and two files share a file key only if their random salts collide
(2**-128 after 2**64 files).

What is authenticated: each record's associated data is SHA-256(prelude +
envelope), the record index and a "last record" flag. So the clear envelope
cannot be changed, records cannot be reordered, dropped, duplicated or moved
to another file, and a file cut at a record boundary fails (its new last
record was not sealed as the last). Everything else (the snapshot header:
cache name, settings; items; trailer) is inside the ciphertext.

Key ids: the first 16 hex digits of SHA-256(b"metis-snapshot-key-id" + key).
A reader holds several keys and picks the one whose id the envelope names:
that is how key rotation works (docs/persistence.md).

Key files hold 32 raw bytes, or the key as 64 hex digits, or as base64 (44
characters); surrounding white space is ignored. ``METIS_SNAPSHOT_KEY`` may
hold the key in hex or base64.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import struct
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import msgspec

from metis_shm.errors import CryptoUnavailable, SnapshotCorrupt, SnapshotKeyError

MAGIC_ENCRYPTED = b"METISENC"
ENCRYPTED_FORMAT_VERSION = 1
RECORD_BYTES = 256 * 1024
KEY_BYTES = 32
SALT_BYTES = 32
TAG_BYTES = 16
KEY_ENV = "METIS_SNAPSHOT_KEY"
CIPHER = "AES-256-GCM"
KDF = "HKDF-SHA256"
_KDF_INFO = b"metis-snapshot-file-key-v1"
_KEY_ID_PREFIX = b"metis-snapshot-key-id"
_MIN_RECORD = 4096
_MAX_RECORD = 16 << 20
_MAX_ENVELOPE = 4096

_PRELUDE = struct.Struct("<8sII")
_INDEX = struct.Struct(">Q")


def _aesgcm() -> Any:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError as exc:
        raise CryptoUnavailable(
            "encrypted snapshots need the cryptography package: pip install metis-shm[crypto] "
            "(or pip install 'cryptography>=41')"
        ) from exc
    return AESGCM


def _hkdf(key: bytes, salt: bytes) -> bytes:
    _aesgcm()  # the same clear error when cryptography is missing
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return bytes(
        HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=_KDF_INFO).derive(key)
    )


def key_id(key: bytes) -> str:
    """The id of a key: 16 hex digits of a hash of it (recorded in each file)."""
    return hashlib.sha256(_KEY_ID_PREFIX + key).hexdigest()[:16]


def parse_key(data: bytes, source: str) -> bytes:
    """A 32-byte key from 32 raw bytes, 64 hex digits or base64 text."""
    if len(data) == KEY_BYTES:
        return bytes(data)
    text = data.strip()
    key: bytes | None = None
    if len(text) == 2 * KEY_BYTES:
        try:
            key = bytes.fromhex(text.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            key = None
    if key is None:
        try:
            key = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            key = None
    if key is None or len(key) != KEY_BYTES:
        raise SnapshotKeyError(
            f"{source} is not a snapshot key: expected 32 raw bytes, 64 hex digits or "
            f"base64 of 32 bytes (make one with: openssl rand -hex 32)",
            context={"source": source},
        )
    return key


def read_key_file(path: str | os.PathLike[str]) -> bytes:
    """The key in a key file (see ``parse_key``); SnapshotKeyError if unreadable."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SnapshotKeyError(
            f"cannot read the snapshot key file {os.fspath(path)!r}: {exc.strerror or exc}",
            context={"source": os.fspath(path)},
        ) from exc
    return parse_key(data, f"key file {os.fspath(path)!r}")


class SnapshotKeys:
    """The keys of snapshot encryption: the one new snapshots are written
    with (``write_key``, may be None: write plain files) and every key that
    may read (the write key and the older ones kept for rotation)."""

    def __init__(self, write_key: bytes | None = None, read_keys: list[bytes] | None = None):
        """Raises ``CryptoUnavailable`` now, not at the first snapshot, when
        the ``cryptography`` package is missing."""
        _aesgcm()
        self.write_key = write_key
        self._by_id: dict[str, bytes] = {}
        for key in [*([write_key] if write_key else []), *(read_keys or [])]:
            if len(key) != KEY_BYTES:
                raise SnapshotKeyError(f"a snapshot key is 32 bytes, not {len(key)}")
            self._by_id[key_id(key)] = key

    @classmethod
    def load(
        cls,
        key_file: str | os.PathLike[str] | None = None,
        read_key_files: list[str] | tuple[str, ...] = (),
        *,
        env: dict[str, str] | os._Environ[str] | None = None,
    ) -> SnapshotKeys | None:
        """Keys from files and the environment: the write key from ``key_file``,
        else from ``METIS_SNAPSHOT_KEY`` (hex or base64); ``read_key_files`` are
        read-only keys. None when no key is given at all."""
        environment = os.environ if env is None else env
        write_key = read_key_file(key_file) if key_file else None
        if write_key is None and environment.get(KEY_ENV, "").strip():
            write_key = parse_key(environment[KEY_ENV].encode(), f"${KEY_ENV}")
        read_keys = [read_key_file(path) for path in read_key_files]
        if write_key is None and not read_keys:
            return None
        return cls(write_key, read_keys)

    @property
    def write_key_id(self) -> str | None:
        """The id of the write key (None: no write key)."""
        return key_id(self.write_key) if self.write_key else None

    @property
    def key_ids(self) -> list[str]:
        """The ids of every key that can read."""
        return list(self._by_id)

    def get(self, wanted: str) -> bytes | None:
        """The key with id ``wanted``, or None."""
        return self._by_id.get(wanted)

    def __repr__(self) -> str:  # never the key bytes
        return f"SnapshotKeys(write={self.write_key_id}, read={self.key_ids})"


class _Envelope(msgspec.Struct):
    key_id: str
    cipher: str
    kdf: str
    salt: bytes
    record_bytes: int


_envelope_decoder = msgspec.msgpack.Decoder(_Envelope)


def _aad(envelope_hash: bytes, index: int, last: bool) -> bytes:
    return envelope_hash + _INDEX.pack(index) + (b"\x01" if last else b"\x00")


def _nonce(index: int) -> bytes:
    return b"\0\0\0\0" + _INDEX.pack(index)


# ---- writing -------------------------------------------------------------------


class EncryptingWriter:
    """Takes the plain snapshot stream through ``write``; writes sealed records
    to ``f``. ``finish()`` seals the last record (it must be called once, after
    the last write)."""

    def __init__(self, f: BinaryIO, keys: SnapshotKeys, record_bytes: int = RECORD_BYTES):
        if keys.write_key is None:
            raise SnapshotKeyError("no key to encrypt with (the key ring has only read keys)")
        aesgcm = _aesgcm()
        salt = os.urandom(SALT_BYTES)
        envelope = msgspec.msgpack.encode(
            _Envelope(
                key_id=key_id(keys.write_key),
                cipher=CIPHER,
                kdf=KDF,
                salt=salt,
                record_bytes=record_bytes,
            )
        )
        head = _PRELUDE.pack(MAGIC_ENCRYPTED, ENCRYPTED_FORMAT_VERSION, len(envelope)) + envelope
        f.write(head)
        self._f = f
        self._seal = aesgcm(_hkdf(keys.write_key, salt)).encrypt
        self._hash = hashlib.sha256(head).digest()
        self._record = record_bytes
        self._buf = bytearray()
        self._index = 0
        self.key_id = key_id(keys.write_key)

    def write(self, data: bytes) -> None:
        """Add plaintext; full records are sealed as they fill (the last one
        waits for ``finish``, so a record is only sealed once it is known
        whether it is the last)."""
        self._buf += data
        while len(self._buf) > self._record:
            self._emit(bytes(self._buf[: self._record]), last=False)
            del self._buf[: self._record]

    def _emit(self, plain: bytes, *, last: bool) -> None:
        aad = _aad(self._hash, self._index, last)
        self._f.write(self._seal(_nonce(self._index), plain, aad))
        self._index += 1

    def finish(self) -> None:
        """Seal what is left as the last record."""
        self._emit(bytes(self._buf), last=True)
        self._buf.clear()


# ---- reading -------------------------------------------------------------------


class Corrupt(Protocol):
    def __call__(self, reason: str, offset: int | None = None) -> SnapshotCorrupt: ...


def envelope_key_id(fd: int, file_size: int, corrupt: Corrupt) -> tuple[str, int]:
    """The key id an encrypted file names, and where its records start."""
    envelope, start = _read_envelope(fd, file_size, corrupt)
    return envelope.key_id, start


def _read_envelope(fd: int, file_size: int, corrupt: Corrupt) -> tuple[_Envelope, int]:
    head = os.pread(fd, _PRELUDE.size, 0)
    if len(head) != _PRELUDE.size:
        raise corrupt("truncated: the prelude is cut short", 0)
    magic, version, length = _PRELUDE.unpack(head)
    if magic != MAGIC_ENCRYPTED:
        raise corrupt(f"not an encrypted Metis snapshot (magic {magic!r})", 0)
    if version != ENCRYPTED_FORMAT_VERSION:
        raise corrupt(
            f"encryption format version {version}; this Metis reads {ENCRYPTED_FORMAT_VERSION}"
        )
    if length > min(_MAX_ENVELOPE, file_size - _PRELUDE.size):
        raise corrupt(f"envelope length {length} does not fit the file ({file_size} bytes)")
    raw = os.pread(fd, length, _PRELUDE.size)
    try:
        envelope = _envelope_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise corrupt(f"the encryption envelope does not decode ({exc})", _PRELUDE.size) from exc
    if envelope.cipher != CIPHER or envelope.kdf != KDF:
        raise corrupt(f"unknown encryption {envelope.cipher}/{envelope.kdf}")
    if not _MIN_RECORD <= envelope.record_bytes <= _MAX_RECORD or len(envelope.salt) != SALT_BYTES:
        raise corrupt("the encryption envelope is damaged (record size or salt)")
    return envelope, _PRELUDE.size + length


class DecryptedSource:
    """The plaintext of an encrypted snapshot, read through ``pread`` (any
    range) and ``read``/``seek(0)`` (sequentially). Every record is
    authenticated before a byte of it is returned; a record that fails is a
    SnapshotCorrupt from ``corrupt``."""

    def __init__(
        self, f: BinaryIO, file_size: int, keys: SnapshotKeys | None, corrupt: Corrupt, path: str
    ):
        envelope, start = _read_envelope(f.fileno(), file_size, corrupt)
        key = keys.get(envelope.key_id) if keys is not None else None
        if key is None:
            have = f"the configured keys are {keys.key_ids}" if keys else "no key is configured"
            raise SnapshotKeyError(
                f"snapshot {path!r} is encrypted with key id {envelope.key_id} and {have}: "
                f"give its key (snapshot.key_file or snapshot.read_key_files; metis "
                f"snapshot/restore --key-file FILE; or ${KEY_ENV})",
                context={"path": path, "key_id": envelope.key_id},
            )
        self.key_id: str | None = envelope.key_id
        self.file_size = file_size
        self._open = _aesgcm()(_hkdf(key, envelope.salt)).decrypt
        self._f = f
        self._corrupt = corrupt
        self._hash = hashlib.sha256(os.pread(f.fileno(), start, 0)).digest()
        self._start = start
        self._record = envelope.record_bytes
        body = file_size - start
        sealed = self._record + TAG_BYTES
        self._n = -(-body // sealed) if body > 0 else 0
        last_sealed = body - (self._n - 1) * sealed
        if self._n == 0 or last_sealed <= TAG_BYTES:
            raise corrupt("truncated: no encrypted record after the envelope", start)
        self.size = body - self._n * TAG_BYTES
        self._cached: tuple[int, bytes] | None = None
        self._pos = 0

    def _plain(self, index: int) -> bytes:
        if self._cached is not None and self._cached[0] == index:
            return self._cached[1]
        sealed = self._record + TAG_BYTES
        at = self._start + index * sealed
        last = index == self._n - 1
        n = self.size - index * self._record + TAG_BYTES if last else sealed
        data = os.pread(self._f.fileno(), n, at)
        try:
            plain = bytes(self._open(_nonce(index), data, _aad(self._hash, index, last)))
        except Exception as exc:  # cryptography's InvalidTag
            raise self._corrupt(
                f"authentication failed: encrypted record {index} at offset {at} was "
                f"changed, cut or moved (or the file was truncated)",
                at,
            ) from exc
        self._cached = (index, plain)
        return plain

    def pread(self, n: int, offset: int) -> bytes:
        """Up to ``n`` plaintext bytes at ``offset`` (fewer at the end)."""
        out = bytearray()
        end = min(offset + n, self.size)
        while offset < end:
            index = offset // self._record
            plain = self._plain(index)
            within = offset - index * self._record
            piece = plain[within : within + (end - offset)]
            out += piece
            offset += len(piece)
        return bytes(out)

    def read(self, n: int) -> bytes:
        """The next ``n`` plaintext bytes (fewer at the end)."""
        data = self.pread(n, self._pos)
        self._pos += len(data)
        return data

    def seek(self, offset: int) -> None:
        """Move the sequential position."""
        self._pos = offset


__all__ = [
    "KEY_ENV",
    "MAGIC_ENCRYPTED",
    "DecryptedSource",
    "EncryptingWriter",
    "SnapshotKeys",
    "key_id",
    "parse_key",
    "read_key_file",
]
