"""The configuration of ``metisd``: one typed model, four merged sources.

    defaults  <  file (TOML or JSON)  <  environment (``METIS_*``)  <  arguments

``load_config(path, env=..., overrides=...)`` reads and merges them and
returns a ``LoadedConfig``: the ``DaemonConfig`` and, for every dotted field
(``sweep.interval``, ``caches[0].capacity``), where its value came from:
``"default"``, ``"file PATH:LINE"``, ``"env METIS_X"`` or ``"argument"``.

Sizes take ``4096``, ``"64MiB"``, ``"1GB"``; durations ``30``, ``"250ms"``,
``"5m"`` (``metis_shm.units``). Every mistake raises ``InvalidConfig`` naming
the field, the value, what is allowed and where the value came from (file and
line, environment variable or argument); ``context`` holds the same pieces.
The rules of each field and of the environment are in docs/configuration.md.

``LIVE_FIELDS`` are the fields a ``SIGHUP`` may change in a running daemon;
``diff_config(old, new)`` splits a reload into live changes and changes that
need a restart.

The Structs check themselves too (``__post_init__``), so a ``CacheConfig``
built in code gets the same rules; sizes and durations given there as strings
are converted (``CacheConfig(name="app", capacity="64MiB").capacity ==
67108864``).

This package's names are the API; the parts behind them:

* ``model``: the Structs, ``LIVE_FIELDS``, ``diff_config``, ``flatten_config``,
  ``describe_value``;
* ``rules``: what each field accepts (``CACHE_RULES``, ``SWEEP_RULES``, ...);
* ``sources``: reading the file and the environment, merging, ``load_config``;
* ``origins``: where a value came from, and the ``InvalidConfig`` that says so;
* ``scanner``: the line of each key in a TOML or JSON file.
"""

from metis_shm.daemon.config.model import (
    LIVE_FIELDS,
    CacheConfig,
    DaemonConfig,
    HealthConfig,
    LoadedConfig,
    SnapshotConfig,
    SweepConfig,
    describe_value,
    diff_config,
    flatten_config,
)
from metis_shm.daemon.config.sources import CONFIG_ENV, ENV_VARS, load_config

__all__ = [
    "CONFIG_ENV",
    "ENV_VARS",
    "LIVE_FIELDS",
    "CacheConfig",
    "DaemonConfig",
    "HealthConfig",
    "LoadedConfig",
    "SnapshotConfig",
    "SweepConfig",
    "describe_value",
    "diff_config",
    "flatten_config",
    "load_config",
]
