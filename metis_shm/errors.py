"""Errors: every one is a MetisError with a stable ``code`` and a ``context``
dict, and also subclasses the built-in exception that fits, so
``except KeyError`` or ``except ValueError`` keep working.

``ERROR_CLASSES`` is the one table from code to class.
"""

from __future__ import annotations

from typing import Any, ClassVar


class MetisError(Exception):
    """Base of all Metis errors."""

    code: ClassVar[str] = "METIS_ERROR"

    def __init__(self, message: object = "", *, context: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.context: dict[str, Any] = dict(context or {})

    def __str__(self) -> str:
        return f"[{self.code}] {super().__str__()}"


class InvalidName(MetisError, ValueError):
    """A cache name outside ``[A-Za-z0-9_.-]{1,64}``."""

    code = "INVALID_NAME"


class InvalidConfig(MetisError, ValueError):
    """A setting with a value it cannot take; the message names the field."""

    code = "INVALID_CONFIG"


class InvalidArgument(MetisError, TypeError, ValueError):
    """An argument of a cache call that it cannot take: a TTL that is not a
    finite number of seconds (NaN, ``True``, a string), a counter delta or
    default that is not an integer. Nothing is changed. Both a ``TypeError``
    and a ``ValueError``, since either may be what the caller expects."""

    code = "INVALID_ARGUMENT"


class InvalidKeyType(MetisError, TypeError):
    """A key that is neither ``str`` nor ``bytes``."""

    code = "INVALID_KEY_TYPE"


class KeyTooLarge(MetisError, ValueError):
    """A key longer than ``max_key_size`` bytes."""

    code = "KEY_TOO_LARGE"


class ValueTooLarge(MetisError, ValueError):
    """An item bigger than ``max_value_size`` or than a shard can hold."""

    code = "VALUE_TOO_LARGE"


class KeyNotFound(MetisError, KeyError):
    """``cache[key]``, ``del cache[key]``, ``pop`` or ``incr`` on an absent key."""

    code = "KEY_NOT_FOUND"

    def __init__(self, key: object = None, *, context: dict[str, Any] | None = None) -> None:
        super().__init__(key, context={"key": key, **(context or {})})

    def __str__(self) -> str:
        return f"[{self.code}] {self.args[0]!r}"


class NotACounter(MetisError, TypeError):
    """``incr``/``decr`` on a value that is not a 64-bit integer."""

    code = "NOT_A_COUNTER"


class CounterOverflow(MetisError, OverflowError):
    """``incr``/``decr`` past the signed 64-bit range."""

    code = "COUNTER_OVERFLOW"


class SerializationFailed(MetisError, TypeError):
    """A value the configured serializer cannot encode or decode."""

    code = "SERIALIZATION_FAILED"


class SegmentNotFound(MetisError, FileNotFoundError):
    """Attaching (``create=False``) to a name with no segment."""

    code = "SEGMENT_NOT_FOUND"


class SegmentForeign(MetisError, OSError):
    """The shared-memory object exists but is not a Metis segment."""

    code = "SEGMENT_FOREIGN"


class SegmentCorrupt(MetisError, OSError):
    """A Metis segment that is truncated, unfinished or inconsistent."""

    code = "SEGMENT_CORRUPT"


class SegmentVersionMismatch(MetisError, OSError):
    """A Metis segment of another layout version."""

    code = "SEGMENT_VERSION"


class SegmentPermission(MetisError, PermissionError):
    """The segment exists but this user may not open it."""

    code = "SEGMENT_PERMISSION"


class SegmentOwner(SegmentPermission):
    """An existing segment owned by a user this process does not trust.

    Anyone who can write a segment can forge what every reader gets, so a
    process only attaches to segments owned (file owner and the header's
    creator uid) by itself or root, shared through the group it named
    (``group=``), or owned by a uid in ``trusted_owners``;
    ``allow_foreign_owner=True`` turns the check off. ``context`` holds
    ``name``, ``owner_uid``, ``creator_uid``, ``gid`` and ``mode``."""

    code = "SEGMENT_OWNER"


class ShmNoSpace(MetisError, OSError):
    """The shared-memory file system has too little free space."""

    code = "SHM_NO_SPACE"


class CacheClosed(MetisError, ValueError):
    """An operation on a closed ``Cache``."""

    code = "CACHE_CLOSED"


class LockUnrecoverable(MetisError, OSError):
    """A shard lock that cannot be taken even after repair."""

    code = "LOCK_UNRECOVERABLE"


class TraceFormatError(MetisError, ValueError):
    """A trace that cannot be read as asked: unknown format, a record cut
    short, a line that is not a key of that format, a CSV column that is not
    there. ``context`` holds ``path`` and, where known, ``format``, ``line``
    or ``offset``."""

    code = "TRACE_FORMAT"


class TraceNotFound(TraceFormatError, FileNotFoundError):
    """The trace file does not exist (or is not a file)."""

    code = "TRACE_NOT_FOUND"


class SnapshotCorrupt(MetisError, ValueError):
    """A snapshot file that cannot be used: wrong magic, a format version this
    Metis does not read, a checksum mismatch, a truncation. ``context`` holds
    ``path`` and ``reason`` (and ``offset`` where one is known)."""

    code = "SNAPSHOT_CORRUPT"


class SnapshotNotFound(MetisError, FileNotFoundError):
    """The snapshot file (or directory) does not exist."""

    code = "SNAPSHOT_NOT_FOUND"


class SnapshotKeyError(MetisError, ValueError):
    """An encrypted snapshot this process has no key for (no key configured,
    or none with the snapshot's key id), or a key file that is not a key.
    ``context`` holds ``path`` and ``key_id`` where known."""

    code = "SNAPSHOT_KEY"


class CryptoUnavailable(MetisError, ImportError):
    """Encrypted snapshots need the ``cryptography`` package:
    ``pip install metis-shm[crypto]``."""

    code = "CRYPTO_UNAVAILABLE"


class PinLimit(MetisError, MemoryError):
    """A view would pin more than this process may hold (``max_pinned``
    bytes, or the pin table's count)."""

    code = "PIN_LIMIT"


class FarUnavailable(MetisError, ConnectionError):
    """The far tier (Redis) did not answer: refused, reset or timed out. A
    write that raises this changed nothing in the near tier; whether Redis
    applied it before the connection broke is unknown, as with any client."""

    code = "FAR_UNAVAILABLE"


class FarError(MetisError, RuntimeError):
    """The far tier answered with an error (a wrong type, a refused command,
    an authentication failure). Nothing changed in the near tier."""

    code = "FAR_ERROR"


ERROR_CLASSES: dict[str, type[MetisError]] = {
    cls.code: cls
    for cls in (
        InvalidName,
        InvalidConfig,
        InvalidArgument,
        InvalidKeyType,
        KeyTooLarge,
        ValueTooLarge,
        KeyNotFound,
        NotACounter,
        CounterOverflow,
        SerializationFailed,
        SegmentNotFound,
        SegmentForeign,
        SegmentCorrupt,
        SegmentVersionMismatch,
        SegmentPermission,
        SegmentOwner,
        ShmNoSpace,
        CacheClosed,
        LockUnrecoverable,
        TraceFormatError,
        TraceNotFound,
        SnapshotCorrupt,
        SnapshotNotFound,
        SnapshotKeyError,
        CryptoUnavailable,
        FarUnavailable,
        FarError,
        PinLimit,
    )
}
