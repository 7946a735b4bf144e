"""Encrypted snapshots (AES-256-GCM): round trip, keys, tampering, rotation.

* the plaintext of keys and values never appears in an encrypted file (it
  does in a plain one: the control);
* no key or the wrong key: SnapshotKeyError naming the key id; never a
  silent fallback to an older snapshot;
* a flipped byte anywhere (envelope, any record), a file cut at a record
  boundary: authentication fails, the snapshot is corrupt and restore_latest
  falls back to the older file, as for a bad checksum;
* rotation: new snapshots use the new key, older files still read with the
  old key kept as a read key; the CLI and metisd do the same with key files;
* without the cryptography package: CryptoUnavailable naming
  ``pip install metis-shm[crypto]``.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _metisd import ROOT, python_env, write_config

from metis_shm import Cache, SnapshotCorrupt
from metis_shm.daemon.snapshots.crypto import (
    MAGIC_ENCRYPTED,
    RECORD_BYTES,
    TAG_BYTES,
    SnapshotKeys,
    key_id,
    parse_key,
    read_key_file,
)
from metis_shm.daemon.snapshots.format import (
    list_snapshots,
    read_snapshot_info,
    verify_snapshot,
    write_snapshot,
)
from metis_shm.daemon.snapshots.restore import restore, restore_latest
from metis_shm.errors import SnapshotKeyError

MARKER = "plaintext-marker-7f3a"
TIMEOUT = 60


def _fill(cache: Cache, n: int = 400, tag: str = "a") -> dict[str, Any]:
    items: dict[str, Any] = {}
    for i in range(n):
        items[f"{MARKER}:{tag}:{i}"] = f"{MARKER} value {tag} {i} " + "v" * (i % 50)
    items[f"{MARKER}:{tag}:bytes"] = (MARKER * 40).encode()
    items[f"{MARKER}:{tag}:obj"] = {"who": MARKER, "n": [1, 2, 3]}
    cache.set_many(items)
    return items


def _big(cache: Cache, tag: str) -> None:
    """About 1.5 MiB of incompressible values: several encryption records."""
    rnd = os.urandom(1500 * 1024)
    cache.set_many({f"big:{tag}:{i}": rnd[i * 1024 : (i + 1) * 1024] for i in range(1500)})


def _cache(name: str) -> Cache:
    # No compression: the plaintext check must not pass because of zlib.
    return Cache(name, capacity="16MiB", compress_threshold=None)


def _flip(path: str | Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def test_round_trip_and_no_plaintext(tmp_path: Path, names: Any) -> None:
    keys = SnapshotKeys(os.urandom(32))
    name = names()
    with _cache(name) as cache:
        items = _fill(cache)
        plain = write_snapshot(cache, tmp_path / "plain", keys=None)
        sealed = write_snapshot(cache, tmp_path / "sealed", keys=keys)
        cache.clear()
        assert len(cache) == 0

        # The control: a plain snapshot holds the text; the encrypted one does not.
        assert MARKER.encode() in Path(plain.path).read_bytes()
        data = Path(sealed.path).read_bytes()
        assert data.startswith(MAGIC_ENCRYPTED)
        assert MARKER.encode() not in data
        assert plain.key_id is None and sealed.key_id == keys.write_key_id
        assert os.stat(sealed.path).st_mode & 0o777 == 0o600

        info = verify_snapshot(sealed.path, keys=keys)
        assert (info.items, info.key_id, info.cache) == (len(items), keys.write_key_id, name)
        assert info.file_size == len(data)

        report = restore_latest(cache, tmp_path / "sealed", keys=keys)
        assert (report.path, report.restored, report.skipped) == (sealed.path, len(items), [])
        assert cache.get_many(list(items)) == items


def test_no_key_or_wrong_key_is_a_clear_error(tmp_path: Path, names: Any) -> None:
    right = SnapshotKeys(os.urandom(32))
    wrong = SnapshotKeys(os.urandom(32))
    name = names()
    with _cache(name) as cache:
        _fill(cache, tag="old")
        write_snapshot(cache, tmp_path, keys=None)  # an older plain snapshot
        _fill(cache, tag="new")
        sealed = write_snapshot(cache, tmp_path, keys=right)
        cache.clear()
        for keys in (None, wrong):
            with pytest.raises(SnapshotKeyError) as info:
                restore_latest(cache, tmp_path, keys=keys)
            exc = info.value
            assert exc.code == "SNAPSHOT_KEY"
            assert exc.context["key_id"] == right.write_key_id
            assert right.write_key_id in str(exc) and "key_file" in str(exc)
            if keys is None:
                assert "no key is configured" in str(exc)
            else:
                assert f"the configured keys are ['{keys.write_key_id}']" in str(exc)
            with pytest.raises(SnapshotKeyError):
                read_snapshot_info(sealed.path, keys=keys)
            with pytest.raises(SnapshotKeyError):
                restore(cache, sealed.path, keys=keys)
        assert len(cache) == 0  # never fell back to the older plain snapshot


def test_tampering_is_corruption_and_falls_back(tmp_path: Path, names: Any) -> None:
    keys = SnapshotKeys(os.urandom(32))
    name = names()
    with _cache(name) as cache:
        old_items = _fill(cache, tag="old")
        older = write_snapshot(cache, tmp_path, keys=keys, retention=10)
        _big(cache, "new")
        newer = write_snapshot(cache, tmp_path, keys=keys, retention=10)
        size = os.path.getsize(newer.path)
        assert size > 3 * RECORD_BYTES
        good = Path(newer.path).read_bytes()
        records_at = 16 + int.from_bytes(good[12:16], "little")  # prelude + envelope
        sealed = RECORD_BYTES + TAG_BYTES

        cases = {
            "envelope": 20,  # the clear, authenticated envelope
            "first record": records_at + 100,
            "middle record": size // 2,
            "last byte": size - 1,
        }
        for what, offset in cases.items():
            Path(newer.path).write_bytes(good)
            _flip(newer.path, offset)
            with pytest.raises(SnapshotCorrupt) as info:
                verify_snapshot(newer.path, keys=keys)
            reason = info.value.context["reason"]
            assert "authentication failed" in reason or "envelope" in reason, (what, reason)
            cache.clear()
            report = restore_latest(cache, tmp_path, keys=keys)
            assert report.path == older.path, what
            assert [p for p, _ in report.skipped] == [newer.path], what
            assert cache.get_many(list(old_items)) == old_items

        # Cut at a record boundary: the new last record was not sealed as the last.
        cut = records_at + 2 * sealed
        assert cut < len(good)
        Path(newer.path).write_bytes(good[:cut])
        with pytest.raises(SnapshotCorrupt, match="authentication failed"):
            verify_snapshot(newer.path, keys=keys)
        # A record appended: the old last record is no longer the last.
        Path(newer.path).write_bytes(good + good[-sealed:])
        with pytest.raises(SnapshotCorrupt, match="authentication failed"):
            verify_snapshot(newer.path, keys=keys)
        Path(newer.path).write_bytes(good)
        assert verify_snapshot(newer.path, keys=keys).items == newer.items


def test_nonces_and_file_keys_differ_per_file(tmp_path: Path, names: Any) -> None:
    """Two snapshots of the same items with the same key share no ciphertext:
    each file has its own random salt, hence its own AES key."""
    keys = SnapshotKeys(os.urandom(32))
    name = names()
    with _cache(name) as cache:
        _fill(cache)
        a = Path(write_snapshot(cache, tmp_path / "a", keys=keys).path).read_bytes()
        b = Path(write_snapshot(cache, tmp_path / "b", keys=keys).path).read_bytes()
    body = 200
    assert a[-64:] != b[-64:]
    assert a[body : body + 64] != b[body : body + 64]


def test_rotation(tmp_path: Path, names: Any) -> None:
    old_key, new_key = os.urandom(32), os.urandom(32)
    name = names()
    with _cache(name) as cache:
        old_items = _fill(cache, tag="old")
        old_file = write_snapshot(cache, tmp_path, keys=SnapshotKeys(old_key), retention=5)
        cache.clear()
        # Step 2 of the procedure: the new key writes, the old one still reads.
        rotated = SnapshotKeys(new_key, [old_key])
        assert restore_latest(cache, tmp_path, keys=rotated).path == old_file.path
        assert cache.get_many(list(old_items)) == old_items
        new_items = _fill(cache, tag="new")
        new_file = write_snapshot(cache, tmp_path, keys=rotated, retention=5)
        assert new_file.key_id == key_id(new_key) != old_file.key_id
        # The new file reads with the new key alone; the old one needs the old key.
        only_new = SnapshotKeys(new_key)
        assert verify_snapshot(new_file.path, keys=only_new).items == len(old_items) + len(
            new_items
        )
        with pytest.raises(SnapshotKeyError):
            verify_snapshot(old_file.path, keys=only_new)
        assert verify_snapshot(old_file.path, keys=rotated).key_id == key_id(old_key)


def test_key_file_formats(tmp_path: Path) -> None:
    key = os.urandom(32)
    forms = {
        "raw": key,
        "hex": key.hex().encode() + b"\n",
        "base64": base64.b64encode(key) + b"\n",
    }
    for form, data in forms.items():
        path = tmp_path / f"{form}.key"
        path.write_bytes(data)
        assert read_key_file(path) == key, form
    for bad in (b"short", b"z" * 64, key + b"!"):
        path = tmp_path / "bad.key"
        path.write_bytes(bad)
        with pytest.raises(SnapshotKeyError, match="openssl rand -hex 32"):
            read_key_file(path)
    with pytest.raises(SnapshotKeyError, match="cannot read"):
        read_key_file(tmp_path / "missing.key")
    assert parse_key(key.hex().encode(), "x") == key
    assert "SnapshotKeys(write=" in repr(SnapshotKeys(key)) and key.hex() not in repr(
        SnapshotKeys(key)
    )


def test_without_cryptography_the_error_names_the_extra(tmp_path: Path, names: Any) -> None:
    """A real interpreter in which ``import cryptography`` fails."""
    name = names()
    code = (
        "import sys, os\n"
        "sys.modules['cryptography'] = None\n"
        "from metis_shm import Cache\n"
        "from metis_shm.daemon.snapshots.format import write_snapshot\n"
        "from metis_shm.daemon.snapshots.crypto import SnapshotKeys\n"
        "from metis_shm.errors import CryptoUnavailable\n"
        f"c = Cache({name!r}, capacity='1MiB'); c.set('k', 'v')\n"
        "try:\n"
        f"    write_snapshot(c, {str(tmp_path)!r}, keys=SnapshotKeys(os.urandom(32)))\n"
        "except CryptoUnavailable as exc:\n"
        "    print(exc.code, exc)\n"
        "c.close()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=python_env(),
        cwd=ROOT,
        check=True,
    ).stdout
    assert out.startswith("CRYPTO_UNAVAILABLE"), out
    assert "pip install metis-shm[crypto]" in out
    assert list_snapshots(tmp_path, name) == []  # the temp file went away


def _metis(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metis_shm", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=python_env(env),
        cwd=ROOT,
    )


def test_cli_snapshot_and_restore_with_key_files(tmp_path: Path, names: Any) -> None:
    name = names()
    old_key, new_key = tmp_path / "old.key", tmp_path / "new.key"
    old_key.write_text(os.urandom(32).hex() + "\n")
    new_key.write_bytes(base64.b64encode(os.urandom(32)))
    snaps = tmp_path / "snaps"
    with _cache(name) as cache:
        items = _fill(cache)
        first = _metis("snapshot", name, "--dir", str(snaps), "--key-file", str(old_key), "-q")
        assert first.returncode == 0, first.stderr
        assert f"encrypted with key id {key_id(read_key_file(old_key))}" in first.stdout
        cache.clear()
        # No key: exit 2 with the key id; the cache stays empty.
        none = _metis("restore", name, "--dir", str(snaps), "-q")
        assert none.returncode == 2 and "SNAPSHOT_KEY" in none.stderr, none.stderr
        assert len(cache) == 0
        both = _metis(
            "restore", name, "--dir", str(snaps), "--key-file", str(new_key),
            "--key-file", str(old_key), "-q",
        )  # fmt: skip
        assert both.returncode == 0, both.stderr
        assert cache.get_many(list(items)) == items
        # The key in the environment works as well.
        second = _metis(
            "snapshot", name, "--dir", str(snaps), "-q",
            env={"METIS_SNAPSHOT_KEY": new_key.read_text()},
        )  # fmt: skip
        assert second.returncode == 0, second.stderr
        newest = list_snapshots(snaps, name)[0]
        assert read_snapshot_info(newest, keys=SnapshotKeys(read_key_file(new_key))).items == len(
            items
        )


def test_metisd_encrypts_and_rotates(tmp_path: Path, daemons: Any, names: Any) -> None:
    name = names()
    snaps = tmp_path / "snaps"
    old_key, new_key = tmp_path / "old.key", tmp_path / "new.key"
    old_key.write_text(os.urandom(32).hex())
    new_key.write_text(os.urandom(32).hex())
    caches = [{"name": name, "capacity": "8MiB", "compress_threshold": "none"}]

    def config(file: str, **snapshot: Any) -> Path:
        return write_config(
            tmp_path / file,
            caches,
            snapshot={"enabled": True, "path": str(snaps), "interval": 0, **snapshot},
        )

    # 1. Written with the old key at shutdown.
    d = daemons(config("old.toml", key_file=str(old_key), group="nogroup")).wait_ready()
    with Cache(name, create=False) as cache:
        items = _fill(cache)
    assert d.stop() == 0
    Cache.destroy(name)
    [first] = list_snapshots(snaps, name)
    assert first.read_bytes().startswith(MAGIC_ENCRYPTED)
    st = first.stat()
    assert (st.st_mode & 0o777, st.st_gid) == (0o640, 65534)  # snapshot.group = nogroup
    assert MARKER.encode() not in first.read_bytes()

    # 2. No key configured: metisd refuses to start (exit 2), naming the key id.
    d = daemons(config("nokey.toml"))
    assert d.wait() == 2
    assert key_id(read_key_file(old_key)) in d.log()
    Cache.destroy(name)

    # 3. Rotation: the new key writes, the old one reads the warm-up snapshot.
    rotated = config("rotated.toml", key_file=str(new_key), read_key_files=str(old_key))
    d = daemons(rotated).wait_ready()
    assert "warmed up from" in d.log()
    with Cache(name, create=False) as cache:
        assert cache.get_many(list(items)) == items
    mark = d.mark()
    d.signal(signal.SIGUSR1)
    d.wait_for(r"snapshot .* written", start=mark)
    newest = list_snapshots(snaps, name)[0]
    new_keys = SnapshotKeys(read_key_file(new_key))
    assert read_snapshot_info(newest, keys=new_keys).key_id == key_id(read_key_file(new_key))
    assert d.stop() == 0
    Cache.destroy(name)

    # 4. The old key retired: the newest snapshot (new key) still warms up.
    d = daemons(config("new.toml", key_file=str(new_key))).wait_ready()
    with Cache(name, create=False) as cache:
        assert cache.get_many(list(items)) == items
    assert d.stop() == 0


def test_random_damage_is_never_accepted(tmp_path: Path, names: Any, rng: Any) -> None:
    """Flipped bits, cuts, overwritten envelope bytes, junk appended: each is
    SnapshotCorrupt (or SnapshotKeyError when the key id itself is hit),
    never another exception, never accepted."""
    keys = SnapshotKeys(os.urandom(32))
    name = names()
    with _cache(name) as cache:
        cache.set_many({f"k{i}": rng.randbytes(300) for i in range(3000)})
        good = Path(write_snapshot(cache, tmp_path / "s", keys=keys).path).read_bytes()
    path = tmp_path / "damaged.snap"
    outcomes: dict[str, int] = {}
    for _ in range(300):
        data = bytearray(good)
        how = rng.randrange(4)
        if how == 0:
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif how == 1:
            data = data[: rng.randrange(len(data))]
        elif how == 2:
            at = rng.randrange(60)
            data[at : at + 4] = rng.randbytes(4)
        else:
            data = data[: rng.randrange(len(data))] + rng.randbytes(rng.randrange(1, 100))
        if bytes(data) == good:
            continue
        path.write_bytes(data)
        try:
            verify_snapshot(path, keys=keys)
            outcome = "accepted"
        except (SnapshotCorrupt, SnapshotKeyError) as exc:
            outcome = type(exc).__name__
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert "accepted" not in outcomes, outcomes
    assert outcomes.get("SnapshotCorrupt", 0) > 250, outcomes
