"""Every method of the table in docs/api.md, one process unless said otherwise."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import stat
import subprocess
import sys
import textwrap

import pytest
from _workers import new_name, shm_path, spawned_child

import metis_shm
from metis_shm import Cache, CacheClosed, CounterOverflow, KeyNotFound, NotACounter

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


def assert_capacity(reported: int, asked: int) -> None:
    """stats().capacity is the room for items: the bytes asked for, less a little alignment."""
    assert 0.99 * asked <= reported <= asked, (reported, asked)


# --------------------------------------------------------------------------
# get / set / add / replace / delete / pop / touch
# --------------------------------------------------------------------------


def test_get_missing_returns_default(cache: Cache) -> None:
    assert cache.get("nope") is None
    assert cache.get("nope", 42) == 42
    sentinel = object()
    assert cache.get(b"nope", sentinel) is sentinel


def test_set_get(cache: Cache) -> None:
    assert cache.set("k", b"v") is None
    assert cache.get("k") == b"v"
    cache.set("k", b"w")
    assert cache.get("k") == b"w"


def test_str_and_bytes_keys_are_different(cache: Cache) -> None:
    cache.set("a", b"str key")
    cache.set(b"a", b"bytes key")
    assert cache.get("a") == b"str key"
    assert cache.get(b"a") == b"bytes key"
    assert len(cache) == 2
    assert cache.delete("a") is True
    assert cache.get(b"a") == b"bytes key"
    assert "a" not in cache


def test_unicode_key(cache: Cache) -> None:
    cache.set("ключ-é-🔑", "значение")
    assert cache.get("ключ-é-🔑") == "значение"
    assert cache.get("ключ-é-🔑".encode()) is None


def test_empty_key(cache: Cache) -> None:
    cache.set("", b"empty str key")
    cache.set(b"", b"empty bytes key")
    assert cache.get("") == b"empty str key"
    assert cache.get(b"") == b"empty bytes key"


def test_add(cache: Cache) -> None:
    assert cache.add("k", b"first") is True
    assert cache.add("k", b"second") is False
    assert cache.get("k") == b"first"


def test_replace(cache: Cache) -> None:
    assert cache.replace("k", b"v") is False
    assert "k" not in cache
    cache.set("k", b"v")
    assert cache.replace("k", b"w") is True
    assert cache.get("k") == b"w"


def test_delete(cache: Cache) -> None:
    assert cache.delete("k") is False
    cache.set("k", b"v")
    assert cache.delete("k") is True
    assert cache.get("k") is None
    assert cache.delete("k") is False


def test_pop(cache: Cache) -> None:
    cache.set("k", [1, 2, 3])
    assert cache.pop("k") == [1, 2, 3]
    assert "k" not in cache
    assert cache.pop("k", "dflt") == "dflt"
    assert cache.pop("k", None) is None
    with pytest.raises(KeyNotFound) as info:
        cache.pop("k")
    assert isinstance(info.value, KeyError)


def test_touch(cache: Cache) -> None:
    assert cache.touch("k", ttl=10) is False
    assert "k" not in cache
    cache.set("k", b"v")
    assert cache.touch("k", ttl=10) is True
    assert cache.touch("k") is True
    assert cache.get("k") == b"v"


# --------------------------------------------------------------------------
# incr / decr
# --------------------------------------------------------------------------


def test_incr_decr(cache: Cache) -> None:
    cache.set("n", 10)
    assert cache.incr("n") == 11
    assert cache.incr("n", 5) == 16
    assert cache.decr("n") == 15
    assert cache.decr("n", 20) == -5
    assert cache.incr("n", -5) == -10
    assert cache.get("n") == -10
    assert type(cache.get("n")) is int


def test_incr_missing(cache: Cache) -> None:
    with pytest.raises(KeyNotFound):
        cache.incr("n")
    with pytest.raises(KeyNotFound):
        cache.decr("n")
    assert "n" not in cache
    assert cache.incr("n", 3, default=100) == 103
    assert cache.get("n") == 103
    assert cache.decr("m", 3, default=100) == 97
    assert cache.get("m") == 97


def test_incr_not_a_counter(cache: Cache) -> None:
    for value in ("12", b"12", [12], 1.5, True):
        cache.set("v", value)
        with pytest.raises(NotACounter):
            cache.incr("v")
        assert cache.get("v") == value


def test_incr_overflow(cache: Cache) -> None:
    cache.set("n", INT64_MAX)
    with pytest.raises(CounterOverflow) as info:
        cache.incr("n")
    assert isinstance(info.value, OverflowError)
    assert cache.get("n") == INT64_MAX
    cache.set("n", INT64_MIN)
    with pytest.raises(CounterOverflow):
        cache.decr("n")
    assert cache.get("n") == INT64_MIN
    assert cache.incr("n", INT64_MAX) == -1


# --------------------------------------------------------------------------
# bulk calls
# --------------------------------------------------------------------------


def test_get_many(cache: Cache) -> None:
    cache.set("a", 1)
    cache.set(b"b", "two")
    got = cache.get_many(["a", b"b", "c", b"a"])
    assert got == {"a": 1, b"b": "two"}
    assert cache.get_many([]) == {}
    assert cache.get_many(iter(["a"])) == {"a": 1}


def test_set_many(cache: Cache) -> None:
    assert cache.set_many({"a": 1, b"b": b"2", "c": [3]}) is None
    assert cache.get("a") == 1
    assert cache.get(b"b") == b"2"
    assert cache.get("c") == [3]
    cache.set_many({})
    assert len(cache) == 3


def test_delete_many(cache: Cache) -> None:
    cache.set_many({"a": 1, "b": 2, "c": 3})
    assert cache.delete_many(["a", "b", "zz"]) == 2
    assert cache.delete_many(["a"]) == 0
    assert cache.delete_many([]) == 0
    assert list(cache.keys()) == ["c"]


# --------------------------------------------------------------------------
# mapping protocol, len, keys, clear
# --------------------------------------------------------------------------


def test_mapping_protocol(cache: Cache) -> None:
    assert "k" not in cache
    cache["k"] = b"v"
    assert "k" in cache
    assert b"k" not in cache
    assert cache["k"] == b"v"
    del cache["k"]
    assert "k" not in cache
    with pytest.raises(KeyNotFound) as info:
        cache["k"]
    assert isinstance(info.value, KeyError)
    with pytest.raises(KeyNotFound):
        del cache["k"]


def test_setitem_uses_default_ttl(cache_name: str) -> None:
    with Cache(cache_name, capacity="8MiB", default_ttl=60) as c:
        c["k"] = b"v"
        assert c["k"] == b"v"


def test_len(cache: Cache) -> None:
    assert len(cache) == 0
    for i in range(100):
        cache.set(f"k{i}", i)
    assert len(cache) == 100
    cache.set("k0", "again")
    assert len(cache) == 100
    cache.delete("k1")
    assert len(cache) == 99


def test_keys(cache: Cache) -> None:
    wanted = {"user:1", "user:2", "item:1", b"raw", b"\x00\xff"}
    for k in wanted:
        cache.set(k, b"x")
    got = list(cache.keys())
    assert len(got) == len(wanted)
    assert set(got) == wanted
    assert {type(k) for k in got} == {str, bytes}
    assert sorted(cache.keys(prefix="user:")) == ["user:1", "user:2"]
    assert list(cache.keys(prefix="none:")) == []
    assert sorted(cache.keys("item")) == ["item:1"]


def test_keys_during_writes(cache: Cache) -> None:
    """A key present for the whole iteration is yielded exactly once."""
    stable = {f"stable-{i}" for i in range(300)}
    for k in stable:
        cache.set(k, b"s")
    for i in range(300):
        cache.set(f"churn-{i}", b"c")
    seen: list[str] = []
    for n, k in enumerate(cache.keys()):
        seen.append(k)
        cache.set(f"new-{n}", b"n" * (n % 50))
        cache.delete(f"churn-{n}")
        cache.set(f"stable-{n % 300}", b"rewritten")
    stable_seen = [k for k in seen if k in stable]
    assert sorted(stable_seen) == sorted(stable)


def test_clear(cache: Cache) -> None:
    for i in range(500):
        cache.set(f"k{i}", i)
    assert cache.clear() is None
    assert len(cache) == 0
    assert list(cache.keys()) == []
    assert cache.get("k1") is None
    assert cache.stats().items == 0
    cache.set("k1", 1)
    assert cache.get("k1") == 1
    assert cache.check() == []


# --------------------------------------------------------------------------
# stats, check
# --------------------------------------------------------------------------


def test_stats_counts(cache: Cache) -> None:
    s0 = cache.stats()
    assert (s0.hits, s0.misses, s0.sets, s0.deletes, s0.items) == (0, 0, 0, 0, 0)
    cache.set("a", b"1")
    cache.set("b", b"2")
    cache.set("c", b"3")
    assert cache.get("a") == b"1"
    assert cache.get("b") == b"2"
    assert cache.get("zz") is None
    assert cache.delete("c") is True
    s = cache.stats()
    assert s.sets == 3
    assert s.hits == 2
    assert s.misses == 1
    assert s.deletes == 1
    assert s.items == 2
    assert s.evictions == 0
    assert 0 < s.bytes_used <= s.capacity
    assert s.free_bytes <= s.capacity
    assert 0.0 <= s.fragmentation <= 1.0


def test_stats_fields(cache: Cache, cache_name: str) -> None:
    cache.set("k", b"v" * 100)
    s = cache.stats()
    assert s.name == cache_name
    assert s.policy == "wtinylfu"  # the default
    assert s.n_shards >= 1
    assert s.n_shards & (s.n_shards - 1) == 0
    assert len(s.shards) == s.n_shards
    assert_capacity(s.capacity, 8 << 20)
    assert s.segment_size >= s.capacity
    assert os.stat(shm_path(cache_name)).st_size == s.segment_size
    fields = [
        "hits",
        "misses",
        "sets",
        "deletes",
        "evictions",
        "expirations",
        "items",
        "bytes_used",
        "capacity",
        "free_bytes",
        "largest_free",
        "fragmentation",
        "lock_waits",
        "read_retries",
        "lock_recoveries",
    ]
    for f in fields:
        total = getattr(s, f)
        assert isinstance(total, float if f == "fragmentation" else int), f
        if f not in ("fragmentation", "largest_free"):
            assert total == sum(getattr(sh, f) for sh in s.shards), f
    d = s.to_dict()
    assert d["items"] == 1
    assert d["name"] == cache_name
    import msgspec

    assert msgspec.structs.asdict(s)["items"] == 1


def test_stats_shards_param(cache_name: str) -> None:
    with Cache(cache_name, capacity="8MiB", shards=4, policy="lru") as c:
        s = c.stats()
        assert s.n_shards == 4
        assert s.policy == "lru"
        for i in range(64):
            c.set(f"k{i}", i)
        per_shard = [sh.sets for sh in c.stats().shards]
        assert sum(per_shard) == 64
        assert sum(1 for n in per_shard if n > 0) >= 2  # the hash spreads keys


def test_check_clean(cache: Cache) -> None:
    assert cache.check() == []
    for i in range(1000):
        cache.set(f"k{i}", os.urandom(i % 300))
    for i in range(0, 1000, 3):
        cache.delete(f"k{i}")
    assert cache.check() == []


# --------------------------------------------------------------------------
# close, context manager, destroy, exists
# --------------------------------------------------------------------------


def test_close(cache_name: str) -> None:
    c = Cache(cache_name, capacity="8MiB")
    c.set("k", b"v")
    assert c.close() is None
    with pytest.raises(CacheClosed) as info:
        c.get("k")
    assert isinstance(info.value, ValueError)
    with pytest.raises(CacheClosed):
        c.set("k", b"v")
    with pytest.raises(CacheClosed):
        len(c)
    assert Cache.exists(cache_name)
    with Cache(cache_name) as again:
        assert again.get("k") == b"v"


def test_context_manager(cache_name: str) -> None:
    with Cache(cache_name, capacity="8MiB") as c:
        assert isinstance(c, Cache)
        c.set("k", b"v")
    with pytest.raises(CacheClosed):
        c.get("k")
    assert Cache.exists(cache_name)


def test_destroy_and_exists(cache_name: str) -> None:
    assert Cache.exists(cache_name) is False
    assert Cache.destroy(cache_name) is False
    c = Cache(cache_name, capacity="8MiB")
    try:
        assert Cache.exists(cache_name) is True
        assert os.path.exists(shm_path(cache_name))
        c.set("k", b"v")
        assert Cache.destroy(cache_name) is True
        assert Cache.exists(cache_name) is False
        assert not os.path.exists(shm_path(cache_name))
        # an attached process keeps its mapping
        assert c.get("k") == b"v"
        c.set("k2", b"v2")
        assert c.get("k2") == b"v2"
        # a new open makes a new, empty segment
        with Cache(cache_name, capacity="8MiB") as fresh:
            assert fresh.get("k") is None
            assert len(fresh) == 0
    finally:
        c.close()


def test_segment_mode(cache_name: str) -> None:
    with Cache(cache_name, capacity="8MiB"):
        assert stat.S_IMODE(os.stat(shm_path(cache_name)).st_mode) == 0o600
    Cache.destroy(cache_name)
    with Cache(cache_name, capacity="8MiB", mode=0o640):
        assert stat.S_IMODE(os.stat(shm_path(cache_name)).st_mode) == 0o640


# --------------------------------------------------------------------------
# sharing: two objects, two processes
# --------------------------------------------------------------------------


def test_two_objects_same_name(cache: Cache, cache_name: str) -> None:
    with Cache(cache_name) as other:
        cache.set("a", b"from first")
        assert other.get("a") == b"from first"
        other.set("b", [1, "two"])
        assert cache.get("b") == [1, "two"]
        other.delete("a")
        assert "a" not in cache
        assert len(cache) == len(other) == 1
        assert cache.incr("n", default=0) == 1
        assert other.incr("n") == 2


def test_attach_settings_win(cache_name: str, caplog: pytest.LogCaptureFixture) -> None:
    with Cache(cache_name, capacity="8MiB", shards=2, policy="sieve") as first:
        first.set("k", b"v")
        with (
            caplog.at_level(logging.WARNING, logger="metis_shm"),
            Cache(cache_name, capacity="16MiB", shards=8, policy="lru") as second,
        ):
            s = second.stats()
            assert_capacity(s.capacity, 8 << 20)
            assert s.n_shards == 2
            assert s.policy == "sieve"
            assert second.get("k") == b"v"
        warned = [r for r in caplog.records if r.name.startswith("metis_shm")]
        assert warned and all(r.levelno >= logging.WARNING for r in warned)


def test_create_false_attaches(cache: Cache, cache_name: str) -> None:
    cache.set("k", b"v")
    with Cache(cache_name, create=False) as c:
        assert c.get("k") == b"v"


_CHILD = textwrap.dedent(
    """
    import json, sys
    from metis_shm import Cache
    with Cache(sys.argv[1], create=False) as c:
        out = {"str": c.get("str"), "list": c.get("list"), "n": c.incr("n"),
               "bytes": c.get(b"bytes").hex(), "len": len(c)}
        c.set("from_child", {"argv": sys.argv[1:]})
    print(json.dumps(out))
    """
)


def test_second_process_subprocess(cache: Cache, cache_name: str) -> None:
    cache.set("str", "hello")
    cache.set("list", [1, 2, {"x": "y"}])
    cache.set(b"bytes", b"\x00\x01\xff")
    cache.set("n", 41)
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, cache_name],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out == {"str": "hello", "list": [1, 2, {"x": "y"}], "n": 42, "bytes": "0001ff", "len": 4}
    assert cache.get("n") == 42
    assert cache.get("from_child") == {"argv": [cache_name]}
    assert len(cache) == 5


def test_second_process_spawn(cache: Cache, cache_name: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    cache.set("from_parent", ("tuple", 1))
    cache.set_many({"a": 1, "b": 2})
    parent, child = ctx.Pipe()
    p = ctx.Process(target=spawned_child, args=(cache_name, child))
    p.start()
    assert parent.poll(60), "spawned child sent nothing"
    got = parent.recv()
    p.join(30)
    assert p.exitcode == 0
    assert got == (("tuple", 1), {"a": 1, "b": 2})
    assert cache.get("from_spawn") == b"spawned"


# --------------------------------------------------------------------------
# bounds: eviction by bytes and by entries
# --------------------------------------------------------------------------


def test_eviction_by_bytes(cache_name: str) -> None:
    capacity = 1 << 20
    n = 5000
    with Cache(cache_name, capacity="1MiB") as c:
        for i in range(n):
            c.set(f"k{i}", os.urandom(1000))
        s = c.stats()
        assert len(c) < n
        assert s.items == len(c)
        assert s.evictions > 0
        assert_capacity(s.capacity, capacity)
        assert s.bytes_used <= capacity
        assert c.check() == []
        # the newest item survives
        assert c.get(f"k{n - 1}") is not None
        # the cache still works after eviction
        c.set("after", b"x" * 5000)
        assert c.get("after") == b"x" * 5000


@pytest.mark.parametrize("policy", ["wtinylfu", "sieve", "lru", "arc", "2q", "s3fifo"])
def test_eviction_policies(cache_name: str, policy: str) -> None:
    with Cache(cache_name, capacity="1MiB", policy=policy) as c:
        for i in range(3000):
            c.set(i.to_bytes(4, "big"), os.urandom(900))
        assert c.stats().evictions > 0
        assert c.stats().bytes_used <= 1 << 20
        assert c.check() == []


def test_max_entries(cache_name: str) -> None:
    with Cache(cache_name, capacity="8MiB", max_entries=100) as c:
        for i in range(500):
            c.set(f"k{i}", i)
        assert 50 <= len(c) <= 100
        s = c.stats()
        assert s.items == len(c)
        assert s.evictions >= 400
        assert c.check() == []


def test_metis_shm_exports() -> None:
    for name in ("Cache", "Stats", "ShardStats", "register_type", "MetisError", "errors"):
        assert hasattr(metis_shm, name), name


def test_names_are_independent(cache: Cache) -> None:
    other_name = new_name()
    try:
        with Cache(other_name, capacity="8MiB") as other:
            cache.set("k", b"one")
            other.set("k", b"two")
            assert cache.get("k") == b"one"
            assert other.get("k") == b"two"
    finally:
        Cache.destroy(other_name)
