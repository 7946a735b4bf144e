"""Opening an existing name: settings kept (a warning, or strict=True raises),
and a process left on a destroyed segment can tell (``Cache.stale``)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from _workers import run_in_fork

from metis_shm import Cache, InvalidConfig


def test_other_settings_warn_and_keep_the_segments(
    names: Any, caplog: pytest.LogCaptureFixture
) -> None:
    name = names()
    with Cache(name, capacity="4MiB", policy="lru") as first:
        first.set("k", b"v")
        with (
            caplog.at_level(logging.WARNING, logger="metis_shm"),
            Cache(name, capacity="8MiB", policy="sieve") as second,
        ):
            assert second.stats().policy == "lru"
            assert second.get("k") == b"v"
        assert "policy=lru (asked sieve)" in caplog.text


def test_strict_refuses_other_settings_and_changes_nothing(names: Any) -> None:
    name = names()
    with Cache(name, capacity="4MiB", policy="lru", serializer="msgpack") as first:
        first.set("k", b"v")
        for kwargs in ({"policy": "sieve"}, {"capacity": "8MiB"}, {"serializer": "pickle"}):
            with pytest.raises(InvalidConfig) as info:
                Cache(name, strict=True, **kwargs)
            assert info.value.code == "INVALID_CONFIG"
            assert name in str(info.value) and "destroy" in str(info.value)
        # The same settings, or none, open fine under strict.
        with Cache(name, capacity="4MiB", policy="lru", strict=True) as same:
            assert same.get("k") == b"v"
        with Cache(name, create=False, strict=True) as plain:
            assert plain.get("k") == b"v"
        assert first.get("k") == b"v" and first.check() == []


def test_stale_after_destroy_and_after_recreate(names: Any) -> None:
    name = names()
    old = Cache(name, capacity="4MiB")
    try:
        assert not old.stale
        old.set("k", b"old")
        Cache.destroy(name)
        assert old.stale  # destroyed: nobody else sees this copy
        assert old.get("k") == b"old"  # and it still works
        with Cache(name, capacity="4MiB") as new:
            assert not new.stale
            new.set("k", b"new")
            assert old.stale  # recreated: another segment behind the name
            assert old.get("k") == b"old"
    finally:
        old.close()


def test_stale_is_seen_from_another_process(names: Any) -> None:
    name = names()
    with Cache(name, capacity="4MiB") as c:

        def child() -> tuple[bool, bool]:
            before = c.stale
            Cache.destroy(name)
            return before, c.stale

        assert run_in_fork(child) == (False, True)
        assert c.stale
