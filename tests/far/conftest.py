"""Fixtures of the far-tier tests: real Redis servers on loopback (redis_servers.py).

* ``redis_server``: a standalone redis-server for one test, with ``.port``,
  ``.url``, ``.client()``, ``.kill()`` (SIGKILL), ``.restart()`` (same port),
  ``.stop()``/``.cont()`` (SIGSTOP/SIGCONT); killed at teardown.
* ``redis_cluster``: three primaries in one cluster, shared by a module, with
  ``.urls``, ``.seed_url``, ``.client()`` (a ``redis.cluster.RedisCluster``).

A missing redis-server fails the test (never skips) with a message naming
tests/install-servers.sh. When a test fails, the end of each of its servers'
logs is added to its report.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from redis_servers import RedisCluster, RedisServer, ServerError

S = TypeVar("S", RedisServer, RedisCluster)


def _started(server: S) -> S:
    try:
        return server.start()
    except ServerError as err:
        pytest.fail(str(err), pytrace=False)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A standalone redis-server for this test, killed at teardown."""
    server = _started(RedisServer(tmp_path / "redis"))
    try:
        yield server
    finally:
        server.terminate()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A three-primary cluster shared by the tests of one module."""
    cluster = _started(RedisCluster(tmp_path_factory.mktemp("redis-cluster")))
    try:
        yield cluster
    finally:
        cluster.terminate()


@pytest.fixture
def close_all() -> Iterator[list[Any]]:
    """Machines (tests/far/_machines.py) a test appends here are closed and
    their segments destroyed at teardown."""
    made: list[Any] = []
    yield made
    from metis_shm import Cache

    for m in made:
        m.cache.close()
        Cache.destroy(m.name)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        funcargs = getattr(item, "funcargs", {})
        for name in ("redis_server", "redis_cluster"):
            server = funcargs.get(name)
            if server is not None:
                report.sections.append((f"{name} log", server.log_tail()))
    return report
