"""Coherence of two machines' near tiers in front of one real Redis, each
machine with its own real metisd (tests/far/_machines.py).

What is claimed (docs/far-tier.md): a write through one machine removes the
other's near copy, typically within a millisecond; and whatever dies or
stops (metisd, Redis, the network), no read that begins more than the
staleness bound after a write completed returns a value older than it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from _machines import Machine, percentile, start_machine, wait_until
from _workers import new_name

from metis_shm import Cache, FarUnavailable
from metis_shm.far.encoding import MAGIC

pytestmark = pytest.mark.integration

BOUND = 1.0  # FarSettings.staleness_bound's default


@pytest.fixture(
    params=[("broadcast", 3), ("broadcast", 2), ("default", 3), ("default", 2)],
    ids=lambda p: f"{p[0]}-resp{p[1]}",
)
def mode(request: pytest.FixtureRequest) -> tuple[str, int]:
    return request.param


def _machines(
    tmp_path: Path, redis_server: Any, daemons: Any, n: int = 2, **far: Any
) -> list[Machine]:
    out = []
    prefix = f"t{os.getpid()}:"
    for _ in range(n):
        name = new_name()
        settings = {"url": redis_server.url, "prefix": prefix, **far}
        out.append(start_machine(tmp_path, name, settings, daemons))
    return out


def test_a_write_through_a_removes_b_copy(
    tmp_path: Path, redis_server: Any, daemons: Any, close_all: list[Machine], mode: tuple[str, int]
) -> None:
    a, b = _machines(tmp_path, redis_server, daemons, tracking=mode[0], protocol=mode[1])
    close_all += [a, b]
    delays = []
    for i in range(100):
        key = f"k{i % 10}"
        a.cache.set(key, b"old-%d" % i)
        wait_until(
            lambda k=key, v=b"old-%d" % i: b.cache.get(k) == v and b.cache.peek(k) is not None,
            2.0,
            "B fills its near copy",
        )
        a.cache.set(key, b"new-%d" % i)
        wrote = time.perf_counter()
        wait_until(lambda k=key: b.cache.peek(k) is None, BOUND, "B's copy dies", step=0)
        delays.append(time.perf_counter() - wrote)
        assert b.cache.get(key) == b"new-%d" % i
    p50, p99 = percentile(delays, 0.5), percentile(delays, 0.99)
    print(
        f"invalidation delay ({mode[0]}, RESP{mode[1]}): p50 {p50 * 1e6:.0f} us, "
        f"p99 {p99 * 1e6:.0f} us, max {max(delays) * 1e6:.0f} us over {len(delays)} writes"
    )
    stats = b.cache.far_stats()
    assert stats["invalidations"] >= 100 and stats["tracker_state"] == "subscribed"


def test_flushall_empties_every_near_tier(
    tmp_path: Path, redis_server: Any, daemons: Any, close_all: list[Machine]
) -> None:
    a, b = _machines(tmp_path, redis_server, daemons)
    close_all += [a, b]
    for i in range(50):
        a.cache.set(f"k{i}", i)
    for m in (a, b):
        for i in range(50):
            assert m.cache.get(f"k{i}") == i
        wait_until(
            lambda m=m: all(
                m.cache.peek(f"k{i}") == i or m.cache.get(f"k{i}") == i for i in range(50)
            ),
            2.0,
            "near copies",
        )
    redis_server.client().flushall()
    for m in (a, b):
        wait_until(
            lambda m=m: all(m.cache.peek(f"k{i}") is None for i in range(50)),
            BOUND,
            "FLUSHALL empties the near tier",
        )
        assert m.cache.get("k1") is None
        assert m.cache.far_stats()["generation_bumps"] >= 2


def test_metisd_killed_b_serves_no_stale_value(
    tmp_path: Path, redis_server: Any, daemons: Any, close_all: list[Machine]
) -> None:
    a, b = _machines(tmp_path, redis_server, daemons)
    close_all += [a, b]
    a.cache.set("k", b"v1")
    assert b.cache.get("k") == b"v1"
    wait_until(
        lambda: b.cache.get("k") == b"v1" and b.cache.peek("k") == b"v1", 2.0, "B's near copy"
    )
    assert b.daemon is not None
    b.daemon.kill()
    a.cache.set("k", b"v2")
    done = time.monotonic()
    # Nobody hears Redis for B now: B's gate closes by itself within the bound.
    closed_after = b.wait_gate(open_=False, timeout=BOUND + 0.5)
    assert time.monotonic() - done <= BOUND + 0.1
    print(f"B's gate closed {closed_after * 1e3:.0f} ms after the write")
    assert b.cache.get("k") == b"v2"  # read through to Redis
    assert b.cache.peek("k") is None  # and nothing is filled that no one vouches for
    # A new metisd for B: resubscribed, generation bumped, serving again.
    b.daemon = daemons(b.config)
    b.daemon.wait_ready()
    b.wait_gate()
    assert b.cache.get("k") == b"v2"


def test_redis_killed_and_restarted_no_stale_value(
    tmp_path: Path, redis_server: Any, daemons: Any, close_all: list[Machine]
) -> None:
    a, b = _machines(tmp_path, redis_server, daemons)
    close_all += [a, b]
    a.cache.set("k", b"before")
    assert b.cache.get("k") == b"before"
    redis_server.kill()
    for m in (a, b):
        m.wait_gate(open_=False, timeout=BOUND + 1.0)
        with pytest.raises(FarUnavailable):
            m.cache.get("k")
    redis_server.restart()  # empty: no persistence, like a failover to a cold replica
    for m in (a, b):
        m.wait_gate(timeout=15)
        assert m.cache.get("k") is None, "a near copy outlived the Redis that vouched for it"
    a.cache.set("k", b"after")
    # B's absent marker for k dies with the invalidation of A's write: within
    # the bound (about 0.1 ms here), not at once.
    wait_until(lambda: b.cache.get("k") == b"after", BOUND, "B sees A's write")


@pytest.mark.parametrize("on_down", ["raise", "stale"])
def test_redis_stopped_partition(
    tmp_path: Path, redis_server: Any, daemons: Any, close_all: list[Machine], on_down: str
) -> None:
    a, b = _machines(tmp_path, redis_server, daemons, on_down=on_down, max_stale=30.0, timeout=0.3)
    close_all += [a, b]
    a.cache.set("k", b"v")
    wait_until(lambda: b.cache.get("k") == b"v" and b.cache.peek("k") == b"v", 2.0, "B's copy")
    redis_server.stop()
    try:
        b.wait_gate(open_=False, timeout=BOUND + 1.0)
        if on_down == "raise":
            with pytest.raises(FarUnavailable):
                b.cache.get("k")
        else:
            assert b.cache.get("k") == b"v"  # the bounded stale mode
            assert b.cache.far_stats()["stale_served"] >= 1
        with pytest.raises(FarUnavailable):
            a.cache.set("k", b"lost")
    finally:
        redis_server.cont()
    b.wait_gate(timeout=15)
    # The timed-out SET may have landed once Redis ran again (as with any
    # client): the near tier agrees with Redis either way.
    in_redis = redis_server.client().get(f"{a.far['prefix']}k")
    assert in_redis in (b"v", encoding_of(b"lost"))
    assert b.cache.get("k") == (b"v" if in_redis == b"v" else b"lost")


def encoding_of(value: bytes) -> bytes:
    """How NearCache stores a bytes value in Redis (metis_shm/far/encoding.py)."""
    return MAGIC + (0).to_bytes(4, "little") + value


def test_without_metisd_every_read_goes_to_redis(
    redis_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """No tracker vouches: the near tier serves and fills nothing, and the
    open says why."""
    name = new_name()
    r = redis_server.client()
    r.set("solo:k", b"7")
    try:
        with caplog.at_level("WARNING", logger="metis_shm.far"):
            cache = Cache(name, far={"url": redis_server.url, "prefix": "solo:"})
        assert "no metisd tracks Redis" in caplog.text
        assert not cache.gate_open

        def gets() -> int:
            return int(r.info("commandstats").get("cmdstat_get", {}).get("calls", 0))

        before = gets()
        assert [cache.get("k") for _ in range(3)] == [7, 7, 7]
        assert gets() - before == 3
        assert cache.peek("k") is None and cache.get_ungated("k") is None
        cache.close()
    finally:
        Cache.destroy(name)
