"""A Cache opened before fork() keeps working in the parent and in every child."""

from __future__ import annotations

import os

import pytest
from _workers import ForkedChild, run_in_fork

from metis_shm import Cache


def _wait_byte(fd: int) -> None:
    assert os.read(fd, 1) == b"x"


def test_child_and_parent_read_and_write(cache: Cache) -> None:
    cache.set("parent-before", b"p0")
    cache.set("n", 0)
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()

    def child() -> dict[str, object]:
        os.close(to_child_w)
        os.close(to_parent_r)
        out: dict[str, object] = {"parent-before": cache.get("parent-before")}
        cache.set("child", {"from": "child"})
        cache.incr("n")
        os.write(to_parent_w, b"x")  # child wrote: parent's turn
        _wait_byte(to_child_r)  # parent wrote
        out["parent-after"] = cache.get("parent-after")
        out["n"] = cache.get("n")
        out["len"] = len(cache)
        out["deleted"] = cache.delete("parent-before")
        out["check"] = cache.check()
        return out

    proc = ForkedChild(child)
    os.close(to_child_r)
    os.close(to_parent_w)
    try:
        _wait_byte(to_parent_r)
        assert cache.get("child") == {"from": "child"}
        assert cache.get("n") == 1
        cache.set("parent-after", b"p1")
        cache.incr("n")
        os.write(to_child_w, b"x")
        out = proc.join(timeout=30)
    finally:
        os.close(to_child_w)
        os.close(to_parent_r)
    assert out == {
        "parent-before": b"p0",
        "parent-after": b"p1",
        "n": 2,
        "len": 4,
        "deleted": True,
        "check": [],
    }
    assert "parent-before" not in cache
    assert len(cache) == 3
    assert cache.check() == []


def test_child_exit_code(cache: Cache) -> None:
    """The raw os.fork pattern: the child reports through its exit code."""
    cache.set("k", b"v")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ok = cache.get("k") == b"v"
            cache.set("from-child", b"c")
            code = 0 if ok else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    assert cache.get("from-child") == b"c"


def test_child_hits_counted_in_parent(cache: Cache) -> None:
    """Hits are counted per process and summed: the parent sees the child's hits."""
    cache.set("k", b"v")
    assert cache.get("k") == b"v"
    s0 = cache.stats()

    def child() -> tuple[int, int]:
        for _ in range(100):
            assert cache.get("k") == b"v"
        for _ in range(7):
            assert cache.get("missing") is None
        s = cache.stats()
        return s.hits, s.misses

    child_hits, child_misses = run_in_fork(child)
    assert child_hits >= s0.hits + 100
    assert child_misses >= s0.misses + 7
    s1 = cache.stats()
    assert s1.hits == s0.hits + 100
    assert s1.misses == s0.misses + 7
    assert sum(sh.hits for sh in s1.shards) == s1.hits


def test_hits_of_a_separate_process_counted(cache: Cache, cache_name: str) -> None:
    cache.set("k", b"v")
    s0 = cache.stats()

    def child() -> None:
        with Cache(cache_name) as c:
            for _ in range(50):
                c.get("k")

    run_in_fork(child)
    assert cache.stats().hits == s0.hits + 50


def test_many_children_incr_and_add(cache: Cache) -> None:
    """incr and add are atomic across processes that share one pre-fork Cache."""
    cache.set("counter", 0)
    n_children, n_incr, n_keys = 4, 500, 100

    def child(i: int) -> list[int]:
        won = []
        for j in range(max(n_incr, n_keys)):
            if j < n_incr:
                cache.incr("counter")
            if j < n_keys and cache.add(f"slot-{j}", i):
                won.append(j)
        return won

    procs = [ForkedChild(child, i) for i in range(n_children)]
    results = [p.join(timeout=60) for p in procs]
    assert cache.get("counter") == n_children * n_incr
    winners = sorted(j for won in results for j in won)
    assert winners == list(range(n_keys)), "every slot is won by exactly one process"
    for i, won in enumerate(results):
        for j in won:
            assert cache.get(f"slot-{j}") == i
    assert cache.check() == []


def test_grandchild(cache: Cache) -> None:
    cache.set("k", b"v")

    def grandchild() -> bytes:
        cache.set("gc", b"grandchild")
        return cache.get("k")

    def child() -> bytes:
        got = run_in_fork(grandchild)
        return got + cache.get("gc")

    assert run_in_fork(child) == b"vgrandchild"
    assert cache.get("gc") == b"grandchild"


def test_child_close_does_not_affect_parent(cache: Cache) -> None:
    cache.set("k", b"v")

    def child() -> bool:
        cache.set("c", b"c")
        cache.close()
        return True

    assert run_in_fork(child) is True
    assert cache.get("k") == b"v"
    assert cache.get("c") == b"c"
    cache.set("k2", b"v2")
    assert cache.get("k2") == b"v2"


def test_parent_writes_seen_by_running_child(cache: Cache) -> None:
    r, w = os.pipe()
    done_r, done_w = os.pipe()

    def child() -> list[int]:
        os.close(w)
        os.close(done_r)
        seen = []
        for _ in range(20):
            _wait_byte(r)
            seen.append(cache.get("step"))
            os.write(done_w, b"x")
        return seen

    proc = ForkedChild(child)
    os.close(r)
    os.close(done_w)
    try:
        for i in range(20):
            cache.set("step", i)
            os.write(w, b"x")
            _wait_byte(done_r)
        seen = proc.join(timeout=30)
    finally:
        os.close(w)
        os.close(done_r)
    assert seen == list(range(20))


@pytest.mark.parametrize("n_children", [8])
def test_preload_pattern(cache_name: str, n_children: int) -> None:
    """gunicorn --preload: the master opens the cache, the workers only use it."""
    master = Cache(cache_name, capacity="8MiB")
    try:
        master.set("config", {"workers": n_children})

        def worker(i: int) -> dict[str, object]:
            for j in range(200):
                master.set(f"w{i}-{j}", j)
            return {"config": master.get("config"), "own": master.get(f"w{i}-199")}

        procs = [ForkedChild(worker, i) for i in range(n_children)]
        for p in procs:
            assert p.join(timeout=60) == {"config": {"workers": n_children}, "own": 199}
        assert len(master) == 1 + 200 * n_children
        assert master.stats().sets >= 1 + 200 * n_children
        assert master.check() == []
    finally:
        master.close()
