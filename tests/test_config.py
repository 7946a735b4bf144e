"""The daemon's configuration (metis_shm.daemon.config) and ``metis config``:
precedence and sources, TOML and JSON, every kind of error with its field,
value and origin, SIGHUP diffs, the CLI, and the templates in daemon/."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from metis_shm import Cache, InvalidConfig
from metis_shm.cli.config import register
from metis_shm.daemon.config import (
    CONFIG_ENV,
    ENV_VARS,
    LIVE_FIELDS,
    CacheConfig,
    DaemonConfig,
    HealthConfig,
    SnapshotConfig,
    SweepConfig,
    diff_config,
    flatten_config,
    load_config,
)
from metis_shm.daemon.config.rules import (
    CACHE_RULES,
    HEALTH_RULES,
    SNAPSHOT_RULES,
    SWEEP_RULES,
    TOP_RULES,
)

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = sorted((ROOT / "daemon").glob("*.toml"))

MINIMAL = """\
[[caches]]
name = "app"
capacity = "8MiB"
"""

FULL_TOML = """\
# a comment
log_level = "warning"
heartbeat_interval = "500ms"

[sweep]
interval = "2s"     # trailing comment
budget = 20_000

[snapshot]
path = "/srv/snap"
interval = 0
retention = 5
on_shutdown = false

[health]
address = "[::1]:9000"
unix_socket = "/run/metis/h.sock"

[[caches]]
name = "app"
capacity = "64MiB"
policy = "LRU"
default_ttl = "5m"
compress_threshold = "none"
mode = 0o640

[[caches]]
name = "sessions"
capacity = 16777216
shards = 4
max_entries = "10_000"
max_value_size = "64KiB"
serializer = "pickle"
"""


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads os.environ: no METIS_* setting from the caller's shell."""
    for var in [*ENV_VARS, CONFIG_ENV]:
        monkeypatch.delenv(var, raising=False)


def write(tmp_path: Path, text: str, name: str = "metisd.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def line_of(text: str, needle: str, start: int = 0) -> int:
    """1-based line of the first line at or after line ``start`` holding ``needle``."""
    lines = text.splitlines()
    return next(i + 1 for i in range(start, len(lines)) if needle in lines[i])


# ---- the model ---------------------------------------------------------------


def test_defaults_are_the_documented_ones() -> None:
    cache = CacheConfig(name="app", capacity=1 << 20)
    assert (cache.shards, cache.policy, cache.max_entries, cache.default_ttl) == (
        None,
        "wtinylfu",
        None,
        None,
    )
    assert (cache.max_key_size, cache.max_value_size, cache.compress_threshold) == (
        1024,
        1 << 20,
        16 << 10,
    )
    assert (cache.serializer, cache.mode) == ("msgpack", 0o600)
    assert SweepConfig() == SweepConfig(interval=1.0, budget=10_000)
    assert SnapshotConfig() == SnapshotConfig(
        path="/var/lib/metis", interval=300.0, retention=3, on_shutdown=True, enabled=True
    )
    assert HealthConfig() == HealthConfig(enabled=True, address="127.0.0.1:9464", unix_socket=None)
    config = DaemonConfig(caches=[cache])
    assert (config.log_level, config.heartbeat_interval, config.replace_incompatible) == (
        "INFO",
        1.0,
        False,
    )


def test_rules_cover_every_field_and_every_field_has_a_variable() -> None:
    pairs: list[tuple[type[msgspec.Struct], dict[str, Any]]] = [
        (CacheConfig, CACHE_RULES),
        (SweepConfig, SWEEP_RULES),
        (SnapshotConfig, SNAPSHOT_RULES),
        (HealthConfig, HEALTH_RULES),
    ]
    for cls, rules in pairs:
        assert [f.name for f in msgspec.structs.fields(cls)] == list(rules)
    top = [f.name for f in msgspec.structs.fields(DaemonConfig)]
    assert top == ["caches", "sweep", "snapshot", "health", *TOP_RULES]
    fields = set(flatten_config(DaemonConfig(caches=[CacheConfig(name="a", capacity=1 << 20)])))
    assert set(ENV_VARS.values()) == fields
    assert ENV_VARS["METIS_SWEEP_INTERVAL"] == "sweep.interval"
    assert ENV_VARS["METIS_CACHE_CAPACITY"] == "caches[0].capacity"
    assert ENV_VARS["METIS_HEALTH_ADDRESS"] == "health.address"
    assert {
        "sweep.interval",
        "sweep.budget",
        "snapshot.interval",
        "snapshot.retention",
        "snapshot.on_shutdown",
        "log_level",
        "heartbeat_interval",
    } == LIVE_FIELDS


def test_structs_built_in_code_are_converted_and_checked() -> None:
    cache = CacheConfig(name="app", capacity="64MiB", default_ttl="5m", mode="0640")  # type: ignore[arg-type]
    assert (cache.capacity, cache.default_ttl, cache.mode) == (64 << 20, 300.0, 0o640)
    with pytest.raises(InvalidConfig, match=r"capacity: 'lots' is not valid; expected a size"):
        CacheConfig(name="app", capacity="lots")  # type: ignore[arg-type]
    with pytest.raises(InvalidConfig, match=r"name: 'a b' is not valid"):
        CacheConfig(name="a b", capacity=1 << 20)
    with pytest.raises(InvalidConfig, match=r"caches: \[\] is not valid; expected at least one"):
        DaemonConfig(caches=[])
    twice = [CacheConfig(name="a", capacity=1 << 20), CacheConfig(name="a", capacity=1 << 20)]
    with pytest.raises(InvalidConfig, match=r"caches\[1\]\.name: 'a' .*caches\[0\] has it"):
        DaemonConfig(caches=twice)
    with pytest.raises(InvalidConfig, match="interval"):
        SweepConfig(interval=0)
    config = msgspec.convert(
        {"caches": [{"name": "a", "capacity": 1 << 20}], "sweep": {"budget": 5}}, DaemonConfig
    )
    assert config.sweep.budget == 5
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"caches": [], "bogus": 1}, DaemonConfig)


def test_cache_kwargs_open_a_cache_with_those_settings(cache_name: str) -> None:
    spec = CacheConfig(
        name=cache_name, capacity=8 << 20, shards=2, policy="lru", default_ttl=60.0, mode=0o640
    )
    kwargs = spec.cache_kwargs()
    assert "name" not in kwargs and kwargs["capacity"] == 8 << 20
    with Cache(spec.name, **kwargs) as cache:
        assert (cache.policy, cache.n_shards) == ("lru", 2)
        assert cache.settings["default_ttl_ns"] == 60 * 10**9
        assert os.stat(f"/dev/shm/metis.{cache_name}").st_mode & 0o777 == 0o640


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_key_size", 0),
        ("max_key_size", 70000),
        ("max_value_size", "2GiB"),
        ("policy", "lfu"),
        ("serializer", "json"),
        ("shards", 3),
        ("max_entries", 0),
        ("default_ttl", -1),
    ],
)
def test_what_cache_rejects_the_config_rejects(field: str, value: Any, cache_name: str) -> None:
    with pytest.raises(InvalidConfig):
        Cache(cache_name, capacity="8MiB", **{field: value})
    with pytest.raises(InvalidConfig, match=rf"caches\[0\]\.{field} \(argument\)"):
        load_config(
            env={}, overrides={"caches[0]": {"name": "a", "capacity": "8MiB", field: value}}
        )


# ---- sources and precedence --------------------------------------------------


def test_a_minimal_file_and_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    loaded = load_config(path, env={})
    assert loaded.path == str(path)
    assert loaded.config.caches == [CacheConfig(name="app", capacity=8 << 20)]
    assert loaded.sources["caches[0].name"] == f"file {path}:2"
    assert loaded.sources["caches[0].capacity"] == f"file {path}:3"
    assert set(loaded.sources) == set(flatten_config(loaded.config))
    named = ("caches[0].name", "caches[0].capacity")
    assert {v for k, v in loaded.sources.items() if k not in named} == {"default"}


def test_full_toml_values_and_lines(tmp_path: Path) -> None:
    path = write(tmp_path, FULL_TOML)
    loaded = load_config(path, env={})
    c = loaded.config
    assert (c.log_level, c.heartbeat_interval) == ("WARNING", 0.5)
    assert c.sweep == SweepConfig(interval=2.0, budget=20_000)
    assert c.snapshot == SnapshotConfig(
        path="/srv/snap", interval=0.0, retention=5, on_shutdown=False
    )
    assert c.health == HealthConfig(address="[::1]:9000", unix_socket="/run/metis/h.sock")
    app, sessions = c.caches
    assert (app.policy, app.default_ttl, app.compress_threshold, app.mode) == (
        "lru",
        300.0,
        None,
        0o640,
    )
    assert (sessions.capacity, sessions.shards, sessions.max_entries) == (16 << 20, 4, 10_000)
    assert (sessions.max_value_size, sessions.serializer) == (64 << 10, "pickle")
    src = loaded.sources
    assert src["log_level"] == f"file {path}:2"
    sweep_line = line_of(FULL_TOML, 'interval = "2s"')
    assert src["sweep.interval"] == f"file {path}:{sweep_line}"
    assert src["snapshot.interval"] == f"file {path}:{line_of(FULL_TOML, 'interval = 0')}"
    second = line_of(FULL_TOML, 'name = "sessions"')
    assert src["caches[1].name"] == f"file {path}:{second}"
    assert src["caches[1].capacity"] == f"file {path}:{second + 1}"
    assert src["caches[0].capacity"] == f"file {path}:{line_of(FULL_TOML, 'capacity = ')}"
    assert src["caches[1].policy"] == "default"


def test_json_file_is_the_same_model(tmp_path: Path) -> None:
    text = """{
  "log_level": "DEBUG",
  "sweep": {"interval": "250ms",
            "budget": 100},
  "caches": [
    {"name": "a", "capacity": "8MiB", "compress_threshold": null},
    {"name": "b",
     "capacity": "4MiB", "mode": "0660"}
  ]
}
"""
    path = write(tmp_path, text, "metisd.json")
    loaded = load_config(path, env={})
    c = loaded.config
    assert (c.log_level, c.sweep.interval, c.sweep.budget) == ("DEBUG", 0.25, 100)
    assert c.caches[0].compress_threshold is None and c.caches[1].mode == 0o660
    assert loaded.sources["sweep.budget"] == f"file {path}:4"
    assert loaded.sources["caches[1].name"] == f"file {path}:7"
    assert loaded.sources["caches[1].capacity"] == f"file {path}:8"


def test_dotted_keys_and_inline_tables_have_lines(tmp_path: Path) -> None:
    text = """\
sweep.interval = "3s"
caches = [
  { name = "a", capacity = "8MiB" },
  { name = "b", "capacity" = '4MiB', policy = "sieve" },
]
[health]
address = '''127.0.0.1:1'''
"""
    path = write(tmp_path, text)
    loaded = load_config(path, env={})
    assert loaded.config.caches[1].policy == "sieve"
    assert loaded.sources["sweep.interval"] == f"file {path}:1"
    assert loaded.sources["caches[0].capacity"] == f"file {path}:3"
    assert loaded.sources["caches[1].capacity"] == f"file {path}:4"
    assert loaded.sources["health.address"] == f"file {path}:7"


def test_precedence_default_file_env_argument(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL + '[sweep]\ninterval = "2s"\nbudget = 7\n[snapshot]\nretention = 4\n',
    )
    env = {
        "METIS_SWEEP_INTERVAL": "3s",
        "METIS_SNAPSHOT_RETENTION": "9",
        "METIS_LOG_LEVEL": "error",
        "METIS_CACHE_CAPACITY": "16MiB",
    }
    overrides = {"sweep.interval": "4s", "log_level": "critical"}
    loaded = load_config(path, env=env, overrides=overrides)
    c, src = loaded.config, loaded.sources
    assert (c.sweep.interval, src["sweep.interval"]) == (4.0, "argument")
    assert (c.sweep.budget, src["sweep.budget"]) == (7, f"file {path}:6")
    assert (c.snapshot.retention, src["snapshot.retention"]) == (9, "env METIS_SNAPSHOT_RETENTION")
    assert (c.log_level, src["log_level"]) == ("CRITICAL", "argument")
    assert (c.caches[0].capacity, src["caches[0].capacity"]) == (
        16 << 20,
        "env METIS_CACHE_CAPACITY",
    )
    assert (c.caches[0].name, src["caches[0].name"]) == ("app", f"file {path}:2")
    assert (c.heartbeat_interval, src["heartbeat_interval"]) == (1.0, "default")


def test_environment_alone_creates_caches0() -> None:
    env = {
        "METIS_CACHE_NAME": "app",
        "METIS_CACHE_CAPACITY": "32MiB",
        "METIS_CACHE_DEFAULT_TTL": "1h",
        "METIS_CACHE_SHARDS": "auto",
        "METIS_CACHE_MODE": "0660",
        "METIS_SNAPSHOT_ENABLED": "off",
        "METIS_HEALTH_UNIX_SOCKET": "none",
        "METIS_REPLACE_INCOMPATIBLE": "yes",
        "METIS_TEST_SEED": "123",  # not a setting: ignored
    }
    loaded = load_config(env=env)
    (cache,) = loaded.config.caches
    assert (cache.name, cache.capacity, cache.default_ttl, cache.shards, cache.mode) == (
        "app",
        32 << 20,
        3600.0,
        None,
        0o660,
    )
    assert loaded.config.snapshot.enabled is False
    assert loaded.config.replace_incompatible is True
    assert loaded.path is None
    assert loaded.sources["caches[0].name"] == "env METIS_CACHE_NAME"


def test_environment_sets_only_the_first_cache(tmp_path: Path) -> None:
    path = write(tmp_path, FULL_TOML)
    loaded = load_config(path, env={"METIS_CACHE_POLICY": "arc", "METIS_CACHE_NAME": "main"})
    assert [c.name for c in loaded.config.caches] == ["main", "sessions"]
    assert [c.policy for c in loaded.config.caches] == ["arc", "wtinylfu"]


def test_empty_environment_variables_are_absent(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '[sweep]\ninterval = "2s"\n')
    loaded = load_config(path, env={"METIS_SWEEP_INTERVAL": "", "METIS_LOG_LEVEL": "  "})
    assert loaded.config.sweep.interval == 2.0
    assert loaded.sources["log_level"] == "default"


def test_metis_config_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    loaded = load_config(env={CONFIG_ENV: str(path)})
    assert loaded.path == str(path) and loaded.config.caches[0].name == "app"
    # an explicit path wins
    other = write(tmp_path, MINIMAL.replace('"app"', '"other"'), "other.toml")
    assert load_config(other, env={CONFIG_ENV: str(path)}).config.caches[0].name == "other"


def test_os_environ_is_the_default_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METIS_SWEEP_BUDGET", "42")
    assert load_config(write(tmp_path, MINIMAL)).config.sweep.budget == 42
    assert load_config(write(tmp_path, MINIMAL), env={}).config.sweep.budget == 10_000


def test_overrides_tables_lists_and_new_caches(tmp_path: Path) -> None:
    path = write(tmp_path, FULL_TOML)
    loaded = load_config(
        path,
        env={},
        overrides={
            "snapshot": {"retention": 1, "path": "/x"},
            "caches[1]": {"policy": "2q"},
            "caches[2].name": "extra",
            "caches[2].capacity": 1 << 20,
        },
    )
    c = loaded.config
    assert (c.snapshot.retention, c.snapshot.path, c.snapshot.interval) == (1, "/x", 0.0)
    assert [x.name for x in c.caches] == ["app", "sessions", "extra"]
    assert c.caches[1].policy == "2q" and loaded.sources["caches[2].capacity"] == "argument"
    replaced = load_config(
        path, env={}, overrides={"caches": [{"name": "only", "capacity": "4MiB"}]}
    )
    assert [x.name for x in replaced.config.caches] == ["only"]


def test_misspelled_environment_variable_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    env = {
        "METIS_CACHE_NAME": "a",
        "METIS_CACHE_CAPACITY": "8MiB",
        "METIS_SWEEP_INTERVALL": "2",
        "METIS_SNAPSHOT_KEY": "not ours, not close to a setting",
    }
    with caplog.at_level(logging.WARNING, logger="metis_shm.config"):
        load_config(env=env)
    assert "METIS_SWEEP_INTERVALL" in caplog.text and "METIS_SWEEP_INTERVAL?" in caplog.text
    assert "METIS_SNAPSHOT_KEY" not in caplog.text


# ---- errors ------------------------------------------------------------------


def error_of(path: Path | None, env: dict[str, str] | None = None, **overrides: Any) -> str:
    with pytest.raises(InvalidConfig) as info:
        load_config(path, env=env or {}, overrides=overrides or None)
    exc = info.value
    assert exc.code == "INVALID_CONFIG" and isinstance(exc, ValueError)
    return str(exc)


# (file text, field, the value as repr'd, text the message must hold, line of the key)
FILE_ERRORS = [
    (MINIMAL.replace('"8MiB"', '"lots"'), "caches[0].capacity", "'lots'", "a size such as", 3),
    (MINIMAL + 'policy = "lfuu"', "caches[0].policy", "'lfuu'", "one of 2q, arc", 4),
    (MINIMAL + 'default_ttl = "soon"', "caches[0].default_ttl", "'soon'", "a duration", 4),
    (MINIMAL + "default_ttl = 0", "caches[0].default_ttl", "0", "a positive duration", 4),
    (MINIMAL + "shards = 3", "caches[0].shards", "3", "a power of two from 1 to 1024", 4),
    (MINIMAL + "max_key_size = 0", "caches[0].max_key_size", "0", "1 to 65536 bytes", 4),
    (MINIMAL + 'max_value_size = "3GiB"', "caches[0].max_value_size", "'3GiB'", "2 GiB", 4),
    (MINIMAL + "max_entries = -1", "caches[0].max_entries", "-1", "a positive number", 4),
    (MINIMAL + 'serializer = "json"', "caches[0].serializer", "'json'", "msgpack, pickle", 4),
    (MINIMAL + "mode = 0o200", "caches[0].mode", "128", "owner's read and write", 4),
    (MINIMAL.replace('"app"', '"a/b"'), "caches[0].name", "'a/b'", "1 to 64 characters", 2),
    (MINIMAL.replace('"8MiB"', "1000"), "caches[0].capacity", "1000", "per shard", 3),
    (MINIMAL.replace('"8MiB"', '"1MiB"') + "shards = 1024", "caches[0].capacity", "'1MiB'",
     "at least 4096", 3),
    ('log_level = "loud"\n' + MINIMAL, "log_level", "'loud'", "DEBUG, INFO", 1),
    ('heartbeat_interval = "30s"\n' + MINIMAL, "heartbeat_interval", "'30s'", "at most 5s", 1),
    ("[sweep]\ninterval = 0\n" + MINIMAL, "sweep.interval", "0", "positive duration", 2),
    ("[sweep]\nbudget = 1.5\n" + MINIMAL, "sweep.budget", "1.5", "a positive number", 2),
    ("[snapshot]\nenabled = 'maybe'\n" + MINIMAL, "snapshot.enabled", "'maybe'", "true or", 2),
    ("[snapshot]\npath = ''\n" + MINIMAL, "snapshot.path", "''", "a directory path", 2),
    ("[snapshot]\nretention = 0\n" + MINIMAL, "snapshot.retention", "0", "a positive number", 2),
    ("[health]\naddress = 'localhost'\n" + MINIMAL, "health.address", "'localhost'",
     "HOST:PORT", 2),
    ("[health]\naddress = '1.2.3.4:70000'\n" + MINIMAL, "health.address", "'1.2.3.4:70000'",
     "port 0-65535", 2),
    (f"[health]\nunix_socket = '/{'x' * 120}'\n" + MINIMAL, "health.unix_socket", "'/xxx",
     "at most 107 bytes", 2),
    ("sweep = 5\n" + MINIMAL, "sweep", "5", "a table of settings (interval, budget)", 1),
    ("caches = 'app'\n", "caches", "'app'", "an array of tables", 1),
    ("caches = ['app']\n", "caches[0]", "'app'", "an array of tables", 1),
]  # fmt: skip


@pytest.mark.parametrize(("text", "field", "value", "allowed", "line"), FILE_ERRORS)
def test_file_errors_name_field_value_rule_file_and_line(
    tmp_path: Path, text: str, field: str, value: str, allowed: str, line: int
) -> None:
    path = write(tmp_path, text)
    message = error_of(path)
    assert message.startswith(f"[INVALID_CONFIG] {field} ({path}:{line}): {value}"), message
    assert allowed in message


def test_error_context_has_the_pieces(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + 'policy = "lfu"\n')
    with pytest.raises(InvalidConfig) as info:
        load_config(path, env={})
    ctx = info.value.context
    assert ctx["field"] == "caches[0].policy" and ctx["value"] == "lfu"
    assert ctx["file"] == str(path) and ctx["line"] == 4 and ctx["env"] is None
    assert ctx["source"] == f"file {path}:4" and "wtinylfu" in ctx["allowed"]
    assert "did you mean 'lru'?" in str(info.value)


def test_unknown_keys_list_the_allowed_ones_and_suggest(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, MINIMAL + "[sweep]\nintreval = 2\n"))
    assert msg.startswith(f"[INVALID_CONFIG] sweep.intreval ({tmp_path}/metisd.toml:5)")
    assert "unknown setting; allowed here: interval, budget; did you mean 'interval'?" in msg
    msg = error_of(write(tmp_path, MINIMAL + "capacty = 1\n"))
    assert "caches[0].capacty" in msg and "did you mean 'capacity'?" in msg and ":4)" in msg
    assert "max_value_size" in msg  # the allowed keys are listed
    msg = error_of(write(tmp_path, 'address = "x:1"\n' + MINIMAL))
    assert "address" in msg and "is a setting of health.address" in msg and ":1)" in msg
    msg = error_of(write(tmp_path, '[logging]\nlevel = "x"\n' + MINIMAL))
    assert "logging" in msg and "caches, sweep, snapshot, health, log_level" in msg
    assert "sweep.bogus (argument): unknown setting" in error_of(None, **{"sweep.bogus": 1})


def test_missing_required_fields_and_duplicates(tmp_path: Path) -> None:
    text = MINIMAL + '[[caches]]\nname = "second"\n'
    msg = error_of(write(tmp_path, text))
    assert f"caches[1].capacity: missing, in the cache from {tmp_path}/metisd.toml:4" in msg
    assert "(required)" in msg
    msg = error_of(None, {"METIS_CACHE_CAPACITY": "8MiB"})
    assert "caches[0].name: missing, in the cache from environment variable" in msg
    text = MINIMAL + '[[caches]]\nname = "app"\ncapacity = "8MiB"\n'
    msg = error_of(write(tmp_path, text))
    assert f"caches[1].name ({tmp_path}/metisd.toml:5): 'app'" in msg
    assert "caches[0] has it" in msg


def test_no_cache_is_an_error(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, 'log_level = "INFO"\n'))
    assert "caches: [] is not valid; expected at least one cache" in msg
    assert "METIS_CACHE_NAME" in msg
    assert "at least one cache" in error_of(None)


def test_environment_errors_name_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    cases = {
        "METIS_SWEEP_INTERVAL": ("soon", "sweep.interval", "a duration"),
        "METIS_CACHE_CAPACITY": ("big", "caches[0].capacity", "a size"),
        "METIS_HEALTH_ENABLED": ("maybe", "health.enabled", "true or false"),
        "METIS_CACHE_MODE": ("999", "caches[0].mode", "octal"),
        "METIS_SNAPSHOT_RETENTION": ("-2", "snapshot.retention", "a positive number"),
    }
    for var, (value, field, allowed) in cases.items():
        with pytest.raises(InvalidConfig) as info:
            load_config(path, env={var: value})
        msg = str(info.value)
        assert msg.startswith(f"[INVALID_CONFIG] {field} (environment variable {var}): {value!r}")
        assert allowed in msg and info.value.context["env"] == var


def test_argument_errors() -> None:
    msg = error_of(None, {"METIS_CACHE_NAME": "a", "METIS_CACHE_CAPACITY": "8MiB"},
                   **{"snapshot.interval": "-1s"})  # fmt: skip
    assert msg.startswith("[INVALID_CONFIG] snapshot.interval (argument): '-1s'")
    msg = error_of(None, **{"caches[1].name": "x"})
    assert "caches[1].name (argument): there are 0 caches" in msg
    msg = error_of(None, **{"caches[0]": 5})
    assert "caches[0] (argument): 5 is not valid; expected a table" in msg


def test_file_level_errors(tmp_path: Path) -> None:
    assert "not found" in error_of(tmp_path / "nope.toml")
    msg = error_of(write(tmp_path, "a: 1\n", "metisd.yaml"))
    assert "'.yaml' is not a known format; expected a .toml or .json file" in msg
    msg = error_of(write(tmp_path, '[[caches]]\nname = "a"\ncapacity 5\n'))
    assert f"{tmp_path}/metisd.toml:3: not valid TOML" in msg
    msg = error_of(write(tmp_path, '{\n  "log_level": "INFO",\n  oops\n}\n', "m.json"))
    assert f"{tmp_path}/m.json:3: not valid JSON" in msg
    msg = error_of(write(tmp_path, "[1, 2]", "list.json"))
    assert "list.json:1: the top level must be a JSON object" in msg
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'log_level = "INFO"\n# caf\xe9\n')
    assert "latin1.toml:2: not valid UTF-8" in error_of(bad)


# ---- reload diffs --------------------------------------------------------------


def test_diff_config_splits_live_and_restart(tmp_path: Path) -> None:
    old = load_config(write(tmp_path, FULL_TOML), env={}).config
    assert diff_config(old, old) == ({}, [])
    new = load_config(
        write(tmp_path, FULL_TOML),
        env={},
        overrides={
            "sweep.interval": "5s",
            "snapshot.on_shutdown": True,
            "log_level": "DEBUG",
            "health.address": "127.0.0.1:1",
            "caches[0].capacity": "128MiB",
        },
    ).config
    live, restart = diff_config(old, new)
    assert live == {
        "log_level": ("WARNING", "DEBUG"),
        "sweep.interval": (2.0, 5.0),
        "snapshot.on_shutdown": (False, True),
    }
    assert restart == ["health.address", "caches[0].capacity"]
    fewer = msgspec.structs.replace(new, caches=new.caches[:1])
    assert diff_config(new, fewer)[1] == ["caches[1]"]
    assert diff_config(fewer, new)[1] == ["caches[1]"]


# ---- the CLI -----------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="metis")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


def test_cli_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["config", "check", str(write(tmp_path, FULL_TOML))]) == 0
    assert capsys.readouterr().out == "ok: 2 caches (app, sessions)\n"
    assert run_cli(["config", "check", str(write(tmp_path, MINIMAL))]) == 0
    assert capsys.readouterr().out == "ok: 1 cache (app)\n"
    bad = write(tmp_path, MINIMAL + "shards = 6\n")
    assert run_cli(["config", "check", str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(
        f"metis config check: error: [INVALID_CONFIG] caches[0].shards ({bad}:4): 6"
    )


def test_cli_check_applies_the_environment_unless_told_not_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(write(tmp_path, MINIMAL))
    monkeypatch.setenv("METIS_CACHE_POLICY", "nope")
    assert run_cli(["config", "check", path]) == 2
    assert "environment variable METIS_CACHE_POLICY" in capsys.readouterr().err
    assert run_cli(["config", "check", path, "--no-env"]) == 0
    assert run_cli(["config", "check", path, "--no-env", "--set", "sweep.budget=0"]) == 2
    assert "sweep.budget (argument): '0'" in capsys.readouterr().err
    assert run_cli(["config", "check", path, "--set", "nonsense"]) == 2
    assert "expected FIELD=VALUE" in capsys.readouterr().err


def test_cli_show_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, FULL_TOML)
    monkeypatch.setenv("METIS_SWEEP_BUDGET", "99")
    argv = ["config", "show", "--config", str(path), "--set", "caches[1].policy=arc"]
    assert run_cli(argv) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if not line.startswith("#")}
    assert set(rows) == set(flatten_config(load_config(path, env={}).config))
    assert re.search(r"^sweep\.budget +\* 99 +env METIS_SWEEP_BUDGET$", rows["sweep.budget"])
    assert re.search(rf'"WARNING" +file {re.escape(str(path))}:2$', rows["log_level"])
    assert rows["caches[1].policy"].split()[-2:] == ['"arc"', "argument"]
    assert "67108864 (64.0 MiB)" in rows["caches[0].capacity"]
    assert "0o640" in rows["caches[0].mode"] and "default" in rows["replace_incompatible"]
    assert "*" not in rows["health.address"]


def test_cli_show_json_and_metis_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, FULL_TOML)
    monkeypatch.setenv(CONFIG_ENV, str(path))
    assert run_cli(["config", "show", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["file"] == str(path)
    assert data["config"]["caches"][1]["name"] == "sessions"
    assert data["config"]["sweep"] == {"interval": 2.0, "budget": 20000}
    assert data["sources"]["caches[0].mode"] == f"file {path}:{line_of(FULL_TOML, 'mode =')}"
    # --no-env ignores METIS_CONFIG too: no file, no cache: the defaults, and a note
    assert run_cli(["config", "show", "--no-env"]) == 0
    assert "at least one cache" in capsys.readouterr().out


# ---- templates ---------------------------------------------------------------


def test_there_are_templates() -> None:
    names = {p.name for p in TEMPLATES}
    assert {"metisd.toml", "web-server.toml", "api-gateway.toml", "development.toml"} <= names


@pytest.mark.parametrize("path", TEMPLATES, ids=[p.name for p in TEMPLATES])
def test_template_loads(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    loaded = load_config(path, env={})
    assert loaded.config.caches
    assert run_cli(["config", "check", str(path), "--no-env"]) == 0
    assert capsys.readouterr().out.startswith("ok: ")


def test_sample_names_every_field() -> None:
    """daemon/metisd.toml sets every field, each to its default."""
    sample = ROOT / "daemon" / "metisd.toml"
    loaded = load_config(sample, env={})
    for field in flatten_config(loaded.config):
        if field not in ("caches[0].name", "caches[0].capacity"):
            assert loaded.sources[field].startswith("file "), field
    defaults = DaemonConfig(
        caches=[CacheConfig(name="app", capacity=loaded.config.caches[0].capacity)]
    )
    assert loaded.config == defaults
