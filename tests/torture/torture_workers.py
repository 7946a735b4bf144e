"""What the torture run's child processes do: the key space, values of any
length from 0 B up, the shared counter board, and the loops of the four roles.

Nothing here starts or kills a process: ``torture_driver.py`` forks children
and each one calls ``child_main`` and never returns from it.

* **Values.** A value of a data key says which key it belongs to. From the
  smallest length ``make_value`` can frame up, it *is* a ``make_value``
  (tests/_workers.py: key, writer pid, version, BLAKE2b). Below that, down to
  0 B, it is ``tiny_value(key, n)``: n bytes that only key and n determine.
  Either way ``judge`` tells a whole value of the key (``OK``) from a value of
  another key (``FOREIGN``) or anything else (``TORN``).
* **The board.** One anonymous shared mapping of int64 counters, a *lane*
  per live child. The child bumps its lane with plain stores; the parent
  reads it at any time and folds it into the totals once the child is dead,
  so a SIGKILL loses no count.
* **Reports.** Details of a failure go up one pipe shared by all children,
  one JSON line per ``os.write`` and each shorter than ``PIPE_BUF``, so a
  line is never interleaved with another or cut by a SIGKILL. The write end
  is non-blocking: a child never waits for the parent to read.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import mmap
import os
import random
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: _workers

from _workers import FOREIGN, OK, TORN, StopFlag, make_value, verify_value

from metis_shm import Cache
from metis_shm.errors import PinLimit, ValueTooLarge

# --------------------------------------------------------------------------
# Keys and values
# --------------------------------------------------------------------------

RAW_MAX = 3000  # the random-bytes values: 0 to 3000 B
LINE_LIMIT = 3800  # below PIPE_BUF (4096): one os.write of a line is atomic
# Lines per child and kind; the lane counts everything, and the parent turns
# a count beyond the lines it got into a failure of its own.
MAX_LINES = {"slow": 20, "bad": 40, "error": 20, "check": 20}
WHOLE_MEMO = 4096  # values a reader remembers as judged whole
PARENT_CHECK_EVERY = 256  # ops between checks that the driver is still alive


def hot_keys(n: int) -> list[str | bytes]:
    """``n`` keys of different lengths, every fourth one bytes.

    Different key lengths put each value at a different offset inside its
    block, so a reused block changes what lies at any given offset.
    """
    out: list[str | bytes] = []
    for i in range(n):
        name = f"hot{i}:" + "x" * ((i * 37) % 53)
        out.append(name.encode() if i % 4 == 3 else name)
    return out


@dataclass(frozen=True)
class KeySpace:
    """Every key a phase uses; a key outside it in ``keys()`` is foreign."""

    hot: tuple[str | bytes, ...]
    cold: tuple[str, ...]
    counters: tuple[str, ...]
    absent: tuple[str, ...]  # never written: any value read for one is foreign

    @classmethod
    def build(cls, n_hot: int, n_cold: int, n_counters: int) -> KeySpace:
        """The key space of a phase with ``n_hot`` hot keys."""
        return cls(
            hot=tuple(hot_keys(n_hot)),
            cold=tuple(f"cold:{i:04d}" for i in range(n_cold)),
            counters=tuple(f"ctr:{i}" for i in range(n_counters)),
            absent=tuple(f"never:{i}" for i in range(8)),
        )

    @property
    def data(self) -> tuple[str | bytes, ...]:
        """Keys that hold values (not counters)."""
        return self.hot + self.cold

    def known(self) -> frozenset[str | bytes]:
        """Keys a writer may have stored."""
        return frozenset(self.data + self.counters)


def _kb(key: str | bytes) -> bytes:
    return key.encode() if isinstance(key, str) else key


@functools.cache
def framed_min(key: str | bytes) -> int:
    """The shortest value ``make_value`` can make for ``key``."""
    return len(make_value(key, 0, 0, random.Random(0)))


def tiny_value(key: str | bytes, n: int) -> bytes:
    """``n`` bytes determined by key and n, for lengths too short to frame.

    The length is in the hash, so a truncated tiny value is not another
    valid one. Only ``b""`` cannot name its key; a torn read that comes back
    empty passes unseen, the price of storing empty values at all.
    """
    digest = hashlib.blake2b(_kb(key) + n.to_bytes(4, "little"), digest_size=64).digest()
    return (digest * (n // 64 + 1))[:n]


def build_value(key: str | bytes, version: int, length: int, rng: random.Random) -> bytes:
    """A value of exactly ``length`` bytes that ``judge`` accepts for ``key``."""
    floor = framed_min(key)
    if length < floor:
        return tiny_value(key, length)
    return make_value(key, version, length - floor, rng)


def judge(key: str | bytes, value: Any, others: Sequence[str | bytes]) -> str:
    """``OK``, ``FOREIGN`` (a value of another key) or ``TORN``, for a data key."""
    if not isinstance(value, bytes):
        return FOREIGN  # a counter or a str: nothing a data key ever held
    verdict = verify_value(key, value)
    if verdict != TORN or len(value) >= framed_min(key):
        return verdict
    if value == tiny_value(key, len(value)):
        return OK
    if any(value == tiny_value(k, len(value)) for k in others if len(value) < framed_min(k)):
        return FOREIGN
    return TORN


def value_length(rng: random.Random, large: tuple[int, int] | None, large_share: float) -> int:
    """0 B to several KiB, log-uniform, 0 included; now and then a large one."""
    p = rng.random()
    if p < 0.04:
        return 0
    if large is not None and p < 0.04 + large_share:
        return rng.randint(*large)
    return int(2 ** rng.uniform(0.0, 12.6))  # 1 B to ~6 KiB


# --------------------------------------------------------------------------
# The board
# --------------------------------------------------------------------------

FIELDS = (
    "ops", "reads", "hits", "ok", "torn", "foreign", "bad_counter", "writes", "refused",
    "errors", "repairs", "checks", "bad_checks", "sweeps", "drains", "keys_calls", "slow",
    "views", "views_held",
)  # fmt: skip
# Not counts: the op a child is in (an index into OP_NAMES, for reports of a
# crash or a hang), and a repairer's "inside a burst of repairs" flag (the
# parent aims some of its SIGKILLs at repairs).
F_OP = len(FIELDS)
F_BUSY = F_OP + 1
LANE_WORDS = 32
IDX = {name: i for i, name in enumerate(FIELDS)}

OP_NAMES = (
    "start", "get", "get_burst", "get_many", "contains", "get_counter", "get_absent", "keys",
    "churn", "set", "set_ttl", "delete", "add", "replace", "pop", "incr", "decr", "touch",
    "set_many", "delete_many", "clear", "repair", "check", "sweep", "drain", "stats",
    "raw_set", "raw_get", "view", "view_hold",
)  # fmt: skip
OP_CODE = {name: i for i, name in enumerate(OP_NAMES)}


class Board:
    """int64 counters in an anonymous shared mapping, one lane per child."""

    def __init__(self, lanes: int = 64) -> None:
        self._map = mmap.mmap(-1, lanes * LANE_WORDS * 8)
        self._words = memoryview(self._map).cast("q")
        self._free = list(range(lanes - 1, -1, -1))

    def lane(self, index: int) -> memoryview:
        """The words of lane ``index`` (shared with the child that owns it)."""
        return self._words[index * LANE_WORDS : (index + 1) * LANE_WORDS]

    def take(self) -> int:
        """A free lane, zeroed."""
        index = self._free.pop()
        lane = self.lane(index)
        for i in range(LANE_WORDS):
            lane[i] = 0
        return index

    def counts(self, index: int) -> dict[str, int]:
        """The counts of a lane as they are now."""
        lane = self.lane(index)
        return {name: lane[i] for i, name in enumerate(FIELDS)}

    def give_back(self, index: int) -> None:
        """Return a dead child's lane (after its counts were folded)."""
        self._free.append(index)


# --------------------------------------------------------------------------
# What a child needs
# --------------------------------------------------------------------------


@dataclass
class PhaseSpec:
    """What the children of one phase share (fixed before the first fork)."""

    space: KeySpace
    value_kind: str  # "framed": judged values; "raw": the random bytes
    large: tuple[int, int] | None  # lengths of the occasional large value
    large_share: float
    stall_seconds: float  # a read longer than this is reported to the parent
    clear_share: float  # per writer op


@dataclass
class ChildContext:
    """The pieces of the parent a child uses (inherited through fork)."""

    cache: Cache
    spec: PhaseSpec
    board: Board
    stop: StopFlag
    report_fd: int
    read_fd: int  # the parent's end, closed in the child
    parent_pid: int


class Reporter:
    """Failure lines to the parent; at most ``MAX_LINES`` per child."""

    def __init__(self, fd: int, role: str) -> None:
        self.fd = fd
        self.role = role
        self.left = dict(MAX_LINES)

    def send(self, kind: str, **fields: Any) -> None:
        """One JSON line; dropped when the pipe is full or the quota is spent."""
        if self.left.get(kind, 0) <= 0:
            return
        self.left[kind] -= 1
        message = {"type": kind, "pid": os.getpid(), "role": self.role, "at": time.monotonic()}
        message.update(fields)
        data = json.dumps(message, default=repr).encode()
        if len(data) >= LINE_LIMIT:
            for name in ("traceback", "detail", "head"):
                if name in message:
                    message[name] = str(message[name])[: LINE_LIMIT // 4]
            data = json.dumps(message, default=repr).encode()[: LINE_LIMIT - 2]
        # Dropped when the pipe is full: the lane still counts it, and a child
        # must never wait for the parent.
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(self.fd, data + b"\n")


# --------------------------------------------------------------------------
# The roles
# --------------------------------------------------------------------------


class Worker:
    """The loop every role shares: pick an op by weight, run it, count it."""

    role = "worker"
    OPS: tuple[tuple[str, float], ...] = ()

    def __init__(self, ctx: ChildContext, lane: memoryview, seed: int) -> None:
        self.ctx = ctx
        self.cache = ctx.cache
        self.spec = ctx.spec
        self.space = ctx.spec.space
        self.lane = lane
        self.rng = random.Random(seed)
        self.out = Reporter(ctx.report_fd, self.role)
        names, weights = zip(*self.OPS, strict=True)
        self._names = names
        self._cum = list(_cumulative(weights))
        self._ops: dict[str, Callable[[], None]] = {
            n[3:]: getattr(self, n) for n in dir(self) if n.startswith("op_")
        }
        self._codes = {n: OP_CODE[n] for n in self._ops}
        # Values already judged whole for a key, by their last 16 bytes (a
        # framed value's digest): a value equal to one of them byte for byte
        # is whole too, and comparing costs a memcmp where judging costs a
        # BLAKE2b. Readers then spend their time in the engine's read path,
        # which is what this run attacks.
        self._whole: dict[tuple[Any, bytes], bytes] = {}
        self._data = frozenset(self.space.data)

    def bump(self, name: str, n: int = 1) -> None:
        """Add to one of this child's counts."""
        self.lane[IDX[name]] += n

    def pick(self) -> str:
        """An op name, drawn by weight."""
        x = self.rng.random() * self._cum[-1]
        for name, edge in zip(self._names, self._cum, strict=True):
            if x < edge:
                return name
        return self._names[-1]

    def run(self) -> None:
        """Run ops until the phase ends or the driver is gone."""
        stop = self.ctx.stop
        n = 0
        while not stop.is_set():
            n += 1
            if n % PARENT_CHECK_EVERY == 0 and os.getppid() != self.ctx.parent_pid:
                return
            self.one(self.pick())

    def one(self, op: str) -> None:
        """One op; a documented refusal is counted, anything else reported."""
        self.lane[F_OP] = self._codes.get(op, OP_CODE["start"])
        try:
            self._ops[op]()
        except ValueTooLarge:
            # Documented: a write that finds no room in its shard stores nothing.
            self.bump("refused")
        except Exception as exc:
            self.bump("errors")
            self.out.send(
                "error",
                op=op,
                detail=f"{type(exc).__name__}: {exc}",
                traceback=traceback.format_exc(),
            )
        self.lane[IDX["ops"]] += 1

    # ---- checking reads ----------------------------------------------------

    def key_class(self, key: Any) -> str:
        """'data', 'counter', 'absent' or 'unknown'."""
        if key in self.space.counters:
            return "counter"
        if key in self.space.absent:
            return "absent"
        if key in self._data:
            return "data"
        return "unknown"

    def check(self, op: str, key: Any, value: Any) -> None:
        """Count a read of ``key`` and judge the value it returned."""
        self.bump("reads")
        if value is None:
            return
        self.bump("hits")
        kind = self.key_class(key)
        if kind == "counter":
            if type(value) is int:
                self.bump("ok")
            else:
                self.bump("bad_counter")
                self.out.send(
                    "bad", verdict="counter", op=op, key=repr(key), detail=repr(value)[:200]
                )
            return
        if kind != "data":
            verdict = FOREIGN  # a never-written key has no value to find
        elif self.spec.value_kind == "raw":
            verdict = OK if isinstance(value, bytes) and len(value) <= RAW_MAX else TORN
        else:
            verdict = self.judge_framed(key, value)
        self.bump(verdict)
        if verdict != OK:
            raw = value if isinstance(value, bytes) else repr(value).encode()
            self.out.send(
                "bad",
                verdict=verdict,
                op=op,
                key=repr(key),
                length=len(raw),
                head=raw[:96].hex(),
            )

    def judge_framed(self, key: Any, value: Any) -> str:
        """``judge``, remembering values found whole."""
        if not isinstance(value, bytes):
            return FOREIGN
        memo = (key, value[-16:])
        if self._whole.get(memo) == value:
            return OK
        verdict = judge(key, value, self.space.hot)
        if verdict == OK:
            if len(self._whole) >= WHOLE_MEMO:
                self._whole.clear()
            self._whole[memo] = value
        return verdict

    def timed(self, op: str, key: Any, call: Callable[[], Any]) -> Any:
        """``call()``, reporting it when it took longer than the stall limit."""
        t0 = time.monotonic()
        result = call()
        t1 = time.monotonic()
        if t1 - t0 > self.spec.stall_seconds:
            self.bump("slow")
            self.out.send("slow", op=op, key=repr(key), t0=t0, t1=t1)
        return result


class Writer(Worker):
    """Every kind of write on the hot and cold keys; counters on their own keys."""

    role = "writer"
    OPS = (
        ("churn", 60.0), ("set", 34.0), ("set_ttl", 6.0), ("delete", 8.0), ("add", 5.0),
        ("replace", 5.0), ("pop", 5.0), ("incr", 8.0), ("decr", 2.0), ("touch", 4.0),
        ("set_many", 6.0), ("delete_many", 2.0), ("get", 3.0),
    )  # fmt: skip
    POOL_PER_KEY = 12

    def __init__(self, ctx: ChildContext, lane: memoryview, seed: int) -> None:
        super().__init__(ctx, lane, seed)
        self.version = 0
        # Prebuilt values for the hot keys: most writes do no Python work but
        # the call, so the blocks of those keys are freed and reused at the
        # highest rate the engine allows, each time at another size.
        self.pool = {
            key: [self.fresh(key) for _ in range(self.POOL_PER_KEY)] for key in self.space.hot
        }
        self.large_pool: list[tuple[str | bytes, bytes]] = []
        if self.spec.large is not None:
            for key in self.rng.sample(self.space.hot, min(3, len(self.space.hot))):
                self.version += 1
                length = self.rng.randint(*self.spec.large)
                self.large_pool.append((key, build_value(key, self.version, length, self.rng)))
        self.churn_list = [(k, v) for k, values in self.pool.items() for v in values]
        self.rng.shuffle(self.churn_list)
        self.churn_at = 0

    def fresh(self, key: str | bytes) -> bytes:
        """A new value for ``key``, of a random length (no large ones)."""
        self.version += 1
        return build_value(key, self.version, value_length(self.rng, None, 0.0), self.rng)

    def pick_key(self) -> str | bytes:
        """Hot keys mostly: a few blocks reused over and over."""
        if self.rng.random() < 0.8 or not self.space.cold:
            return self.rng.choice(self.space.hot)
        return self.rng.choice(self.space.cold)

    def value_for(self, key: str | bytes) -> tuple[str | bytes, bytes]:
        """(key, value): sometimes a large value (for its own key), else pooled or new."""
        if self.large_pool and self.rng.random() < self.spec.large_share:
            return self.rng.choice(self.large_pool)
        pool = self.pool.get(key)
        if pool is not None and self.rng.random() < 0.85:
            return key, self.rng.choice(pool)
        return key, self.fresh(key)

    def ttl(self) -> float | None:
        """Short (items expire under the readers), long, or the default (none)."""
        p = self.rng.random()
        if p < 0.5:
            return self.rng.uniform(0.005, 0.3)
        return 3600.0 if p < 0.8 else None

    def one(self, op: str) -> None:
        """Now and then a ``clear()`` instead of the op drawn."""
        if self.rng.random() < self.spec.clear_share:
            op = "clear"
        super().one(op)
        if op != "get":
            self.bump("writes")

    def op_churn(self) -> None:
        # Back-to-back sets of the hot keys, each at another length: the
        # blocks readers are inside are freed, merged, split and refilled at
        # other offsets as fast as the engine goes.
        n = self.rng.randint(16, 96)
        items, at, cache_set = self.churn_list, self.churn_at, self.cache.set
        for i in range(at, at + n):
            key, value = items[i % len(items)]
            cache_set(key, value)
        self.churn_at = (at + n) % len(items)
        self.bump("writes", n - 1)

    def op_set(self) -> None:
        key, value = self.value_for(self.pick_key())
        self.cache.set(key, value)

    def op_set_ttl(self) -> None:
        key, value = self.value_for(self.pick_key())
        self.cache.set(key, value, ttl=self.rng.uniform(0.005, 0.3))

    def op_delete(self) -> None:
        self.cache.delete(self.pick_key())

    def op_add(self) -> None:
        key, value = self.value_for(self.pick_key())
        self.cache.add(key, value)

    def op_replace(self) -> None:
        key, value = self.value_for(self.pick_key())
        self.cache.replace(key, value)

    def op_pop(self) -> None:
        key = self.pick_key()
        self.check("pop", key, self.cache.pop(key, None))

    def _counter_result(self, op: str, key: str, result: Any) -> None:
        if type(result) is not int:
            self.bump("bad_counter")
            self.out.send("bad", verdict="counter", op=op, key=key, detail=repr(result)[:200])

    def op_incr(self) -> None:
        key = self.rng.choice(self.space.counters)
        self._counter_result("incr", key, self.cache.incr(key, self.rng.randint(1, 9), default=0))

    def op_decr(self) -> None:
        key = self.rng.choice(self.space.counters)
        self._counter_result("decr", key, self.cache.decr(key, 1, default=0))

    def op_touch(self) -> None:
        self.cache.touch(self.pick_key(), ttl=self.ttl())

    def op_set_many(self) -> None:
        batch = self.rng.sample(self.space.data, min(len(self.space.data), self.rng.randint(2, 6)))
        mapping = dict(self.value_for(key) for key in batch)
        self.cache.set_many(mapping, ttl=self.rng.choice((None, None, self.ttl())))

    def op_delete_many(self) -> None:
        self.cache.delete_many(self.rng.sample(self.space.data, min(len(self.space.data), 4)))

    def op_get(self) -> None:
        key = self.pick_key()
        self.check("get", key, self.cache.get(key))

    def op_clear(self) -> None:
        self.cache.clear()


class Reader(Worker):
    """get, get_many, ``in`` and keys(); every value judged, slow reads timed."""

    role = "reader"
    OPS = (
        ("get_burst", 80.0), ("get", 40.0), ("get_many", 14.0), ("contains", 10.0),
        ("get_counter", 8.0), ("get_absent", 3.0), ("keys", 0.05), ("view", 20.0),
        ("view_hold", 4.0),
    )  # fmt: skip

    def pick_key(self) -> str | bytes:
        if self.rng.random() < 0.8 or not self.space.cold:
            return self.rng.choice(self.space.hot)
        return self.rng.choice(self.space.cold)

    def op_get(self) -> None:
        key = self.pick_key()
        self.check("get", key, self.timed("get", key, lambda: self.cache.get(key)))

    def op_get_burst(self) -> None:
        # Reads first, judging after: the reads come as densely as the
        # engine allows, every one still judged.
        hot, choice, get = self.space.hot, self.rng.choice, self.cache.get
        keys = [choice(hot) for _ in range(self.rng.randint(16, 64))]
        t0 = time.monotonic()
        values = [get(key) for key in keys]
        if time.monotonic() - t0 > self.spec.stall_seconds:
            self.bump("slow")
            self.out.send("slow", op="get_burst", key=repr(keys[0]), t0=t0, t1=time.monotonic())
        for key, value in zip(keys, values, strict=True):
            self.check("get", key, value)

    def op_view(self) -> None:
        # A view is the stored bytes in place: judged as get's value is (a
        # counter's view is its 8 bytes, nothing to judge).
        key = self.pick_key()
        ctx = self.cache.view(key)
        try:
            mv = self.timed("view", key, ctx.__enter__)  # the lookup and the pin
        except PinLimit:
            self.bump("refused")  # a large value past max_pinned: refused, by design
            return
        try:
            value = None if mv is None else bytes(mv)
        finally:
            ctx.__exit__(None, None, None)
        self.bump("views")
        self.check("view", key, value)

    def op_view_hold(self) -> None:
        # Pins held while the writers overwrite, delete, evict and clear:
        # what each view shows must not move until it is closed.
        views = []
        for key in self.rng.sample(self.space.hot, min(len(self.space.hot), 4)):
            ctx = self.cache.view(key)
            try:
                mv = ctx.__enter__()
            except PinLimit:
                self.bump("refused")
                continue
            if mv is None:
                ctx.__exit__(None, None, None)
            else:
                views.append((key, ctx, mv, bytes(mv)))
        try:
            for _ in range(self.rng.randint(1, 50)):
                self.cache.get(self.rng.choice(self.space.hot))
            time.sleep(self.rng.uniform(0.0, 0.003))
            for key, _ctx, mv, first in views:
                self.bump("views_held")
                if bytes(mv) != first:
                    self.bump("torn")
                    self.out.send(
                        "bad", verdict="MOVED", op="view_hold", key=repr(key), length=len(first)
                    )
                else:
                    self.check("view_hold", key, first)
        finally:
            for _key, ctx, _mv, _first in views:
                ctx.__exit__(None, None, None)

    def op_get_counter(self) -> None:
        key = self.rng.choice(self.space.counters)
        self.check("get", key, self.timed("get_counter", key, lambda: self.cache.get(key)))

    def op_get_absent(self) -> None:
        key = self.rng.choice(self.space.absent)
        self.check("get", key, self.timed("get_absent", key, lambda: self.cache.get(key)))

    def op_get_many(self) -> None:
        pool = self.space.hot + self.space.counters + self.space.absent
        # Up to 44 keys: batches that span get_many's prefetch windows (16).
        batch = [self.pick_key() for _ in range(self.rng.randint(1, 36))]
        batch += self.rng.sample(pool, min(len(pool), self.rng.randint(1, 8)))
        found = self.timed("get_many", batch[0], lambda: self.cache.get_many(batch))
        for key in set(batch):
            self.check("get_many", key, found.get(key))
        for key in found:
            if key not in batch:
                self.bump("foreign")
                self.out.send(
                    "bad",
                    verdict=FOREIGN,
                    op="get_many",
                    key=repr(key),
                    detail="a key that was not asked for",
                )

    def op_contains(self) -> None:
        key = self.rng.choice(self.space.hot + self.space.absent)
        present = self.timed("contains", key, lambda: key in self.cache)
        self.bump("reads")
        if type(present) is not bool or (present and key in self.space.absent):
            self.bump("foreign")
            self.out.send(
                "bad", verdict=FOREIGN, op="contains", key=repr(key), detail=repr(present)
            )

    def op_keys(self) -> None:
        self.bump("keys_calls")
        known = self.space.known()
        listing = self.cache.keys()  # a generator: it walks the shards as it goes
        for key in listing:
            if key not in known:
                self.bump("foreign")
                self.out.send(
                    "bad",
                    verdict=FOREIGN,
                    op="keys",
                    key=repr(key)[:200],
                    detail="keys() yielded a key nobody stored",
                )


class Repairer(Worker):
    """check() (must stay clean), _repair_shard(i), sweep(), drain(), stats()."""

    role = "repairer"
    OPS = (("repair", 40.0), ("check", 20.0), ("sweep", 20.0), ("drain", 10.0), ("stats", 10.0))

    def __init__(self, ctx: ChildContext, lane: memoryview, seed: int) -> None:
        super().__init__(ctx, lane, seed)
        self.n_shards = self.cache.n_shards

    def run(self) -> None:
        """check() first: a repairer killed mid-repair leaves marks that make
        the next locker's repair cut chains and keep unreachable blocks, and
        a later repair would tidy that away before anyone looked."""
        self.one("check")
        super().run()

    def one(self, op: str) -> None:
        """The op, then a pause: writers and readers must get the shards back."""
        super().one(op)
        time.sleep(self.rng.uniform(0.0, 0.002))

    def op_repair(self) -> None:
        # A burst, with the busy flag up, so that the parent's SIGKILLs aimed
        # at repairs land inside one (a repair of a small shard takes µs).
        self.lane[F_BUSY] = 1
        try:
            for _ in range(self.rng.randint(20, 200)):
                self.cache._repair_shard(self.rng.randrange(self.n_shards))
                self.bump("repairs")
        finally:
            self.lane[F_BUSY] = 0

    def op_check(self) -> None:
        # Under each shard's lock the shard is consistent, whatever died
        # before: check() repairs a dead writer's shard before it looks.
        self.bump("checks")
        problems = self.cache.check()
        if problems:
            self.bump("bad_checks")
            self.out.send("check", op="check", detail=problems[:20])

    def op_sweep(self) -> None:
        self.bump("sweeps")
        self.cache.sweep(max_items=self.rng.choice((8, 64, 1024)))

    def op_drain(self) -> None:
        self.bump("drains")
        self.cache.drain()

    def op_stats(self) -> None:
        self.cache.stats()


class RawWriter(Worker):
    """The issue's writer: random bytes of 0 to 3000 B under the hot keys."""

    role = "writer"
    OPS = (("raw_set", 1.0),)

    def op_raw_set(self) -> None:
        self.cache.set(self.rng.choice(self.space.hot), os.urandom(self.rng.randint(0, RAW_MAX)))
        self.bump("writes")


class RawReader(Worker):
    """The issue's reader: get() of the hot keys."""

    role = "reader"
    OPS = (("raw_get", 1.0),)

    def op_raw_get(self) -> None:
        key = self.rng.choice(self.space.hot)
        self.check("get", key, self.timed("raw_get", key, lambda: self.cache.get(key)))


ROLES: dict[str, type[Worker]] = {
    "writer": Writer,
    "reader": Reader,
    "repairer": Repairer,
    "raw_writer": RawWriter,
    "raw_reader": RawReader,
}


def role_kind(role: str) -> str:
    """'writer', 'reader' or 'repairer' (the raw roles are their plain kinds)."""
    return ROLES[role].role


def child_main(ctx: ChildContext, role: str, lane_index: int, seed: int) -> NoReturn:
    """The body of a forked child: run ``role`` until the phase ends, then ``_exit``.

    Exit code 0 after the stop flag; 1 after an exception (sent up first).
    """
    code = 1
    try:
        # Ctrl-C in a terminal reaches the whole group: only the driver acts on it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        os.close(ctx.read_fd)
        ROLES[role](ctx, ctx.board.lane(lane_index), seed).run()
        code = 0
    except BaseException:
        Reporter(ctx.report_fd, role_kind(role)).send(
            "error", op="(outside an op)", detail="child raised", traceback=traceback.format_exc()
        )
    finally:
        os._exit(code)


def _cumulative(weights: Sequence[float]) -> list[float]:
    out, total = [], 0.0
    for w in weights:
        total += w
        out.append(total)
    return out
