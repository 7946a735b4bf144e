"""get_many: the batched read (windows of prefetched lookups, engine_read.pxi).

It must answer exactly as a get per key would, whatever the batch looks
like: any length around the window's 16, duplicates, str and bytes keys,
keys spread over every shard, iterables that are not lists, bad keys, and
values of every kind and size. Concurrent writers are the torture family's
(tests/torture), whose readers call get_many with batches across windows.
"""

from __future__ import annotations

import random

import pytest

from metis_shm import Cache, InvalidKeyType

WINDOW = 16


def _expected(cache: Cache, keys: list) -> dict:
    out = {}
    for k in keys:
        v = cache.get(k, _absent)
        if v is not _absent:
            out[k] = v
    return out


_absent = object()


@pytest.mark.parametrize("n", [0, 1, WINDOW - 1, WINDOW, WINDOW + 1, 2 * WINDOW, 3 * WINDOW + 5])
def test_every_batch_length_around_the_window(cache: Cache, n: int) -> None:
    for i in range(0, 200, 2):
        cache.set(b"k%d" % i, i)
    keys = [b"k%d" % i for i in range(n)]
    got = cache.get_many(keys)
    assert got == {b"k%d" % i: i for i in range(0, n, 2)}
    assert got == _expected(cache, keys)


def test_mixed_kinds_sizes_and_duplicates(cache: Cache, rng: random.Random) -> None:
    keys: list = []
    for i in range(300):
        key: str | bytes = f"s{i}" if i % 3 else b"b%d" % i
        keys.append(key)
        kind = i % 5
        if kind == 0:
            value: object = rng.randbytes(rng.choice([0, 1, 7, 100, 5000, 70_000]))
        elif kind == 1:
            value = "é" * rng.randint(0, 300)
        elif kind == 2:
            value = rng.randint(-(2**63), 2**63 - 1)
        elif kind == 3:
            value = {"i": i, "l": [1.5, None, "x"]}
        else:
            continue  # absent
        cache.set(key, value)
    for _ in range(50):
        batch = [rng.choice(keys) for _ in range(rng.randint(0, 70))]
        batch += batch[: rng.randint(0, len(batch))]  # duplicates
        rng.shuffle(batch)
        assert cache.get_many(batch) == _expected(cache, batch)


def test_str_and_bytes_of_the_same_text_are_different_keys(cache: Cache) -> None:
    cache.set("a", 1)
    cache.set(b"a", 2)
    assert cache.get_many(["a", b"a", "b"] * 10) == {"a": 1, b"a": 2}


def test_keys_over_every_shard(cache_name: str) -> None:
    with Cache(cache_name, "16MiB", shards=8) as c:
        for i in range(2000):
            c.set(b"x%d" % i, i)
        keys = [b"x%d" % i for i in range(0, 4000, 3)]
        assert c.get_many(keys) == {b"x%d" % i: i for i in range(0, 2000, 3)}


def test_any_iterable(cache: Cache) -> None:
    for i in range(40):
        cache.set(f"g{i}", i)
    want = {f"g{i}": i for i in range(40)}
    assert cache.get_many(f"g{i}" for i in range(40)) == want
    assert cache.get_many(tuple(want)) == want
    assert cache.get_many(set(want)) == want
    assert cache.get_many(iter(list(want))) == want
    assert cache.get_many({k: None for k in want}) == want


def test_expired_keys_are_left_out(cache: Cache) -> None:
    for i in range(40):
        cache.set(b"t%d" % i, i, ttl=0.001 if i % 2 else None)
    import time

    time.sleep(0.01)
    assert cache.get_many([b"t%d" % i for i in range(40)]) == {
        b"t%d" % i: i for i in range(0, 40, 2)
    }


@pytest.mark.parametrize("where", [0, WINDOW - 1, WINDOW, WINDOW + 3])
def test_a_bad_key_anywhere_raises(cache: Cache, where: int) -> None:
    keys: list = [b"k%d" % i for i in range(WINDOW + 5)]
    keys.insert(where, 42)
    with pytest.raises(InvalidKeyType):
        cache.get_many(keys)
    with pytest.raises(InvalidKeyType):
        cache.get_many([b"k"] * where + [None])


def test_keys_made_during_the_call_stay_alive(cache: Cache) -> None:
    # A generator's keys exist only in the list get_many makes of them: the
    # engine reads their bytes windows after they were produced.
    for i in range(100):
        cache.set(f"gen-{i}-{'x' * 40}", i)
    got = cache.get_many(f"gen-{i}-{'x' * 40}" for i in range(100))
    assert got == {f"gen-{i}-{'x' * 40}": i for i in range(100)}
