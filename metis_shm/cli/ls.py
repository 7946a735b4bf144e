"""``metis ls``: every cache segment on this machine, and who uses it.

* ``metis ls [NAME...] [--json]``: one row per ``/dev/shm/metis.*`` segment: name,
  capacity, bytes used, creator (user, pid, alive or not), daemon (pid and
  whether its heartbeat is fresh), the processes that map it; and the
  processes still attached to a destroyed segment of that name (stale: they
  work on a copy no other process sees). A segment that cannot be opened
  (another user's, a foreign file, another layout version) is listed with
  the reason. ``NAME`` (shell patterns) limits the list to those caches.

Who maps what comes from ``/proc/*/maps`` (``segment.scan_attachments``),
read before any segment is opened, so ``metis ls`` does not count itself.
"""

from __future__ import annotations

import argparse
import fnmatch
import grp
import json
import os
import pwd
import stat
import time
from collections.abc import Sequence
from typing import Any

from metis_shm import segment
from metis_shm.cache import attach_existing
from metis_shm.cli.common import EXIT_OK, Subparsers
from metis_shm.errors import MetisError, SegmentNotFound
from metis_shm.units import format_size

HEARTBEAT_FRESH_NS = 10**10
"""A daemon heartbeat younger than this is fresh (as ``Cache.daemon_alive``)."""


def register(subparsers: Subparsers) -> None:
    """Add ``ls`` to the ``metis`` parser."""
    p = subparsers.add_parser(
        "ls",
        help="list the caches on this machine: size, creator, daemon, attached processes",
        description=(
            f"List every cache segment in {segment.SHM_DIR} (metis.NAME): capacity, bytes\n"
            "used, creator (user and pid, alive or not), daemon (pid, heartbeat fresh or not),\n"
            "the live processes that map it, and the processes still attached to a destroyed\n"
            "segment of that name (stale: they work on a copy no other process sees;\n"
            "Cache.stale tells them). A segment that cannot be opened is listed with the reason."
        ),
        epilog="examples:\n  metis ls\n  metis ls 'app*' sessions\n"
        "  metis ls --json | jq '.caches[] | {name, attached, stale}'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "patterns",
        nargs="*",
        metavar="NAME",
        help="only these caches (shell patterns such as 'app*'; default: all)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_cmd_ls)


# ---- collecting --------------------------------------------------------------------


def _segment_names() -> list[str]:
    try:
        entries = os.listdir(segment.SHM_DIR)
    except OSError:
        return []
    return sorted(e[len("metis.") :] for e in entries if e.startswith("metis.") and len(e) > 6)


def _file_info(name: str) -> dict[str, Any]:
    path = os.path.join(segment.SHM_DIR, f"metis.{name}")
    try:
        st = os.stat(path)
    except OSError:
        return {"path": path}
    return {
        "path": path,
        "file_size": st.st_size,
        "owner": {"uid": st.st_uid, "user": _user(st.st_uid)},
        "group": {"gid": st.st_gid, "name": _group(st.st_gid)},
        "mode": f"{stat.S_IMODE(st.st_mode):04o}",
    }


def _user(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _group(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def _who(person: dict[str, Any]) -> str:
    """``root (uid 0)``, or ``uid 1234`` without a passwd entry."""
    return f"{person['user']} (uid {person['uid']})" if person["user"] else f"uid {person['uid']}"


def _short_reason(exc: BaseException, info: dict[str, Any]) -> str:
    """Why a segment could not be opened, in a few words (the JSON has it all)."""
    code = getattr(exc, "code", type(exc).__name__)
    ctx: dict[str, Any] = getattr(exc, "context", {})
    if code == "SEGMENT_OWNER":
        # The file's owner is checked first; the header's creator only once it passed.
        creator = ctx.get("creator_uid")
        uid = int(creator if creator is not None else ctx.get("owner_uid", -1))
        whose = "created by" if creator is not None else "owned by"
        reason = (
            f"{whose} {segment.user_name(uid)}, not trusted (run as that user, or "
            f"{segment.TRUSTED_OWNERS_ENV}={uid} metis ls)"
        )
    elif code == "SEGMENT_PERMISSION":
        owner = _who(info["owner"]) if "owner" in info else "?"
        reason = f"permission denied (owner {owner}, mode {info.get('mode', '?')})"
    elif code == "SEGMENT_FOREIGN":
        reason = "not a Metis segment"
    elif code == "SEGMENT_VERSION":
        reason = (
            f"segment layout version {ctx.get('found')}; this metis_shm reads "
            f"version {ctx.get('expected')}"
        )
    elif code == "INVALID_NAME":
        reason = "not a valid cache name"
    else:
        reason = str(exc).removeprefix(f"[{code}] ").split("; ")[0]
    return f"[{code}] {reason}"


def _describe(name: str, found: segment.Attachments, now_ns: int) -> dict[str, Any] | None:
    """One segment's entry; None if it vanished meanwhile and nobody maps it."""
    entry: dict[str, Any] = {"name": name, **_file_info(name)}
    entry["attached"] = found.live.get(name, [])
    entry["stale"] = found.stale.get(name, [])
    try:
        segment.validate_name(name)
        with attach_existing(name, accept_pickle=True) as cache:
            stats = cache.stats()
            header = cache.settings
    except SegmentNotFound:
        if not entry["stale"]:
            return None
        entry.update(state="destroyed", error=None, reason=None)
        return entry
    except (MetisError, OSError) as exc:
        entry.update(state="unreadable", error=str(exc), reason=_short_reason(exc, entry))
        return entry
    creator_pid = int(header["creator_pid"])
    daemon_pid = int(header["daemon_pid"])
    heartbeat_ns = int(header["daemon_heartbeat_ns"])
    entry.update(
        state="ok",
        error=None,
        reason=None,
        policy=stats.policy,
        n_shards=stats.n_shards,
        segment_size=stats.segment_size,
        capacity=stats.capacity,
        bytes_used=stats.bytes_used,
        items=stats.items,
        created_at=int(header["created_ns"]) / 1e9,
        creator={
            "uid": int(header["creator_uid"]),
            "user": _user(int(header["creator_uid"])),
            "pid": creator_pid,
            "alive": segment.process_alive(creator_pid, int(header["created_ns"])),
        },
        daemon=None
        if not daemon_pid
        else {
            "pid": daemon_pid,
            "alive": now_ns - heartbeat_ns < HEARTBEAT_FRESH_NS,
            "heartbeat_age_seconds": round(max(0, now_ns - heartbeat_ns) / 1e9, 3),
            "process_alive": segment.process_alive(daemon_pid),
        },
    )
    return entry


def list_caches(patterns: Sequence[str] = ()) -> dict[str, Any]:
    """What ``metis ls --json`` prints: ``caches`` (one entry per segment, and
    per destroyed name that processes still map; only names that match one of
    ``patterns`` if any) and ``processes_not_examined``."""
    found = segment.scan_attachments()  # first: this process maps nothing yet
    now_ns = time.time_ns()
    names = _segment_names()
    gone = sorted(set(found.stale) - set(names))
    entries = []
    for name in [*names, *gone]:
        if patterns and not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        entry = _describe(name, found, now_ns)
        if entry is not None:
            entries.append(entry)
    entries.sort(key=lambda e: e["name"])
    return {"caches": entries, "processes_not_examined": found.unreadable}


# ---- printing ----------------------------------------------------------------------


def _pids(pids: list[int]) -> str:
    return ("pid " if len(pids) == 1 else "pids ") + ", ".join(str(p) for p in pids)


def _row(e: dict[str, Any]) -> list[str]:
    attached, stale = str(len(e["attached"])), str(len(e["stale"]))
    if e["state"] == "destroyed":
        return [e["name"], "-", "-", "(destroyed)", "-", attached, stale]
    if e["state"] != "ok":
        owner = f"file owner {_who(e['owner'])}" if "owner" in e else "-"
        size = format_size(e["file_size"]) if "file_size" in e else "-"
        return [e["name"], size, "-", owner, "-", attached, stale]
    used = e["bytes_used"] / e["capacity"] if e["capacity"] else 0.0
    c = e["creator"]
    creator = f"{_who(c)} pid {c['pid']} {'alive' if c['alive'] else 'exited'}"
    d = e["daemon"]
    if d is None:
        daemon = "none"
    elif d["alive"]:
        daemon = f"pid {d['pid']} fresh"
    else:
        daemon = f"pid {d['pid']} stale ({d['heartbeat_age_seconds']:.0f}s)"
    return [
        e["name"],
        format_size(e["capacity"]),
        f"{format_size(e['bytes_used'])} {used:.0%}",
        creator,
        daemon,
        attached,
        stale,
    ]


_HEADINGS = ["NAME", "CAPACITY", "USED", "CREATOR", "DAEMON", "ATTACHED", "STALE"]
_RIGHT = {1, 2, 5, 6}  # columns aligned right


def _print_table(listing: dict[str, Any], patterns: Sequence[str] = ()) -> None:
    entries = listing["caches"]
    if not entries:
        where = f"{segment.SHM_DIR} named {' or '.join(patterns)}" if patterns else segment.SHM_DIR
        print(f"no caches in {where}")
    else:
        rows = [_HEADINGS, *(_row(e) for e in entries)]
        widths = [max(len(r[i]) for r in rows) for i in range(len(_HEADINGS))]

        def line(row: list[str]) -> str:
            cells = [
                cell.rjust(w) if i in _RIGHT else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ]
            return "  ".join(cells).rstrip()

        print(line(rows[0]))
        for entry, row in zip(entries, rows[1:], strict=True):
            print(line(row))
            if entry["reason"]:
                print(f"  cannot open: {entry['reason']}")
            if entry["stale"]:
                one = len(entry["stale"]) == 1
                print(
                    f"  stale: {_pids(entry['stale'])} still map{'s' if one else ''} a destroyed "
                    f"{entry['path']} (deleted), a copy no other process sees: reopen the "
                    f"cache or restart {'it' if one else 'them'}"
                )
    if listing["processes_not_examined"]:
        n = listing["processes_not_examined"]
        hint = "" if os.geteuid() == 0 else "; as root, other users' processes are examined too"
        print(
            f"({n} process{'es' if n != 1 else ''} not examined: /proc/PID/maps not readable{hint})"
        )


def _cmd_ls(args: argparse.Namespace) -> int:
    listing = list_caches(args.patterns)
    if args.json:
        print(json.dumps(listing, indent=2))
    else:
        _print_table(listing, args.patterns)
    return EXIT_OK


__all__ = ["list_caches", "register"]
