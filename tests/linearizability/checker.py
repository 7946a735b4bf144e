"""A linearizability checker for histories of single-key cache operations.

What is checked
---------------
A *history* is a list of completed operations, each with the process that ran
it, the operation (``get``, ``set``, ``add``, ``replace``, ``incr``,
``delete``, ``touch``), the key, the argument, the result the real API
returned, and two ``CLOCK_MONOTONIC`` readings: ``call`` taken just before the
call and ``ret`` just after it returned.  The history is *linearizable* if
every operation can be given a point inside its own ``[call, ret]`` interval
such that, taken in the order of those points, the operations are a run of
the sequential model below that returns exactly the recorded results.

The sequential model of one key
-------------------------------
The state is "absent" (``None``) or an ``int``.  Results are those of the real
API:

=========== ================================ ============================
op          effect                           result
=========== ================================ ============================
get         none                             the value, or ``None``
set v       value := v                       ``None``
add v       value := v if absent             ``True`` iff it was absent
replace v   value := v if present            ``True`` iff it was present
incr d      value := (value or 0) + d        the new value (``default=0``)
delete      absent                           ``True`` iff it was present
touch       none (TTLs are long)             ``True`` iff present
=========== ================================ ============================

With ``may_evict=True`` the model also allows the cache to drop the key at any
moment (a capacity-bounded cache may evict anything at any time): an eviction
is a spontaneous ``delete`` that can be linearized anywhere.  It is folded into
the steps, so the model becomes nondeterministic: its state is the frozenset
of values the key may hold, and before each operation "absent" is added to it.
Without ``may_evict`` a ``get`` that returns ``None`` after a ``set`` is a
violation; with it, it is not, but a ``get`` still may never return a value
that is not the latest one written (a stale read) nor a value never written.

Why checking each key on its own is sound
-----------------------------------------
Every operation touches one key, and the model of one key does not depend on
any other key (eviction is allowed at any time, so it does not either).  The
cache is then a composition of independent objects, and Herlihy and Wing's
locality theorem says a history of such a composition is linearizable iff the
sub-history of each object is ("P-compositionality", the property Porcupine
exploits).  So the checker partitions the history by key and searches each
partition separately: a few thousand operations per search instead of the
product of all keys' interleavings.

The search (Wing & Gong, with Lowe's just-in-time linearization)
---------------------------------------------------------------
The calls and returns of one key's operations are sorted by time into a
doubly linked list (a call sorts before a return at the same nanosecond, so
such operations count as concurrent: the lenient reading of a tie).  A
depth-first search walks that list from its head:

* at a *call* entry, it tries to linearize that operation next: if the model
  accepts the operation in the current state with its recorded result, the
  call and its return are unlinked from the list (dancing-links style, so they
  can be put back in O(1)), the operation and the old state go on a stack and
  the walk restarts from the head;
* at a *return* entry, the operation it belongs to has not been linearized,
  yet everything after it in the list started after it ended and so must come
  after it: no operation further on may go next (this is Lowe's just-in-time
  rule: an operation may be linearized only if no unlinearized operation
  returned before it was called).  The search backtracks: it pops the last
  operation, puts it back in the list, restores the state and tries the
  entries after that operation's call.

The history is linearizable when the list is empty, and not when the search
backtracks past the first operation.  A memo of (set of linearized
operations, model state) pairs already explored cuts the search: two paths
that linearized the same operations and reached the same state have the same
future (Lowe's improvement of Wing & Gong; Porcupine's ``cache``).  The set is
kept as ``(base, rel)``: every operation with an index (in call order) below
``base`` is linearized, and bit ``j`` of the int ``rel`` says whether
operation ``base + j`` is.  Operations are linearized roughly in call order,
so ``rel`` stays a few bits wide and a memo entry stays small however long the
history is.

When the search fails, the explanation shows where it got furthest: the key,
how many operations it could linearize, the last of them in that order, the
state it had reached, each operation that could have gone next and why the
model refuses it, and the operations around that point by call time.  (It
does not shrink the history to a minimal failing prefix: a prefix of a
linearizable history, cut at a call time, need not be linearizable, because
an operation pending across the cut may see a write called after it.)
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, NamedTuple

__all__ = [
    "OPS",
    "CheckResult",
    "KeyResult",
    "NotLinearizable",
    "Op",
    "assert_linearizable",
    "check",
    "check_key",
    "overlapping",
]

OPS = ("get", "set", "add", "replace", "incr", "delete", "touch")


class Op(NamedTuple):
    """One completed operation of a history."""

    proc: int
    op: str
    key: Hashable
    arg: Any  # the value of set/add/replace, the delta of incr, None otherwise
    result: Any
    call: int  # time.monotonic_ns() just before the call
    ret: int  # time.monotonic_ns() just after the return
    error: str | None = None  # repr of the exception it raised, if any


class NotLinearizable(AssertionError):
    """Raised by ``assert_linearizable``; the message says where and why."""


# --------------------------------------------------------------------------
# The sequential model of one key
# --------------------------------------------------------------------------

_BAD = object()  # "the model refuses this operation with this result here"
ABSENT = None


def _same_value(a: Any, b: Any) -> bool:
    return a == b and type(a) is type(b)


def _get(s: Any, arg: Any, r: Any) -> Any:
    if r is None:
        return s if s is None else _BAD
    return s if s is not None and _same_value(r, s) else _BAD


def _set(s: Any, arg: Any, r: Any) -> Any:
    return arg if r is None else _BAD


def _add(s: Any, arg: Any, r: Any) -> Any:
    if s is None:
        return arg if r is True else _BAD
    return s if r is False else _BAD


def _replace(s: Any, arg: Any, r: Any) -> Any:
    if s is None:
        return s if r is False else _BAD
    return arg if r is True else _BAD


def _incr(s: Any, arg: Any, r: Any) -> Any:
    if s is None:
        new = arg  # default=0: a missing key starts at 0
    elif type(s) is int:
        new = s + arg
    else:
        return _BAD  # incr of a non-int raises in the real API: not modelled
    return new if type(r) is int and r == new else _BAD


def _delete(s: Any, arg: Any, r: Any) -> Any:
    if s is None:
        return s if r is False else _BAD
    return None if r is True else _BAD


def _touch(s: Any, arg: Any, r: Any) -> Any:
    if s is None:
        return s if r is False else _BAD
    return s if r is True else _BAD


_STEPS: dict[str, Callable[[Any, Any, Any], Any]] = {
    "get": _get,
    "set": _set,
    "add": _add,
    "replace": _replace,
    "incr": _incr,
    "delete": _delete,
    "touch": _touch,
}


def _expected(op: str, s: Any, arg: Any) -> Any:
    """What the deterministic model returns for ``op`` in state ``s``."""
    if op == "get":
        return s
    if op == "set":
        return None
    if op == "add":
        return s is None
    if op == "incr":
        return (0 if s is None else s) + arg if s is None or type(s) is int else "an error"
    return s is not None  # replace, delete, touch


_MAYBE_ABSENT = frozenset([ABSENT])


def _evicting(step: Callable[[Any, Any, Any], Any]) -> Callable[[Any, Any, Any], Any]:
    """The same step on a set of possible states, the key possibly evicted first."""

    def evicting_step(states: frozenset[Any], arg: Any, r: Any) -> Any:
        out = []
        for s in states | _MAYBE_ABSENT:
            n = step(s, arg, r)
            if n is not _BAD:
                out.append(n)
        return frozenset(out) if out else _BAD

    return evicting_step


_EVICTING_STEPS = {name: _evicting(fn) for name, fn in _STEPS.items()}


@dataclasses.dataclass(frozen=True)
class KeyModel:
    """The model of one key; ``may_evict`` lets the key vanish at any time."""

    may_evict: bool = False

    @property
    def init(self) -> Any:
        return _MAYBE_ABSENT if self.may_evict else ABSENT

    def step_fn(self, op: str) -> Callable[[Any, Any, Any], Any]:
        return (_EVICTING_STEPS if self.may_evict else _STEPS)[op]

    def step(self, state: Any, op: Op) -> Any:
        """The state after ``op`` (with its recorded result), or ``_BAD``."""
        return self.step_fn(op.op)(state, op.arg, op.result)

    def replay(self, ops: Iterable[Op]) -> Any:
        """Run ``ops`` in this order from the initial state; the final state.

        Raises ``NotLinearizable`` at the first op whose result the model
        refuses (used to verify a linearization the search found).
        """
        state = self.init
        for o in ops:
            new = self.step(state, o)
            if new is _BAD:
                raise NotLinearizable(f"the model refuses {o} in state {self.describe(state)}")
            state = new
        return state

    def possible_states(self, state: Any) -> list[Any]:
        if self.may_evict:
            return sorted(state | _MAYBE_ABSENT, key=repr)
        return [state]

    def expected(self, state: Any, op: Op) -> list[Any]:
        """Every result the model allows ``op`` to return in ``state``."""
        out: list[Any] = []
        for s in self.possible_states(state):
            e = _expected(op.op, s, op.arg)
            if not any(_same_value(e, x) for x in out):
                out.append(e)
        return out

    def describe(self, state: Any) -> str:
        if self.may_evict:
            return "one of {" + ", ".join(_show(s) for s in self.possible_states(state)) + "}"
        return _show(state)


def _show(value: Any) -> str:
    return "absent" if value is None else repr(value)


# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------


@dataclasses.dataclass
class KeyResult:
    key: Hashable
    ok: bool
    n_ops: int
    steps: int = 0  # iterations of the search loop
    memo: int = 0  # (linearized set, state) pairs explored
    backtracks: int = 0
    overlapping: int = 0  # operations whose interval overlaps another's on this key
    explanation: str = ""
    linearization: list[Op] | None = None  # an order found, when ok


@dataclasses.dataclass
class CheckResult:
    ok: bool
    keys: dict[Hashable, KeyResult]
    n_ops: int

    def __bool__(self) -> bool:
        return self.ok

    @property
    def failures(self) -> list[KeyResult]:
        return [r for r in self.keys.values() if not r.ok]

    @property
    def explanation(self) -> str:
        if self.ok:
            return f"linearizable: {self.n_ops} operations on {len(self.keys)} keys"
        return "\n\n".join(r.explanation for r in self.failures)

    def summary(self) -> str:
        steps = sum(r.steps for r in self.keys.values())
        over = sum(r.overlapping for r in self.keys.values())
        back = sum(r.backtracks for r in self.keys.values())
        verdict = "linearizable" if self.ok else "NOT linearizable"
        return (
            f"{verdict}: {self.n_ops} ops on {len(self.keys)} keys, {over} overlapping another "
            f"op on their key; search: {steps} steps, {back} backtracks"
        )


# --------------------------------------------------------------------------
# The search
# --------------------------------------------------------------------------


class _SearchBudgetExceeded(RuntimeError):
    pass


def _overlapping(ops: Sequence[Op]) -> int:
    """How many of ``ops`` (sorted by call) overlap at least one other."""
    n = len(ops)
    count = 0
    max_ret = None
    for i, o in enumerate(ops):
        before = max_ret is not None and o.call <= max_ret
        after = i + 1 < n and ops[i + 1].call <= o.ret
        if before or after:
            count += 1
        max_ret = o.ret if max_ret is None else max(max_ret, o.ret)
    return count


def _search(
    ops: Sequence[Op], model: KeyModel, max_steps: int | None
) -> tuple[list[int] | None, dict[str, Any]]:
    """WGL search over ``ops`` (sorted by call time).

    Returns (the linearization as op indices, or None; statistics and, on
    failure, where the search got furthest).
    """
    n = len(ops)
    stats: dict[str, Any] = {"steps": 0, "memo": 0, "backtracks": 0}
    if n == 0:
        return [], stats
    events = sorted(
        [(o.call, 0, i) for i, o in enumerate(ops)] + [(o.ret, 1, i) for i, o in enumerate(ops)]
    )
    m = 2 * n
    head = m
    node_op = [0] * m
    node_is_call = [False] * m
    call_node = [0] * n
    ret_node = [0] * n
    for e, (_t, kind, i) in enumerate(events):
        node_op[e] = i
        if kind == 0:
            node_is_call[e] = True
            call_node[i] = e
        else:
            ret_node[i] = e
    nxt = [*range(1, m), -1, 0]  # nxt[head] = 0
    prv = [head, *range(0, m - 1), -1]

    fns = [model.step_fn(o.op) for o in ops]
    args = [o.arg for o in ops]
    results = [o.result for o in ops]
    bad = _BAD

    memo: set[tuple[int, int, Any]] = set()
    stack: list[tuple[int, Any, int, int]] = []  # (op, state before, rel before, base before)
    state = model.init
    rel = 0
    base = 0
    best = -1
    best_at: tuple[int, int, Any, list[int]] = (0, 0, state, [])
    steps = 0
    backtracks = 0
    limit = max_steps if max_steps is not None else -1
    entry = nxt[head]
    while True:
        steps += 1
        if steps == limit:
            raise _SearchBudgetExceeded(f"search gave up after {steps} steps")
        if node_is_call[entry]:
            i = node_op[entry]
            ns = fns[i](state, args[i], results[i])
            if ns is not bad:
                b = i - base
                nrel = rel | (1 << b)
                nbase = base
                if b == 0:  # op `base` is now linearized: move base past the run of ones
                    t = (~nrel & (nrel + 1)).bit_length() - 1
                    nrel >>= t
                    nbase += t
                memo_key = (nbase, nrel, ns)
                if memo_key not in memo:
                    memo.add(memo_key)
                    stack.append((i, state, rel, base))
                    state, rel, base = ns, nrel, nbase
                    # lift: unlink the call and the return of op i
                    c = call_node[i]
                    p, q = prv[c], nxt[c]
                    nxt[p] = q
                    prv[q] = p  # a call is never last: its return follows it
                    r = ret_node[i]
                    p, q = prv[r], nxt[r]
                    nxt[p] = q
                    if q != -1:
                        prv[q] = p
                    entry = nxt[head]
                    if entry == -1:
                        stats.update(steps=steps, memo=len(memo), backtracks=backtracks)
                        return [s[0] for s in stack], stats
                    if len(stack) > best:
                        best = len(stack)
                        best_at = (rel, base, state, [s[0] for s in stack[-8:]])
                    continue
            entry = nxt[entry]
        else:
            # an unlinearized op returned here: nothing later may go next
            if not stack:
                stats.update(steps=steps, memo=len(memo), backtracks=backtracks)
                stats["best"] = (max(best, 0), *best_at)
                return None, stats
            backtracks += 1
            i, state, rel, base = stack.pop()
            # unlift, in the reverse order of lift
            r = ret_node[i]
            p, q = prv[r], nxt[r]
            nxt[p] = r
            if q != -1:
                prv[q] = r
            c = call_node[i]
            p, q = prv[c], nxt[c]
            nxt[p] = c
            prv[q] = c
            entry = nxt[c]


def overlapping(history: Iterable[Op | Sequence[Any]]) -> int:
    """How many operations of ``history`` overlap another one on their key."""
    by_key: dict[Hashable, list[Op]] = defaultdict(list)
    for item in history:
        o = _as_op(item)
        by_key[o.key].append(o)
    return sum(_overlapping(sorted(v, key=lambda o: (o.call, o.ret))) for v in by_key.values())


# --------------------------------------------------------------------------
# Explanations
# --------------------------------------------------------------------------


def _fmt_op(o: Op, t0: int) -> str:
    if o.op in ("set", "add", "replace", "incr"):
        call = f"{o.op}({o.key!r}, {o.arg!r})"
    else:
        call = f"{o.op}({o.key!r})"
    res = f"raised {o.error}" if o.error is not None else f"-> {o.result!r}"
    return f"p{o.proc} {call} {res}  [{(o.call - t0) / 1000:.3f} .. {(o.ret - t0) / 1000:.3f} us]"


def _explain_failure(
    key: Hashable, ops: Sequence[Op], model: KeyModel, stats: dict[str, Any], t0: int
) -> str:
    depth, rel, base, state, last = stats["best"]
    n = len(ops)

    def linearized(j: int) -> bool:
        return j < base or bool((rel >> (j - base)) & 1)

    rest = [j for j in range(n) if not linearized(j)]
    first_ret = min(ops[j].ret for j in rest)
    candidates = [j for j in rest if ops[j].call <= first_ret]
    must = min(rest, key=lambda j: ops[j].ret)
    lines = [
        f"key {key!r}: not linearizable ({n} operations on this key"
        f"{', eviction allowed' if model.may_evict else ''}).",
        f"The search linearized at most {depth} of them; the last in that order were:",
    ]
    lines += [f"    {_fmt_op(ops[j], t0)}" for j in last] or ["    (none)"]
    lines.append(f"leaving the key {model.describe(state)}.")
    lines.append(
        f"No operation can go next. Those that could (called before {_fmt_op(ops[must], t0)} "
        "returned, which must precede everything called after that):"
    )
    for j in candidates:
        o = ops[j]
        if model.step(state, o) is _BAD:
            allowed = " or ".join(repr(e) for e in model.expected(state, o))
            why = f"the model says {o.op} returns {allowed} here"
        else:
            why = "allowed here, but no linearization of the rest follows from it"
        lines.append(f"    {_fmt_op(o, t0)}: {why}")
    around = sorted(set(range(max(0, base - 6), min(n, base + 10))) | set(candidates))
    lines.append("Operations around that point, by call time (* = linearized):")
    lines += [f"  {'*' if linearized(j) else ' '} {_fmt_op(ops[j], t0)}" for j in around]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------


def _as_op(o: Any) -> Op:
    return o if isinstance(o, Op) else Op(*o)


def check_key(
    ops: Iterable[Op | Sequence[Any]],
    *,
    may_evict: bool = False,
    max_steps: int | None = None,
    t0: int | None = None,
) -> KeyResult:
    """Check the operations of one key (all must have the same key)."""
    ops = sorted((_as_op(o) for o in ops), key=lambda o: (o.call, o.ret))
    key = ops[0].key if ops else None
    model = KeyModel(may_evict)
    t0 = t0 if t0 is not None else (ops[0].call if ops else 0)
    res = KeyResult(key=key, ok=False, n_ops=len(ops), overlapping=_overlapping(ops))
    for o in ops:
        problem = None
        if o.key != key:
            problem = f"operations on two keys given to check_key: {key!r} and {o.key!r}"
        elif o.op not in _STEPS:
            problem = f"unknown operation {o.op!r} (expected one of {', '.join(OPS)})"
        elif o.error is not None:
            problem = "an operation raised, which the model does not predict"
        elif o.ret < o.call:
            problem = "an operation returned before it was called"
        if problem:
            res.explanation = f"key {key!r}: {problem}:\n    {_fmt_op(o, t0)}"
            return res
    try:
        order, stats = _search(ops, model, max_steps)
    except _SearchBudgetExceeded as exc:
        res.explanation = f"key {key!r}: undecided: {exc} ({len(ops)} operations)"
        return res
    res.steps, res.memo, res.backtracks = stats["steps"], stats["memo"], stats["backtracks"]
    if order is None:
        res.explanation = _explain_failure(key, ops, model, stats, t0)
    else:
        res.ok = True
        res.linearization = [ops[j] for j in order]
    return res


def check(
    history: Iterable[Op | Sequence[Any]],
    *,
    may_evict: bool = False,
    max_steps: int | None = None,
) -> CheckResult:
    """Check a whole history: partition it by key and check each key.

    ``may_evict``: the cache may drop any key at any time (a bounded cache
    under pressure).  ``max_steps``: per key, give up (not ok, "undecided")
    after that many search steps.
    """
    ops = [_as_op(o) for o in history]
    t0 = min((o.call for o in ops), default=0)
    by_key: dict[Hashable, list[Op]] = defaultdict(list)
    for o in ops:
        by_key[o.key].append(o)
    keys = {
        k: check_key(v, may_evict=may_evict, max_steps=max_steps, t0=t0) for k, v in by_key.items()
    }
    return CheckResult(ok=all(r.ok for r in keys.values()), keys=keys, n_ops=len(ops))


def assert_linearizable(
    history: Iterable[Op | Sequence[Any]],
    *,
    may_evict: bool = False,
    max_steps: int | None = None,
) -> CheckResult:
    """``check``, raising ``NotLinearizable`` with the explanation on failure."""
    result = check(history, may_evict=may_evict, max_steps=max_steps)
    if not result.ok:
        raise NotLinearizable(result.explanation)
    return result
