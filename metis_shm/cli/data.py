"""``metis get``, ``metis set``, ``metis delete`` and ``metis keys``: items by hand.

* ``metis get NAME KEY [--json]``: print a value (exit 1 if absent); text and
  UTF-8 bytes print as they are, other values as JSON.
* ``metis set NAME KEY VALUE [--type str|bytes|int|json] [--ttl S]``: ``S``
  a positive duration (0 or less is a usage error: nothing is stored).
* ``metis delete NAME KEY``: exit 1 if it was absent.
* ``metis keys NAME [--prefix P] [--limit N] [--json]``: list keys.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from metis_shm.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    Subparsers,
    UsageError,
    jsonable,
    open_existing,
)
from metis_shm.errors import InvalidConfig, KeyNotFound
from metis_shm.units import parse_duration

_MISSING: Any = object()


def register(subparsers: Subparsers) -> None:
    """Add ``get``, ``set``, ``delete`` and ``keys`` to the ``metis`` parser."""
    _register_get(subparsers)
    _register_set(subparsers)
    _register_delete(subparsers)
    _register_keys(subparsers)


_KEY_HELP = "the key (a str key; --bytes-key for a bytes key)"


def _key(args: argparse.Namespace) -> str | bytes:
    key: str = args.key
    return key.encode() if args.bytes_key else key


def _show(value: Any) -> str:
    """A value as `metis get` prints it: text as is, bytes decoded when UTF-8."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            return repr(bytes(value))
    return json.dumps(jsonable(value))


def _show_key(key: str | bytes) -> str:
    return key if isinstance(key, str) else repr(key)


def _register_get(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "get",
        help="print the value stored under a key (exit 1 if absent)",
        description="Read KEY from cache NAME. Text and UTF-8 bytes print as they are; "
        "other values print as JSON.",
        epilog="examples:\n  metis get app user:42\n  metis get app user:42 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", help="cache name")
    p.add_argument("key", help=_KEY_HELP)
    p.add_argument("--bytes-key", action="store_true", help="KEY is a bytes key (UTF-8)")
    p.add_argument("--json", action="store_true", help="print JSON (found, type, value)")
    p.add_argument(
        "--pickle",
        action="store_true",
        help="unpickle the value if the cache uses serializer pickle (runs code chosen by "
        "whoever wrote it: only for trusted writers)",
    )
    p.set_defaults(handler=_cmd_get)


def _cmd_get(args: argparse.Namespace) -> int:
    key = _key(args)
    with open_existing(args.name, reads_values=True, pickle=args.pickle) as cache:
        value = cache.get(key, _MISSING)
    found = value is not _MISSING
    if args.json:
        print(json.dumps({
            "name": args.name, "key": _show_key(key), "found": found,
            "type": type(value).__name__ if found else None,
            "value": jsonable(value) if found else None,
        }))  # fmt: skip
    elif found:
        print(_show(value))
    if not found:
        print(f"metis get: error: {KeyNotFound(key)} not in cache {args.name!r}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


_VALUE_TYPES = ("str", "bytes", "int", "json")


_DURATION_HELP = "a positive duration such as 30, 250ms, 5m or 2h (units: us, ms, s, m, h, d)"


def positive_duration(text: str) -> float:
    """A ``--ttl`` value: seconds above 0 (``argparse`` turns the error into a
    usage error, exit 2). 0 or less is refused, not stored as "expire now"."""
    body = text.strip()
    negative = body.startswith("-")
    try:
        seconds = parse_duration(body[1:] if negative else body, "--ttl")
    except InvalidConfig:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration; expected {_DURATION_HELP}"
        ) from None
    if negative or seconds <= 0 or not math.isfinite(seconds):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not positive; expected {_DURATION_HELP}; for an item that does "
            "not expire, leave --ttl out"
        )
    return seconds


def _register_set(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "set",
        help="store a value under a key",
        description="Store VALUE under KEY in cache NAME (as a str unless --type says otherwise).",
        epilog=(
            "examples:\n  metis set app greeting hello\n  metis set app hits 0 --type int\n"
            '  metis set app user:42 \'{"name": "Ada"}\' --type json --ttl 10m'
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", help="cache name")
    p.add_argument("key", help=_KEY_HELP)
    p.add_argument("value", help="the value")
    p.add_argument("--bytes-key", action="store_true", help="KEY is a bytes key (UTF-8)")
    p.add_argument(
        "--type", choices=_VALUE_TYPES, default="str", help="how to store VALUE (default: str)"
    )
    p.add_argument(
        "--ttl",
        metavar="S",
        type=positive_duration,
        help="expire after S, a positive duration (30, 250ms, 5m, 2h); without it the item "
        "does not expire (or gets the cache's default TTL)",
    )
    p.set_defaults(handler=_cmd_set)


def _cmd_set(args: argparse.Namespace) -> int:
    key = _key(args)
    text: str = args.value
    value: Any
    if args.type == "bytes":
        value = text.encode()
    elif args.type == "int":
        try:
            value = int(text)
        except ValueError as exc:
            raise UsageError(f"--type int: {text!r} is not an integer") from exc
    elif args.type == "json":
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"--type json: {text!r} is not JSON: {exc}") from exc
    else:
        value = text
    ttl: float | None = args.ttl  # checked by positive_duration: above 0
    with open_existing(args.name) as cache:
        cache.set(key, value, ttl=ttl)
    expiry = "" if ttl is None else f", expires in {ttl:g} s"
    print(f"stored {_show_key(key)} ({args.type}{expiry})")
    return EXIT_OK


def _register_delete(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "delete",
        help="delete a key (exit 1 if it was absent)",
        description="Remove KEY from cache NAME.",
        epilog="examples:\n  metis delete app user:42",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", help="cache name")
    p.add_argument("key", help=_KEY_HELP)
    p.add_argument("--bytes-key", action="store_true", help="KEY is a bytes key (UTF-8)")
    p.set_defaults(handler=_cmd_delete)


def _cmd_delete(args: argparse.Namespace) -> int:
    key = _key(args)
    with open_existing(args.name) as cache:
        removed = cache.delete(key)
    if not removed:
        print(
            f"metis delete: error: {KeyNotFound(key)} not in cache {args.name!r}", file=sys.stderr
        )
        return EXIT_FAILED
    print(f"deleted {_show_key(key)}")
    return EXIT_OK


def _register_keys(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "keys",
        help="list keys, optionally those with a prefix",
        description="Print the keys of cache NAME, one a line (bytes keys as b'...'), in "
        "storage order. Safe while other processes write.",
        epilog="examples:\n  metis keys app --prefix user: --limit 20\n  metis keys app --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", help="cache name")
    p.add_argument("--prefix", metavar="P", help="only keys starting with P")
    p.add_argument(
        "--limit", type=int, default=1000, metavar="N", help="at most N keys (default 1000; 0: all)"
    )
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(handler=_cmd_keys)


def _cmd_keys(args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise UsageError(f"--limit: {args.limit} is negative")
    keys: list[str | bytes] = []
    more = False
    with open_existing(args.name) as cache:
        for key in cache.keys(prefix=args.prefix):
            if args.limit and len(keys) >= args.limit:
                more = True
                break
            keys.append(key)
    if args.json:
        print(json.dumps([_show_key(k) for k in keys]))
    else:
        for key in keys:
            print(_show_key(key))
    if more:
        print(f"metis keys: stopped at --limit {args.limit}", file=sys.stderr)
    return EXIT_OK


__all__ = ["register"]
