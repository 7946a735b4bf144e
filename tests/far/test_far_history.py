"""The far tier's history checker (tests/far/history.py), on real runs and on
hand-made histories.

Real runs (integration): three worker processes per machine, two machines
(each a near cache with its own metisd), one Redis; the merged history must
pass with the staleness bound: a normal run, a run with metisd killed and
Redis stopped mid-run, and a default-tracking run with a read-only machine.
Each prints what it measured. Mutation tests: the checker rejects each
recorded history with one stale read, one read of a value no write
produced, or one read from the future injected, naming the key and the ops.
Unit tests: small hand-made histories, and simulated ones whose staleness
is known.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest
from _machines import Machine, start_machine
from _metisd import python_env
from _workers import new_name
from history import (
    NEG,
    Checked,
    MalformedHistory,
    Op,
    Run,
    Workload,
    check,
    load,
    run_history,
    save,
)

from metis_shm.far.settings import FarSettings

BOUND_NS = 1_000_000_000  # FarSettings.staleness_bound's default (the real runs read theirs)
MS = 1_000_000


# ---- real runs -------------------------------------------------------------------


def _machines(
    tmp_path: Path, redis_server: Any, daemons: Any, made: list[Machine], **far: Any
) -> list[Machine]:
    """Machines A and B: two near caches, each with its own metisd, one prefix in one Redis."""
    prefix = f"h{os.getpid()}-{new_name()[-8:]}:"
    for _ in range(2):
        settings = {"url": redis_server.url, "prefix": prefix, **far}
        made.append(start_machine(tmp_path, new_name(), settings, daemons))
    return made


def _restarts(b: Machine, daemons: Any) -> tuple[Any, Any]:
    """SIGKILL machine B's metisd; start a new one (returns once it is ready)."""

    def kill() -> None:
        assert b.daemon is not None
        b.daemon.kill()

    def restart() -> None:
        b.daemon = daemons(b.config)
        b.daemon.wait_ready()

    return kill, restart


def _checked(title: str, run: Run, machines: list[Machine], tmp_path: Path) -> Checked:
    """Check the run's history, print what was measured, and require the
    measured staleness to be within the configured staleness_bound. The
    merged history stays in tmp_path/history.jsonl, to look into a failure."""
    save(run.history, tmp_path / "history.jsonl")
    checked = check(run.history, t0=run.start_ns)  # times as the events' (preload: < 0)
    bound_ns = int(FarSettings.build(machines[0].far).staleness_bound * 1e9)
    seconds = (run.stop_ns - run.start_ns) / 1e9
    print(f"\n== {title}: {seconds:.1f} s, 2 machines x 3 processes ==")
    print(checked.table())
    print(run.table())
    print(f"staleness bound {bound_ns / 1e6:.0f} ms; history in {tmp_path / 'history.jsonl'}")
    checked.assert_passes(bound_ns)
    assert checked.staleness_ns <= bound_ns
    return checked


def _check_mutations(history: list[Op], bound_ns: int) -> None:
    """The history with one bad read injected is rejected, naming the read."""
    for mutate, kind in (
        (inject_stale_read, "stale-read"),
        (inject_unknown_value, "unknown-value"),
        (inject_future_read, "future-read"),
    ):
        bad_read, mutated = mutate(history, bound_ns)
        found = check(mutated).violations(bound_ns)
        assert [v.kind for v in found] == [kind], (kind, [v.describe() for v in found[:3]])
        assert bad_read in found[0].ops and bad_read.key in found[0].describe()


@pytest.mark.integration
def test_history_normal_run(
    tmp_path: Path, redis_server: Any, daemons: Any, close_all: list[Machine], seed: int
) -> None:
    a, b = _machines(tmp_path, redis_server, daemons, close_all)
    run = run_history(
        [("A", a), ("B", b)], tmp_path / "logs", duration=10.0, seed=seed, env=python_env()
    )
    checked = _checked("normal run", run, close_all, tmp_path)
    assert checked.reads > 5_000 and checked.writes > 500, checked.table()
    assert checked.raised == 0, "nothing failed, so nothing may raise"
    for label, m in run.machines.items():
        assert m["hit_ratio"] > 0.5, (label, m)
        assert m["invalidations"] > 100, (label, m)
    _check_mutations(run.history, BOUND_NS)


@pytest.mark.integration
def test_history_with_failures(
    tmp_path: Path, redis_server: Any, daemons: Any, close_all: list[Machine], seed: int
) -> None:
    """metisd B SIGKILLed, and started again only after its gate has closed
    by itself; Redis SIGSTOPped for 0.5 s (less than the bound: the vouch
    holds, the writes time out), then for 1.5 s (more: the trackers give up
    their subscriptions, every gate closes, they resubscribe)."""
    a, b = _machines(tmp_path, redis_server, daemons, close_all, timeout=0.3)
    kill_b, restart_b = _restarts(b, daemons)
    events = [
        (2.0, "SIGKILL metisd B", kill_b),
        (3.5, "metisd B started again (until ready)", restart_b),
        (5.5, "SIGSTOP redis", redis_server.stop),
        (6.0, "SIGCONT redis (stopped 0.5 s)", redis_server.cont),
        (7.5, "SIGSTOP redis", redis_server.stop),
        (9.0, "SIGCONT redis (stopped 1.5 s)", redis_server.cont),
    ]
    try:
        run = run_history(
            [("A", a), ("B", b)],
            tmp_path / "logs",
            duration=10.5,
            seed=seed,
            events=events,
            env=python_env(),
        )
    finally:
        redis_server.cont()  # never leave it stopped, whatever failed
    checked = _checked("run with failures", run, close_all, tmp_path)
    assert checked.reads > 3_000 and checked.writes > 300, checked.table()
    assert checked.raised > 0, "Redis was stopped: some ops must have timed out"
    assert run.machines["B"]["generation_bumps"] >= 2, "new subscriptions bump the generation"
    for m in (a, b):
        m.wait_gate(timeout=15)  # both serve again
    _check_mutations(run.history, BOUND_NS)


@pytest.mark.integration
def test_history_default_tracking_read_only_machine(
    tmp_path: Path, redis_server: Any, daemons: Any, close_all: list[Machine], seed: int
) -> None:
    """Default tracking (Redis remembers what each worker's connection read,
    and tells the metisd its workers redirect to), RESP2. Machine A writes,
    machine B only reads, so nothing but Redis's invalidations ever kills
    B's near copies. Each worker starts with a get_many of every key; metisd
    B is killed and started again mid-run (its Redis client id, which B's
    workers redirect to, dies with it); then Redis is stopped for 0.5 s (the
    workers' reads time out and redis-py closes their connections, under
    whose ids Redis had filed what they read)."""
    a, b = _machines(
        tmp_path, redis_server, daemons, close_all, tracking="default", protocol=2, timeout=0.3
    )
    kill_b, restart_b = _restarts(b, daemons)
    readers = Workload(p_set=0, p_delete=0, p_incr=0, p_get_many=0.1)
    try:
        run = run_history(
            [("A", a), ("B", b)],
            tmp_path / "logs",
            duration=7.0,
            seed=seed,
            workload={"A": Workload(), "B": readers},
            events=[
                (2.0, "SIGKILL metisd B", kill_b),
                (2.5, "metisd B started again", restart_b),
                (4.5, "SIGSTOP redis", redis_server.stop),
                (5.0, "SIGCONT redis (stopped 0.5 s)", redis_server.cont),
            ],
            env=python_env(),
        )
    finally:
        redis_server.cont()
    checked = _checked("default tracking, RESP2, B read-only", run, close_all, tmp_path)
    assert {o.kind for o in run.history if o.proc.startswith("B")} == {"get", "get_many"}
    assert run.machines["B"]["invalidations"] > 100, run.machines["B"]
    assert checked.raised > 0, "Redis was stopped: some ops must have timed out"
    _check_mutations(run.history, BOUND_NS)


# ---- mutations ---------------------------------------------------------------------


def inject_stale_read(history: list[Op], bound_ns: int) -> tuple[Op, list[Op]]:
    """A read of an older value, beginning 1 ms more than the bound after a
    newer write of the same key completed."""
    sets = sorted((o for o in history if o.kind == "set" and o.ok), key=lambda o: o.call)
    for w in sets:
        newer = [o for o in sets if o.key == w.key and o.call > w.ret]
        if newer:
            t = min(o.ret for o in newer) + bound_ns + MS
            read = Op("X0", w.key, "get", w.value, t, t + 10_000)
            return read, [*history, read]
    raise AssertionError("no two successive sets of one key in the history")


def inject_unknown_value(history: list[Op], bound_ns: int) -> tuple[Op, list[Op]]:
    """A read of a value no write produced."""
    key = next(o.key for o in history if o.kind == "set")
    t = max(o.ret for o in history)
    read = Op("X0", key, "get", "X0.0:never-written", t, t + 10_000)
    return read, [*history, read]


def inject_future_read(history: list[Op], bound_ns: int) -> tuple[Op, list[Op]]:
    """A read that returned before the write of its value was called."""
    w = max((o for o in history if o.kind == "set"), key=lambda o: o.call)
    read = Op("X0", w.key, "get", w.value, w.call - 20_000, w.call - 10_000)
    return read, [*history, read]


# ---- simulated histories -----------------------------------------------------------


def simulate(
    rng: random.Random,
    *,
    ops: int = 3000,
    procs: int = 4,
    lag_ns: int = 0,
    p_fail: float = 0.0,
) -> list[Op]:
    """A history of a correct store: every op takes effect at one instant
    within its call and return (a write that raised: at some instant after
    its call, maybe long after it raised, or never); a read returns the
    state of its key ``lag`` before its instant, lag uniform in [0, lag_ns].
    Its measured staleness is therefore below lag_ns (0 without lag)."""
    keys, counters = ["k0", "k1", "k2"], ["c0"]
    clock = [0] * procs
    planned: list[tuple[int, Op]] = []  # (instant, op); instant None: never applied
    for seq in range(ops):
        p = rng.randrange(procs)
        call = clock[p] + rng.randrange(1, 50_000)
        ret = call + rng.randrange(1, 200_000)
        clock[p] = ret
        x = rng.random()
        kind = "get" if x < 0.6 else "set" if x < 0.8 else "delete" if x < 0.9 else "incr"
        key = rng.choice(counters if kind == "incr" or (kind == "get" and x < 0.1) else keys)
        ok = kind == "get" or rng.random() >= p_fail
        value = f"P{p}:{seq}" if kind == "set" else None
        instant = rng.randrange(call, ret + 1)
        if not ok:
            instant = rng.randrange(call, ret + 2_000_000) if rng.random() < 0.5 else -1
        planned.append((instant, Op(f"P{p}", key, kind, value, call, ret, ok)))
    # Apply the writes in instant order; a read looks up its key's state at
    # instant - lag (states: (instant, value) per key, in order).
    states: dict[str, list[tuple[int, Any]]] = {k: [(NEG, None)] for k in keys + counters}
    count: dict[str, int] = dict.fromkeys(counters, 0)
    out: list[Op] = []
    for instant, op in sorted((e for e in planned if e[0] >= 0), key=lambda e: e[0]):
        if op.kind == "set":
            states[op.key].append((instant, op.value))
        elif op.kind == "delete":
            states[op.key].append((instant, None))
        elif op.kind == "incr":
            count[op.key] += 1
            states[op.key].append((instant, count[op.key]))
            if op.ok:
                op = Op(op.proc, op.key, "incr", count[op.key], op.call, op.ret)
        if op.kind != "get":
            out.append(op)
    out += [op for instant, op in planned if instant < 0]  # raised, never applied
    for instant, op in planned:
        if op.kind == "get":
            at = instant - rng.randrange(lag_ns + 1)
            seen = [v for t, v in states[op.key] if t <= at][-1]
            out.append(Op(op.proc, op.key, "get", seen, op.call, op.ret))
    rng.shuffle(out)
    return out


@pytest.mark.parametrize("p_fail", [0.0, 0.2])
def test_a_linearizable_history_has_no_staleness(seed: int, p_fail: float) -> None:
    for i in range(5):
        checked = check(simulate(random.Random(seed + i), p_fail=p_fail))
        assert not checked.errors, [e.describe() for e in checked.errors[:3]]
        assert checked.staleness_ns == 0, checked.worst and checked.worst.describe()


def test_lagging_reads_measure_below_the_lag(seed: int) -> None:
    lag = 2 * MS
    for i in range(5):
        checked = check(simulate(random.Random(seed + i), lag_ns=lag, p_fail=0.1))
        assert not checked.errors, [e.describe() for e in checked.errors[:3]]
        assert 0 < checked.staleness_ns < lag, checked.table()
        assert checked.passes(lag) and not checked.passes(checked.staleness_ns - 1)


def test_mutated_simulations_are_rejected(seed: int) -> None:
    history = simulate(random.Random(seed), lag_ns=MS)
    assert check(history).passes(BOUND_NS)
    _check_mutations(history, BOUND_NS)


# ---- hand-made histories -------------------------------------------------------------


def w(proc: str, value: Any, call: int, ret: int, key: str = "k", ok: bool = True) -> Op:
    """A set (value not None) or a delete (None) of ``key``."""
    kind = "delete" if value is None else "set"
    return Op(proc, key, kind, value, call, ret, ok)


def r(value: Any, call: int, ret: int, key: str = "k", ok: bool = True) -> Op:
    return Op("R", key, "get", value, call, ret, ok)


def inc(value: Any, call: int, ret: int, ok: bool = True) -> Op:
    return Op("P", "c", "incr", value, call, ret, ok)


def rc(value: Any, call: int, ret: int) -> Op:
    return Op("R", "c", "get", value, call, ret)


def kinds(checked: Checked, bound: int = 0) -> list[str]:
    return [v.kind for v in checked.violations(bound)]


def test_concurrent_writes_either_value_is_fine() -> None:
    a, b = w("A", "a", 0, 10), w("B", "b", 5, 15)
    for value in ("a", "b"):
        assert check([a, b, r(value, 100, 101)]).staleness_ns == 0


def test_a_read_after_a_newer_write_is_stale_by_the_gap() -> None:
    old, new = w("A", "old", 0, 10), w("B", "new", 20, 30)
    checked = check([old, new, r("old", 40, 41)])
    assert checked.staleness_ns == 10  # 40 - 30: the read began 10 ns after "new" completed
    assert checked.passes(10) and not checked.passes(9)
    worst = checked.worst
    assert worst is not None and worst.producer == old and worst.newer == new
    assert check([old, new, r("new", 40, 41)]).staleness_ns == 0
    # A read concurrent with the newer write may return either.
    assert check([old, new, r("old", 25, 35)]).staleness_ns == 0


def test_staleness_is_measured_from_the_first_newer_write_to_complete() -> None:
    old = w("A", "old", 0, 10)
    later, sooner = w("B", "b", 20, 90), w("C", "c", 30, 40)
    assert check([old, later, sooner, r("old", 100, 101)]).staleness_ns == 60


def test_reads_of_none() -> None:
    s = w("A", "v", 0, 10)
    assert check([r(None, 0, 1), s]).staleness_ns == 0  # the initial state
    assert check([s, r(None, 20, 21)]).staleness_ns == 10  # the initial state, after a set
    d = w("D", None, 30, 40)
    assert check([s, d, r(None, 50, 51)]).staleness_ns == 0  # the delete
    assert check([s, d, r(None, 35, 36)]).staleness_ns == 0  # a delete still running
    assert check([s, d, r("v", 50, 51)]).staleness_ns == 10  # the delete hid "v"
    # The latest delete explains a None best.
    s2, d2 = w("A", "v2", 60, 70), w("D", None, 80, 90)
    assert check([s, d, s2, d2, r(None, 100, 101)]).staleness_ns == 0
    d2, s2 = w("D", None, 60, 70), w("A", "v2", 80, 90)
    assert check([s, d, s2, d2, r(None, 100, 101)]).staleness_ns == 10  # s2 after every delete


def test_a_value_no_write_produced_is_rejected() -> None:
    checked = check([w("A", "a", 0, 10), r("zzz", 20, 21)])
    assert kinds(checked, BOUND_NS) == ["unknown-value"]
    assert "'k'" in checked.violations(BOUND_NS)[0].describe()
    # Another key's value is no value of this key.
    assert kinds(check([w("A", "a", 0, 10, key="j"), r("a", 20, 21)])) == ["unknown-value"]


def test_a_read_from_the_future_is_rejected() -> None:
    s = w("A", "a", 100, 110)
    assert kinds(check([s, r("a", 50, 60)]), BOUND_NS) == ["future-read"]
    assert kinds(check([s, r("a", 50, 100)]), BOUND_NS) == ["future-read"]
    assert check([s, r("a", 50, 101)]).passes(0)  # overlaps the write: fine


def test_a_write_that_raised_may_land_any_time_after_its_call() -> None:
    ok1, lost, ok2 = w("A", "a", 0, 10), w("B", "b", 20, 30, ok=False), w("C", "c", 40, 50)
    # "b" may have landed after "c" (a stopped Redis ran it later): not stale.
    assert check([ok1, lost, ok2, r("b", 1000, 1001)]).staleness_ns == 0
    assert kinds(check([ok1, lost, r("b", 5, 15)])) == ["future-read"]
    # It never counts as a newer write: "a" is not stale after it.
    assert check([ok1, lost, r("a", 1000, 1001)]).staleness_ns == 0
    # A delete that raised explains a None.
    assert check([ok1, w("D", None, 20, 30, ok=False), r(None, 1000, 1001)]).staleness_ns == 0


def test_reads_that_raised_are_not_checked() -> None:
    checked = check([w("A", "a", 0, 10), r(None, 100, 101, ok=False)])
    assert checked.passes(0) and checked.reads == 0 and checked.raised == 1


def test_get_many_reads_are_reads() -> None:
    old, new = w("A", "old", 0, 10), w("B", "new", 20, 30)
    many = Op("R", "k", "get_many", "old", 40, 41)
    assert check([old, new, many]).staleness_ns == 10


def test_counters() -> None:
    i1, i2 = inc(1, 0, 10), inc(2, 20, 30)
    assert check([i1, i2, rc(2, 40, 41)]).staleness_ns == 0
    assert check([i1, i2, rc(1, 40, 41)]).staleness_ns == 10
    assert check([i1, i2, rc(None, 40, 41)]).staleness_ns == 30
    assert check([i1, i2, rc(None, 5, 6)]).staleness_ns == 0
    # Redis's order, not real time: incrs overlap, their results order them.
    j1, j2 = inc(1, 0, 50), inc(2, 10, 20)
    assert check([j1, j2, rc(1, 30, 31)]).staleness_ns == 10
    assert kinds(check([i1, i2, rc(3, 40, 41)])) == ["future-read"]  # two incrs: no 3
    assert kinds(check([i1, i2, rc(2, 5, 15)])) == ["future-read"]
    assert kinds(check([i1, rc("x", 20, 21)])) == ["unknown-value"]
    # An incr that raised may have counted: it explains a value no incr returned.
    lost = inc(None, 20, 30, ok=False)
    assert check([i1, lost, rc(2, 40, 41)]).passes(0)
    assert kinds(check([i1, lost, rc(2, 5, 15)])) == ["future-read"]
    assert kinds(check([i1, inc(1, 20, 30)])) == ["duplicate-result"]


def test_malformed_histories_are_refused() -> None:
    with pytest.raises(MalformedHistory, match="two writes"):
        check([w("A", "a", 0, 10), w("B", "a", 20, 30)])
    with pytest.raises(MalformedHistory, match="counter and a register"):
        check([Op("A", "k", "incr", 1, 0, 10), w("B", "a", 20, 30)])
    with pytest.raises(MalformedHistory, match="returned before"):
        check([w("A", "a", 10, 0)])


def test_violations_name_the_key_and_the_ops() -> None:
    old, new = w("A", "old", 0, 10), w("B", "new", 20, 30)
    stale = r("old", 30 + BOUND_NS + 1, 30 + BOUND_NS + 2)
    checked = check([old, new, stale])
    with pytest.raises(AssertionError) as info:
        checked.assert_passes(BOUND_NS)
    text = str(info.value)
    assert "stale-read on key 'k'" in text
    assert "R get k -> 'old'" in text and "A set k='old'" in text and "B set k='new'" in text
    assert checked.passes(BOUND_NS + 1)
    assert "measured staleness 1000.000 ms" in checked.table()


def test_save_and_load(tmp_path: Path) -> None:
    history = simulate(random.Random(1), ops=200, p_fail=0.2)
    save(history, tmp_path / "h.jsonl")
    assert load(tmp_path / "h.jsonl") == history
