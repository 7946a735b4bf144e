"""Two "machines" on one host: each is a near cache with its own metisd,
both in front of one real Redis. A machine's workers are the processes that
open its cache; its metisd holds the tracking connection.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _metisd import Metisd, config_text

from metis_shm import Cache
from metis_shm.far.near import NearCache

GATE_TIMEOUT = 15.0


@dataclass
class Machine:
    """One machine: its cache name, its metisd and this test's handle on it."""

    name: str
    far: dict[str, Any]
    daemon: Metisd | None
    cache: NearCache
    config: Path

    def wait_gate(self, open_: bool = True, timeout: float = GATE_TIMEOUT) -> float:
        """Wait until the near tier serves (or stops serving); seconds waited."""
        start = time.monotonic()
        while self.cache.gate_open != open_:
            if time.monotonic() - start > timeout:
                log = self.daemon.log() if self.daemon else ""
                raise AssertionError(
                    f"{self.name}: gate never became {'open' if open_ else 'closed'}\n{log}"
                )
            time.sleep(0.002)
        return time.monotonic() - start


def start_machine(
    tmp: Path,
    name: str,
    far: dict[str, Any],
    daemons: Callable[..., Metisd],
    *,
    capacity: str = "16MiB",
) -> Machine:
    """metisd for a near cache ``name``, and a handle opened in this process."""
    config = tmp / f"{name}.toml"
    config.write_text(
        config_text(
            [{"name": name, "capacity": capacity, "far": far}],
            heartbeat_interval=0.2,
        )
    )
    daemon = daemons(config)
    daemon.wait_ready()
    cache = Cache(name, capacity=capacity, far=far)
    assert isinstance(cache, NearCache)
    m = Machine(name=name, far=far, daemon=daemon, cache=cache, config=config)
    m.wait_gate()
    return m


def wait_until(pred: Callable[[], bool], timeout: float, what: str, step: float = 0.001) -> float:
    """Poll ``pred`` until true; the seconds it took. Raises after ``timeout``."""
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(step)
    return time.monotonic() - start


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values, nearest rank."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]
