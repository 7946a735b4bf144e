"""The engine's coherence mechanism (cython_src/coherence.pxd): stamps,
fills with tokens, lock-free invalidation, generations and the gate.

These are the pieces the far tier (metis_shm/far) stands on; the far tier's
own tests start Redis. Here every claim is about one segment: an invalidated
item is absent for every operation at once, a fill whose key was invalidated
after its token was taken never lands, and a gated segment serves nothing
without a vouch.
"""

from __future__ import annotations

import multiprocessing as mp
import time

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from metis_shm import Cache


def test_fill_lands_without_invalidation(cache: Cache) -> None:
    token = cache.fill_token("k")
    assert cache.fill("k", b"v", token) is True
    assert cache.get("k") == b"v"


def test_fill_after_invalidation_is_dropped(cache: Cache) -> None:
    token = cache.fill_token("k")
    cache.invalidate("k")  # the far tier's value changed while we fetched it
    assert cache.fill("k", b"old", token) is False
    assert cache.get("k") is None
    assert cache.fill("k", b"new", cache.fill_token("k")) is True
    assert cache.get("k") == b"new"


def test_fill_after_generation_bump_is_dropped(cache: Cache) -> None:
    token = cache.fill_token("k")
    before = cache.generation
    assert cache.invalidate_all() == before + 1
    assert cache.fill("k", b"old", token) is False
    assert "k" not in cache


def test_invalidate_kills_every_copy_at_once(cache: Cache) -> None:
    cache.set("k", b"v")
    cache.set(b"k", b"bytes twin")
    assert cache.invalidate("k") is True
    assert cache.get("k") is None
    assert cache.get(b"k") == b"bytes twin"  # str and bytes keys stay apart
    assert cache.invalidate("absent") is False


def test_invalidate_while_the_lock_is_held_still_hides_the_item(cache: Cache) -> None:
    """A stopped writer holds the shard lock: the unlink waits, the item is
    dead at once anyway."""
    cache.set("k", b"v")
    shard = cache._locate("k")[1]
    cache._test_hold_lock(shard)
    try:
        assert cache.invalidate("k") is False  # not unlinked: the lock is busy
        assert cache.get("k") is None
    finally:
        cache._test_release_lock(shard)
    assert cache.add("k", b"again") is True  # absent for writers too
    assert cache.get("k") == b"again"
    assert cache.check() == []


def test_invalidated_items_are_absent_for_every_operation(cache: Cache) -> None:
    cache.set("a", b"1")
    cache.set("n", 5)
    cache.set("t", b"x")
    for key in ("a", "n", "t"):
        # Left linked (its shard's lock is held): dead by its stamp alone.
        shard = cache._locate(key)[1]
        cache._test_hold_lock(shard)
        try:
            assert cache.invalidate(key) is False
        finally:
            cache._test_release_lock(shard)
    assert cache.replace("a", b"2") is False
    assert cache.touch("a", ttl=10) is False
    assert "a" not in list(cache.keys())
    assert cache.incr("a", 1, default=10) == 11  # starts afresh, not from a dead value
    assert cache.incr("n", 1, default=0) == 1
    assert cache.pop("t", None) is None
    assert cache.check() == []


def test_generation_bump_kills_everything_and_sweep_reclaims(cache: Cache) -> None:
    for i in range(500):
        cache.set(f"k{i}", b"x" * 100)
    cache.invalidate_all()
    assert all(cache.get(f"k{i}") is None for i in range(500))
    assert list(cache.keys()) == []
    cache.set("after", b"live")
    assert cache.get("after") == b"live"
    removed = 0
    for _ in range(10):
        removed += cache.sweep(10_000)
    assert removed == 500
    assert len(cache) == 1
    assert cache.check() == []


def test_gate_serves_only_while_vouched(cache: Cache) -> None:
    cache.set("k", b"v")
    assert cache.gate_open and not cache.gated
    cache._set_gated(True)
    try:
        assert not cache.gate_open
        assert cache.get("k") is None
        assert cache.get_ungated("k") == b"v"
        cache._vouch(time.monotonic_ns() + 2_000_000_000)
        assert cache.gate_open
        assert cache.get("k") == b"v"
        cache._vouch(time.monotonic_ns() - 20_000_000)  # the gate clock is coarse (one tick)
        assert cache.get("k") is None
        cache._vouch(0)
        assert cache.get("k") is None
    finally:
        cache._set_gated(False)
    assert cache.get("k") == b"v"


def test_gate_closes_by_itself_when_the_vouch_runs_out(cache: Cache) -> None:
    cache.set("k", b"v")
    cache._set_gated(True)
    cache._vouch(time.monotonic_ns() + 50_000_000)
    assert cache.get("k") == b"v"
    deadline = time.monotonic() + 5
    while cache.get("k") is not None:
        assert time.monotonic() < deadline, "the vouch never ran out"
        time.sleep(0.005)
    assert time.monotonic_ns() >= cache.vouch_until_ns
    cache._set_gated(False)


def test_coherence_words_are_shared_atomics(cache: Cache, cache_name: str) -> None:
    other = Cache(cache_name)
    try:
        cache._set_word(3, 41)
        assert other._add_word(3) == 42
        assert cache._word(3) == 42
        with pytest.raises(IndexError):
            cache._word(216)
    finally:
        other.close()


def _invalidate_in_child(name: str, keys: list[str]) -> None:
    c = Cache(name)
    for k in keys:
        c.invalidate(k)
    c.close()


def test_another_process_invalidates(cache: Cache, cache_name: str) -> None:
    keys = [f"k{i}" for i in range(200)]
    for k in keys:
        cache.set(k, k.encode())
    tokens = {k: cache.fill_token(k) for k in keys}
    p = mp.get_context("fork").Process(target=_invalidate_in_child, args=(cache_name, keys[:100]))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    assert all(cache.get(k) is None for k in keys[:100])
    assert all(cache.fill(k, b"stale", tokens[k]) is False for k in keys[:100])
    # The rest: untouched, unless a bucket was shared with an invalidated key
    # (a spurious miss is allowed, a stale hit never).
    for k in keys[100:]:
        assert cache.get(k) in (k.encode(), None)


def test_layout_has_stamps_since_version_3() -> None:
    from metis_shm import _engine

    assert _engine.LAYOUT >= 3  # 4 added views' pins (docs/architecture.md section 6)


KEYS = st.sampled_from([f"key{i}" for i in range(6)])


class CoherenceMachine(RuleBasedStateMachine):
    """The engine against a model: the model knows which tokens are still
    good. The engine may drop more than the model (a shared bucket counter),
    never less, and never returns a value the model does not hold."""

    def __init__(self) -> None:
        super().__init__()
        from _workers import new_name

        self.name = new_name()
        # Few buckets (a small cache) so keys share counters often.
        self.cache = Cache(self.name, capacity="64KiB", shards=1)
        self.model: dict[str, bytes] = {}
        self.tokens: list[tuple[str, int, bool]] = []  # key, token, model says still good
        self.counter = 0

    def teardown(self) -> None:
        self.cache.close()
        Cache.destroy(self.name)

    def _value(self) -> bytes:
        self.counter += 1
        return b"v%d" % self.counter

    @rule(key=KEYS)
    def set(self, key: str) -> None:
        value = self._value()
        self.cache.set(key, value)
        self.model[key] = value

    @rule(key=KEYS)
    def take_token(self, key: str) -> None:
        if len(self.tokens) < 8:
            self.tokens.append((key, self.cache.fill_token(key), True))

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def fill(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.tokens) - 1))
        key, token, good = self.tokens.pop(i)
        value = self._value()
        stored = self.cache.fill(key, value, token)
        assert stored == good, f"fill of {key}: stored {stored}, model says {good}"
        if stored:
            self.model[key] = value

    @rule(key=KEYS)
    def invalidate(self, key: str) -> None:
        every = [f"key{i}" for i in range(6)]
        before = {k: self.cache.fill_token(k) for k in every}
        self.cache.invalidate(key)
        # A key whose stamp moved shares the bucket counter: dead as well,
        # and the model says so exactly (so a lost write cannot hide as a
        # "spurious" miss).
        moved = {k for k in every if self.cache.fill_token(k) != before[k]}
        assert key in moved
        for k in moved:
            self.model.pop(k, None)
        self.tokens = [(k, t, g and k not in moved) for k, t, g in self.tokens]

    @rule()
    def invalidate_all(self) -> None:
        self.cache.invalidate_all()
        self.model.clear()
        self.tokens = [(k, t, False) for k, t, _ in self.tokens]

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        got = self.cache.get(key)
        assert got == self.model.get(key), f"{key}: {got!r}, model {self.model.get(key)!r}"

    @rule(key=KEYS)
    def add(self, key: str) -> None:
        value = self._value()
        assert self.cache.add(key, value) == (key not in self.model)
        self.model.setdefault(key, value)

    @invariant()
    def keys_are_live(self) -> None:
        assert sorted(self.cache.keys()) == sorted(self.model)


TestCoherenceMachine = CoherenceMachine.TestCase
TestCoherenceMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
