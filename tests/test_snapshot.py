"""Snapshots: round trips of every value kind, TTLs, damaged files skipped
(never half-loaded), retention, atomic writes, progress, and the
``metis snapshot`` / ``metis restore`` commands."""

from __future__ import annotations

import argparse
import dataclasses
import os
import stat
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from metis_shm import Cache, SnapshotCorrupt, SnapshotNotFound
from metis_shm.cli.snapshot import register
from metis_shm.daemon.snapshots.format import (
    FORMAT_VERSION,
    MAGIC,
    SnapshotInfo,
    list_snapshots,
    read_snapshot_info,
    snapshot_name,
    verify_snapshot,
    write_snapshot,
)
from metis_shm.daemon.snapshots.restore import RestoreReport, restore, restore_latest
from metis_shm.errors import InvalidConfig


class Point(msgspec.Struct):
    x: int
    y: int


@dataclasses.dataclass
class Pickled:
    """Only pickle stores this as itself."""

    name: str
    tags: frozenset[str]


VALUES: dict[str | bytes, Any] = {
    "bytes": b"\x00\x01raw",
    b"bytes-key": b"a bytes key",
    "a": "str key a",
    b"a": "bytes key a (a different key)",
    "str": "héllo wörld",
    "bytearray": bytearray(b"mutable"),
    "counter": 41,
    "negative": -(2**63),
    "dict": {"a": [1, 2.5, None, True], "b": {"nested": "yes"}},
    "list": [1, "two", b"three"],
    "tuple": (1, 2, 3),
    "set": {1, 2, 3},
    "frozenset": frozenset({"x"}),
    "bigint": 2**63 + 5,  # past the raw 64-bit counters: MessagePack
    "float": 3.25,
    "none": None,
    "struct": Point(1, 2),  # reads back as a dict (not registered)
    "compressed-str": "abcdefgh" * 10_000,  # 80 KB: over compress_threshold
    "compressed-bytes": b"\x00" * 200_000,
    "empty": b"",
}


def contents(cache: Cache) -> dict[str | bytes, Any]:
    return {k: cache.get(k) for k in cache.keys()}  # noqa: SIM118 (no __iter__)


def raw_items(cache: Cache) -> dict[bytes, tuple[int, int, bytes]]:
    """Every item as the engine stores it: flags, expiry and value bytes."""
    out = {}
    for shard in range(cache.n_shards):
        for key, flags, expire_ns, value in cache._export_shard(shard):
            out[key + bytes([flags >> 12 & 1])] = (flags, expire_ns, value)
    return out


@pytest.fixture
def snapdir(tmp_path: Path) -> Path:
    return tmp_path / "snapshots"


# ---- round trips ---------------------------------------------------------------


def test_round_trip_every_value_kind(cache: Cache, snapdir: Path) -> None:
    cache.set_many(VALUES)
    expected = contents(cache)
    raw = raw_items(cache)
    assert any(flags & 0xF00 for flags, _, _ in raw.values()), "nothing was compressed"
    info = write_snapshot(cache, snapdir)
    assert info.items == len(VALUES)
    cache.clear()
    report = restore_latest(cache, snapdir)
    assert report.path == info.path
    assert (report.restored, report.expired, report.rejected, report.skipped) == (
        len(VALUES), 0, 0, [],
    )  # fmt: skip
    assert contents(cache) == expected
    assert raw_items(cache) == raw  # the very bytes and flags
    assert type(cache.get("bytearray")) is bytearray and type(cache.get("tuple")) is tuple
    assert cache.get("a") != cache.get(b"a")
    assert cache.incr("counter") == 42
    assert cache.decr("negative", -1) == -(2**63) + 1
    assert cache.check() == []


def test_pickle_round_trip_and_not_into_a_msgpack_cache(
    cache_name: str, cache: Cache, snapdir: Path
) -> None:
    value = Pickled("p", frozenset({"a", "b"}))
    other = f"{cache_name}-p"
    try:
        with Cache(other, capacity="4MiB", serializer="pickle") as pcache:
            pcache.set("obj", value)
            pcache.set("plain", b"bytes too")
            info = write_snapshot(pcache, snapdir)
            assert info.settings["serializer"] == "pickle"
            pcache.clear()
            assert restore(pcache, info.path).restored == 2
            assert pcache.get("obj") == value and pcache.get("plain") == b"bytes too"
        # a msgpack cache would hold the pickled item but refuse to read it: not stored
        report = restore(cache, info.path)
        assert (report.restored, report.rejected) == (1, 1)
        assert "obj" not in cache and cache.get("plain") == b"bytes too"
    finally:
        Cache.destroy(other)


def test_ttls_kept_and_expired_items_not_restored(cache: Cache, snapdir: Path) -> None:
    cache.set("gone-before", b"x", ttl=0.05)
    time.sleep(0.1)
    cache.set("short", b"s", ttl=0.3)
    cache.set("long", b"l", ttl=600)
    cache.set("forever", b"f")
    before = raw_items(cache)
    info = write_snapshot(cache, snapdir)
    assert info.items == 3  # the expired one was not written
    time.sleep(0.35)
    cache.clear()
    report = restore_latest(cache, snapdir)
    assert (report.restored, report.expired) == (2, 1)
    assert contents(cache) == {"long": b"l", "forever": b"f"}
    after = raw_items(cache)
    for key in (b"long\x01", b"forever\x01"):
        assert after[key] == before[key]  # same absolute expiry (0 = none)
    assert after[b"forever\x01"][1] == 0 and after[b"long\x01"][1] > time.time_ns()


def test_snapshot_destroy_recreate_restore_latest(cache_name: str, snapdir: Path) -> None:
    with Cache(cache_name, capacity="8MiB", policy="lru") as c:
        c.set_many({f"user:{i}": {"id": i, "name": f"n{i}"} for i in range(2000)})
        c.set_many({f"blob:{i}": os.urandom(300) for i in range(200)})
        c.set("hits", 7)
        c.set("soon", b"x", ttl=0.2)
        live = contents(c)
        info = write_snapshot(c, snapdir)
    assert Cache.destroy(cache_name)
    time.sleep(0.25)
    del live["soon"]
    with Cache(cache_name, **info.cache_options()) as c:
        assert c.policy == "lru" and c.n_shards == info.settings["n_shards"]
        report = restore_latest(c, snapdir)
        assert (report.restored, report.expired, report.skipped) == (len(live), 1, [])
        assert contents(c) == live
        assert c.incr("hits") == 8
        assert c.check() == []


def test_restore_into_an_existing_cache_keeps_other_items(cache: Cache, snapdir: Path) -> None:
    cache.set_many({"a": 1, "b": 2})
    info = write_snapshot(cache, snapdir)
    cache.set("a", 100)
    cache.set("c", 3)
    restore(cache, info.path)
    assert contents(cache) == {"a": 1, "b": 2, "c": 3}


def test_empty_cache(cache: Cache, snapdir: Path) -> None:
    info = write_snapshot(cache, snapdir)
    assert (info.items, info.bytes) == (0, 0)
    assert verify_snapshot(info.path).items == 0
    assert restore(cache, info.path).restored == 0


def test_large_values_and_many_chunks(cache_name: str, snapdir: Path) -> None:
    with Cache(cache_name, capacity="32MiB", shards=2, compress_threshold=None) as c:
        big = {f"big{i}": os.urandom(900_000) for i in range(6)}
        small = {f"s{i}": i for i in range(5000)}
        c.set_many(big)
        c.set_many(small)
        info = write_snapshot(c, snapdir)
        assert info.items == len(big) + len(small)
        assert info.file_size > 6 * 900_000
        c.clear()
        assert restore_latest(c, snapdir).restored == info.items
        assert contents(c) == {**big, **small}


def test_concurrent_writes_during_snapshot(cache: Cache, snapdir: Path) -> None:
    cache.set_many({f"k{i}": b"v" * 50 for i in range(5000)})
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            cache.set(f"w{i % 3000}", b"w" * (i % 200))
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        infos = [write_snapshot(cache, snapdir, retention=5) for _ in range(3)]
    finally:
        stop.set()
        t.join()
    for info in infos:
        assert verify_snapshot(info.path).items == info.items >= 5000
    assert cache.check() == []


# ---- the file ----------------------------------------------------------------


def test_header_and_info(cache: Cache, snapdir: Path) -> None:
    cache.set_many({"k": b"12345", b"kk": "x"})
    t0 = time.time_ns()
    info = write_snapshot(cache, snapdir)
    path = Path(info.path)
    assert path.parent == snapdir and path.name == snapshot_name(cache.name, info.created_ns)
    assert path.read_bytes()[:8] == MAGIC == b"METISNAP"
    assert struct.unpack_from("<I", path.read_bytes(), 8)[0] == FORMAT_VERSION
    settings = cache.settings
    assert info.cache == cache.name and info.format_version == FORMAT_VERSION == 1
    assert info.layout_version == settings["layout_version"]
    assert info.capacity == settings["capacity"] and info.policy == cache.policy
    assert info.items == 2 and info.bytes == len(b"k12345") + len(b"kkx")
    assert info.file_size == path.stat().st_size
    assert t0 <= info.created_ns <= time.time_ns()
    assert read_snapshot_info(path) == info == verify_snapshot(path)
    assert isinstance(msgspec.json.encode(info), bytes)


def test_list_snapshots_newest_first_and_only_that_cache(cache: Cache, snapdir: Path) -> None:
    assert list_snapshots(snapdir, cache.name) == []  # no directory yet
    paths = [Path(write_snapshot(cache, snapdir, retention=10).path) for _ in range(3)]
    for other in (f"{cache.name}.b", f"x{cache.name}", cache.name[:-1]):
        (snapdir / snapshot_name(other, time.time_ns())).write_bytes(b"other cache")
    (snapdir / f"metis.{cache.name}.notastamp.snap").write_bytes(b"junk")
    assert list_snapshots(snapdir, cache.name) == paths[::-1]
    assert len(set(paths)) == 3


def test_file_mode(cache: Cache, snapdir: Path) -> None:
    old = os.umask(0o022)
    try:
        info = write_snapshot(cache, snapdir)
        assert stat.S_IMODE(os.stat(info.path).st_mode) == 0o600
        info = write_snapshot(cache, snapdir, mode=0o640)
        assert stat.S_IMODE(os.stat(info.path).st_mode) == 0o640
    finally:
        os.umask(old)


def test_retention_deletes_only_the_oldest_of_that_cache(cache: Cache, snapdir: Path) -> None:
    snapdir.mkdir()
    foreign = [
        snapdir / snapshot_name(f"{cache.name}.b", 1),
        snapdir / snapshot_name("other", 1),
        snapdir / "notes.txt",
    ]
    for p in foreign:
        p.write_bytes(b"keep me")
    paths = []
    for i in range(5):
        cache.set("gen", i)
        paths.append(Path(write_snapshot(cache, snapdir, retention=3).path))
        assert list_snapshots(snapdir, cache.name) == paths[::-1][:3]
    assert not paths[0].exists() and not paths[1].exists()
    assert all(p.exists() for p in foreign)
    write_snapshot(cache, snapdir, retention=1)
    assert len(list_snapshots(snapdir, cache.name)) == 1
    with pytest.raises(InvalidConfig):
        write_snapshot(cache, snapdir, retention=0)


@pytest.fixture
def two_snapshots(cache: Cache, snapdir: Path) -> Iterator[tuple[Cache, Path, Path]]:
    """An older snapshot (gen 1) and a newer one (gen 2) of the cache."""
    cache.set_many({f"k{i}": f"old-{i}" for i in range(300)})
    cache.set("gen", 1)
    older = Path(write_snapshot(cache, snapdir).path)
    cache.set("gen", 2)
    cache.set("extra", b"only in the newer one")
    newer = Path(write_snapshot(cache, snapdir).path)
    cache.clear()
    yield cache, older, newer


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["magic", "version", "header", "chunk", "last-chunk",
                                   "trailer", "checksum", "end"])  # fmt: skip
def test_flipped_byte_detected_and_older_used(
    two_snapshots: tuple[Cache, Path, Path], where: str
) -> None:
    cache, older, newer = two_snapshots
    size = newer.stat().st_size
    offsets = {
        "magic": 0, "version": 8, "header": 20, "chunk": size // 2, "last-chunk": size - 80,
        "trailer": size - 45, "checksum": size - 10, "end": size - 1,
    }  # fmt: skip
    _flip(newer, offsets[where])
    with pytest.raises(SnapshotCorrupt) as info:
        verify_snapshot(newer)
    assert info.value.code == "SNAPSHOT_CORRUPT" and info.value.context["reason"]
    assert isinstance(info.value, ValueError)
    report = restore_latest(cache, older.parent)
    assert report.path == str(older)
    assert report.skipped == [(str(newer), info.value.context["reason"])]
    assert cache.get("gen") == 1 and "extra" not in cache and len(cache) == 301


@pytest.mark.parametrize("keep", [0, 5, 30, 0.5, -33, -1])
def test_truncated_file_detected_and_older_used(
    two_snapshots: tuple[Cache, Path, Path], keep: float
) -> None:
    cache, older, newer = two_snapshots
    data = newer.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    newer.write_bytes(data[:cut])
    with pytest.raises(SnapshotCorrupt, match=r"truncated|damaged|checksum"):
        verify_snapshot(newer)
    report = restore_latest(cache, older.parent)
    assert report.path == str(older) and [p for p, _ in report.skipped] == [str(newer)]
    assert cache.get("gen") == 1


def test_corrupt_snapshot_is_never_half_loaded(two_snapshots: tuple[Cache, Path, Path]) -> None:
    cache, _older, newer = two_snapshots
    _flip(newer, newer.stat().st_size - 80)  # in the last chunk: everything before is fine
    with pytest.raises(SnapshotCorrupt):
        restore(cache, newer)
    assert len(cache) == 0


def test_all_snapshots_bad_or_none(two_snapshots: tuple[Cache, Path, Path], tmp_path: Path) -> None:
    cache, older, newer = two_snapshots
    empty = restore_latest(cache, tmp_path / "nothing-here")
    assert empty == RestoreReport(
        path=None, restored=0, expired=0, skipped=[], seconds=empty.seconds
    )
    older.write_bytes(b"")
    _flip(newer, 100)
    report = restore_latest(cache, older.parent)
    assert report.path is None and [p for p, _ in report.skipped] == [str(newer), str(older)]
    assert len(cache) == 0


def test_unreadable_snapshot_is_skipped(
    two_snapshots: tuple[Cache, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, older, newer = two_snapshots
    real_open = open

    def deny(file: Any, *args: Any, **kwargs: Any) -> Any:
        if str(file) == str(newer):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", deny)
    report = restore_latest(cache, older.parent)
    assert report.path == str(older)
    assert report.skipped[0][0] == str(newer) and "Permission" in report.skipped[0][1]


def test_not_a_snapshot_and_newer_format(cache: Cache, snapdir: Path) -> None:
    with pytest.raises(SnapshotNotFound) as missing:
        restore(cache, snapdir / "missing.snap")
    assert isinstance(missing.value, FileNotFoundError)
    with pytest.raises(SnapshotNotFound):
        read_snapshot_info(snapdir / "missing.snap")
    info = write_snapshot(cache, snapdir)
    data = bytearray(Path(info.path).read_bytes())
    struct.pack_into("<I", data, 8, FORMAT_VERSION + 1)
    Path(info.path).write_bytes(bytes(data))
    with pytest.raises(SnapshotCorrupt, match="newer than this Metis reads"):
        read_snapshot_info(info.path)
    Path(info.path).write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(SnapshotCorrupt, match="not a Metis snapshot"):
        verify_snapshot(info.path)


# ---- atomic writes -------------------------------------------------------------


class Boom(Exception):
    pass


def test_crash_before_rename_leaves_old_snapshots(cache: Cache, snapdir: Path) -> None:
    cache.set_many({f"k{i}": b"v" * 100 for i in range(2000)})
    first = [Path(write_snapshot(cache, snapdir, retention=2).path) for _ in range(2)]
    before = {p.name: p.read_bytes() for p in snapdir.iterdir()}

    def explode(done: int, total: int) -> None:
        if done >= total // 2:
            raise Boom

    with pytest.raises(Boom):
        write_snapshot(cache, snapdir, retention=2, progress=explode)
    assert {p.name: p.read_bytes() for p in snapdir.iterdir()} == before  # no temp file either
    assert list_snapshots(snapdir, cache.name) == first[::-1]
    for p in first:
        verify_snapshot(p)


def test_stale_temp_files_of_dead_writers_removed(cache: Cache, snapdir: Path) -> None:
    snapdir.mkdir()
    stamp = snapshot_name(cache.name, 10**18)[: -len(".snap")]
    dead = snapdir / f".{stamp}.999999999.tmp"  # no such pid
    alive = snapdir / f".{stamp}.{os.getppid()}.tmp"
    fresh = snapdir / f".{stamp}.999999998.tmp"
    other = snapdir / f".{snapshot_name('other', 10**18)[:-5]}.999999999.tmp"
    for p in (dead, alive, fresh, other):
        p.write_bytes(b"partial")
    old = time.time() - 3600
    for p in (dead, alive, other):
        os.utime(p, (old, old))
    write_snapshot(cache, snapdir)
    assert not dead.exists()
    assert alive.exists() and fresh.exists() and other.exists()


def test_no_temp_files_left(cache: Cache, snapdir: Path) -> None:
    cache.set("a", 1)
    for _ in range(3):
        write_snapshot(cache, snapdir, retention=2)
    names = sorted(p.name for p in snapdir.iterdir())
    assert len(names) == 2 and all(n.startswith("metis.") and n.endswith(".snap") for n in names)


# ---- progress ------------------------------------------------------------------


def test_progress_about_every_percent(cache: Cache, snapdir: Path) -> None:
    n = 5000
    cache.set_many({f"k{i}": i for i in range(n)})
    calls: list[tuple[int, int]] = []
    info = write_snapshot(cache, snapdir, progress=lambda d, t: calls.append((d, t)))
    assert calls[0] == (0, n) and calls[-1] == (n, n)
    assert 50 <= len(calls) <= 110
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    cache.clear()
    calls.clear()
    restore(cache, info.path, progress=lambda d, t: calls.append((d, t)))
    assert calls[0] == (0, n) and calls[-1] == (n, n)
    assert 50 <= len(calls) <= 110
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    calls.clear()
    cache.clear()
    restore_latest(cache, snapdir, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (n, n) and len(calls) >= 50 and len(cache) == n


# ---- command line --------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="metis")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


def test_cli_snapshot_and_restore(
    cache_name: str, snapdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = str(snapdir)
    with Cache(cache_name, capacity="4MiB", policy="sieve") as c:
        c.set_many({f"k{i}": f"v{i}" for i in range(1000)})
        c.set("n", 5)
        live = contents(c)
    assert run_cli(["snapshot", cache_name, "--dir", d, "--retention", "2"]) == 0
    out, err = capsys.readouterr()
    assert "wrote" in out and "1,001 items" in out and "100%" in err
    assert run_cli(["snapshot", cache_name, "--dir", d, "-q"]) == 0
    assert capsys.readouterr().err == ""
    Cache.destroy(cache_name)

    # no cache and no --create: a usage error naming the code
    assert run_cli(["restore", cache_name, "--dir", d]) == 2
    assert "SEGMENT_NOT_FOUND" in capsys.readouterr().err
    assert run_cli(["restore", cache_name, "--dir", d, "--capacity", "8MiB"]) == 2
    assert "INVALID_CONFIG" in capsys.readouterr().err

    assert run_cli(["restore", cache_name, "--dir", d, "--create", "--capacity", "8MiB"]) == 0
    out, err = capsys.readouterr()
    assert "restored 1,001 items" in out and "100%" in err
    with Cache(cache_name, create=False) as c:
        assert contents(c) == live and c.policy == "sieve" and c.incr("n") == 6
        assert c.capacity >= 8 * 1024 * 1024 * 0.9

    # the newest one damaged: reported, the older one used
    newest, oldest = list_snapshots(snapdir, cache_name)
    _flip(newest, newest.stat().st_size // 2)
    assert run_cli(["restore", cache_name, "--dir", d, "-q"]) == 0
    out, err = capsys.readouterr()
    assert f"skipped {newest}" in err and str(oldest) in out

    # a named file that is damaged: failure, with the code
    assert run_cli(["restore", cache_name, "--file", str(newest)]) == 1
    assert "SNAPSHOT_CORRUPT" in capsys.readouterr().err
    assert run_cli(["restore", cache_name, "--file", str(snapdir / "nope.snap")]) == 2
    assert "SNAPSHOT_NOT_FOUND" in capsys.readouterr().err
    assert run_cli(["restore", cache_name, "--file", str(oldest), "-q"]) == 0
    capsys.readouterr()

    # nothing usable at all: failure, and --create leaves no empty cache behind
    _flip(oldest, 3)
    Cache.destroy(cache_name)
    assert run_cli(["restore", cache_name, "--dir", d, "--create"]) == 1
    assert "no usable snapshot" in capsys.readouterr().err
    assert not Cache.exists(cache_name)
    assert run_cli(["snapshot", cache_name, "--dir", d]) == 2
    assert "SEGMENT_NOT_FOUND" in capsys.readouterr().err


def test_cli_snapshot_bad_retention(
    cache: Cache, snapdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(["snapshot", cache.name, "--dir", str(snapdir), "--retention", "0"]) == 2
    assert "INVALID_CONFIG" in capsys.readouterr().err


def test_info_is_a_struct() -> None:
    assert issubclass(SnapshotInfo, msgspec.Struct) and issubclass(RestoreReport, msgspec.Struct)
