"""The API against a dict model, driven by hypothesis state machines.

The cache is big enough never to evict, so it must behave exactly like the
model.  The second machine uses two ``Cache`` objects on one name alternately.
"""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
from _workers import new_name
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from metis_shm import Cache, CounterOverflow, KeyNotFound, NotACounter

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

KEYS = st.sampled_from(["a", "b", "c", "ab", "é", "", b"a", b"b", b"\x00", b"ab"])
SCALARS = (
    st.binary(max_size=64)
    | st.text(max_size=32)
    | st.integers(INT64_MIN, INT64_MAX)
    | st.sampled_from([0, 1, -1, INT64_MAX, INT64_MIN, INT64_MAX - 1, INT64_MIN + 1])
)
ELEMENTS = st.integers(INT64_MIN, INT64_MAX) | st.text(max_size=8) | st.binary(max_size=8)
VALUES = (
    SCALARS
    | st.lists(ELEMENTS, max_size=6)
    | st.dictionaries(st.text(max_size=6), ELEMENTS, max_size=4)
)
DELTAS = st.integers(-5, 5) | st.sampled_from([INT64_MAX, INT64_MIN, 2**62])

MACHINE_SETTINGS = settings(
    max_examples=50,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def is_counter(value: Any) -> bool:
    return type(value) is int


class CacheModel(RuleBasedStateMachine):
    """One Cache object; subclasses can hand out more than one."""

    n_objects = 1

    def __init__(self) -> None:
        super().__init__()
        self.name = new_name()
        self.objects = [Cache(self.name, capacity="8MiB") for _ in range(self.n_objects)]
        self.model: dict[Any, Any] = {}

    def teardown(self) -> None:
        try:
            assert self.objects[0].check() == []
            assert self.objects[0].stats().evictions == 0
        finally:
            for c in self.objects:
                c.close()
            Cache.destroy(self.name)

    def c(self, which: int) -> Cache:
        return self.objects[which % self.n_objects]

    # -- rules ------------------------------------------------------------

    @rule(which=st.integers(0, 1), key=KEYS, value=VALUES)
    def set(self, which: int, key: Any, value: Any) -> None:
        assert self.c(which).set(key, value) is None
        self.model[key] = value

    @rule(which=st.integers(0, 1), key=KEYS)
    def get(self, which: int, key: Any) -> None:
        sentinel = object()
        got = self.c(which).get(key, sentinel)
        if key in self.model:
            assert got == self.model[key]
            assert type(got) is type(self.model[key])
        else:
            assert got is sentinel

    @rule(which=st.integers(0, 1), key=KEYS)
    def getitem(self, which: int, key: Any) -> None:
        if key in self.model:
            assert self.c(which)[key] == self.model[key]
        else:
            try:
                self.c(which)[key]
            except KeyNotFound:
                pass
            else:
                raise AssertionError(f"{key!r} should be missing")

    @rule(which=st.integers(0, 1), key=KEYS, value=VALUES)
    def add(self, which: int, key: Any, value: Any) -> None:
        stored = self.c(which).add(key, value)
        assert stored is (key not in self.model)
        if stored:
            self.model[key] = value

    @rule(which=st.integers(0, 1), key=KEYS, value=VALUES)
    def replace(self, which: int, key: Any, value: Any) -> None:
        stored = self.c(which).replace(key, value)
        assert stored is (key in self.model)
        if stored:
            self.model[key] = value

    @rule(which=st.integers(0, 1), key=KEYS)
    def delete(self, which: int, key: Any) -> None:
        assert self.c(which).delete(key) is (key in self.model)
        self.model.pop(key, None)

    @rule(which=st.integers(0, 1), key=KEYS, with_default=st.booleans())
    def pop(self, which: int, key: Any, with_default: bool) -> None:
        c = self.c(which)
        if with_default:
            sentinel = object()
            got = c.pop(key, sentinel)
            if key in self.model:
                assert got == self.model.pop(key)
            else:
                assert got is sentinel
        elif key in self.model:
            assert c.pop(key) == self.model.pop(key)
        else:
            try:
                c.pop(key)
            except KeyNotFound:
                pass
            else:
                raise AssertionError(f"pop({key!r}) should raise KeyNotFound")

    @rule(
        which=st.integers(0, 1),
        key=KEYS,
        delta=DELTAS,
        default=st.none() | st.integers(-100, 100),
    )
    def incr(self, which: int, key: Any, delta: int, default: int | None) -> None:
        c = self.c(which)
        if key in self.model:
            current = self.model[key]
            if not is_counter(current):
                expected: Any = NotACounter
            else:
                expected = current + delta
        elif default is None:
            expected = KeyNotFound
        else:
            expected = default + delta
        if isinstance(expected, int) and not INT64_MIN <= expected <= INT64_MAX:
            expected = CounterOverflow
        if isinstance(expected, type):
            try:
                c.incr(key, delta, default=default)
            except expected:
                pass
            else:
                raise AssertionError(f"incr({key!r}, {delta}) should raise {expected.__name__}")
        else:
            assert c.incr(key, delta, default=default) == expected
            self.model[key] = expected

    @rule(which=st.integers(0, 1), keys=st.lists(KEYS, max_size=6))
    def get_many(self, which: int, keys: list[Any]) -> None:
        got = self.c(which).get_many(keys)
        assert got == {k: self.model[k] for k in keys if k in self.model}

    @rule(which=st.integers(0, 1), mapping=st.dictionaries(KEYS, VALUES, max_size=5))
    def set_many(self, which: int, mapping: dict[Any, Any]) -> None:
        assert self.c(which).set_many(mapping) is None
        self.model.update(mapping)

    @rule(which=st.integers(0, 1), keys=st.lists(KEYS, max_size=6, unique=True))
    def delete_many(self, which: int, keys: list[Any]) -> None:
        expected = sum(1 for k in keys if k in self.model)
        assert self.c(which).delete_many(keys) == expected
        for k in keys:
            self.model.pop(k, None)

    @rule(which=st.integers(0, 1), key=KEYS)
    def contains(self, which: int, key: Any) -> None:
        assert (key in self.c(which)) is (key in self.model)

    @rule(which=st.integers(0, 1), prefix=st.sampled_from(["a", "", "é"]))
    def keys_with_prefix(self, which: int, prefix: str) -> None:
        got = list(self.c(which).keys(prefix=prefix))
        assert len(got) == len(set(got))
        expected = {k for k in self.model if isinstance(k, str) and k.startswith(prefix)}
        assert {k for k in got if isinstance(k, str)} == expected

    @precondition(lambda self: len(self.model) > 6)
    @rule(which=st.integers(0, 1))
    def clear(self, which: int) -> None:
        self.c(which).clear()
        self.model.clear()

    # -- invariants -------------------------------------------------------

    @invariant()
    def length(self) -> None:
        for c in self.objects:
            assert len(c) == len(self.model)

    @invariant()
    def all_keys(self) -> None:
        got = list(self.objects[-1].keys())
        assert len(got) == len(set(got))
        assert set(got) == set(self.model)


class TwoObjectsModel(CacheModel):
    """Two Cache objects on one name, used alternately: they must agree."""

    n_objects = 2


TestCacheModel = CacheModel.TestCase
TestCacheModel.settings = MACHINE_SETTINGS

TestTwoObjectsModel = TwoObjectsModel.TestCase
TestTwoObjectsModel.settings = MACHINE_SETTINGS
