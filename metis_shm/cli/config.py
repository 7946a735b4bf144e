"""``metis config``: check a metisd config file, show the effective config.

* ``metis config check FILE [--no-env] [--set FIELD=VALUE]...``: load FILE as
  ``metisd`` would (with the ``METIS_*`` environment unless ``--no-env``);
  exit 0 and print ``ok: N caches (...)``, or exit 2 and print the error.
* ``metis config show [--config FILE] [--json] [--no-env] [--set ...]``: the
  effective configuration, every field with its value and where the value
  came from (``default``, ``file PATH:LINE``, ``env METIS_X``, ``argument``).
  Without ``--config``, the file named by ``$METIS_CONFIG`` if set (metisd
  looks nowhere else); with no file at all, the defaults (and the ``METIS_*``
  environment and ``--set``), with ``caches[N]``: each cache field's default.

``register(subparsers)`` adds the ``config`` command to the ``metis`` parser
(``metis_shm.cli``); each handler returns the exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from typing import Any

import msgspec

from metis_shm.cli.common import EXIT_OK, EXIT_USAGE, Subparsers
from metis_shm.daemon.config import (
    CONFIG_ENV,
    LIVE_FIELDS,
    CacheConfig,
    LoadedConfig,
    describe_value,
    flatten_config,
    load_config,
)
from metis_shm.errors import InvalidConfig

_EXAMPLES = """\
examples:
  metis config check /etc/metis/metisd.toml
  metis config check daemon/web-server.toml --no-env
  metis config show --config /etc/metis/metisd.toml
  metis config show --config daemon/development.toml --set sweep.interval=250ms --json
  METIS_CONFIG=/etc/metis/metisd.toml METIS_LOG_LEVEL=debug metis config show

Fields, defaults and METIS_* variables: docs/configuration.md.
"""


def register(subparsers: Subparsers) -> None:
    """Add ``config`` (with ``check`` and ``show``) to the ``metis`` command."""
    parser = subparsers.add_parser(
        "config",
        help="check a metisd config file or show the effective configuration",
        description=(
            "Check a metisd configuration file, or show the effective configuration "
            "(defaults < file < METIS_* environment < --set) with each value's source."
        ),
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    sub.required = True

    check = sub.add_parser(
        "check",
        help="validate a config file (exit 0 if metisd would accept it, 2 if not)",
        description=(
            "Load FILE as metisd would and report the first problem: the field, its "
            "value, what is allowed and where the value came from."
        ),
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("file", metavar="FILE", help="a .toml or .json config file")
    _common(check)
    check.set_defaults(handler=_cmd_check)

    show = sub.add_parser(
        "show",
        help="print the effective configuration and where each value came from",
        description=(
            "Print every field of the effective configuration with its value and its "
            f"source. Without --config, the file named by ${CONFIG_ENV} is read if set."
        ),
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show.add_argument("--config", metavar="FILE", help="a .toml or .json config file")
    show.add_argument("--json", action="store_true", help="print JSON")
    _common(show)
    show.set_defaults(handler=_cmd_show)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-env",
        action="store_true",
        help=f"ignore the METIS_* environment variables, {CONFIG_ENV} included "
        "(default: apply them, as metisd does)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override one field, e.g. --set sweep.interval=2s --set caches[0].capacity=1GiB",
    )


def _load(
    path: str | None, args: argparse.Namespace, extra: dict[str, Any] | None = None
) -> LoadedConfig:
    overrides: dict[str, Any] = dict(extra or {})
    for item in args.set:
        field, sep, value = item.partition("=")
        if not sep or not field.strip():
            raise InvalidConfig(
                f"--set {item!r}: expected FIELD=VALUE, e.g. sweep.interval=2s",
                context={"field": None, "value": item},
            )
        overrides[field.strip()] = value
    env: Mapping[str, str] = {} if args.no_env else os.environ
    return load_config(path, env=env, overrides=overrides)


def _fail(args: argparse.Namespace, exc: InvalidConfig) -> int:
    # str(exc) starts with the error's code: "[INVALID_CONFIG] ..."
    print(f"metis config {args.config_command}: error: {exc}", file=sys.stderr)
    return EXIT_USAGE


def _cmd_check(args: argparse.Namespace) -> int:
    try:
        loaded = _load(args.file, args)
    except InvalidConfig as exc:
        return _fail(args, exc)
    caches = loaded.config.caches
    names = ", ".join(c.name for c in caches)
    print(f"ok: {len(caches)} cache{'' if len(caches) == 1 else 's'} ({names})")
    return EXIT_OK


def _no_file(args: argparse.Namespace) -> bool:
    """No config file to read: no --config, and no $METIS_CONFIG (metisd
    looks nowhere else)."""
    return args.config is None and (args.no_env or not os.environ.get(CONFIG_ENV, "").strip())


_PLACEHOLDER = {"name": "metis-config-show", "capacity": "64MiB"}


def _load_defaults(args: argparse.Namespace) -> LoadedConfig:
    """The configuration without a file and without caches: the defaults, the
    METIS_* environment (unless --no-env) and --set, through a placeholder
    cache the caller leaves out (a config needs one)."""
    return _load(None, args, extra={"caches": [_PLACEHOLDER]})


def _cache_rows() -> list[tuple[str, str, str]]:
    """``caches[N].*`` without a cache: each field's default, or required."""
    rows = []
    for f in msgspec.structs.fields(CacheConfig):
        if f.required:
            rows.append((f"caches[N].{f.name}", "(required)", "required, no default"))
        else:
            default = f.default_factory() if f.default is msgspec.NODEFAULT else f.default
            rows.append((f"caches[N].{f.name}", describe_value(f.name, default), "default"))
    return rows


def _cache_defaults() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in msgspec.structs.fields(CacheConfig):
        if not f.required:
            default = f.default_factory() if f.default is msgspec.NODEFAULT else f.default
            out[f.name] = msgspec.to_builtins(default)
    return out


def _cmd_show(args: argparse.Namespace) -> int:
    no_caches = False
    try:
        loaded = _load(args.config, args)
    except InvalidConfig as exc:
        # No file and no cache from the environment: show the defaults.
        if not (_no_file(args) and exc.context.get("field") == "caches"):
            return _fail(args, exc)
        try:
            loaded = _load_defaults(args)
        except InvalidConfig as again:
            return _fail(args, again)
        no_caches = True
    fields = flatten_config(loaded.config)
    sources = dict(loaded.sources)
    if no_caches:
        fields = {k: v for k, v in fields.items() if not k.startswith("caches[")}
        sources = {k: v for k, v in sources.items() if not k.startswith("caches[")}
    if args.json:
        config = msgspec.to_builtins(loaded.config)
        out: dict[str, Any] = {"file": loaded.path, "config": config, "sources": sources}
        if no_caches:
            config["caches"] = []
            out["cache_defaults"] = _cache_defaults()
            out["cache_required"] = [f.name for f in msgspec.structs.fields(CacheConfig)
                                     if f.required]  # fmt: skip
            out["note"] = _NO_CACHE_NOTE.replace("\n", " ")
        print(json.dumps(out, indent=2))
        return EXIT_OK
    rows = [
        (field, describe_value(field, value), sources[field], field in LIVE_FIELDS)
        for field, value in fields.items()
    ]
    if no_caches:
        rows += [(field, shown, source, False) for field, shown, source in _cache_rows()]
    width_field = max(len(r[0]) for r in rows)
    width_value = max(len(r[1]) for r in rows)
    if loaded.path:
        print(f"# effective configuration; file: {loaded.path}")
    else:
        where = "no --config" if args.no_env else f"no --config and ${CONFIG_ENV} unset"
        env = "" if args.no_env else ", METIS_* environment"
        print(f"# effective configuration; file: none ({where}): defaults{env}")
    print("# (*) can change with SIGHUP; the other fields need a restart")
    if no_caches:
        for line in _NO_CACHE_NOTE.splitlines():
            print(f"# {line}")
    for field, shown, source, live in rows:
        mark = "*" if live else " "
        print(f"{field:<{width_field}} {mark} {shown:<{width_value}}  {source}")
    return EXIT_OK


_NO_CACHE_NOTE = (
    "no caches: metisd needs at least one cache ([[caches]] with name and capacity, or "
    "METIS_CACHE_NAME and METIS_CACHE_CAPACITY);\ncaches[N] shows each cache field's default"
)


__all__ = ["register"]
