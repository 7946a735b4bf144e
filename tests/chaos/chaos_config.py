"""What a chaos run is made of: its configuration, and the metisd configuration
that follows from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class ChaosConfig:
    """Everything a chaos run is made of; the defaults are the long run's."""

    duration: float = 600.0  # seconds of chaos (setup and final checks come on top)
    workers: int = 4
    hammers: int = 1  # of the workers, how many run the write-heavy "hammer" profile
    seed: int | None = None  # None: a random one (printed in the report)
    capacity: str = "8MiB"  # small next to the key space: eviction all along
    keys: int = 4000
    run_dir: Path | None = None  # None: a temp dir, removed at the end unless keep
    keep: bool = False
    snapshot_interval: float = 5.0  # metisd's own schedule, besides SIGUSR1
    retention: int = 4
    sweep_interval: float = 0.2
    heartbeat_interval: float = 0.5  # each heartbeat's roll-up takes every shard lock
    # Mean seconds between chaos events of each kind (exponential intervals).
    kill_every: float = 0.8
    stop_every: float = 0.5
    snapshot_every: float = 4.0
    cli_snapshot_every: float = 20.0
    cli_check_every: float = 15.0
    daemon_stop_every: float = 10.0
    daemon_kill_after: tuple[float, float] = (5.0, 12.0)  # uniform, from the last ready
    max_stop: float = 2.0
    kill_stopped_share: float = 0.2  # of SIGSTOPs end in SIGKILL instead of SIGCONT
    teardown_timeout: float = 300.0
    progress_every: float | None = None  # seconds between progress lines on stderr


def config_dict(config: ChaosConfig) -> dict[str, Any]:
    """``config`` as the report records it (JSON-ready)."""
    d = asdict(config)
    d["run_dir"] = str(config.run_dir) if config.run_dir else None
    return d


def daemon_sections(config: ChaosConfig, name: str, snap_dir: Path) -> dict[str, dict[str, Any]]:
    """The metisd configuration of a run (one cache, snapshots on), in the
    shape ``chaos_procs.write_daemon_config`` takes."""
    return {
        "": {"log_level": "INFO", "heartbeat_interval": config.heartbeat_interval},
        "sweep": {"interval": config.sweep_interval, "budget": 20_000},
        "snapshot": {
            "enabled": True,
            "path": str(snap_dir),
            "interval": config.snapshot_interval,
            "retention": config.retention,
            "on_shutdown": True,
        },
        "health": {"address": "127.0.0.1:0"},
        "caches": {"name": name, "capacity": config.capacity},
    }
