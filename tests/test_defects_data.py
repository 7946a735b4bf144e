"""Regression tests for the index, hash, allocator, argument and header
defects fixed by f4ded18 (the lock and repair ones are in
test_defects_processes.py).

Each docstring says what the code before f4ded18 did. Segments are real ones
in /dev/shm; a header is damaged by writing its bytes, as any process with
write access to the segment could.
"""

from __future__ import annotations

import math
import os
import random
import struct
from array import array
from collections import Counter
from collections.abc import Callable
from operator import itemgetter
from typing import Any

import pytest
from _workers import run_in_fork, shm_path

from metis_shm import (
    Cache,
    CounterOverflow,
    InvalidArgument,
    MetisError,
    SegmentCorrupt,
    _engine,
)

# --------------------------------------------------------------------------
# 3. One chain limit everywhere
# --------------------------------------------------------------------------

CHAIN_KEYS = 4200  # more than the old MAX_CHAIN (4096)


def keys_in_one_bucket(cache: Cache, n: int) -> list[str]:
    """``n`` keys ``k<i>`` of one bucket of shard 0, in the order of ``i``.

    Hashes computed in chunks by the engine (``_locate``) with no Python
    bytecode per key; the fullest bucket is taken once it holds ``n``.
    """
    loc = cache._locate
    chunk = 1 << 20
    chunks: list[array[int]] = []
    counts: Counter[int] = Counter()
    start = 0
    while True:
        assert start < 24 * chunk, "no bucket filled up: are the hashes uniform?"
        got = array(
            "I", map(itemgetter(2), map(loc, map("k{}".format, range(start, start + chunk))))
        )
        chunks.append(got)
        counts.update(got)
        start += chunk
        bucket, count = counts.most_common(1)[0]
        if count >= n:
            break
    keys: list[str] = []
    for c, got in enumerate(chunks):
        keys.extend(f"k{c * chunk + j}" for j, b in enumerate(got) if b == bucket)
    return keys[:n]


def test_a_chain_longer_than_4096_is_kept_by_check_repair_and_keys(names: Any) -> None:
    """Defect 3. The old code had two chain bounds: MAX_CHAIN (4096 steps) in
    the optimistic lookup, keys(), check() and repair, and the shard's item
    count in locked lookups. A bucket that legitimately held more than 4096
    keys (keys chosen to collide) was reported by check() as "too long or
    loops", and a repair cut the chain at step 4096: every key stored before
    the 4096 newest was lost. Now the one limit is the most items a shard
    can hold.
    """
    cache = Cache(names(), capacity="512KiB", shards=1, policy="lru")
    try:
        keys = keys_in_one_bucket(cache, CHAIN_KEYS)
        assert len({cache._locate(k)[1:] for k in keys}) == 1
        for k in keys:  # the first stored ends up deepest in the chain
            cache.set(k, k.encode())
        st = cache.stats()
        assert st.evictions == 0 and st.items == CHAIN_KEYS

        assert cache.check() == []
        assert cache.get(keys[0]) == keys[0].encode()  # the deepest
        assert all(cache.get(k) == k.encode() for k in keys)
        assert sorted(cache.keys()) == sorted(keys)

        cache._repair_shard(0)
        assert len(cache) == CHAIN_KEYS
        assert cache.get(keys[0]) == keys[0].encode()
        assert all(cache.get(k) == k.encode() for k in keys)
        assert sorted(cache.keys()) == sorted(keys)
        assert cache.check() == []
    finally:
        cache.close()


# --------------------------------------------------------------------------
# 4. The hash
# --------------------------------------------------------------------------

# SipHash-2-4, 64-bit output, key 00 01 .. 0f, message 00 01 .. (len-1): the
# vectors of the reference implementation (vectors.h, vectors_sip64), as
# 64-bit little-endian integers.
SIPHASH24_VECTORS = [
    0x726FDB47DD0E0E31, 0x74F839C593DC67FD, 0x0D6C8009D9A94F5A, 0x85676696D7FB7E2D,
    0xCF2794E0277187B7, 0x18765564CD99A68D, 0xCBC9466E58FEE3CE, 0xAB0200F58B01D137,
    0x93F5F5799A932462, 0x9E0082DF0BA9E4B0, 0x7A5DBBC594DDB9F3, 0xF4B32F46226BADA7,
    0x751E8FBC860EE5FB, 0x14EA5627C0843D90, 0xF723CA908E7AF2EE, 0xA129CA6149BE45E5,
    0x3F2ACC7F57C29BDB, 0x699AE9F52CBE4794, 0x4BC1B3F0968DD39C, 0xBB6DC91DA77961BD,
    0xBED65CF21AA2EE98, 0xD0F2CBB02E3B67C7, 0x93536795E3A33E88, 0xA80C038CCD5CCEC8,
    0xB8AD50C6F649AF94, 0xBCE192DE8A85B8EA, 0x17D835B85BBB15F3, 0x2F2E6163076BCFAD,
    0xDE4DAAACA71DC9A5, 0xA6A2506687956571, 0xAD87A3535C49EF28, 0x32D892FAD841C342,
    0x7127512F72F27CCE, 0xA7F32346F95978E3, 0x12E0B01ABB051238, 0x15E034D40FA197AE,
    0x314DFFBE0815A3B4, 0x027990F029623981, 0xCADCD4E59EF40C4D, 0x9ABFD8766A33735C,
    0x0E3EA96B5304A7D0, 0xAD0C42D6FC585992, 0x187306C89BC215A9, 0xD4A60ABCF3792B95,
    0xF935451DE4F21DF2, 0xA9538F0419755787, 0xDB9ACDDFF56CA510, 0xD06C98CD5C0975EB,
    0xE612A3CB9ECBA951, 0xC766E62CFCADAF96, 0xEE64435A9752FE72, 0xA192D576B245165A,
    0x0A8787BF8ECB74B2, 0x81B3E73D20B49B6F, 0x7FA8220BA3B2ECEA, 0x245731C13CA42499,
    0xB78DBFAF3A8D83BD, 0xEA1AD565322A1A0B, 0x60E61C23A3795013, 0x6606D7E446282B93,
    0x6CA4ECB15C5F91E1, 0x9F626DA15C9625F3, 0xE51B38608EF25F57, 0x958A324CEB064572,
]  # fmt: skip
SIP_K0 = int.from_bytes(bytes(range(8)), "little")
SIP_K1 = int.from_bytes(bytes(range(8, 16)), "little")
STR_KEY_TWEAK = 0x9E3779B97F4A7C15  # hashing.pxd: a str key's SipHash key is k1 ^ this


def segment_sip_key(cache: Cache) -> tuple[int, int]:
    """The segment's 128-bit SipHash key, found in its header as the one
    pair of 8-byte words under which SipHash-1-3 gives what the engine
    computes (read_header leaves the key out on purpose)."""
    with open(shm_path(cache.name), "rb") as f:
        raw = f.read(_engine.HEADER_BYTES)
    probe = b"which-words-are-the-key"
    want = cache._locate(probe)[0]
    found = []
    for at in range(0, len(raw) - 15, 8):
        k0, k1 = struct.unpack_from("<QQ", raw, at)
        if _engine._siphash(1, 3, k0, k1, probe) == want:
            found.append((k0, k1))
    assert len(found) == 1, f"{len(found)} candidate keys in the header"
    return found[0]


def test_siphash_matches_the_reference_vectors_and_keys_the_engine(names: Any) -> None:
    """Defect 4a. The old hash was a multiply-rotate mix of the engine's own
    (no ``_siphash``, nothing to check against a published reference). Now
    it is SipHash: the code computes SipHash-2-4 as the paper's reference
    does for every length 0..63, and a key's hash in a cache is
    SipHash-1-3 of its bytes under the segment's 128-bit random key.
    """
    for n in (0, 1, 7, 8, 15, 16, 63):
        assert _engine._siphash(2, 4, SIP_K0, SIP_K1, bytes(range(n))) == SIPHASH24_VECTORS[n], n
    for n, expected in enumerate(SIPHASH24_VECTORS):
        assert _engine._siphash(2, 4, SIP_K0, SIP_K1, bytes(range(n))) == expected, n

    keys = []
    for _ in range(2):
        with Cache(names(), capacity="1MiB", shards=4) as cache:
            k0, k1 = segment_sip_key(cache)
            keys.append((k0, k1))
            for data in (b"", b"a", b"user:42", b"exactly8", b"x" * 63, bytes(range(200))):
                assert cache._locate(data)[0] == _engine._siphash(1, 3, k0, k1, data)
                text = data.decode("latin-1")
                if text.isascii():
                    assert cache._locate(text)[0] == _engine._siphash(
                        1, 3, k0, k1 ^ STR_KEY_TWEAK, data
                    )
    assert keys[0] != keys[1], "two segments got the same SipHash key"


M64 = (1 << 64) - 1
OLD_P1 = 0x9E3779B185EBCA87
OLD_P2 = 0xC2B2AE3D27D4EB4F
OLD_P3 = 0x165667B19E3779F9
OLD_M1 = 0xFF51AFD7ED558CCD
OLD_M2 = 0xC4CEB9FE1A85EC53


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & M64


def _old_block(w: int) -> int:
    return _rotl(w * OLD_P2 & M64, 31) * OLD_P1 & M64


def _old_block_inverse(y: int) -> int:
    x = y * pow(OLD_P1, -1, 1 << 64) & M64
    return _rotl(x, 33) * pow(OLD_P2, -1, 1 << 64) & M64


FLAG_KEY_STR = 0x1000  # layout.pxd: what the old hash got as key_str for a str key


def old_hash(data: bytes, key_str: int, seed: int) -> int:
    """``metis_hash`` of f4ded18^ (cython_src/hashing.pxd), in Python;
    ``key_str`` is 0 for a bytes key, FLAG_KEY_STR for a str key."""
    n = len(data)
    h = ((OLD_P3 + seed) & M64) ^ (n * OLD_P1 & M64) ^ (key_str << 17)
    i = 0
    while i + 8 <= n:
        h ^= _old_block(int.from_bytes(data[i : i + 8], "little"))
        h = (_rotl(h, 27) * OLD_P1 + OLD_P3) & M64
        i += 8
    if i < n:
        h ^= _old_block(int.from_bytes(data[i:], "little"))
    h ^= h >> 33
    h = h * OLD_M1 & M64
    h ^= h >> 33
    h = h * OLD_M2 & M64
    h ^= h >> 33
    return h


def length_cancelling_keys() -> list[bytes]:
    """Keys of 9..15 bytes that collided under every seed of the old hash,
    built offline: the same tail word (01 then zeros), and a first word
    whose mix cancels the ``n * P1`` the length put into the state."""
    base = _old_block(int.from_bytes(b"attacker", "little")) ^ (9 * OLD_P1 & M64)
    keys = []
    for n in range(9, 16):
        first = _old_block_inverse(base ^ (n * OLD_P1 & M64))
        keys.append(first.to_bytes(8, "little") + b"\x01" + bytes(n - 9))
    assert keys[0] == b"attacker\x01"
    return keys


def test_keys_built_to_collide_under_the_old_hash_do_not_collide(
    names: Any, rng: random.Random
) -> None:
    """Defect 4b. The old hash put the length (and the key type) into the
    state with an XOR before the first word was mixed in, and the first
    word's mix is invertible: keys whose first words cancel that XOR
    collided in all 64 bits whatever the seed, so an attacker could send a
    whole bucket's worth of them to one shard. Under SipHash they don't.
    """
    keys = length_cancelling_keys()
    assert sorted(len(k) for k in keys) == list(range(9, 16))
    for _ in range(3):  # the bug: whatever the seed, one hash for all seven
        seed = rng.getrandbits(64)
        assert len({old_hash(k, 0, seed) for k in keys}) == 1
    for _ in range(3):
        with Cache(names(), capacity="8MiB") as cache:
            assert len({cache._locate(k)[0] for k in keys}) == len(keys)
            for i, k in enumerate(keys):
                cache.set(k, i)
            assert [cache.get(k) for k in keys] == list(range(len(keys)))


def test_a_str_key_and_a_bytes_key_hash_independently(names: Any, rng: random.Random) -> None:
    """Defect 4c. The old hash told a str key from a bytes key by XORing
    ``FLAG_KEY_STR << 17`` into the initial state: a bytes key whose first
    word's mix differs from a str key's by exactly that collided with it
    under every seed. Now the key type picks one of two SipHash keys. The same bytes as
    str and as bytes are two keys with unrelated hashes, side by side.
    """
    text = "abcdefgh-tail"
    first = int.from_bytes(text[:8].encode(), "little")
    twin = _old_block_inverse(_old_block(first) ^ (FLAG_KEY_STR << 17)).to_bytes(8, "little")
    forged = twin + text[8:].encode()
    for _ in range(3):  # the bug, with the old function
        seed = rng.getrandbits(64)
        assert old_hash(text.encode(), FLAG_KEY_STR, seed) == old_hash(forged, 0, seed)

    for _ in range(3):
        with Cache(names(), capacity="8MiB") as cache:
            assert cache._locate(text)[0] != cache._locate(forged)[0]
            assert cache._locate(text)[0] != cache._locate(text.encode())[0]
            cache.set(text, "as str")
            cache.set(text.encode(), "as bytes")
            cache.set(forged, "forged")
            assert cache.get(text) == "as str"
            assert cache.get(text.encode()) == "as bytes"
            assert cache.get(forged) == "forged"
            assert sorted(cache.keys(), key=repr) == sorted([text, text.encode(), forged], key=repr)
            assert cache.check() == []


# --------------------------------------------------------------------------
# 5. The allocator evicted while a free block fit
# --------------------------------------------------------------------------

ITEM_HEADER = 56


def test_a_fitting_free_block_past_eight_probes_is_used_not_evicted_for(names: Any) -> None:
    """Defect 5. The old do_alloc probed 8 blocks of the exact power-of-two
    size class, then took a block of a larger class; with none there it
    returned 0 and the caller evicted. A fitting block ninth or later in
    its class was never found: the store evicted live items although the
    shard had room. Now the whole class is searched before any eviction.

    Layout: a free 1,904-byte block, then ten free 1,104-byte blocks freed
    after it (so they sit before it at the head of the [1024, 2048) list),
    live 64-byte items between them so nothing merges, every other byte
    used: the only fit for a 1,568-byte item is the 11th block of its list.
    """
    cache = Cache(names(), capacity="256KiB", shards=1, policy="lru", compress_threshold=None)
    try:

        def put(key: bytes, block: int) -> None:  # key: 8 bytes
            cache.set(key, b"v" * (block - ITEM_HEADER - len(key)))

        put(b"the-hole", 1904)
        for i in range(10):
            put(b"sep-%04d" % i, 64)
            put(b"mid-%04d" % i, 1104)
        put(b"sep-last", 64)
        i = 0
        while cache.stats().largest_free >= 8192 + 64:
            put(b"fill%04d" % i, 8192)
            i += 1
        tail = cache.stats().largest_free
        if tail:
            put(b"fill-end", tail)  # exactly the rest
        st = cache.stats()
        assert st.free_bytes == 0 and st.evictions == 0, st

        cache.delete(b"the-hole")
        for i in range(10):
            cache.delete(b"mid-%04d" % i)
        st = cache.stats()
        need = ITEM_HEADER + 8 + 1504
        assert st.free_bytes == 1904 + 10 * 1104
        assert need <= st.largest_free < 2048  # a fit, and no larger class
        items = len(cache)

        cache.set(b"new-item", b"n" * 1504)
        after = cache.stats()
        assert after.evictions == st.evictions, "evicted although a free block fit"
        assert cache.get(b"new-item") == b"n" * 1504
        assert len(cache) == items + 1
        assert after.free_bytes == st.free_bytes - need
        for i in range(10):
            assert cache.get(b"sep-%04d" % i) is not None
        assert cache.check() == []
    finally:
        cache.close()


# --------------------------------------------------------------------------
# 6. Arguments
# --------------------------------------------------------------------------

NAN = float("nan")


def _argument_cases(c: Cache) -> list[tuple[str, Callable[[], Any], type[MetisError]]]:
    with_ttl: list[tuple[str, Callable[[Any], Any]]] = [
        ("set present", lambda t: c.set("k", b"new", ttl=t)),
        ("set absent", lambda t: c.set("fresh", b"new", ttl=t)),
        ("add", lambda t: c.add("fresh", b"new", ttl=t)),
        ("replace", lambda t: c.replace("k", b"new", ttl=t)),
        ("touch", lambda t: c.touch("k", ttl=t)),
        ("incr", lambda t: c.incr("ctr", ttl=t)),
        ("incr absent with default", lambda t: c.incr("fresh-ctr", default=0, ttl=t)),
        ("decr", lambda t: c.decr("ctr", ttl=t)),
        ("set_many", lambda t: c.set_many({"k": b"new", "fresh": b"new"}, ttl=t)),
    ]
    cases: list[tuple[str, Callable[[], Any], type[MetisError]]] = [
        (f"{name} ttl={ttl!r}", lambda op=op, ttl=ttl: op(ttl), InvalidArgument)
        for name, op in with_ttl
        for ttl in (NAN, True, "5")
    ]
    cases += [
        ("incr 1.7", lambda: c.incr("ctr", 1.7, default=0), InvalidArgument),
        ("incr absent 1.7", lambda: c.incr("fresh-ctr", 1.7, default=0), InvalidArgument),
        ("incr default 0.5", lambda: c.incr("ctr", 1, default=0.5), InvalidArgument),
        ("incr absent default 0.5", lambda: c.incr("fresh-ctr", 1, default=0.5), InvalidArgument),
        ("incr '1'", lambda: c.incr("ctr", "1"), InvalidArgument),
        ("incr True", lambda: c.incr("ctr", True), InvalidArgument),
        ("decr 1.5", lambda: c.decr("ctr", 1.5), InvalidArgument),
        ("incr 2**63", lambda: c.incr("ctr", 2**63), CounterOverflow),
        ("incr -2**63-1", lambda: c.incr("ctr", -(2**63) - 1), CounterOverflow),
        ("decr -2**63", lambda: c.decr("ctr", -(2**63)), CounterOverflow),
        ("incr default 2**70", lambda: c.incr("fresh-ctr", 1, default=2**70), CounterOverflow),
        ("decr default 2**70", lambda: c.decr("fresh-ctr", 1, default=2**70), CounterOverflow),
        ("incr default -2**70", lambda: c.incr("fresh-ctr", default=-(2**70)), CounterOverflow),
    ]
    return cases


def _cache_state(c: Cache) -> tuple[dict[Any, Any], tuple[int, ...]]:
    st = c.stats()
    values = {k: c.get(k) for k in list(c.keys())}
    return values, (st.items, st.sets, st.deletes, st.evictions, st.expirations, st.bytes_used)


def test_bad_ttl_and_counter_arguments_raise_documented_errors_and_change_nothing(
    names: Any,
) -> None:
    """Defect 6. The old code took ttl=True as one second and ttl=NaN as
    whatever the C conversion gave ("never" on x86-64, "now" on ARM64),
    reported ttl="5" as InvalidConfig, rounded or refused float counter
    arguments with a bare TypeError, and let an out-of-range delta or
    default escape as a bare OverflowError (decr(k, -2**63) negated it
    first). Now each raises the documented MetisError before anything is
    changed.
    """
    cache = Cache(names(), capacity="4MiB", shards=2)
    try:
        cache.set("k", b"old")
        cache.set("other", {"a": 1})
        assert cache.incr("ctr", 5, default=0) == 5
        before = _cache_state(cache)
        assert math.isnan(NAN)
        for label, op, error in _argument_cases(cache):
            with pytest.raises(MetisError) as info:
                op()
            assert type(info.value) is error, (label, info.value)
            assert info.value.code == error.code, label
            assert error.code in ("INVALID_ARGUMENT", "COUNTER_OVERFLOW")
            assert _cache_state(cache) == before, f"{label} changed the cache"
        assert cache.get("fresh") is None and cache.get("fresh-ctr") is None
        assert cache.incr("ctr") == 6  # still a working counter
        assert cache.check() == []
    finally:
        cache.close()


# --------------------------------------------------------------------------
# 10. Attach trusted the header's size limits
# --------------------------------------------------------------------------


def header_offsets(raw: bytes, names_wanted: tuple[str, ...]) -> dict[str, int]:
    """Offset of each 4-byte header field, found by flipping each byte of a
    real header and seeing which field ``read_header`` reports changed."""
    base = _engine.read_header(raw)
    spans: dict[str, list[int]] = {}
    for at in range(len(raw)):
        flipped = raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1 :]
        for field, value in _engine.read_header(flipped).items():
            if field in names_wanted and value != base[field]:
                spans.setdefault(field, []).append(at)
    assert all(len(spans[f]) == 4 for f in names_wanted), spans
    return {f: spans[f][0] for f in names_wanted}


def _attach_outcome(name: str) -> tuple[str, str, Any]:
    try:
        c = Cache(name, create=False)
    except MetisError as exc:
        return type(exc).__name__, exc.code, exc.context.get("field")
    try:  # attached: the cache must at least not crash on use
        c.set("after", b"x" * 1000)
        return "attached", str(c.get("after") == b"x" * 1000), None
    except MetisError as exc:
        return "attached", exc.code, None
    finally:
        c.close()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_value_size", 2**31),
        ("max_value_size", 2**32 - 1),
        ("max_key_size", 0),
        ("max_key_size", 65537),
        ("max_key_size", 2**32 - 1),
    ],
)
def test_attach_refuses_impossible_size_limits_in_the_header(
    names: Any, field: str, value: int
) -> None:
    """Defect 10. Attach checked the layout fields of a header but took
    max_key_size and max_value_size as they were, and the read path trusts
    them as bounds (a value_len up to max_value_size is copied): a header
    written by another process could make a reader allocate and copy
    gigabytes, or accept keys the index cannot hold. Now attaching refuses
    them with SegmentCorrupt. Attached in a child: a crash is a failure, not
    the end of the test run.
    """
    name = names()
    with Cache(name, capacity="1MiB", shards=2) as c:
        c.set("before", b"v")
    fd = os.open(shm_path(name), os.O_RDWR)
    try:
        raw = os.pread(fd, _engine.HEADER_BYTES, 0)
        at = header_offsets(raw, (field,))[field]
        os.pwrite(fd, struct.pack("<I", value), at)
        assert _engine.read_header(os.pread(fd, _engine.HEADER_BYTES, 0))[field] == value
        outcome = run_in_fork(_attach_outcome, name, timeout=60)
        assert outcome == ("SegmentCorrupt", SegmentCorrupt.code, field), outcome
        os.pwrite(fd, raw, 0)  # the real header back: attaching works again
        assert run_in_fork(_attach_outcome, name, timeout=60) == ("attached", "True", None)
    finally:
        os.close(fd)
