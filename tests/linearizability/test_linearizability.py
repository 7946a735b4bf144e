"""Linearizability of get/set/add/replace/incr/delete/touch across processes.

The checker (checker.py) is tested first on histories written by hand, then
on histories recorded from forked processes sharing one real cache
(recorder.py), with the default settings, with the LRU and SIEVE policies,
and on a small cache under eviction pressure.  The mutation tests then break
a recorded history that passed (one stale read, one lost incr) and require
the checker to reject it.

METIS_LIN_OPS (operations per recorded run, default 20000) and
METIS_LIN_PROCS (processes, default 4) make the recorded runs longer; or run
``python tests/linearizability/run_long.py --ops N --procs P``.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from typing import Any

import pytest
from checker import (
    CheckResult,
    KeyModel,
    NotLinearizable,
    Op,
    assert_linearizable,
    check,
    check_key,
)
from recorder import Workload, record

OPS_PER_RUN = int(os.environ.get("METIS_LIN_OPS", "20000"))
PROCS = int(os.environ.get("METIS_LIN_PROCS", "4"))
MIN_OVERLAPPING = 200  # operations overlapping another on their key, per run

# eviction variant: a 1 MiB cache (one shard) and 30-120 KB bytes values
# under 16 other keys, 0.3 of them per recorded operation; no compression, so
# a large value costs its size (and microseconds instead of a zlib call)
SMALL_CACHE: dict[str, Any] = {"capacity": "1MiB", "compress_threshold": None}
BIG_FRACTION = 0.3


def op(proc: int, name: str, arg: Any, result: Any, call: int, ret: int, key: str = "k") -> Op:
    return Op(proc, name, key, arg, result, call, ret)


def fails(history: list[Op], **kwargs: Any) -> str:
    result = check(history, **kwargs)
    assert not result.ok, "the checker accepted a history that is not linearizable"
    return result.explanation


def assert_valid_linearization(result: CheckResult, *, may_evict: bool = False) -> None:
    """The order the search found is a run of the model and respects real time."""
    for key, r in result.keys.items():
        assert r.ok and r.linearization is not None
        assert len(r.linearization) == r.n_ops
        KeyModel(may_evict).replay(r.linearization)
        latest_call = None
        for o in r.linearization:
            # an op placed before this one must not have been called after it returned
            assert latest_call is None or latest_call <= o.ret, (key, o)
            latest_call = o.call if latest_call is None else max(latest_call, o.call)


# --------------------------------------------------------------------------
# The checker on histories written by hand
# --------------------------------------------------------------------------


def test_sequential_history_passes() -> None:
    ops = [
        ("get", None, None),
        ("touch", None, False),
        ("replace", 5, False),
        ("add", 1, True),
        ("add", 2, False),
        ("get", None, 1),
        ("replace", 3, True),
        ("incr", 2, 5),
        ("touch", None, True),
        ("get", None, 5),
        ("set", 9, None),
        ("delete", None, True),
        ("delete", None, False),
        ("incr", 1, 1),  # a missing key starts at 0
        ("get", None, 1),
    ]
    history = [
        op(i % 3, name, arg, res, 10 * i, 10 * i + 5) for i, (name, arg, res) in enumerate(ops)
    ]
    result = assert_linearizable(history)
    assert_valid_linearization(result)
    assert [o.op for o in result.keys["k"].linearization] == [name for name, _, _ in ops]


def test_empty_history_passes() -> None:
    assert check([]).ok


def test_overlapping_sets_read_in_either_order_pass() -> None:
    sets = [op(0, "set", 1, None, 0, 10), op(1, "set", 2, None, 5, 15)]
    for seen in (1, 2):
        reads = [op(2, "get", None, seen, 20, 21), op(3, "get", None, seen, 22, 23)]
        assert_valid_linearization(assert_linearizable(sets + reads))
    # a read overlapping both sets may see either, or nothing yet
    for seen in (None, 1, 2):
        assert check([*sets, op(2, "get", None, seen, 1, 30)]).ok


def test_reads_that_disagree_after_both_sets_fail() -> None:
    history = [
        op(0, "set", 1, None, 0, 10),
        op(1, "set", 2, None, 5, 15),
        op(2, "get", None, 1, 20, 21),
        op(3, "get", None, 2, 22, 23),
    ]
    fails(history)


def test_read_of_a_value_never_written_fails() -> None:
    history = [op(0, "set", 1, None, 0, 10), op(1, "get", None, 7, 5, 20)]
    text = fails(history)
    assert "get('k') -> 7" in text and "returns None or 1" not in text


def test_stale_read_fails() -> None:
    history = [
        op(0, "set", 1, None, 0, 10),
        op(1, "set", 2, None, 20, 30),
        op(2, "get", None, 1, 40, 50),  # starts after set(2) returned
    ]
    text = fails(history)
    assert "key 'k'" in text
    assert "the model says get returns 2 here" in text
    # the same read overlapping set(2) is fine: it may come first
    history[2] = op(2, "get", None, 1, 25, 50)
    assert check(history).ok


def test_concurrent_incrs_must_return_a_permutation() -> None:
    def incrs(results: list[int]) -> list[Op]:
        return [op(p, "incr", 1, r, 0, 100) for p, r in enumerate(results)]

    assert check(incrs([3, 1, 2, 4])).ok
    fails(incrs([1, 2, 2, 3]))  # a lost update
    fails(incrs([1, 2, 4, 5]))  # a skipped value
    # one incr that returned before another was called comes first
    fails([op(0, "incr", 1, 2, 0, 10), op(1, "incr", 1, 1, 20, 30)])


def test_add_succeeding_twice_without_delete_fails() -> None:
    fails([op(0, "add", 1, True, 0, 10), op(1, "add", 2, True, 20, 30)])
    fails([op(0, "add", 1, True, 0, 10), op(1, "add", 2, True, 5, 30)])  # concurrent
    assert check(
        [
            op(0, "add", 1, True, 0, 10),
            op(1, "delete", None, True, 5, 25),
            op(2, "add", 2, True, 20, 30),
        ]
    ).ok


def test_keys_are_checked_separately() -> None:
    history = [
        op(0, "set", 1, None, 0, 10, key="a"),
        op(0, "set", 2, None, 20, 30, key="b"),
        op(1, "get", None, 1, 40, 50, key="a"),
        op(1, "get", None, None, 40, 50, key="b"),  # b was set: not linearizable
    ]
    result = check(history)
    assert result.keys["a"].ok and not result.keys["b"].ok
    assert "key 'b'" in result.explanation and "key 'a'" not in result.explanation


def test_just_in_time_rule_against_a_long_pending_op() -> None:
    # set(2) runs across the whole history: it may take effect at any point
    # after its call, but the reads pin it between the first and second read
    history = [
        op(0, "set", 1, None, 0, 5),
        op(1, "set", 2, None, 6, 1000),
        op(2, "get", None, 1, 10, 20),
        op(2, "get", None, 2, 30, 40),
        op(2, "get", None, 2, 50, 60),
    ]
    assert_valid_linearization(assert_linearizable(history))
    history.append(op(3, "get", None, 1, 70, 80))  # back to 1: impossible
    fails(history)


def test_eviction_is_allowed_only_with_may_evict() -> None:
    evicted = [
        op(0, "set", 1, None, 0, 10),
        op(1, "get", None, None, 20, 30),  # dropped by the cache
        op(1, "incr", 2, 2, 40, 50),  # from 0 again
        op(2, "set", 7, None, 60, 70),
        op(2, "replace", 8, False, 80, 90),
        op(0, "touch", None, False, 100, 110),
        op(0, "add", 3, True, 120, 130),
        op(0, "get", None, 3, 140, 150),
    ]
    fails(evicted)
    assert_valid_linearization(assert_linearizable(evicted, may_evict=True), may_evict=True)
    # eviction never brings back an older value, nor invents one
    stale = [
        op(0, "set", 1, None, 0, 10),
        op(0, "set", 2, None, 20, 30),
        op(1, "get", None, 1, 40, 50),
    ]
    text = fails(stale, may_evict=True)
    assert "eviction allowed" in text and "returns 2 or None" in text
    fails([op(0, "set", 1, None, 0, 10), op(1, "incr", 1, 5, 20, 30)], may_evict=True)
    fails(
        [
            op(0, "add", 1, True, 0, 10),
            op(1, "add", 2, False, 5, 15),
            op(1, "get", None, 2, 20, 30),
        ],
        may_evict=True,
    )


def test_an_operation_that_raised_fails_the_check() -> None:
    history = [op(0, "set", 1, None, 0, 10), Op(1, "incr", "k", 1, None, 20, 30, "OverflowError()")]
    text = fails(history)
    assert "raised OverflowError()" in text


def test_malformed_operations_are_refused() -> None:
    assert "unknown operation 'pop'" in fails([op(0, "pop", None, None, 0, 1)])
    assert "returned before it was called" in fails([op(0, "get", None, None, 5, 1)])
    assert (
        "two keys"
        in check_key(
            [op(0, "get", None, None, 0, 1, key="a"), op(0, "get", None, None, 0, 1, key="b")]
        ).explanation
    )


def test_explanation_shows_where_the_search_stopped() -> None:
    history = [op(0, "set", 10 + i, None, 100 * i, 100 * i + 10) for i in range(20)]
    history.append(op(1, "get", None, 12, 2500, 2600))  # stale: 29 was the last
    with pytest.raises(NotLinearizable) as info:
        assert_linearizable(history)
    text = str(info.value)
    assert "The search linearized at most 20 of them" in text
    assert "leaving the key 29" in text
    assert "p1 get('k') -> 12" in text
    assert "set('k', 29)" in text
    assert len(text.splitlines()) < 40  # the ops around the failure, not all of them


def test_search_budget_gives_undecided() -> None:
    history = [op(p, "incr", 1, p + 1, 0, 100) for p in range(8)]
    result = check(history, max_steps=5)
    assert not result.ok and "undecided" in result.explanation
    assert check(history).ok


def test_many_concurrent_ops_are_checked_quickly() -> None:
    # a synthetic 4-process history of 10,000 incrs and gets on one key, every
    # op overlapping its neighbours: the memo keeps the search linear
    rng = random.Random(5)
    history: list[Op] = []
    value = 0
    t = 0
    for i in range(10_000):
        t += 10
        if rng.random() < 0.5:
            value += 1
            history.append(op(i % 4, "incr", 1, value, t - 15, t + 15))
        else:
            history.append(op(i % 4, "get", None, value or None, t - 15, t + 15))
    start = time.perf_counter()
    result = assert_linearizable(history)
    assert time.perf_counter() - start < 5
    assert_valid_linearization(result)


# --------------------------------------------------------------------------
# Histories recorded from real processes
# --------------------------------------------------------------------------


def workload(**kwargs: Any) -> Workload:
    return Workload(procs=PROCS, ops_per_proc=-(-OPS_PER_RUN // PROCS), **kwargs)


def recorded(name: str, seed: int, w: Workload, **cache_kwargs: Any) -> list[Op]:
    history, cache = record(name, w, seed, min_overlapping=MIN_OVERLAPPING, **cache_kwargs)
    cache.close()
    errors = [o for o in history if o.error is not None]
    assert not errors, f"operations raised: {errors[:5]}"
    assert len(history) >= OPS_PER_RUN
    assert {o.proc for o in history} == set(range(PROCS))
    return history


def report(result: CheckResult, seconds: float) -> None:
    print(f"{result.summary()}; checked in {seconds:.2f} s")


def checked(history: list[Op], *, may_evict: bool = False) -> CheckResult:
    start = time.perf_counter()
    result = check(history, may_evict=may_evict, max_steps=50 * len(history) + 10_000)
    report(result, time.perf_counter() - start)
    assert result.ok, result.explanation
    assert_valid_linearization(result, may_evict=may_evict)
    over = sum(r.overlapping for r in result.keys.values())
    assert over >= MIN_OVERLAPPING, (
        f"only {over} operations overlapped: the processes hardly ran at once"
    )
    return result


POLICIES = [
    pytest.param({}, id="default-wtinylfu"),
    pytest.param({"policy": "lru"}, id="lru"),
    pytest.param({"policy": "sieve"}, id="sieve"),
]


@pytest.mark.parametrize("cache_kwargs", POLICIES)
def test_recorded_history_is_linearizable(
    cache_name: str, seed: int, cache_kwargs: dict[str, Any]
) -> None:
    history = recorded(cache_name, seed, workload(), **cache_kwargs)
    result = checked(history)
    hot = Counter(o.key for o in history).most_common(2)
    assert sum(n for _, n in hot) > len(history) // 2  # most ops on two hot keys
    assert len(result.keys) == 6


@pytest.mark.parametrize("cache_kwargs", POLICIES)
def test_recorded_history_under_eviction_is_linearizable(
    cache_name: str, seed: int, cache_kwargs: dict[str, Any]
) -> None:
    w = workload(big_fraction=BIG_FRACTION)
    history = recorded(cache_name, seed, w, **SMALL_CACHE, **cache_kwargs)
    checked(history, may_evict=True)
    # the variant tests something only if the checked keys were evicted: then
    # the model that does not allow eviction must refuse the history
    strict = check(history, max_steps=50 * len(history) + 10_000)
    assert not strict.ok, "no eviction of a checked key was seen: make the cache smaller"


# --------------------------------------------------------------------------
# Mutation tests: a recorded history that passed, broken in one place
# --------------------------------------------------------------------------


def produced(ops: list[Op]) -> Counter[Any]:
    """How many ops of one key may have written each value."""
    out: Counter[Any] = Counter()
    for o in ops:
        if o.op in ("set", "add", "replace"):
            out[o.arg] += 1
        elif o.op == "incr":
            out[o.result] += 1
    return out


def by_key(history: list[Op]) -> dict[Any, list[Op]]:
    keys: dict[Any, list[Op]] = {}
    for o in sorted(history, key=lambda o: o.call):
        keys.setdefault(o.key, []).append(o)
    return keys


def inject_stale_read(history: list[Op], rng: random.Random) -> tuple[list[Op], Op, Op]:
    """Make one get return the value of a set that a later set overwrote.

    Picks sets S1 and S2 and a get G with S1 returned before S2 was called and
    S2 returned before G was called, S1's value written by nothing else, and
    gives G S1's value (times unchanged).  No linearization can exist: G
    comes after S2, which comes after the only write of that value.
    """
    choices = []
    for ops in by_key(history).values():
        count = produced(ops)
        sets = [o for o in ops if o.op == "set"]
        gets = [o for o in ops if o.op == "get"]
        for s2 in sets:
            older = [s1 for s1 in sets if s1.ret < s2.call and count[s1.arg] == 1]
            later = [g for g in gets if g.call > s2.ret]
            if older and later:
                choices.append((older[-1], s2, later[0]))
    assert choices, "no set-set-get triple in the history"
    s1, _s2, g = rng.choice(choices)
    stale = g._replace(result=s1.arg)
    return [stale if o is g else o for o in history], stale, s1


def inject_lost_incr(history: list[Op], rng: random.Random) -> tuple[list[Op], Op, Op]:
    """Make a second incr return what another incr of the same delta returned.

    For incrs I1 and I2 (same key, same delta d), with I1's result r not d
    (so "absent" was not its state before) and r - d written by at most one
    op, both returning r needs the state r - d twice: impossible.
    """
    choices = []
    for ops in by_key(history).values():
        count = produced(ops)
        incrs = [o for o in ops if o.op == "incr"]
        for i, i1 in enumerate(incrs):
            r, d = i1.result, i1.arg
            if r == d or count[r - d] > 1:
                continue
            for i2 in incrs[i + 1 :]:
                if i2.arg == d and i2.result != r and i2.call > i1.ret:
                    choices.append((i1, i2))
                    break
    assert choices, "no pair of incrs to merge in the history"
    i1, i2 = rng.choice(choices)
    lost = i2._replace(result=i1.result)
    return [lost if o is i2 else o for o in history], lost, i1


@pytest.fixture
def passing_history(cache_name: str, seed: int) -> list[Op]:
    history = recorded(cache_name, seed, workload())
    checked(history)
    return history


def test_injected_stale_read_is_rejected(passing_history: list[Op], rng: random.Random) -> None:
    mutated, stale, s1 = inject_stale_read(passing_history, rng)
    start = time.perf_counter()
    result = check(mutated)
    report(result, time.perf_counter() - start)
    assert not result.ok, f"the checker accepted a stale read: {stale} (value of {s1})"
    assert [r.key for r in result.failures] == [stale.key]
    assert f"key {stale.key!r}" in result.explanation


def test_injected_lost_incr_is_rejected(passing_history: list[Op], rng: random.Random) -> None:
    mutated, lost, i1 = inject_lost_incr(passing_history, rng)
    start = time.perf_counter()
    result = check(mutated)
    report(result, time.perf_counter() - start)
    assert not result.ok, f"the checker accepted a lost incr: {lost} and {i1}"
    assert [r.key for r in result.failures] == [lost.key]
