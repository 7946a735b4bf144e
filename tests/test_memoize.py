"""metis_shm.contrib.memoize: stable keys, TTL, None results, exceptions, and
cross-process single-flight with real processes (fork), including an owner
SIGKILLed in the middle of computing."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import queue
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from metis_shm import Cache
from metis_shm.contrib.memoize import lease_key_for, make_key, memoize

ROOT = Path(__file__).resolve().parent.parent
CTX = multiprocessing.get_context("fork")
N_PROCS = 8
CALLS = "calls"  # counter key: how many times a function body ran, all processes


def _run_in_processes(
    n: int, call: Callable[[], Any], stats: Callable[[], dict[str, int]]
) -> tuple[list[multiprocessing.process.BaseProcess], multiprocessing.queues.Queue[Any]]:
    """Start ``n`` forked processes that meet at a barrier, then ``call()``.

    Each puts (pid, "ok"|"error", value or repr, monotonic time when done,
    its stats) on the returned queue."""
    barrier = CTX.Barrier(n)
    results: multiprocessing.queues.Queue[Any] = CTX.Queue()

    def child() -> None:
        barrier.wait(timeout=10)
        try:
            value: Any = call()
            status = "ok"
        except Exception as exc:
            value, status = repr(exc), "error"
        results.put((os.getpid(), status, value, time.monotonic(), stats()))

    procs: list[multiprocessing.process.BaseProcess] = [CTX.Process(target=child) for _ in range(n)]
    for p in procs:
        p.start()
    return procs, results


def _collect(results: multiprocessing.queues.Queue[Any], n: int, timeout: float) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        try:
            got.append(results.get(timeout=max(0.01, deadline - time.monotonic())))
        except queue.Empty:
            break
    return got


def _join(procs: list[multiprocessing.process.BaseProcess]) -> None:
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():  # pragma: no cover - only on a hang
            p.kill()
            p.join()


# --------------------------------------------------------------------------
# One process
# --------------------------------------------------------------------------


def test_hit_miss_ttl_and_stats(cache: Cache) -> None:
    @memoize(cache, ttl=0.3)
    def square(x: int) -> int:
        cache.incr(CALLS, default=0)
        return x * x

    assert square(4) == 16
    assert square(4) == 16
    assert cache.get(CALLS) == 1
    assert square.stats.to_dict() == {
        "hits": 1, "misses": 1, "computed": 1, "waited": 0, "took_over": 0, "fallbacks": 0,
    }  # fmt: skip
    key = square.cache_key(4)
    assert key.startswith(f"memo:{__name__}.test_hit_miss_ttl_and_stats.<locals>.square:")
    assert cache.get(key) == 16
    assert cache.get(lease_key_for(key)) is None  # the lease is gone once the result is in
    time.sleep(0.4)  # ttl
    assert square(4) == 16
    assert cache.get(CALLS) == 2


def test_none_results_are_cached(cache: Cache) -> None:
    @memoize(cache)
    def nothing(x: int) -> None:
        cache.incr(CALLS, default=0)

    assert nothing(1) is None
    assert nothing(1) is None
    assert cache.get(CALLS) == 1
    assert nothing.stats.hits == 1


def test_arguments_are_bound_to_the_signature(cache: Cache) -> None:
    @memoize(cache)
    def f(a: int, b: int = 2, *rest: int, **named: int) -> int:
        cache.incr(CALLS, default=0)
        return a + b + sum(rest) + sum(named.values())

    assert f(1) == f(1, 2) == f(a=1) == f(b=2, a=1) == 3
    assert cache.get(CALLS) == 1
    assert f(1, 2, 3, x=1, y=2) == f(1, 2, 3, y=2, x=1) == 9
    assert cache.get(CALLS) == 2
    assert f.cache_key(1) != f.cache_key(2)
    with pytest.raises(TypeError):
        f()  # type: ignore[call-arg]


def test_typed_and_container_kinds(cache: Cache) -> None:
    @memoize(cache)
    def loose(x: object) -> str:
        return type(x).__name__

    @memoize(cache, typed=True)
    def strict(x: object) -> str:
        return type(x).__name__

    # like functools.lru_cache: 1, 1.0 and True are one argument unless typed
    assert loose.cache_key(1) == loose.cache_key(1.0) == loose.cache_key(True)
    assert len({strict.cache_key(1), strict.cache_key(1.0), strict.cache_key(True)}) == 3
    assert loose(1) == "int" and loose(1.0) == "int"
    assert strict(1) == "int" and strict(1.0) == "float"
    # tuples and lists, str and bytes, sets and frozensets stay apart
    assert loose.cache_key((1, 2)) != loose.cache_key([1, 2])
    assert loose.cache_key("a") != loose.cache_key(b"a")
    assert loose.cache_key({1}) != loose.cache_key(frozenset({1}))
    assert loose.cache_key({"a": 1, "b": 2}) == loose.cache_key({"b": 2, "a": 1})


def test_unstable_repr_needs_a_key_function(cache: Cache) -> None:
    class User:
        def __init__(self, uid: int) -> None:
            self.uid = uid

    @memoize(cache)
    def name(user: User) -> str:
        return f"user-{user.uid}"

    with pytest.raises(TypeError, match="memory address"):
        name(User(1))

    @memoize(cache, key=lambda user: user.uid, namespace="users.name")
    def name2(user: User) -> str:
        cache.incr(CALLS, default=0)
        return f"user-{user.uid}"

    assert name2(User(7)) == name2(User(7)) == "user-7"
    assert cache.get(CALLS) == 1
    assert name2.cache_key(User(7)) == make_key("users.name", 7)


def test_invalidate_and_cache_clear(cache: Cache) -> None:
    @memoize(cache)
    def double(x: int) -> int:
        cache.incr(CALLS, default=0)
        return 2 * x

    @memoize(cache)
    def other(x: int) -> int:
        return x

    for x in range(5):
        double(x)
    other(1)
    assert double.invalidate(3) is True
    assert double.invalidate(3) is False
    double(3)
    assert cache.get(CALLS) == 6
    assert double.cache_clear() == 5
    assert cache.get(other.cache_key(1)) == 1  # another function's results stay
    double(0)
    assert cache.get(CALLS) == 7


def test_exception_releases_the_lease(cache: Cache) -> None:
    @memoize(cache)
    def boom(x: int) -> int:
        n = cache.incr(CALLS, default=0)
        if n == 1:
            raise RuntimeError("first call fails")
        return x

    with pytest.raises(RuntimeError, match="first call fails"):
        boom(5)
    lease = cache.get(lease_key_for(boom.cache_key(5)))
    assert lease is not None and lease["failed"] is True  # a tombstone, not a live lease
    assert boom(5) == 5  # the tombstone does not block this process's next call
    assert boom(5) == 5
    assert cache.get(CALLS) == 2


def test_dead_owner_lease_is_taken_over(cache: Cache) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()

    @memoize(cache, lock_timeout=30)
    def f(x: int) -> int:
        return x + 1

    lease_key = lease_key_for(f.cache_key(1))
    cache.set(lease_key, {"pid": dead.pid, "ctime": 0.0, "start": 0.0, "token": "t0"}, ttl=30)
    start = time.monotonic()
    assert f(1) == 2
    assert time.monotonic() - start < 1.0
    assert f.stats.took_over == 1
    assert lease_key not in cache


def test_recycled_pid_is_not_the_owner(cache: Cache) -> None:
    @memoize(cache, lock_timeout=30)
    def f(x: int) -> int:
        return x + 1

    # our own pid, but with another start time: the lease's owner is gone
    lease = {"pid": os.getpid(), "ctime": 12345.0, "start": 0.0, "token": "t1"}
    cache.set(lease_key_for(f.cache_key(1)), lease, ttl=30)
    assert f(1) == 2
    assert f.stats.took_over == 1


def test_expired_lease_and_wait_timeout(cache: Cache) -> None:
    parent = {"pid": os.getppid(), "start": 0.0, "token": "t2"}  # alive, not computing

    @memoize(cache, lock_timeout=0.3, wait=5)
    def f(x: int) -> int:
        return x

    cache.set(lease_key_for(f.cache_key(1)), parent, ttl=0.3)
    start = time.monotonic()
    assert f(1) == 1
    assert 0.2 < time.monotonic() - start < 1.0  # waited for the lease's TTL, not `wait`
    assert f.stats.took_over == 1

    @memoize(cache, lock_timeout=30, wait=0.3)
    def g(x: int) -> int:
        return x

    cache.set(lease_key_for(g.cache_key(1)), parent, ttl=30)
    start = time.monotonic()
    assert g(1) == 1
    assert 0.25 < time.monotonic() - start < 1.0  # gave up after `wait`, computed here
    assert g.stats.fallbacks == 1 and g.stats.computed == 1
    assert cache.get(g.cache_key(1)) == 1


# --------------------------------------------------------------------------
# Many processes
# --------------------------------------------------------------------------


def test_eight_processes_one_computation(cache: Cache) -> None:
    @memoize(cache, lock_timeout=10)
    def slow(x: int) -> dict[str, Any]:
        cache.incr(CALLS, default=0)
        time.sleep(0.3)
        return {"x": x, "by": os.getpid()}

    procs, results = _run_in_processes(N_PROCS, lambda: slow(42), slow.stats.to_dict)
    got = _collect(results, N_PROCS, timeout=15)
    _join(procs)
    assert len(got) == N_PROCS, got
    assert all(status == "ok" for _, status, *_ in got), got
    values = [v for _, _, v, _, _ in got]
    assert all(v == values[0] for v in values)
    assert cache.get(CALLS) == 1  # the body ran exactly once
    owner = [r for r in got if r[4]["computed"] == 1]
    waiters = [r for r in got if r[4]["waited"] == 1]
    assert len(owner) == 1 and len(waiters) == N_PROCS - 1
    assert owner[0][0] == values[0]["by"]
    lag = max(t for *_, t, _ in waiters) - owner[0][3]
    print(f"7 waiters had the value {lag * 1000:.1f} ms after the owner returned")
    assert lag < 0.5


def test_owner_sigkilled_mid_compute(cache: Cache) -> None:
    lock_timeout = 5.0

    @memoize(cache, lock_timeout=lock_timeout)
    def slow(x: int) -> dict[str, Any]:
        cache.incr(CALLS, default=0)
        time.sleep(0.8)
        return {"x": x, "by": os.getpid()}

    lease_key = lease_key_for(slow.cache_key(7))
    procs, results = _run_in_processes(N_PROCS, lambda: slow(7), slow.stats.to_dict)
    deadline = time.monotonic() + 10
    while cache.get(CALLS) != 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    lease = cache.get(lease_key)
    assert lease is not None, "nobody took the lease"
    time.sleep(0.1)  # mid-compute
    os.kill(lease["pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    got = _collect(results, N_PROCS - 1, timeout=lock_timeout + 5)
    _join(procs)
    assert len(got) == N_PROCS - 1, got
    assert all(status == "ok" for _, status, *_ in got), got
    values = [v for _, _, v, _, _ in got]
    assert all(v == values[0] for v in values) and values[0]["by"] != lease["pid"]
    assert cache.get(CALLS) == 2  # the killed owner's run and the one that took over
    assert sum(r[4]["took_over"] for r in got) == 1
    assert sum(r[4]["fallbacks"] for r in got) == 0
    recovery = max(t for *_, t, _ in got) - killed_at
    print(f"7 survivors had the value {recovery * 1000:.0f} ms after the SIGKILL (0.8 s compute)")
    assert recovery < lock_timeout  # recovered by noticing the death, not the lease's TTL
    assert lease_key not in cache


def test_owner_exception_across_processes(cache: Cache) -> None:
    @memoize(cache)
    def flaky(x: int) -> int:
        n = cache.incr(CALLS, default=0)
        time.sleep(0.2)
        if n == 1:
            raise RuntimeError("owner failed")
        return x

    procs, results = _run_in_processes(N_PROCS, lambda: flaky(3), flaky.stats.to_dict)
    got = _collect(results, N_PROCS, timeout=15)
    _join(procs)
    assert len(got) == N_PROCS
    errors = [r for r in got if r[1] == "error"]
    assert len(errors) == 1 and "owner failed" in errors[0][2]
    assert all(r[2] == 3 for r in got if r[1] == "ok")
    assert sum(r[4]["fallbacks"] for r in got) >= 1  # waiters ran it themselves
    assert cache.get(flaky.cache_key(3)) == 3


def test_async_single_flight_in_one_and_two_processes(cache: Cache) -> None:
    @memoize(cache, lock_timeout=10)
    async def fetch(x: int) -> list[int]:
        cache.incr(CALLS, default=0)
        await asyncio.sleep(0.2)
        return [x, x]

    async def many(x: int, n: int) -> list[list[int]]:
        return await asyncio.gather(*(fetch(x) for _ in range(n)))

    assert asyncio.run(many(1, 8)) == [[1, 1]] * 8
    assert cache.get(CALLS) == 1
    assert fetch.stats.computed == 1 and fetch.stats.waited == 7

    procs, results = _run_in_processes(2, lambda: asyncio.run(many(2, 4)), fetch.stats.to_dict)
    got = _collect(results, 2, timeout=15)
    _join(procs)
    assert [r[1:3] for r in got] == [("ok", [[2, 2]] * 4)] * 2
    assert cache.get(CALLS) == 2
    # each child inherited computed == 1 from the first part through fork
    assert sum(r[4]["computed"] - 1 for r in got) == 1


def test_async_exception_and_cancellation(cache: Cache) -> None:
    @memoize(cache)
    async def fails() -> int:
        raise ValueError("nope")

    @memoize(cache)
    async def hangs() -> int:
        await asyncio.sleep(10)
        return 1

    async def scenario() -> None:
        with pytest.raises(ValueError):
            await fails()
        task = asyncio.create_task(hangs())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    for f in (fails, hangs):
        lease = cache.get(lease_key_for(f.cache_key()))
        assert lease is None or lease["failed"] is True


# --------------------------------------------------------------------------
# Keys across interpreters, the example
# --------------------------------------------------------------------------

KEY_SCRIPT = textwrap.dedent(
    """
    import datetime, decimal, sys
    from metis_shm import Cache
    from metis_shm.contrib.memoize import memoize

    cache = Cache(sys.argv[1], capacity="8MiB")

    @memoize(cache, namespace="stability")
    def f(*args, **kwargs):
        return None

    print(f.cache_key(
        1, 2.5, "text", b"raw", None, True, (1, [2, 3]),
        {"s", "t", "u", "v", "w"}, frozenset({"x", "y", "z"}),
        decimal.Decimal("1.10"), datetime.date(2024, 1, 2),
        mapping={"k1": 1, "k2": {"nested", "set"}}, flag=False,
    ))
    cache.close()
    """
)


def test_keys_are_stable_across_interpreters(cache_name: str) -> None:
    keys = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", KEY_SCRIPT, cache_name],
            env=env, cwd=ROOT, capture_output=True, text=True, check=True, timeout=30,
        )  # fmt: skip
        keys.add(out.stdout.strip())
    assert len(keys) == 1, keys
    (key,) = keys
    assert key.startswith("memo:stability:") and len(key) == len("memo:stability:") + 32


def test_example_script_runs(cache_name: str) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [sys.executable, "examples/memoize_script.py", cache_name],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "body ran 1 time(s) for 8 processes" in proc.stdout
    assert "recovered" in proc.stdout
