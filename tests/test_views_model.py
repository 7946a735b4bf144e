"""Views against a dict model, driven by a hypothesis state machine.

Writes go to the cache and the model; views open and close at random. At
every step each open view shows exactly the bytes it showed when it was
opened, the cache agrees with the model, and the held-back accounting adds
up: what is held is what open views pin of keys that moved on.
"""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
from _workers import new_name
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from metis_shm import Cache

KEYS = st.sampled_from(["a", "b", "c", b"a", b"d"])
VALUES = st.binary(max_size=3000) | st.text(max_size=40) | st.integers(-(2**63), 2**63 - 1)


def stored(value: Any) -> bytes:
    """The bytes a view of `value` shows."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return int(value).to_bytes(8, "little", signed=True)


class ViewsModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.name = new_name()
        self.cache = Cache(self.name, "8MiB", compress_threshold=None)
        self.model: dict[Any, Any] = {}
        self.views: list[tuple[Any, Any, memoryview, bytes]] = []

    def teardown(self) -> None:
        try:
            for _key, ctx, _mv, _first in self.views:
                ctx.__exit__(None, None, None)
            st_ = self.cache.stats()
            assert (st_.pins, st_.held_blocks, st_.held_bytes) == (0, 0, 0)
            assert self.cache.check() == []
        finally:
            self.cache.close()
            Cache.destroy(self.name)

    @rule(key=KEYS, value=VALUES)
    def set(self, key: Any, value: Any) -> None:
        self.cache.set(key, value)
        self.model[key] = value

    @rule(key=KEYS)
    def delete(self, key: Any) -> None:
        assert self.cache.delete(key) is (key in self.model)
        self.model.pop(key, None)

    @rule()
    def clear(self) -> None:
        self.cache.clear()
        self.model.clear()

    @rule(key=KEYS)
    def invalidate(self, key: Any) -> None:
        self.cache.invalidate(key)
        self.model.pop(key, None)

    @rule(key=KEYS)
    def open_view(self, key: Any) -> None:
        ctx = self.cache.view(key)
        mv = ctx.__enter__()
        if key not in self.model:
            assert mv is None
            ctx.__exit__(None, None, None)
            return
        assert bytes(mv) == stored(self.model[key])
        self.views.append((key, ctx, mv, bytes(mv)))

    @precondition(lambda self: self.views)
    @rule(i=st.integers(0, 100))
    def close_view(self, i: int) -> None:
        _key, ctx, mv, first = self.views.pop(i % len(self.views))
        assert bytes(mv) == first
        ctx.__exit__(None, None, None)
        try:
            mv[0:0]
        except ValueError:
            pass
        else:
            raise AssertionError("a closed view still reads")

    @rule(key=KEYS)
    def get(self, key: Any) -> None:
        assert self.cache.get(key) == self.model.get(key)

    @invariant()
    def views_do_not_move(self) -> None:
        for _key, _ctx, mv, first in self.views:
            assert bytes(mv) == first

    @invariant()
    def held_is_what_views_keep_of_moved_keys(self) -> None:
        st_ = self.cache.stats()
        assert st_.pins == len(self.views)
        # A view whose key still holds the same item pins a live block; any
        # other view's block is held back (several views may share one).
        assert st_.held_blocks <= len(self.views)
        if not self.views:
            assert st_.held_blocks == 0


ViewsModel.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestViewsModel = ViewsModel.TestCase
