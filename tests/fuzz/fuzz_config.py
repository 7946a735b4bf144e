"""Fuzz target: the metisd config loader (``metis_shm.daemon.config.load_config``):
a TOML or JSON file and ``METIS_*`` environment variables.

Input: one control byte, then ``FILE [\\0 ENVIRONMENT]``.

* control bit 0: the file is ``.json`` (set) or ``.toml`` (clear);
* control bit 1: there is no file (only the environment);
* ENVIRONMENT: lines ``NAME=VALUE`` (UTF-8, undecodable bytes replaced);
  a name without the ``METIS_`` prefix gets it, so short seeds reach the
  real variables. ``METIS_CONFIG`` is dropped (it would name another file).

Allowed outcomes: a ``LoadedConfig`` (which ``flatten_config``,
``describe_value`` and ``diff_config`` then handle), or ``InvalidConfig``.
Anything else is a finding.

    python tests/fuzz/fuzz_config.py NEW_DIR tests/fuzz/corpus/config -max_total_time=600
"""

from __future__ import annotations

import logging
import sys

from _fuzz_support import (
    clean_up_when_gone,
    instrumenting_metis,
    run_libfuzzer,
    scratch_directory,
)

with instrumenting_metis(__name__):
    from metis_shm.daemon import config
    from metis_shm.errors import InvalidConfig

JSON_FILE, NO_FILE = 1, 2


def parse_environment(raw: bytes) -> dict[str, str]:
    """``NAME=VALUE`` lines as an environment (see the module docstring)."""
    env: dict[str, str] = {}
    for line in raw.decode("utf-8", "replace").split("\n"):
        name, eq, value = line.partition("=")
        if not eq or not name:
            continue
        name = name if name.startswith("METIS_") else f"METIS_{name}"
        if name != config.CONFIG_ENV:
            env[name] = value
    return env


def TestOneInput(data: bytes) -> None:
    """Load the config ``data`` describes; raise on a finding."""
    if not data:
        return
    control = data[0]
    file_bytes, _, env_bytes = data[1:].partition(b"\0")
    env = parse_environment(env_bytes)
    path = None
    if not control & NO_FILE:
        file_name = "metisd.json" if control & JSON_FILE else "metisd.toml"
        path = scratch_directory("config") / file_name
        path.write_bytes(file_bytes)
    try:
        loaded = config.load_config(path, env=env)
    except InvalidConfig:
        return
    for field, value in config.flatten_config(loaded.config).items():
        config.describe_value(field, value)
    config.diff_config(loaded.config, loaded.config)


def main() -> None:
    """Run under libFuzzer with this process's command line."""
    logging.getLogger("metis_shm").setLevel(logging.CRITICAL)
    clean_up_when_gone([], [scratch_directory("config")])
    run_libfuzzer(TestOneInput)


if __name__ == "__main__":
    sys.exit(main())
