"""Single-flight per machine: concurrent misses of one key by many processes
of one machine cost Redis one GET; a lease dies with its owner."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

import pytest
from _machines import Machine, start_machine
from _workers import new_name

from metis_shm import Cache
from metis_shm.far.near import _lease_key

pytestmark = pytest.mark.integration

PROCS = 6


def _gets(r: Any) -> int:
    return int(r.info("commandstats").get("cmdstat_get", {}).get("calls", 0))


def _reader(name: str, far: dict[str, Any], key: str, barrier: Any, out: Any) -> None:
    cache = Cache(name, far=far)
    barrier.wait(10)
    out.put(cache.get(key))
    cache.close()


def _stampede(m: Machine, key: str) -> list[Any]:
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(PROCS)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_reader, args=(m.name, m.far, key, barrier, out)) for _ in range(PROCS)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    return results


@pytest.fixture
def machine(tmp_path: Path, redis_server: Any, daemons: Any) -> Any:
    m = start_machine(tmp_path, new_name(), {"url": redis_server.url, "prefix": "sf:"}, daemons)
    yield m
    m.cache.close()
    Cache.destroy(m.name)


def test_concurrent_misses_cost_one_get(machine: Machine, redis_server: Any) -> None:
    r = redis_server.client()
    for i in range(5):
        key = f"hot{i}"
        r.set(f"sf:{key}", b"%d" % (1000 + i))
        before = _gets(r)
        assert _stampede(machine, key) == [1000 + i] * PROCS
        assert _gets(r) - before == 1, f"{key}: {PROCS} processes missed at once"


def test_concurrent_misses_of_an_absent_key_cost_one_get(
    machine: Machine, redis_server: Any
) -> None:
    r = redis_server.client()
    before = _gets(r)
    assert _stampede(machine, "nothing") == [None] * PROCS
    assert _gets(r) - before == 1
    # The absent marker answers later misses too, until the key is written.
    assert machine.cache.get("nothing") is None
    assert _gets(r) - before == 1
    r.set("sf:nothing", b"7")  # another client writes it: the marker dies
    deadline = time.monotonic() + 2
    while machine.cache.get("nothing") != 7:
        assert time.monotonic() < deadline, "the absent marker outlived the key's invalidation"
        time.sleep(0.001)


def test_a_lease_dies_with_its_owner(machine: Machine, redis_server: Any) -> None:
    redis_server.client().set("sf:orphan", b"42")
    ctx = mp.get_context("fork")
    p = ctx.Process(target=os._exit, args=(0,))
    p.start()
    p.join()
    dead = p.pid
    # A lease left by a process that died in the middle of its fetch.
    assert machine.cache.peek("orphan") is None
    Cache.add(machine.cache, _lease_key("orphan"), b"%d" % dead, ttl=60)
    t0 = time.monotonic()
    assert machine.cache.get("orphan") == 42
    assert time.monotonic() - t0 < 1.0, "waited for a dead owner's lease"
