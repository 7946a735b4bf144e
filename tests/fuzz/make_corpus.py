"""Write the seed corpora of the fuzz targets (``corpus/<target>/``) and the
config dictionary (``config.dict``) from the real code: a snapshot written
by ``write_snapshot`` (plain and encrypted), a real segment header, the
``daemon/*.toml`` templates (and the same settings as JSON), small traces in
every format and compression.

    python tests/fuzz/make_corpus.py

Run it again when a format changes; commit what it writes (a few hundred KB
at most). Existing seeds of the same name are overwritten, others are kept.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import shutil
import struct
import sys
import tempfile
import tomllib
from pathlib import Path

from _fuzz_support import CORPUS_DIR, FUZZ_DIR, segment_name, unlink_segment
from fuzz_segment import MODE_FIELDS, MODE_RAW, MODE_RAW_AFTER_MAGIC, MODE_TRUNCATE
from fuzz_snapshot import CACHE_OPTIONS, DIGEST_SIZE, FUZZ_KEY

from metis_shm import Cache, segment
from metis_shm.daemon.config import ENV_VARS
from metis_shm.daemon.config.rules import CACHE_RULES, TOP_RULES
from metis_shm.daemon.snapshots.crypto import SnapshotKeys
from metis_shm.daemon.snapshots.format import write_snapshot

REPO = FUZZ_DIR.parent.parent


def _write(target: str, name: str, data: bytes) -> None:
    directory = CORPUS_DIR / target
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(data)


def _fill(cache: Cache) -> None:
    """One item of every kind the codec has, a TTL and a compressed value."""
    cache.set("bytes", b"\x00\x01raw")
    cache.set(b"bytes-key", b"a bytes key")
    cache.set("str", "h\u00e9llo")
    cache.set("bytearray", bytearray(b"mutable"))
    cache.set("counter", 41)
    cache.set("dict", {"a": [1, 2.5, None, True]})
    cache.set("tuple", (1, "two"))
    cache.set("set", {1, 2})
    cache.set("frozenset", frozenset({"x"}))
    cache.set("ttl", b"expires in an hour", ttl=3600)
    cache.set("compressed", "z" * 600)


def snapshot_seeds() -> None:
    """A real snapshot, plain and encrypted; control byte 0 (as is) and 1
    (checksum appended by the target)."""
    name = segment_name("corpus")
    directory = Path(tempfile.mkdtemp(prefix="metis-corpus-"))
    try:
        with Cache(name, **{**CACHE_OPTIONS, "compress_threshold": 512}) as cache:
            _fill(cache)
            plain = Path(write_snapshot(cache, directory / "plain").path).read_bytes()
            keys = SnapshotKeys(FUZZ_KEY)
            sealed = write_snapshot(cache, directory / "enc", keys=keys).path
            encrypted = Path(sealed).read_bytes()
            cache.clear()
            empty = Path(write_snapshot(cache, directory / "empty").path).read_bytes()
    finally:
        unlink_segment(name)
        shutil.rmtree(directory)
    _write("snapshot", "plain.snap", b"\x00" + plain)
    _write("snapshot", "plain-resealed.snap", b"\x01" + plain[:-DIGEST_SIZE])
    _write("snapshot", "plain-progress.snap", b"\x03" + plain[:-DIGEST_SIZE])
    _write("snapshot", "empty.snap", b"\x00" + empty)
    _write("snapshot", "encrypted.snap", b"\x00" + encrypted)


def segment_seeds() -> None:
    """The real header page in each mode (the mode is the input's last byte:
    FuzzedDataProvider takes integers from the end)."""
    name = segment_name("corpus")
    try:
        with (
            Cache(name, capacity="256KiB", shards=2, policy="wtinylfu"),
            open(segment.shm_path(name), "rb") as f,
        ):
            header = f.read(4096)
    finally:
        unlink_segment(name)
    _write("segment", "raw-real-header", header + bytes([MODE_RAW]))
    _write("segment", "after-magic-real-header", header[8:] + bytes([MODE_RAW_AFTER_MAGIC]))
    for n in range(1, 4):  # a few field choices; the fuzzer takes it from there
        _write("segment", f"fields-{n}", bytes([n, 2 * n, 3 * n, n, MODE_FIELDS]))
    _write("segment", "truncate", b"\x10\x00" + bytes([MODE_TRUNCATE]))


def config_seeds() -> None:
    """The daemon templates as TOML (control 0) and JSON (control 1), and an
    environment-only config (control 2)."""
    for path in sorted((REPO / "daemon").glob("*.toml")):
        text = path.read_bytes()
        _write("config", f"{path.stem}.toml", b"\x00" + text)
        as_json = json.dumps(tomllib.loads(text.decode()), indent=1).encode()
        _write("config", f"{path.stem}.json", b"\x01" + as_json)
    env = "\n".join(
        f"{var[len('METIS_') :]}={value}"
        for var, value in {
            "METIS_CACHE_NAME": "app",
            "METIS_CACHE_CAPACITY": "64MiB",
            "METIS_CACHE_POLICY": "wtinylfu",
            "METIS_SWEEP_INTERVAL": "500ms",
            "METIS_LOG_LEVEL": "info",
        }.items()
        if var in ENV_VARS
    )
    _write("config", "environment-only", b"\x02\x00" + env.encode())
    toml_and_env = (REPO / "daemon" / "development.toml").read_bytes()
    _write("config", "toml-and-environment", b"\x00" + toml_and_env + b"\0SWEEP_BUDGET=64")
    tokens = {'"caches"', '"name"', '"capacity"', "[[caches]]", "= ", '"64MiB"', '"5m"'}
    for field in (*TOP_RULES, *CACHE_RULES):
        tokens.add(f'"{field}"')
    for section in ("sweep", "snapshot", "health"):
        tokens.add(f"[{section}]")
    for var in ENV_VARS:
        tokens.add(f"{var[len('METIS_') :]}=")
    lines = [f"{json.dumps(token)}" for token in sorted(tokens)]
    (FUZZ_DIR / "config.dict").write_text(
        "# libFuzzer dictionary of the config target; written by make_corpus.py\n"
        + "\n".join(lines)
        + "\n"
    )


def trace_seeds() -> None:
    """Small traces in every format and compression; control byte as in
    fuzz_traces.py (format index, csv flags)."""
    numbers = [1, 2, 3, 2, 1, 7, -5, 2**31 - 1]
    lirs = b"1\n2\r\n\n*\n3\n-4\n"
    int32 = b"".join(struct.pack(">i", n) for n in numbers)
    int64 = b"".join(struct.pack(">q", n * 2**32) for n in numbers)
    text = b"user:1\n  user:2  \n\nsession/\xff\n"
    csv_named = b'time,key,size\n1,a,10\n2, b ,20\n3,,30\n4,"c,d",40\n'
    csv_plain = b"a;1\nb;2\n"
    seeds = {
        "lirs": (0, lirs),
        "lirs.gz": (0, gzip.compress(lirs)),
        "int32": (1, int32),
        "int32.xz": (1, lzma.compress(int32)),
        "int64.gz": (2, gzip.compress(int64)),
        "int64.lzma": (2, lzma.compress(int64, format=lzma.FORMAT_ALONE)),
        "text.bz2": (3, bz2.compress(text)),
        "text": (3, text),
        "csv-by-name": (4 | 8 | 16, csv_named),
        "csv-by-index.gz": (4 | (1 << 5), gzip.compress(csv_named)),
        "csv-semicolon": (4 | 128, csv_plain),
        "guessed": (7, text),
    }
    for name, (control, data) in seeds.items():
        _write("traces", name, bytes([control]) + data)


def main() -> int:
    """Write every corpus."""
    snapshot_seeds()
    segment_seeds()
    config_seeds()
    trace_seeds()
    total = sum(p.stat().st_size for p in CORPUS_DIR.rglob("*") if p.is_file())
    print(f"corpora in {CORPUS_DIR}: {total} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
