"""Regression tests for the lock, repair and read-path defects fixed by f4ded18.

Each test produces its state for real: forked processes that take a shard's
lock and are SIGKILLed or SIGSTOPped, writers stopped at a labelled point of
the write path (``_engine.set_crash_point``). Each docstring says what the
code before f4ded18 did; every wait is bounded, and every child is killed and
reaped in a ``finally``.

Beware: ``check()`` takes each shard's lock and ``stats()`` tries it (for
``largest_free``). Either one, after a lock owner died, recovers the lock
(and repairs the shard if the owner died in a write section), so no test
calls them between a death and the lock owner it means to observe.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import signal
import struct
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import pytest
from _workers import OK, ForkedChild, StopFlag, make_value, run_in_fork, verify_value, wait_status

from metis_shm import Cache, CacheClosed, LockUnrecoverable, _engine

# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def proc_state(pid: int) -> str:
    """The state letter of /proc/PID/stat ('R', 'S', 'T', 'Z', ...)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    return stat[stat.rindex(")") + 2]


def wait_state(pid: int, state: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while proc_state(pid) != state:
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} is {proc_state(pid)!r}, not {state!r}")
        time.sleep(0.005)


class Child:
    """``fn(w, *args)`` in a forked child; ``w`` is a pipe to the parent.

    For children that never return on their own (they hold a lock until
    killed). ``kill`` SIGKILLs and reaps, and may be called any number of times.
    """

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                os.close(r)
                fn(w, *args)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        os.close(w)
        self.pid = pid
        self._r: int | None = r
        self.status: int | None = None

    def read(self, n: int, timeout: float) -> bytes:
        """Exactly ``n`` bytes from the child; AssertionError at EOF or timeout."""
        assert self._r is not None
        deadline = time.monotonic() + timeout
        data = b""
        while len(data) < n:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._r], [], [], max(left, 0))
            if not ready:
                raise AssertionError(f"child {self.pid} sent nothing for {timeout} s")
            chunk = os.read(self._r, n - len(data))
            if not chunk:
                raise AssertionError(f"child {self.pid} ended before sending {n} bytes")
            data += chunk
        return data

    def kill(self) -> None:
        if self.status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            _, self.status = os.waitpid(self.pid, 0)
        if self._r is not None:
            os.close(self._r)
            self._r = None


def _hold(w: int, cache: Cache, shard: int, write_section: bool, stop: bool) -> None:
    cache._test_hold_lock(shard, write_section)
    os.write(w, b"h")
    if stop:
        os.kill(os.getpid(), signal.SIGSTOP)
    time.sleep(600)


def hold_lock(cache: Cache, *, write_section: bool = False, stop: bool = False) -> Child:
    """A child holding shard 0's lock (stopped if ``stop``); the caller kills it."""
    child = Child(_hold, cache, 0, write_section, stop)
    try:
        child.read(1, 30)
        if stop:
            wait_state(child.pid, "T", 10)
    except BaseException:
        child.kill()
        raise
    return child


def kill_holder(cache: Cache, *, write_section: bool = False) -> None:
    """A process takes shard 0's lock and is SIGKILLed holding it."""
    hold_lock(cache, write_section=write_section).kill()


def reap(*children: ForkedChild) -> None:
    for child in children:
        if child.status is None:
            with contextlib.suppress(ChildProcessError, ProcessLookupError):
                child.kill()


# --------------------------------------------------------------------------
# 1. A repair that is itself killed
# --------------------------------------------------------------------------

N_BIG = 1_000_000
KILL_ROUNDS = 20


def _big_key(i: int) -> str:
    return f"k{i:07d}"


def _big_value(i: int) -> bytes:
    return i.to_bytes(8, "little")


def _repair_then_hold(w: int, cache: Cache) -> None:
    """Take shard 0's lock (which first runs the pending repair), report how
    long that took, then keep the lock inside a write section: whoever is
    next repairs again."""
    os.write(w, b"r")
    t0 = time.perf_counter()
    cache._test_hold_lock(0, True)
    os.write(w, struct.pack("<d", time.perf_counter() - t0))
    time.sleep(600)


@pytest.mark.slow
def test_a_repair_killed_at_any_point_is_finished_by_the_next_one(
    names: Any, rng: random.Random
) -> None:
    """Defect 1. The old repair marked every reachable block with BLOCK_MARK
    in its header (step 2) and cleared the marks in a second walk (step 3).
    Killed between the two, it left marks behind, and the next repair cut
    every chain at the first marked block: the items behind were freed, lost.
    Now the marks live in private memory and the repair is restartable.

    1,000,000 items in one shard; a forced repair; 20 processes each killed
    at a random moment of the repair they run; then one repair that finishes.
    """
    cache = Cache(names(), capacity="256MiB", shards=1, policy="lru")
    try:
        for start in range(0, N_BIG, 20_000):
            cache.set_many({_big_key(i): _big_value(i) for i in range(start, start + 20_000)})
        assert len(cache) == N_BIG
        repairs_before = cache.stats().repairs

        kill_holder(cache, write_section=True)  # the next lock owner repairs
        # A throwaway run: how long one repair takes (in a child, as below).
        child = Child(_repair_then_hold, cache)
        try:
            child.read(1, 30)
            (repair_s,) = struct.unpack("<d", child.read(8, 120))
        finally:
            child.kill()
        print(f"one repair of {N_BIG} items took {repair_s * 1000:.0f} ms")

        for _ in range(KILL_ROUNDS):
            child = Child(_repair_then_hold, cache)
            try:
                child.read(1, 30)  # about to take the lock
                time.sleep(rng.uniform(0, 1.2 * repair_s))
            finally:
                child.kill()

        t0 = time.perf_counter()
        assert cache.delete("absent-key") is False  # takes the lock: the last repair
        print(f"the repair that finished took {(time.perf_counter() - t0) * 1000:.0f} ms")

        st = cache.stats()
        # The throwaway run and the last repair finished; every other finished
        # repair is a kill that came too late.
        finished_in_rounds = st.repairs - repairs_before - 2
        print(f"{KILL_ROUNDS - finished_in_rounds} of {KILL_ROUNDS} kills landed mid-repair")
        assert finished_in_rounds <= KILL_ROUNDS - 5, "too few kills landed inside a repair"

        assert len(cache) == N_BIG
        assert st.items == N_BIG
        for i in rng.sample(range(N_BIG), 2000):
            assert cache.get(_big_key(i)) == _big_value(i), _big_key(i)
        keys = set(cache.keys())
        assert len(keys) == N_BIG
        assert _big_key(0) in keys and _big_key(N_BIG - 1) in keys
        del keys
        assert cache.check() == []
    finally:
        cache.close()


# --------------------------------------------------------------------------
# 2. Readers and a writer stopped (or killed) inside its write section
# --------------------------------------------------------------------------

N_OTHER = 2000
N_READS = 10_000


def _fill_for_readers(cache: Cache) -> list[str]:
    vrng = random.Random(7)
    keys = [f"other-{i}" for i in range(N_OTHER)]
    cache.set_many({k: make_value(k, 1, 100, vrng) for k in keys})
    return keys


def _read_many(cache: Cache, keys: list[str], target: str) -> dict[str, Any]:
    rng = random.Random(11)
    bad = []
    for _ in range(N_READS):
        key = rng.choice(keys)
        value = cache.get(key)
        if verify_value(key, value) != OK:
            bad.append(f"{key}: {value!r:.60}")
    return {"bad": bad[:5], "n_bad": len(bad), "target": cache.get(target)}


def _write_stopping_at_publish(w: int, cache: Cache, key: str, value: bytes, sig: int) -> None:
    _engine.set_crash_point(5, 0, sig)
    os.write(w, b"w")
    cache.set(key, value)
    os.write(w, b"d")


def test_readers_do_not_wait_for_a_writer_stopped_in_its_write_section(names: Any) -> None:
    """Defect 2. The old read path was a seqlock: a writer made the shard's
    sequence odd for its whole write section, and readers that saw it odd
    spun 64 times, then took the lock, waiting. A writer stopped (SIGSTOP,
    a debugger, a paused container) inside its section stopped every reader
    of the shard: this reader child would hit its time limit.

    Now readers validate a reclaim sequence that only a running writer moves.
    (read_retries is compared before the writer starts and after it is done.)
    """
    cache = Cache(names(), capacity="16MiB", shards=1, policy="lru")
    writer = reader = None
    try:
        keys = _fill_for_readers(cache)
        cache.set("target", b"old value")
        retries_before = cache.stats().read_retries

        writer = Child(_write_stopping_at_publish, cache, "target", b"new value", signal.SIGSTOP)
        writer.read(1, 30)
        wait_state(writer.pid, "T", 10)  # stopped holding the lock, new item not published

        reader = ForkedChild(_read_many, cache, keys, "target")
        got = reader.join(timeout=20)
        assert got["n_bad"] == 0, got["bad"]
        assert got["target"] == b"old value"
        assert proc_state(writer.pid) == "T", "the writer must still be stopped"

        os.kill(writer.pid, signal.SIGCONT)
        assert writer.read(1, 30) == b"d"  # its write completed
        assert cache.get("target") == b"new value"
        assert cache.stats().read_retries == retries_before
        assert cache.check() == []
    finally:
        if reader is not None:
            reap(reader)
        if writer is not None:
            writer.kill()
        cache.close()


def test_readers_go_on_after_a_writer_killed_in_its_write_section(names: Any) -> None:
    """Defect 2, the writer SIGKILLed at the same point. The old sequence
    stayed odd after the death, so every reader fell back to the lock and
    the first one ran the repair (readers waited for a repair they did not
    need). Now readers return without touching the lock: afterwards the
    mutex is still in the owner-died state the writer left it in
    (``_test_abandon_lock`` sees EOWNERDEAD), i.e. no process locked it, so
    no repair ran. The next write then repairs (it finds the mutex
    ENOTRECOVERABLE, which the probe left, and the write mark).
    """
    cache = Cache(names(), capacity="16MiB", shards=1, policy="lru")
    writer = reader = None
    try:
        keys = _fill_for_readers(cache)
        cache.set("target", b"old value")
        before = cache.stats()

        writer = Child(_write_stopping_at_publish, cache, "target", b"new value", signal.SIGKILL)
        writer.read(1, 30)
        status = wait_status(writer.pid, 30)
        assert status is not None, "the writer did not reach crash point 5"
        writer.status = status
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL

        reader = ForkedChild(_read_many, cache, keys, "target")
        got = reader.join(timeout=20)
        assert got["n_bad"] == 0, got["bad"]
        assert got["target"] == b"old value"
        assert cache.get("target") == b"old value"

        assert cache._test_abandon_lock(0) is True, "a reader took the dead writer's lock"
        cache.set("target", b"newer value")  # the first lock owner: the repair
        after = cache.stats()
        assert after.repairs == before.repairs + 1
        assert after.read_retries == before.read_retries
        assert cache.get("target") == b"newer value"
        assert all(verify_value(k, cache.get(k)) == OK for k in keys)
        assert cache.check() == []
    finally:
        if reader is not None:
            reap(reader)
        if writer is not None:
            writer.kill()
        cache.close()


# --------------------------------------------------------------------------
# 7. A mutex left ENOTRECOVERABLE
# --------------------------------------------------------------------------


def make_unrecoverable(cache: Cache) -> None:
    kill_holder(cache)
    assert cache._test_abandon_lock(0) is True  # EOWNERDEAD, unlocked unrepaired


def _attach_and_set(name: str) -> Any:
    with Cache(name, create=False) as c:
        c.set("from-child", b"child")
        return c.get("from-child")


def _sets_after_go(name: str, go: StopFlag, n: int) -> str:
    with Cache(name, create=False) as c:
        deadline = time.monotonic() + 30
        while not go.is_set():
            if time.monotonic() > deadline:
                return "never told to go"
            time.sleep(0.0002)
        for j in range(200):
            try:
                c.set(f"p{n}-{j}", f"{n}:{j}".encode())
            except LockUnrecoverable as exc:
                return f"set {j} raised {exc!r}"
    return "ok"


def test_a_mutex_left_not_recoverable_is_made_anew(names: Any) -> None:
    """Defect 7. A process that takes a dead owner's lock (EOWNERDEAD) and
    unlocks it without pthread_mutex_consistent leaves the mutex
    ENOTRECOVERABLE for good. The old shard_lock passed that error up: every
    write to the shard raised LockUnrecoverable until the segment was
    recreated. Now the first process to meet it re-initialises the mutex
    (one at a time) and the shard is repaired.
    """
    name = names()
    cache = Cache(name, capacity="4MiB", shards=1, policy="lru")
    kids: list[ForkedChild] = []
    try:
        before = {f"before-{i}": f"v{i}".encode() for i in range(500)}
        cache.set_many(before)

        make_unrecoverable(cache)
        assert run_in_fork(_attach_and_set, name, timeout=30) == b"child"
        cache.set("from-parent", b"parent")
        assert cache.get("from-child") == b"child"
        assert cache.get("from-parent") == b"parent"
        assert {k: cache.get(k) for k in before} == before
        assert cache.check() == []

        # Several processes meet the unrecoverable mutex at once.
        make_unrecoverable(cache)
        go = StopFlag()
        kids = [ForkedChild(_sets_after_go, name, go, n) for n in range(4)]
        time.sleep(0.2)  # all attached and waiting
        go.set()
        assert [k.join(timeout=60) for k in kids] == ["ok"] * 4
        for n in range(4):
            for j in range(200):
                assert cache.get(f"p{n}-{j}") == f"{n}:{j}".encode()
        assert {k: cache.get(k) for k in before} == before
        assert cache.check() == []
    finally:
        reap(*kids)
        cache.close()


# --------------------------------------------------------------------------
# 8. A lock owner that died outside a write section
# --------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["arc", "wtinylfu"])
def test_an_owner_dead_outside_a_write_section_causes_no_repair(names: Any, policy: str) -> None:
    """Defect 8. The old shard_lock repaired the shard on every EOWNERDEAD,
    even when the dead owner had changed nothing (it died in check(),
    stats() or a snapshot export): the repair forgets the ghosts and the
    sketch and puts every item in one queue. Now only an owner that died
    inside a write section causes a repair; the others only count a
    lock recovery.
    """
    cache = Cache(names(), capacity="256KiB", shards=1, policy=policy)
    try:
        for i in range(3000):
            cache.set(f"a{i}", b"x" * 200)
        st0 = cache.stats()
        assert st0.evictions > 0
        state0 = cache._policy_state(0)
        assert sum(state0["ghosts"]) > 0, state0
        items0 = len(cache)

        kill_holder(cache, write_section=False)
        assert cache.touch("a2999", ttl=3600) is True  # the next write
        st1 = cache.stats()
        assert st1.lock_recoveries == st0.lock_recoveries + 1
        assert st1.repairs == st0.repairs
        state1 = cache._policy_state(0)
        assert state1["ghosts"] == state0["ghosts"]
        assert state1 == state0
        assert len(cache) == items0
        assert cache.check() == []

        # Dead inside a write section: that one is repaired.
        kill_holder(cache, write_section=True)
        assert cache.touch("a2999", ttl=3600) is True
        st2 = cache.stats()
        assert st2.lock_recoveries == st1.lock_recoveries + 1
        assert st2.repairs == st1.repairs + 1
        assert len(cache) == items0
        assert cache.get("a2999") == b"x" * 200
        assert cache.check() == []
    finally:
        cache.close()


# --------------------------------------------------------------------------
# 9. close() while another thread waits for a lock
# --------------------------------------------------------------------------


def _fresh_view(name: str) -> dict[str, Any]:
    with Cache(name, create=False) as c:
        st = c.stats()  # first: before this process reads anything itself
        return {
            "hits": st.hits,
            "misses": st.misses,
            "sets": st.sets,
            "slots": {i: pid for i, pid, _ in c._slot_owners()},
            "pid": os.getpid(),
            "from-a": c.get("from-a"),
            "present": c.get("present"),
        }


def test_close_while_a_thread_waits_for_the_lock_raises_cache_closed(names: Any) -> None:
    """Defect 9. A thread waiting in a shard lock while another thread
    closed the cache went on once it got the lock: the old code stored
    into the closed cache and bumped hit/miss counters in the stats slot
    close() had released, which the next process to attach takes over with
    those stale counts. Now the waiter raises CacheClosed.
    """
    name = names()
    cache = Cache(name, capacity="4MiB", shards=1, policy="lru")
    holder = None
    outcomes: dict[str, Any] = {}
    try:
        cache.set("present", b"here")
        assert cache.get("present") == b"here"  # a hit
        assert cache.get("absent") is None  # a miss
        st = cache.stats()
        (my_slot,) = [i for i, pid, _ in cache._slot_owners() if pid == os.getpid()]

        holder = hold_lock(cache)

        def run(label: str, op: Callable[[], Any]) -> None:
            try:
                outcomes[label] = ("returned", op())
            except BaseException as exc:
                outcomes[label] = ("raised", exc)

        threads = [
            threading.Thread(target=run, args=("set", lambda: cache.set("from-a", b"a"))),
            threading.Thread(target=run, args=("pop", lambda: cache.pop("present"))),
        ]
        for t in threads:
            t.daemon = True
            t.start()
        time.sleep(0.5)
        assert all(t.is_alive() for t in threads), f"not waiting for the lock: {outcomes}"
        cache.close()
        holder.kill()  # the lock is now owner-dead: the waiters get it
        for t in threads:
            t.join(timeout=10)
        assert not any(t.is_alive() for t in threads), "a waiter is still waiting"
        for label in ("set", "pop"):
            kind, what = outcomes[label]
            assert kind == "raised" and isinstance(what, CacheClosed), (label, kind, what)

        fresh = run_in_fork(_fresh_view, name, timeout=30)
        assert fresh["slots"].get(my_slot) == fresh["pid"], "the closed cache's slot is not free"
        assert (fresh["hits"], fresh["misses"]) == (st.hits, st.misses)
        assert fresh["sets"] == st.sets
        assert fresh["from-a"] is None, "the waiter stored into a closed cache"
        assert fresh["present"] == b"here", "the waiter popped from a closed cache"
    finally:
        if holder is not None:
            holder.kill()
        cache.close()


# --------------------------------------------------------------------------
# Ctrl-C while waiting for a lock
# --------------------------------------------------------------------------


def _set_until_interrupted(w: int, cache: Cache) -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.write(w, b"w")
    try:
        cache.set("blocked", b"x")
    except KeyboardInterrupt:
        os.write(w, b"i" + struct.pack("<d", time.monotonic()))
        return
    os.write(w, b"s" + struct.pack("<d", time.monotonic()))


def test_ctrl_c_interrupts_a_writer_waiting_for_a_stopped_lock_holder(names: Any) -> None:
    """The old shard_lock waited in pthread_mutex_lock, which a signal does
    not interrupt: a writer waiting for a lock held by a stopped process
    ignored Ctrl-C for as long as that process stayed stopped. Now the
    wait is cut into 100 ms slices with a look at pending signals between.
    """
    cache = Cache(names(), capacity="4MiB", shards=1, policy="lru")
    holder = waiter = None
    try:
        holder = hold_lock(cache, stop=True)
        waiter = Child(_set_until_interrupted, cache)
        waiter.read(1, 30)
        time.sleep(0.3)  # inside the lock wait
        assert proc_state(waiter.pid) in "SR"
        sent = time.monotonic()
        os.kill(waiter.pid, signal.SIGINT)
        reply = waiter.read(9, 10)
        (at,) = struct.unpack("<d", reply[1:])
        assert reply[:1] == b"i", "the set went through a held lock"
        assert at - sent < 1.5, f"KeyboardInterrupt came {at - sent:.2f} s after SIGINT"
        assert proc_state(holder.pid) == "T"
    finally:
        if waiter is not None:
            waiter.kill()
        if holder is not None:
            holder.kill()
        cache.close()
