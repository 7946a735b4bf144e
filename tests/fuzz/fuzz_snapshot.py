"""Fuzz target: the snapshot loader (``metis_shm.daemon.snapshots.restore.restore``).

Input: one control byte, then the bytes of a snapshot file.

* control bit 0 clear: the bytes are the file as they are (damaged files:
  almost all fail the checksum or the framing).
* control bit 0 set: the bytes are the file without its last 32 bytes, and
  the BLAKE2b checksum is appended here, so the input passes the checksum
  and reaches the header, chunk and item decoding behind it.

The restore is given ``FUZZ_KEY``, so encrypted files (AES-256-GCM, the
seeds made by ``make_corpus.py``) are opened too; control bit 1 adds a
``progress`` callback (another read of the header and trailer).

Allowed outcomes: the restore succeeds, or raises ``SnapshotCorrupt``,
``SnapshotNotFound`` or ``SnapshotKeyError`` (the documented errors). After a successful restore the
cache must pass ``check()`` and every restored item must read back as a
value or as a ``MetisError`` (a snapshot must not plant an item that makes
``get`` raise anything else). Anything else is a finding.

    python tests/fuzz/fuzz_snapshot.py NEW_DIR tests/fuzz/corpus/snapshot -max_total_time=600
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import sys

from _fuzz_support import (
    clean_up_when_gone,
    instrumenting_metis,
    run_libfuzzer,
    scratch_directory,
    segment_name,
)

with instrumenting_metis(__name__):
    from metis_shm import Cache
    from metis_shm.daemon.snapshots.crypto import SnapshotKeys
    from metis_shm.daemon.snapshots.restore import restore
    from metis_shm.errors import MetisError, SnapshotCorrupt, SnapshotKeyError, SnapshotNotFound

DIGEST_SIZE = 32
LOADER_ERRORS = (SnapshotCorrupt, SnapshotNotFound, SnapshotKeyError)
FUZZ_KEY = bytes(range(32))  # the key of the encrypted seeds (make_corpus.py)
CACHE_OPTIONS = {"capacity": "1MiB", "shards": 2, "max_value_size": "64KiB"}


class _State:
    """The cache restored into and the file each input is written to."""

    def __init__(self) -> None:
        self.name = segment_name("snapshot")
        self.directory = scratch_directory("snapshot")
        self.path = self.directory / f"metis.{self.name}.20260101T000000.000000Z.snap"
        self.cache = Cache(self.name, **CACHE_OPTIONS)
        self.keys = SnapshotKeys(FUZZ_KEY)


@functools.cache
def _get_state() -> _State:
    """Made on first use, once per process; removed by the watcher main() starts."""
    return _State()


def sealed(body: bytes) -> bytes:
    """``body`` with the checksum a snapshot file ends with appended."""
    return body + hashlib.blake2b(body, digest_size=DIGEST_SIZE).digest()


def _progress(done: int, total: int) -> None:
    if done < 0 or (total >= 0 and done > total):
        raise AssertionError(f"progress({done}, {total}) is out of order")


def TestOneInput(data: bytes) -> None:
    """Write ``data`` as a snapshot file and restore it; raise on a finding."""
    if not data:
        return
    state = _get_state()
    body = data[1:]
    state.path.write_bytes(sealed(body) if data[0] & 1 else body)
    cache = state.cache
    cache.clear()
    try:
        restore(cache, state.path, progress=_progress if data[0] & 2 else None, keys=state.keys)
    except LOADER_ERRORS:
        return
    problems = cache.check()
    if problems:
        raise AssertionError(f"the cache is inconsistent after a restore: {problems}")
    restored = list(cache.keys())
    for key in restored:
        with contextlib.suppress(MetisError):
            cache.get(key)


def main() -> None:
    """Run under libFuzzer with this process's command line."""
    logging.getLogger("metis_shm").setLevel(logging.CRITICAL)
    state = _get_state()
    clean_up_when_gone([state.name], [state.directory])
    run_libfuzzer(TestOneInput)


if __name__ == "__main__":
    sys.exit(main())
