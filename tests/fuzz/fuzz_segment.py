"""Fuzz target: the segment header check at attach (``metis_shm.segment.attach``
and ``_engine.read_header``, through ``Cache(name, create=False)``).

One small real cache is made once; its whole segment image is kept. Each
input starts from that image, damages the segment in ``/dev/shm`` and
attaches. The first byte picks how:

* 0: raw bytes over the start of the header page (most fail the magic).
* 1: raw bytes over the header page after a valid magic.
* 2: structured: one to six header fields (found by their offsets in the
  real header) set to values the fuzzer picks: 0, 1, the maximum, the real
  value +- a little, powers of two, or any.
* 3: the segment file cut to a size the fuzzer picks, then attached.

Allowed outcomes: attaching raises a documented error, a ``MetisError``
(``SegmentForeign``, ``SegmentCorrupt``, ``SegmentVersionMismatch``,
``SegmentOwner``; ``InvalidConfig`` for a segment of pickled values opened
without ``serializer="pickle"``), or it succeeds and the cache then
works: ``get``/``set``/``len``/``stats``/``check``/``policy`` return or raise a
``MetisError``. Anything else, a crash, a hang, a read outside the mapping
(SIGSEGV/SIGBUS; an ASan report under ``METIS_SANITIZE=1``) is a finding.

    python tests/fuzz/fuzz_segment.py NEW_DIR tests/fuzz/corpus/segment -max_total_time=600
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys

import atheris
from _fuzz_support import (
    clean_up_when_gone,
    instrumenting_metis,
    run_libfuzzer,
    segment_name,
)

with instrumenting_metis(__name__):
    from metis_shm import Cache, _engine, segment
    from metis_shm.errors import MetisError

HEADER_BYTES: int = _engine.HEADER_BYTES
MODE_RAW, MODE_RAW_AFTER_MAGIC, MODE_FIELDS, MODE_TRUNCATE = range(4)
SEED_KEYS = [f"key-{i}" for i in range(16)]


def header_fields(raw: bytes) -> dict[str, tuple[int, int]]:
    """Field -> (offset, width) in the header, found by flipping each byte of
    a real header and seeing which field ``read_header`` reports changed."""
    base = _engine.read_header(raw)
    spans: dict[str, list[int]] = {}
    for at in range(HEADER_BYTES):
        flipped = raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1 :]
        decoded = _engine.read_header(flipped)
        for name, value in decoded.items():
            if value != base[name]:
                spans.setdefault(name, []).append(at)
    return {name: (at[0], at[-1] - at[0] + 1) for name, at in spans.items()}


class _State:
    """The real segment, its pristine image and where its header fields are."""

    def __init__(self) -> None:
        self.name = segment_name("segment")
        self.path = segment.shm_path(self.name)
        with Cache(self.name, capacity="256KiB", shards=2, policy="wtinylfu") as cache:
            for i, key in enumerate(SEED_KEYS):
                cache.set(key, i if i % 2 else key.encode() * 8)
        with open(self.path, "rb") as f:
            self.image = f.read()
        self.fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        self.fields = header_fields(self.image[:HEADER_BYTES])
        self.field_names = sorted(n for n in self.fields if n != "magic")
        # The attach wait is for a creator still formatting; nobody is here.
        segment.ATTACH_WAIT_SECONDS = 0.0

    def reset(self) -> None:
        """Put the pristine segment back (size and every byte)."""
        if os.fstat(self.fd).st_size != len(self.image):
            os.ftruncate(self.fd, len(self.image))
        os.pwrite(self.fd, self.image, 0)


@functools.cache
def _get_state() -> _State:
    """Made on first use, once per process; removed by the watcher main() starts."""
    return _State()


def _field_value(fdp: atheris.FuzzedDataProvider, width: int, real: int) -> int:
    top = (1 << (8 * width)) - 1
    choice = fdp.ConsumeIntInRange(0, 5)
    if choice == 0:
        return 0
    if choice == 1:
        return top
    if choice == 2:
        return (real + fdp.ConsumeIntInRange(-8, 8)) & top
    if choice == 3:
        return 1 << fdp.ConsumeIntInRange(0, 8 * width - 1)
    if choice == 4:
        return real ^ (1 << fdp.ConsumeIntInRange(0, 8 * width - 1))
    return fdp.ConsumeIntInRange(0, top)


def damaged_header(state: _State, fdp: atheris.FuzzedDataProvider, mode: int) -> bytes:
    """The header page the input asks for (modes 0-2)."""
    pristine = state.image[:HEADER_BYTES]
    if mode == MODE_RAW:
        raw = fdp.ConsumeBytes(HEADER_BYTES)
        return raw + pristine[len(raw) :]
    if mode == MODE_RAW_AFTER_MAGIC:
        raw = fdp.ConsumeBytes(HEADER_BYTES - 8)
        return _engine.MAGIC + raw + pristine[8 + len(raw) :]
    header = bytearray(pristine)
    for _ in range(fdp.ConsumeIntInRange(1, 6)):
        name = fdp.PickValueInList(state.field_names)
        at, width = state.fields[name]
        real = int.from_bytes(pristine[at : at + width], "little")
        header[at : at + width] = _field_value(fdp, width, real).to_bytes(width, "little")
    return bytes(header)


def use(cache: Cache) -> None:
    """What a process does with a cache it attached; MetisErrors are allowed."""
    for call in (
        lambda: [cache.get(k) for k in SEED_KEYS],
        lambda: cache.set("fuzz-probe", b"v" * 100),
        lambda: cache.get("fuzz-probe"),
        lambda: cache.delete(SEED_KEYS[0]),
        lambda: len(cache),
        cache.stats,
        cache.check,
        lambda: cache.policy,
    ):
        with contextlib.suppress(MetisError):
            call()


def TestOneInput(data: bytes) -> None:
    """Damage the real segment as ``data`` says and attach; raise on a finding."""
    state = _get_state()
    state.reset()
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 3)
    if mode == MODE_TRUNCATE:
        os.ftruncate(state.fd, fdp.ConsumeIntInRange(0, len(state.image)))
    else:
        header = damaged_header(state, fdp, mode)
        os.pwrite(state.fd, header, 0)
    try:
        cache = Cache(state.name, create=False)
    except MetisError:
        return
    try:
        use(cache)
    finally:
        cache.close()


def main() -> None:
    """Run under libFuzzer with this process's command line."""
    logging.getLogger("metis_shm").setLevel(logging.CRITICAL)
    state = _get_state()
    clean_up_when_gone([state.name], [])
    run_libfuzzer(TestOneInput)


if __name__ == "__main__":
    sys.exit(main())
