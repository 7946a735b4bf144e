"""Default tracking and the connection registry, with real Redis and real metisd.

Redis files what a connection read under that connection's id, and once it
closes, a write of those keys is invalidated to no one (test_tracker.py
test_redis_delivery_as_found). A worker whose connection closes (a process
that exits, redis-py dropping a connection) must not leave near entries
behind that nobody will invalidate: workers register the id of the
connection each fill came through, and metisd's tracker polls CLIENT LIST
for them and bumps the generation when one is gone (tracker.py, 4-6).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _machines import Machine, start_machine, wait_until
from _workers import new_name

from metis_shm import Cache
from metis_shm.far import words
from metis_shm.far.near import NearCache, _lease_key
from metis_shm.far.target import SegmentTarget
from metis_shm.far.tracker import Tracker

pytestmark = pytest.mark.integration

BOUND = 0.5  # staleness_bound of these tests' caches
FAR = {"tracking": "default", "staleness_bound": BOUND, "ping_interval": 0.05}


@pytest.fixture
def made() -> Iterator[list[Machine]]:
    out: list[Machine] = []
    yield out
    for m in out:
        m.cache.close()
        Cache.destroy(m.name)


def machines(tmp: Path, redis: Any, daemons: Any, made: list[Machine], **far: Any) -> list[Machine]:
    prefix = f"d{os.getpid()}:"
    for _ in range(2):
        settings = {"url": redis.url, "prefix": prefix, **FAR, **far}
        made.append(start_machine(tmp, new_name(), settings, daemons))
    return made


def _worker(name: str, far: dict[str, Any], keys: list[str], out: Any) -> None:
    """A worker of the machine: opens the cache, reads (fills), exits without
    closing anything, as a recycled web worker does: its sockets close with it."""
    cache = Cache(name, far=far)
    got = []
    for k in keys:
        # A fill may be refused (a registry poll began during the fetch,
        # likelier on a new connection): read again, as the next request would.
        deadline = time.monotonic() + 5
        while True:
            value, near = cache.get(k), cache.peek(k)
            marker = cache.peek(_lease_key(k))  # an absent key's marker
            filled = near is not None if value is not None else marker is not None
            if filled or time.monotonic() > deadline:
                break
        got.append((value, near, filled))
    out.send(got)
    os._exit(0)


def in_a_worker(m: Machine, keys: list[str]) -> list[tuple[Any, Any, bool]]:
    """What a forked worker of ``m`` read of ``keys``, what it then found near
    and whether it filled (a value or an absent marker), once it exited."""
    ctx = mp.get_context("fork")
    ours, theirs = ctx.Pipe()
    p = ctx.Process(target=_worker, args=(m.name, m.far, keys, theirs))
    p.start()
    assert ours.poll(15), "the worker did not answer"
    got: list[tuple[Any, Any, bool]] = ours.recv()
    p.join(15)
    assert p.exitcode == 0
    return got


def sees(m: Machine, key: str, want: Any, what: str) -> float:
    """Seconds until every read of ``key`` through ``m`` returns ``want``."""
    return wait_until(lambda: m.cache.get(key) == want, BOUND, what, step=0.0005)


@pytest.mark.parametrize("protocol", [3, 2])
def test_a_worker_that_exits_leaves_nothing_stale(
    tmp_path: Path, redis_server: Any, daemons: Any, made: list[Machine], protocol: int
) -> None:
    a, b = machines(tmp_path, redis_server, daemons, made, protocol=protocol)
    a.cache.set("k", b"v1")
    # B's worker fills k, and an absent marker for "n", then exits: the
    # connection Redis filed both reads under is gone.
    assert in_a_worker(b, ["k", "n"]) == [(b"v1", b"v1", True), (None, None, True)]
    a.cache.set("k", b"v2")
    a.cache.set("n", b"new")
    took = sees(b, "k", b"v2", "B stops serving the exited worker's fill")
    sees(b, "n", b"new", "B stops answering the exited worker's absent marker")
    print(f"B read A's write {took * 1e3:.1f} ms after it (bound {BOUND * 1e3:.0f} ms)")
    stats = b.cache.far_stats()
    assert stats["connections_lost"] >= 1 and stats["generation_bumps"] >= 2
    # And B fills again, through its own connection, which it registers.
    wait_until(lambda: b.cache.get("k") == b"v2" and b.cache.peek("k") == b"v2", 2.0, "refill")
    own = b.cache._client.redis.client_id()
    assert own in [b.cache._word(i) for i in words.CONN_SLOTS]


def test_a_dropped_connection_leaves_nothing_stale(
    tmp_path: Path, redis_server: Any, daemons: Any, made: list[Machine]
) -> None:
    a, b = machines(tmp_path, redis_server, daemons, made)
    for i in range(3):
        a.cache.set("k", b"old%d" % i)
        wait_until(lambda i=i: b.cache.get("k") == b"old%d" % i and b.cache.peek("k") is not None,
                   2.0, "B's near copy")  # fmt: skip
        # redis-py drops its connections (an error, a fork, max idle time...).
        b.cache._client.redis.connection_pool.disconnect()
        a.cache.set("k", b"new%d" % i)
        sees(b, "k", b"new%d" % i, "B stops serving what its dropped connection read")
    assert b.cache.far_stats()["connections_lost"] >= 3


def test_a_full_registry_stops_fills_not_reads(
    tmp_path: Path, redis_server: Any, daemons: Any, made: list[Machine]
) -> None:
    a, b = machines(tmp_path, redis_server, daemons, made)
    a.cache.set("k", b"v1")
    # Every slot taken by a live connection (one connection, many times: the
    # tracker finds it there and frees nothing).
    other = redis_server.client(single_connection_client=True)
    squatter = other.client_id()
    for i in words.CONN_SLOTS:
        b.cache._set_word(i, squatter)
    try:
        for _ in range(3):
            assert b.cache.get("k") == b"v1"  # from Redis
            assert b.cache.peek("k") is None  # and not filled: no slot to vouch with it
        assert b.cache.get("absent") is None
        a.cache.set("k", b"v2")
        assert b.cache.get("k") == b"v2"
        stats = b.cache.far_stats()
        assert stats["fills_unregistered"] >= 4 and stats["fills"] == 0
        assert stats["connections_lost"] == 0 and stats["reconnects"] == 0
        assert {b.cache._word(i) for i in words.CONN_SLOTS} == {squatter}
        # One slot frees: fills again (a fill that a poll overtook is refused: retried).
        b.cache._set_word(words.CONN_SLOTS[0], 0)
        wait_until(lambda: b.cache.get("k") == b"v2" and b.cache.peek("k") == b"v2", 2.0,
                   "B fills again")  # fmt: skip
        assert b.cache._word(words.CONN_SLOTS[0]) == b.cache._client.redis.client_id()
    finally:
        other.close()


def test_without_the_registry_a_closed_connection_leaves_it_stale(
    redis_server: Any, tmp_path: Path, daemons: Any, made: list[Machine]
) -> None:
    """The gap the registry closes, shown with an in-process tracker that
    never looks at it (polls that always answer "all there")."""

    class Unpolled(Tracker):
        def _send_poll(self, now: int) -> None:
            self._next_poll = now + self._ping_ns
            self._conns_ok_ns = now

    (a, _) = machines(tmp_path, redis_server, daemons, made)
    name = new_name()
    far = {"url": redis_server.url, "prefix": a.far["prefix"], **FAR}
    cache = Cache(name, capacity="16MiB", far=far)
    assert isinstance(cache, NearCache)
    target = SegmentTarget(cache)
    cache._vouch(0)
    tracker = Unpolled(target, redis_server.url, prefix=a.far["prefix"], mode="default",
                       ping_interval=0.05, staleness_bound=BOUND)  # fmt: skip
    tracker.start()
    b = Machine(name=name, far=far, daemon=None, cache=cache, config=tmp_path)
    try:
        b.wait_gate()
        a.cache.set("k", b"v1")
        assert in_a_worker(b, ["k"]) == [(b"v1", b"v1", True)]
        a.cache.set("k", b"v2")
        time.sleep(3 * BOUND)  # a bounded wait: nothing will invalidate it
        assert b.cache.gate_open and b.cache.get("k") == b"v1", "stale, long past the bound"
    finally:
        tracker.stop()
        cache.close()
        Cache.destroy(name)
