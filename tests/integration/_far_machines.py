"""What the two-machine tests of the example apps share: a real
redis-server (tests/far/redis_servers.py), and "machines" on one host, each
a metisd configured the way the examples' READMEs say, by the same three
variables as the app servers (METIS_CACHE_NAME, METIS_CACHE_CAPACITY,
METIS_CACHE_FAR), so one environment per machine serves both.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "far"))
from _metisd import Metisd
from redis_servers import RedisServer, ServerError

BOUND = 1.0  # FarSettings.staleness_bound's default
CAPACITY = "8MiB"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A standalone redis-server on loopback for this test (as in tests/far/conftest.py)."""
    try:
        server = RedisServer(tmp_path / "redis").start()
    except ServerError as err:
        pytest.fail(str(err), pytrace=False)
    try:
        yield server
    finally:
        server.terminate()


@dataclass
class Machine:
    """One machine: its environment (for metisd and the app server) and its metisd."""

    name: str
    env: dict[str, str]
    daemon: Metisd


def start_machine(
    tmp_path: Path, daemons: Callable[..., Metisd], name: str, far: dict[str, Any]
) -> Machine:
    """metisd for the near cache ``name``, configured by the environment only
    (the file just puts the health endpoints on a free port)."""
    env = {
        "METIS_CACHE_NAME": name,
        "METIS_CACHE_CAPACITY": CAPACITY,
        "METIS_CACHE_FAR": json.dumps(far),
    }
    config = tmp_path / f"metisd-{name}.toml"
    config.write_text('[health]\naddress = "127.0.0.1:0"\n')
    daemon = daemons(config, env=env)
    daemon.wait_ready()
    daemon.wait_for(r"tracker .*: subscribed")
    return Machine(name, env, daemon)


@contextlib.contextmanager
def environment(extra: dict[str, str]) -> Iterator[None]:
    """os.environ with ``extra`` while the block runs (the servers copy it at start)."""
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``pred`` (each poll an HTTP request or so) until true; seconds it took."""
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.005)
    return time.monotonic() - start


def fetches(far: dict[str, Any]) -> int:
    """Redis reads of a machine's near tier that found their key (far stats).

    Not far_misses: CacheMiddleware looks up every GET's response key, and
    each new URL costs the machine one absent read (then an absent marker).
    """
    return int(far["far_hits"])


def read_from_workers(
    body: Callable[[str], dict[str, Any]], key: str, want: Any, pids: int
) -> list[dict[str, Any]]:
    """GET /get?key= through ``body`` (a new connection each) until ``pids``
    distinct workers answered; each answer must be ``want``."""
    answers: list[dict[str, Any]] = []
    seen: set[int] = set()
    deadline = time.monotonic() + 20.0
    while len(seen) < pids:
        assert time.monotonic() < deadline, f"only workers {seen} answered"
        got = body(f"/get?key={key}")
        assert got["found"] and got["value"] == want, got
        answers.append(got)
        seen.add(got["pid"])
    return answers
