"""metisd frees the stats slots of processes that exited without closing
their cache (SIGKILL), asking psutil whether each owner still runs; their
counts stay in the totals."""

from __future__ import annotations

import os
import signal

from metis_shm import Cache
from metis_shm.daemon.maintenance import _process_gone


def test_dead_owner_slot_is_reclaimed_and_counts_kept(cache: Cache) -> None:
    cache.set("k", b"v")
    pid = os.fork()
    if pid == 0:  # a worker that reads, then dies without closing
        with Cache(cache.name, create=False) as mine:
            for _ in range(10):
                mine.get("k")
            os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    # The dead child still holds its slots: one for the Cache it inherited
    # through fork, one for the Cache it opened.
    dead = [(i, t) for i, p, t in cache._slot_owners() if p == pid]
    assert len(dead) == 2
    mine = [t for _, p, t in cache._slot_owners() if p == os.getpid()]
    assert mine and not _process_gone(os.getpid(), mine[0])
    hits = cache.stats().hits
    assert hits >= 10
    for index, claimed in dead:
        assert _process_gone(pid, claimed)
        assert cache._reclaim_slot(index, pid)
        assert not cache._reclaim_slot(index, pid)  # already free
    assert pid not in {p for _, p, _ in cache._slot_owners()}
    assert cache.stats().hits == hits  # folded into the shared slot
