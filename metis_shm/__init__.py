"""Metis: a cache that the Python processes of one machine share through
POSIX shared memory.

    >>> from metis_shm import Cache
    >>> cache = Cache("app", capacity="256MiB")   # creates or attaches
    >>> cache.set("user:42", b"...", ttl=300)
    >>> cache.get("user:42")
    b'...'
"""

from metis_shm.cache import Cache
from metis_shm.codec import register_type
from metis_shm.contrib.memoize import Memoized, MemoStats, memoize
from metis_shm.errors import (
    ERROR_CLASSES,
    CacheClosed,
    CounterOverflow,
    CryptoUnavailable,
    FarError,
    FarUnavailable,
    InvalidArgument,
    InvalidConfig,
    InvalidKeyType,
    InvalidName,
    KeyNotFound,
    KeyTooLarge,
    LockUnrecoverable,
    MetisError,
    NotACounter,
    PinLimit,
    SegmentCorrupt,
    SegmentForeign,
    SegmentNotFound,
    SegmentOwner,
    SegmentPermission,
    SegmentVersionMismatch,
    SerializationFailed,
    ShmNoSpace,
    SnapshotCorrupt,
    SnapshotKeyError,
    SnapshotNotFound,
    TraceFormatError,
    TraceNotFound,
    ValueTooLarge,
)
from metis_shm.stats import ShardStats, Stats

__version__ = "0.1.0"

__all__ = [
    "ERROR_CLASSES",
    "Cache",
    "CacheClosed",
    "CounterOverflow",
    "CryptoUnavailable",
    "FarError",
    "FarUnavailable",
    "InvalidArgument",
    "InvalidConfig",
    "InvalidKeyType",
    "InvalidName",
    "KeyNotFound",
    "KeyTooLarge",
    "LockUnrecoverable",
    "MemoStats",
    "Memoized",
    "MetisError",
    "NotACounter",
    "PinLimit",
    "SegmentCorrupt",
    "SegmentForeign",
    "SegmentNotFound",
    "SegmentOwner",
    "SegmentPermission",
    "SegmentVersionMismatch",
    "SerializationFailed",
    "ShardStats",
    "ShmNoSpace",
    "SnapshotCorrupt",
    "SnapshotKeyError",
    "SnapshotNotFound",
    "Stats",
    "TraceFormatError",
    "TraceNotFound",
    "ValueTooLarge",
    "__version__",
    "memoize",
    "register_type",
]
