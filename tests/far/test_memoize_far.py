"""``memoize`` on near caches of one Redis: single-flight across machines.

Two "machines" (a near cache name and a real metisd each, tests/far/
_machines.py) in front of one real redis-server; the callers are separate
processes (3 per machine), each made a host of its own machine
(``memoize._this_host``), as in a real fleet where a lease's pid means
nothing on another machine. The function counts its calls in Redis.

* 6 processes call at once: the function runs once in the fleet; the lease
  was Redis's ``SET NX PX lock_timeout``.
* The process computing is SIGKILLed holding the lease: another computes
  within lock_timeout (a machine-mate at once, by its pid; another machine's
  process when the lease expires in Redis).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from _machines import Machine, start_machine, wait_until
from _metisd import python_env
from _workers import new_name

from metis_shm import Cache
from metis_shm.contrib import memoize as memo
from metis_shm.far import encoding, near

pytestmark = pytest.mark.integration

CAPACITY = "16MiB"  # start_machine's
CHILD_TIMEOUT = 30.0

CHILD = r"""
import json, os, sys, time
import redis
from metis_shm import Cache
from metis_shm.contrib import memoize as memo

cfg = json.loads(sys.argv[1])
memo._this_host = cfg["host"]  # a host of its own machine
cache = Cache(cfg["name"], capacity=cfg["capacity"], far=cfg["far"])
deadline = time.monotonic() + 15
while not cache.gate_open and time.monotonic() < deadline:
    time.sleep(0.005)
r = redis.Redis.from_url(cfg["far"]["url"])
ns = cfg["ns"]


@memo.memoize(cache, namespace=ns, lock_timeout=cfg["lock_timeout"], wait=cfg["wait"])
def report(day):
    n = r.incr(ns + ":calls")
    r.rpush(ns + ":callers", json.dumps([os.getpid(), cfg["name"], time.time()]))
    if n == 1 and cfg["hang_first"]:
        time.sleep(120)  # SIGKILLed here, holding the lease
    time.sleep(cfg["work"])
    return {"day": day, "by": os.getpid(), "call": n}


print("ready", cache.gate_open, flush=True)
while not os.path.exists(cfg["go"]):
    time.sleep(0.0005)
value = report("2026-12-04")
print(json.dumps({"pid": os.getpid(), "machine": cfg["name"], "value": value,
                  "stats": report.stats.to_dict(), "done": time.time()}), flush=True)
cache.close()
"""


class Caller:
    """One process calling the memoized function on one machine."""

    def __init__(self, machine: Machine, ns: str, go: Path, **cfg: Any) -> None:
        config = {
            "name": machine.name,
            "capacity": CAPACITY,
            "far": machine.far,
            "host": f"host-of-{machine.name}",
            "ns": ns,
            "go": str(go),
            "lock_timeout": 10.0,
            "wait": None,
            "hang_first": False,
            "work": 0.5,
            **cfg,
        }
        self.machine = machine
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, json.dumps(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=python_env(),
        )

    def ready(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("ready True"), (line, self.result_text())

    def result(self) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=CHILD_TIMEOUT)
        assert self.proc.returncode == 0, err
        answer: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return answer

    def result_text(self) -> str:
        self.proc.kill()
        out, err = self.proc.communicate(timeout=CHILD_TIMEOUT)
        return out + err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=CHILD_TIMEOUT)


@pytest.fixture
def fleet(tmp_path: Path, redis_server: Any, daemons: Any) -> Iterator[list[Machine]]:
    prefix = f"{new_name()}:"
    far = {"url": redis_server.url, "prefix": prefix}
    machines = [start_machine(tmp_path, new_name(), far, daemons) for _ in range(2)]
    try:
        yield machines
    finally:
        for m in machines:
            m.cache.close()
            Cache.destroy(m.name)


@pytest.fixture
def callers() -> Iterator[list[Caller]]:
    made: list[Caller] = []
    yield made
    for c in made:
        c.kill()


def _callers_in_redis(r: Any, ns: str) -> list[tuple[int, str, float]]:
    return [tuple(json.loads(x)) for x in r.lrange(f"{ns}:callers", 0, -1)]


def _lease(r: Any, machine: Machine, ns: str) -> tuple[bytes, dict[str, Any], int]:
    """The one lease in Redis: its key, its value, its PTTL."""
    keys = list(r.scan_iter(match=f"{machine.far['prefix']}{memo.LEASE_PREFIX}:{ns}:*"))
    leases = [k for k in keys if b":takeover:" not in k]
    assert len(leases) == 1, keys
    value = encoding.decode(machine.cache._codec_obj, r.get(leases[0]))
    return leases[0], value, r.pttl(leases[0])


def test_one_call_in_the_whole_fleet(
    fleet: list[Machine], callers: list[Caller], redis_server: Any, tmp_path: Path
) -> None:
    ns = f"fleet-{new_name()}"
    go = tmp_path / "go"
    for m in fleet:
        callers += [Caller(m, ns, go, work=1.0) for _ in range(3)]
    for c in callers:
        c.ready()
    go.touch()
    r = redis_server.client()
    # The function counts its call, then names its caller: wait for both.
    wait_until(lambda: r.llen(f"{ns}:callers") == 1, 10.0, "someone computes")
    # The lease is Redis's SET NX PX lock_timeout, named after its owner.
    key, lease, pttl = _lease(r, fleet[0], ns)
    owner_pid, owner_machine, _ = _callers_in_redis(r, ns)[0]
    assert 0 < pttl <= 10_000, pttl
    assert lease["pid"] == owner_pid and lease["host"] == f"host-of-{owner_machine}"
    results = [c.result() for c in callers]
    assert int(r.get(f"{ns}:calls")) == 1  # one run in the whole fleet
    assert len({json.dumps(res["value"]) for res in results}) == 1
    assert all(res["value"]["call"] == 1 for res in results)
    stats = [res["stats"] for res in results]
    assert sum(s["computed"] for s in stats) == 1
    assert sum(s["waited"] for s in stats) == 5
    assert sum(s["fallbacks"] + s["took_over"] for s in stats) == 0
    assert r.exists(key) == 0  # released
    # Every machine reads the result near from now on; Redis holds it.
    assert memo.make_key(ns, {"day": "2026-12-04"}).encode() in {
        k[len(fleet[0].far["prefix"]) :] for k in r.scan_iter(match=f"*memo:{ns}:*")
    }


def test_owner_killed_a_machine_mate_takes_over(
    fleet: list[Machine], callers: list[Caller], redis_server: Any, tmp_path: Path
) -> None:
    lock_timeout = 5.0
    ns = f"kill-{new_name()}"
    go = tmp_path / "go"
    for m in fleet:
        callers += [
            Caller(m, ns, go, hang_first=True, work=0.2, lock_timeout=lock_timeout)
            for _ in range(3)
        ]
    for c in callers:
        c.ready()
    go.touch()
    r = redis_server.client()
    wait_until(lambda: r.llen(f"{ns}:callers") == 1, 10.0, "someone computes")
    time.sleep(0.2)  # everyone else is waiting on the lease
    owner_pid, owner_machine, _ = _callers_in_redis(r, ns)[0]
    _, lease, _ = _lease(r, fleet[0], ns)
    assert lease["pid"] == owner_pid
    killed = time.time()
    os.kill(owner_pid, signal.SIGKILL)
    owner = next(c for c in callers if c.proc.pid == owner_pid)
    survivors = [c for c in callers if c is not owner]
    results = [c.result() for c in survivors]
    owner.kill()
    runs = _callers_in_redis(r, ns)
    assert len(runs) == 2, runs  # the killed run and one more in the whole fleet
    taker_pid, taker_machine, started = runs[1]
    print(
        f"owner {owner_pid} SIGKILLed; {taker_pid} (same machine: "
        f"{taker_machine == owner_machine}) computed {started - killed:.3f} s later"
    )
    assert started - killed < lock_timeout
    assert taker_machine == owner_machine  # judged dead by its pid, on its own host
    assert all(res["value"] == {"day": "2026-12-04", "by": taker_pid, "call": 2} for res in results)
    assert max(res["done"] for res in results) - killed < lock_timeout
    assert sum(res["stats"]["took_over"] for res in results) == 1
    assert sum(res["stats"]["fallbacks"] for res in results) == 0


def test_owner_killed_another_machine_takes_over_when_the_lease_expires(
    fleet: list[Machine], callers: list[Caller], redis_server: Any, tmp_path: Path
) -> None:
    """The owner is alone on its machine: the others cannot judge its pid, and
    its lease ends by its PX in Redis, within lock_timeout of the kill."""
    lock_timeout = 2.0
    ns = f"expire-{new_name()}"
    a, b = fleet
    go_a, go_b = tmp_path / "go-a", tmp_path / "go-b"
    cfg = {"hang_first": True, "work": 0.2, "lock_timeout": lock_timeout, "wait": 3 * lock_timeout}
    owner = Caller(a, ns, go_a, **cfg)
    others = [Caller(b, ns, go_b, **cfg) for _ in range(3)]
    callers += [owner, *others]
    for c in callers:
        c.ready()
    go_a.touch()
    r = redis_server.client()
    wait_until(lambda: r.llen(f"{ns}:callers") == 1, 10.0, "A's process computes")
    go_b.touch()
    time.sleep(0.3)  # B's processes wait on A's lease
    assert psutil.pid_exists(owner.proc.pid)
    killed = time.time()
    owner.proc.send_signal(signal.SIGKILL)
    results = [c.result() for c in others]
    runs = _callers_in_redis(r, ns)
    assert len(runs) == 2, runs
    taker_pid, taker_machine, started = runs[1]
    print(f"A's owner SIGKILLed; B's {taker_pid} computed {started - killed:.3f} s later")
    assert taker_machine == b.name
    assert started - killed < lock_timeout
    assert all(res["value"]["by"] == taker_pid for res in results)
    assert sum(res["stats"]["took_over"] for res in results) == 1
    assert sum(res["stats"]["fallbacks"] for res in results) == 0


def test_a_lease_of_another_host_is_not_judged_by_its_pid() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lease = {"pid": gone.pid, "ctime": 0.0, "token": "t", "start": time.time()}
    assert not memo._owner_alive({**lease, "host": memo._host_id()})
    assert not memo._owner_alive(lease)  # a lease from before hosts were recorded
    assert memo._owner_alive({**lease, "host": "another-machine/pid:[1]"})
    mine = memo._new_lease()
    assert mine["host"] == memo._host_id() and memo._owner_alive(mine)


def test_lease_winner_reads_redis_not_a_stale_absent_marker(
    fleet: list[Machine], redis_server: Any
) -> None:
    """Another machine stored the result and released its lease, and this
    machine's near tier still says "absent" (the invalidation in flight):
    the caller that wins the now free lease must find the result in Redis."""
    m = fleet[0]
    calls = []

    @memo.memoize(m.cache, namespace=f"stale-{new_name()}")
    def f(x: int) -> int:
        calls.append(x)
        return x * 10

    key = f.cache_key(3)
    assert m.cache.get(key) is None  # read while absent: an absent marker near
    before = m.cache.fill_token(key)
    r = redis_server.client()
    r.set(f"{m.far['prefix']}{key}".encode(), 30)  # "another machine" stores the result
    wait_until(lambda: m.cache.fill_token(key) != before, 1.0, "the invalidation")
    # Put the in-flight state back: the near tier says absent for the current stamp.
    lease_key = near._lease_key(key)
    token = m.cache.fill_token(key)
    near._Engine.set(m.cache, lease_key, near._ABSENT + b"%d" % token, ttl=30)
    assert m.cache.get(key, "absent") == "absent"  # stale, as planted
    assert f(3) == 30 and calls == []  # found in Redis, not computed again
    assert f.stats.computed == 0
