"""One worker process of the chaos run: random operations on a shared key space.

    python chaos_worker.py --name CACHE --worker-id 3.1 --seed 12345 --keys 3000

Every value it writes is self-describing (``make_value`` in tests/_workers.py:
the key, the writer's pid, a sequence number and a BLAKE2b checksum over the
whole value), so every value it reads is checked: a value carrying another
key is *foreign*, a value whose checksum or framing fails is *torn*.

It reports on its stdout, one JSON object per line, each line shorter than
``PIPE_BUF`` so that a line is written whole or not at all even when the
process is SIGKILLed mid-write:

* ``{"type": "counts", "counts": {...}}``: cumulative counters, about every
  ``REPORT_EVERY`` seconds (a SIGKILLed worker loses at most that much);
* ``{"type": "bad", ...}``: a foreign or torn value, at once, with details;
* ``{"type": "error", ...}``: an exception no documented behaviour explains.

SIGTERM asks it to finish the current operation, report and exit 0. It also
exits when its parent (the chaos driver) is gone, so a driver killed by
accident leaves no worker behind.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: _workers

from _workers import FOREIGN, OK, make_value, verify_value

from metis_shm import Cache
from metis_shm.errors import ValueTooLarge

REPORT_EVERY = 0.2  # seconds between count reports
LINE_LIMIT = 3800  # bytes; below PIPE_BUF (4096): a pipe write of a line is atomic
MAX_VALUE_PAYLOAD = 48 * 1024  # payload bytes: log-uniform from 1 B to 48 KiB
HOT_KEYS = 32  # a third of the key choices go to these: contention on a few items
COUNTERS = 16
CLEAR_PROBABILITY = 2e-6  # per operation: with 4 workers, about one clear every 10-30 s
MAX_ERROR_LINES = 50  # error/bad lines sent per worker process; counts go on after

# (operation, weight): reads dominate, as in a cache's life; every write path is present.
MIXED: tuple[tuple[str, float], ...] = (
    ("get", 42.0),
    ("get_many", 5.0),
    ("set", 18.0),
    ("set_ttl", 7.0),
    ("add", 2.0),
    ("replace", 2.0),
    ("set_many", 2.0),
    ("delete", 6.0),
    ("delete_many", 1.0),
    ("pop", 2.0),
    ("touch", 1.5),
    ("incr", 4.0),
    ("decr", 1.0),
    ("keys", 0.02),
)
# The hammer writes values it built at start: no Python work between writes,
# so a large share of its time is spent holding shard locks, and a SIGKILL or
# SIGSTOP of it often lands inside the locked write path.
HAMMER: tuple[tuple[str, float], ...] = (
    ("set_many_big", 50.0),
    ("set", 20.0),
    ("delete_many", 10.0),
    ("get_many", 10.0),
    ("get", 10.0),
)
HAMMER_POOL = 400  # keys the hammer has values for (the hot keys among them)
HAMMER_MAX_PAYLOAD = 8 * 1024  # below the compression threshold: no codec work either
PROFILES = {"mixed": MIXED, "hammer": HAMMER}


def key_space(n_keys: int) -> list[str]:
    """The keys every worker draws from (the counters are separate keys)."""
    return [f"k:{i:05d}" for i in range(n_keys)]


def counter_keys() -> list[str]:
    """Keys that only ever hold counters (``incr``/``decr``)."""
    return [f"ctr:{i:02d}" for i in range(COUNTERS)]


def payload_size(rng: random.Random, largest: int = MAX_VALUE_PAYLOAD) -> int:
    """Log-uniform from 1 B to ``largest``: many small values, some above the
    16 KiB compression threshold, a few large enough to evict."""
    return int(2 ** rng.uniform(0.0, math.log2(largest)))


class Reporter:
    """Writes the JSON lines to stdout, each one whole."""

    def __init__(self, fd: int = 1) -> None:
        self.fd = fd
        self.lines_left = MAX_ERROR_LINES

    def send(self, message: dict[str, Any]) -> None:
        """One line; details are cut so that the line stays under ``LINE_LIMIT``."""
        data = json.dumps(message, separators=(",", ":")).encode()
        if len(data) >= LINE_LIMIT:
            for field in ("traceback", "head", "detail"):
                if field in message:
                    message[field] = str(message[field])[: LINE_LIMIT // 4]
            data = json.dumps(message, separators=(",", ":")).encode()[: LINE_LIMIT - 2]
            if not data.endswith(b"}"):
                data = json.dumps({k: message[k] for k in ("type", "op") if k in message}).encode()
        os.write(self.fd, data + b"\n")

    def send_limited(self, message: dict[str, Any]) -> None:
        """A bad-value or error line, up to ``MAX_ERROR_LINES`` per process."""
        if self.lines_left > 0:
            self.lines_left -= 1
            self.send(message)


class StopRequest:
    """Set by SIGTERM, read by the loop between operations."""

    def __init__(self) -> None:
        self.requested = False

    def on_signal(self, signum: int, frame: object) -> None:
        """SIGTERM handler: finish the current operation, then stop."""
        self.requested = True


class ChaosWorker:
    """The operation loop of one worker process."""

    def __init__(
        self,
        cache: Cache,
        worker_id: str,
        seed: int,
        n_keys: int,
        stop: StopRequest,
        profile: str = "mixed",
    ) -> None:
        self.cache = cache
        self.worker_id = worker_id
        self.rng = random.Random(seed)
        self.keys = key_space(n_keys)
        self.counters = counter_keys()
        self.counts: Counter[str] = Counter()
        self.reporter = Reporter()
        self.seq = 0
        self.stop = stop
        self.pool: dict[str, bytes] = {}
        if profile == "hammer":
            hot = self.keys[:HOT_KEYS]
            rest = self.rng.sample(self.keys[HOT_KEYS:], max(0, HAMMER_POOL - len(hot)))
            self.pool = {key: self.fresh_value(key, HAMMER_MAX_PAYLOAD) for key in [*hot, *rest]}
            self.keys = list(self.pool)
        names, weights = zip(*PROFILES[profile], strict=True)
        self._names: Sequence[str] = names
        self._cum = list(_cumulative(weights))
        self._ops: dict[str, Callable[[], None]] = {
            name: getattr(self, f"op_{name}") for name in names
        }

    # ---- choosing ------------------------------------------------------------

    def pick_key(self) -> str:
        """A third of the time one of the first ``HOT_KEYS`` keys."""
        if self.rng.random() < 1 / 3:
            return self.keys[self.rng.randrange(min(HOT_KEYS, len(self.keys)))]
        return self.rng.choice(self.keys)

    def new_value(self, key: str) -> bytes:
        """A value for ``key``: the hammer's prebuilt one, or a new one."""
        value = self.pool.get(key)
        return value if value is not None else self.fresh_value(key)

    def fresh_value(self, key: str, largest: int = MAX_VALUE_PAYLOAD) -> bytes:
        """A new self-describing value for ``key`` (next sequence number)."""
        self.seq += 1
        return make_value(key, self.seq, payload_size(self.rng, largest), self.rng)

    def pick_op(self) -> str:
        """An operation name, drawn by the profile's weights."""
        x = self.rng.random() * self._cum[-1]
        for name, edge in zip(self._names, self._cum, strict=True):
            if x < edge:
                return name
        return self._names[-1]

    # ---- checking ------------------------------------------------------------

    def check(self, op: str, key: str, value: Any) -> None:
        """Count a read; a value that is not a whole value of ``key`` is reported."""
        self.counts["reads"] += 1
        if value is None:
            self.counts["misses"] += 1
            return
        self.counts["hits"] += 1
        verdict = verify_value(key, value)
        self.counts[verdict] += 1
        if verdict != OK:
            self.report_bad(op, key, verdict, value)

    def report_bad(self, op: str, key: Any, verdict: str, value: Any) -> None:
        """Send the details of a foreign or torn value."""
        raw = bytes(value) if isinstance(value, bytes | bytearray) else repr(value).encode()
        self.reporter.send_limited(
            {
                "type": "bad",
                "verdict": verdict,
                "worker": self.worker_id,
                "pid": os.getpid(),
                "op": op,
                "key": str(key),
                "length": len(raw),
                "head": raw[:96].hex(),
                "at": time.time(),
            }
        )

    # ---- operations ----------------------------------------------------------

    def op_get(self) -> None:
        """``get`` of one key; the value is checked."""
        key = self.pick_key()
        self.check("get", key, self.cache.get(key))

    def op_get_many(self) -> None:
        """``get_many`` of 2-8 keys; every value and every returned key is checked."""
        batch = self.rng.sample(self.keys, self.rng.randint(2, 8))
        found = self.cache.get_many(batch)
        for key in batch:
            self.check("get_many", key, found.get(key))
        for key in found:
            if key not in batch:
                self.counts[FOREIGN] += 1
                self.report_bad("get_many", key, FOREIGN, b"a key that was not asked for")

    def op_set(self) -> None:
        """``set`` without TTL."""
        key = self.pick_key()
        self.cache.set(key, self.new_value(key))

    def op_set_ttl(self) -> None:
        """``set`` with a TTL of 20 ms to 3 s."""
        # Short TTLs: items expire while others read them and metisd sweeps them.
        key = self.pick_key()
        self.cache.set(key, self.new_value(key), ttl=self.rng.uniform(0.02, 3.0))

    def op_add(self) -> None:
        """``add`` (stores only if absent)."""
        key = self.pick_key()
        self.cache.add(key, self.new_value(key))

    def op_replace(self) -> None:
        """``replace`` (stores only if present)."""
        key = self.pick_key()
        self.cache.replace(key, self.new_value(key))

    def op_set_many(self) -> None:
        """``set_many`` of 2-6 keys, sometimes with a TTL."""
        batch = self.rng.sample(self.keys, self.rng.randint(2, 6))
        ttl = self.rng.choice((None, None, self.rng.uniform(0.1, 5.0)))
        self.cache.set_many({key: self.new_value(key) for key in batch}, ttl=ttl)

    def op_set_many_big(self) -> None:
        """``set_many`` of 8-32 keys."""
        # One call, up to 32 stores: back-to-back locked sections.
        batch = self.rng.sample(self.keys, self.rng.randint(8, 32))
        self.cache.set_many({key: self.new_value(key) for key in batch})

    def op_delete(self) -> None:
        """``delete`` of one key."""
        self.cache.delete(self.pick_key())

    def op_delete_many(self) -> None:
        """``delete_many`` of 2-6 keys."""
        self.cache.delete_many(self.rng.sample(self.keys, self.rng.randint(2, 6)))

    def op_pop(self) -> None:
        """``pop``; the removed value is checked."""
        key = self.pick_key()
        self.check("pop", key, self.cache.pop(key, None))

    def op_touch(self) -> None:
        """``touch`` with a new TTL of 0.5-10 s."""
        self.cache.touch(self.pick_key(), ttl=self.rng.uniform(0.5, 10.0))

    def op_incr(self) -> None:
        """``incr`` of a counter key by 1-9."""
        delta = self.rng.randint(1, 9)
        self._count_op("incr", self.cache.incr(self.rng.choice(self.counters), delta, default=0))

    def op_decr(self) -> None:
        """``decr`` of a counter key by 1."""
        self._count_op("decr", self.cache.decr(self.rng.choice(self.counters), 1, default=0))

    def _count_op(self, op: str, result: Any) -> None:
        if type(result) is not int:
            self.counts["errors"] += 1
            self.reporter.send_limited(
                {"type": "error", "op": op, "worker": self.worker_id, "detail": repr(result)}
            )

    def op_keys(self) -> None:
        """``keys(prefix)``; every key yielded must carry the prefix."""
        prefix = f"k:{self.rng.randrange(10)}"
        for key in self.cache.keys(prefix=prefix):
            if not (isinstance(key, str) and key.startswith(prefix)):
                self.counts[FOREIGN] += 1
                self.report_bad("keys", key, FOREIGN, repr(key).encode())

    def op_clear(self) -> None:
        """``clear()``: every item of every shard removed."""
        self.cache.clear()

    # ---- the loop ------------------------------------------------------------

    def run(self) -> None:
        """Operate until SIGTERM or the parent is gone; report all along."""
        parent = os.getppid()
        next_report = time.monotonic() + REPORT_EVERY
        self.report()
        while not self.stop.requested:
            op = "clear" if self.rng.random() < CLEAR_PROBABILITY else self.pick_op()
            try:
                (self.op_clear if op == "clear" else self._ops[op])()
            except ValueTooLarge:
                # Documented: a write that finds no room in its shard stores nothing.
                self.counts["refused"] += 1
            except Exception as exc:
                self.counts["errors"] += 1
                self.reporter.send_limited(
                    {
                        "type": "error",
                        "op": op,
                        "worker": self.worker_id,
                        "pid": os.getpid(),
                        "detail": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc(),
                    }
                )
            self.counts[f"op_{op}"] += 1
            now = time.monotonic()
            if now >= next_report:
                self.report()
                next_report = now + REPORT_EVERY
                if os.getppid() != parent:
                    break
        self.report()

    def report(self) -> None:
        """Send the cumulative counts."""
        self.reporter.send({"type": "counts", "worker": self.worker_id, "counts": self.counts})


def _cumulative(weights: Sequence[float]) -> list[float]:
    out, total = [], 0.0
    for w in weights:
        total += w
        out.append(total)
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="A worker process of the Metis chaos run.")
    p.add_argument("--name", required=True, help="cache name (the segment must exist)")
    p.add_argument("--worker-id", required=True, help="slot.generation, for the report")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--keys", type=int, required=True, help="size of the key space")
    p.add_argument("--profile", choices=sorted(PROFILES), default="mixed")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Open the cache (never create it: metisd owns it) and run until SIGTERM."""
    args = _parser().parse_args(argv)
    stop = StopRequest()
    signal.signal(signal.SIGTERM, stop.on_signal)
    with Cache(args.name, create=False) as cache:
        ChaosWorker(cache, args.worker_id, args.seed, args.keys, stop, args.profile).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
