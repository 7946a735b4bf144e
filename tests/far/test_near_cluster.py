"""The near tier in front of a real 3-primary Redis Cluster on loopback:
slots and MOVED through redis-py's cluster client, broadcast tracking on
every primary, held by each machine's metisd."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from _machines import start_machine, wait_until
from _workers import new_name

from metis_shm import Cache

pytestmark = pytest.mark.integration


def test_cluster_invalidations_from_every_primary(
    tmp_path: Path, redis_cluster: Any, daemons: Any
) -> None:
    prefix = f"cl{os.getpid()}:"
    far = {"url": redis_cluster.seed_url, "prefix": prefix, "cluster": True}
    a = start_machine(tmp_path, new_name(), far, daemons)
    b = start_machine(tmp_path, new_name(), far, daemons)
    client = redis_cluster.client()
    try:
        # Keys until every primary owns at least three of them.
        owners: dict[str, list[str]] = {}
        i = 0
        while len(owners) < 3 or min(len(v) for v in owners.values()) < 3:
            key = f"k{i}"
            node = client.get_node_from_key(prefix + key)
            owners.setdefault(node.name, []).append(key)
            i += 1
        keys = [k for ks in owners.values() for k in ks]
        for k in keys:
            a.cache.set(k, b"v1-" + k.encode())
        for k in keys:
            wait_until(
                lambda k=k: b.cache.get(k) == b"v1-" + k.encode() and b.cache.peek(k) is not None,
                3.0,
                f"B fills {k}",
            )
        for k in keys:
            a.cache.set(k, b"v2-" + k.encode())
        for k in keys:
            wait_until(lambda k=k: b.cache.peek(k) is None, 1.0, f"B's {k} dies")
            assert b.cache.get(k) == b"v2-" + k.encode()
        assert a.cache.incr("counter", 5, default=0) == 5
        assert b.cache.incr("counter") == 6
        assert b.cache.get_many(keys[:4]) == {k: b"v2-" + k.encode() for k in keys[:4]}
        assert b.cache.far_stats()["tracker_state"] == "subscribed"
    finally:
        client.close()
        for m in (a, b):
            m.cache.close()
            Cache.destroy(m.name)
