"""bench_ops.py's view section: reading a value in place against copying it.

For values of 100 B, 4 KiB, 64 KiB and 1 MiB (random bytes, stored
uncompressed), nanoseconds per read of one present key, one process:

* ``view``: ``with cache.view(k) as mv: len(mv)``, the lookup, the pin, the
  memoryview and the unpin;
* ``get``: ``cache.get(k)``, a fresh ``bytes`` copy;
* ``lmdb buffers``: ``with env.begin(buffers=True) as txn: len(txn.get(k))``,
  py-lmdb's zero-copy read, a read transaction per read as a view is;
* ``lmdb copy``: the same without ``buffers`` (a ``bytes`` copy).

And for a MessagePack ``dict`` of about 4 KiB: ``get`` (copy, then decode)
against ``msgspec.msgpack.decode`` of a view. And for a numpy float64 array
of about 1 MiB: ``view_array`` against ``get`` (a writable copy) and an
ndarray over py-lmdb's buffer.

Each figure is the best of ``rounds`` timed loops (``timeit``), so it is the
cost of the call on a warm cache and a quiet CPU, not of a loaded machine.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import timeit
import uuid
from collections.abc import Callable
from typing import Any

import msgspec

from metis_shm import Cache

SIZES = (100, 4096, 64 * 1024, 1 << 20)
KEYS = 16


def _best_ns(fn: Callable[[], Any], seconds: float, rounds: int) -> float:
    fn()
    n = 1
    while True:  # calls per round: enough to last `seconds`
        t = timeit.timeit(fn, number=n)
        if t >= seconds / 4 or n >= 1 << 22:
            break
        n *= 2
    n = max(1, int(n * seconds / max(t, 1e-9) / 4))
    return min(timeit.repeat(fn, number=n, repeat=rounds)) / n * 1e9


def _cycle(keys: list[bytes]) -> Callable[[], bytes]:
    it = iter(keys * 1_000_000)
    return it.__next__


def _measure_size(
    cache: Cache, env: Any, keys: list[bytes], seconds: float, rounds: int
) -> dict[str, float]:
    """ns per read of `keys` in turn: view, get, lmdb with and without buffers."""
    next_key = _cycle(keys)
    view, get, begin = cache.view, cache.get, env.begin

    def metis_view() -> int:
        with view(next_key()) as mv:
            return len(mv)

    def lmdb_read(buffers: bool) -> Callable[[], int]:
        def run() -> int:
            with begin(buffers=buffers) as txn:
                return len(txn.get(next_key()))

        return run

    return {
        "view_ns": _best_ns(metis_view, seconds, rounds),
        "get_ns": _best_ns(lambda: get(next_key()), seconds, rounds),
        "lmdb_buffers_ns": _best_ns(lmdb_read(True), seconds, rounds),
        "lmdb_copy_ns": _best_ns(lmdb_read(False), seconds, rounds),
    }


def measure_views(seconds: float = 0.2, rounds: int = 5, seed: int = 1) -> dict[str, Any]:
    """The rows of the view table, and the MessagePack dict row."""
    import lmdb

    rng = random.Random(seed)
    name = f"bench-views-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    workdir = tempfile.mkdtemp(prefix="bench-views-")
    cache = Cache(name, "64MiB", compress_threshold=None, max_pinned="8MiB")
    env = lmdb.open(workdir, map_size=1 << 30, sync=False, metasync=False)
    rows = []
    try:
        for size in SIZES:
            keys = [b"v%d" % i for i in range(KEYS)]
            with env.begin(write=True) as txn:
                for k in keys:
                    value = rng.randbytes(size)
                    cache.set(k, value)
                    txn.put(k, value)
            row = {"size": size, **_measure_size(cache, env, keys, seconds, rounds)}
            rows.append(row)
        doc = {f"field{i}": rng.randbytes(24).hex() for i in range(70)}
        cache.set(b"doc", doc)
        encoded = msgspec.msgpack.encode(doc)
        decode = msgspec.msgpack.Decoder().decode

        def decoded_view() -> Any:
            with cache.view(b"doc") as mv:
                return decode(mv)

        assert decoded_view() == cache.get(b"doc") == doc
        msgpack = {
            "bytes": len(encoded),
            "get_ns": _best_ns(lambda: cache.get(b"doc"), seconds, rounds),
            "view_decode_ns": _best_ns(decoded_view, seconds, rounds),
            "decode_only_ns": _best_ns(lambda: decode(encoded), seconds, rounds),
        }
        array = _measure_array(cache, env, seconds, rounds)
        stats = cache.stats()
        assert stats.pins == 0 and stats.held_blocks == 0
    finally:
        cache.close()
        Cache.destroy(name)
        env.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return {"rows": rows, "msgpack_dict": msgpack, "array": array}


def _measure_array(cache: Cache, env: Any, seconds: float, rounds: int) -> dict[str, Any]:
    """A float64 array of about 1 MiB: view_array, get, and an ndarray over
    lmdb's buffer (np.frombuffer in a buffers=True transaction)."""
    import numpy as np

    arr = np.random.default_rng(1).random((1 << 17) - 16)
    cache.set(b"arr", arr)
    with env.begin(write=True) as txn:
        txn.put(b"arr", arr.tobytes())

    def lmdb_array() -> int:
        with env.begin(buffers=True) as txn:
            return int(np.frombuffer(txn.get(b"arr"), dtype=np.float64).shape[0])

    assert np.array_equal(cache.view_array(b"arr"), arr)
    return {
        "bytes": arr.nbytes,
        "view_array_ns": _best_ns(lambda: cache.view_array(b"arr").shape, seconds, rounds),
        "get_ns": _best_ns(lambda: cache.get(b"arr").shape, seconds, rounds),
        "lmdb_buffers_ns": _best_ns(lmdb_array, seconds, rounds),
    }


def print_views(result: dict[str, Any], fmt_size: Callable[[int], str]) -> None:
    """The view table, as bench_ops prints it."""
    from _common import print_table

    lines = []
    for r in result["rows"]:
        lines.append(
            [
                fmt_size(r["size"]),
                f"{r['view_ns']:,.0f}",
                f"{r['get_ns']:,.0f}",
                f"{r['lmdb_buffers_ns']:,.0f}",
                f"{r['lmdb_copy_ns']:,.0f}",
                f"{r['get_ns'] / r['view_ns']:.2f}x",
                f"{r['lmdb_buffers_ns'] / r['view_ns']:.2f}x",
            ]
        )
    print("Reading one value in place (ns per read, best of the rounds, 1 process):")
    print_table(
        ["size", "view", "get", "lmdb buffers", "lmdb copy", "get/view", "lmdb buf/view"],
        lines,
    )
    m = result["msgpack_dict"]
    print(
        f"MessagePack dict of {m['bytes']:,} B: get {m['get_ns']:,.0f} ns, decode of a view "
        f"{m['view_decode_ns']:,.0f} ns ({m['get_ns'] / m['view_decode_ns']:.2f}x), "
        f"decode alone {m['decode_only_ns']:,.0f} ns"
    )
    a = result["array"]
    print(
        f"numpy float64 array of {a['bytes']:,} B: view_array {a['view_array_ns']:,.0f} ns, "
        f"get {a['get_ns']:,.0f} ns ({a['get_ns'] / a['view_array_ns']:.1f}x), "
        f"ndarray over lmdb buffers {a['lmdb_buffers_ns']:,.0f} ns "
        f"({a['lmdb_buffers_ns'] / a['view_array_ns']:.2f}x)"
    )
