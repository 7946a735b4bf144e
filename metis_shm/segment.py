"""Finding, creating and validating the shared-memory object of a cache.

A cache named ``app`` lives in the POSIX shared-memory object ``/metis.app``
(``/dev/shm/metis.app`` on Linux), opened through posix_ipc. Not
``multiprocessing.shared_memory``: its resource tracker unlinks segments at
interpreter exit while other processes still use them.

Creation is race-free: ``O_CREAT | O_EXCL`` picks one creator; it sizes the
object, reserves its pages (so a full /dev/shm fails now with a clear error,
not later with SIGBUS), writes the header and marks it ready last. Everyone
else attaches: waits briefly for "ready", then checks magic, layout version
and size before mapping.

Ownership: a segment is created mode 0600 (or 0660 and given to a group
with ``group=``). Attaching checks who owns it before trusting a byte of it:
anyone who can write a segment decides what every reader gets back, so a
segment planted under the cache's name by another user must not be used.
``OwnerCheck`` says which owners this process accepts (docs/security.md).
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import re
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import posix_ipc
import psutil

from metis_shm import _engine
from metis_shm.codec import SERIALIZERS
from metis_shm.errors import (
    InvalidConfig,
    InvalidName,
    SegmentCorrupt,
    SegmentForeign,
    SegmentNotFound,
    SegmentOwner,
    SegmentPermission,
    SegmentVersionMismatch,
    ShmNoSpace,
)
from metis_shm.units import format_size

SHM_DIR = "/dev/shm"
TRUSTED_OWNERS_ENV = "METIS_TRUSTED_OWNERS"
"""Comma-separated user names or uids every ``Cache`` of the process trusts
as segment owners, besides its ``trusted_owners`` argument (for operators:
``METIS_TRUSTED_OWNERS=metis metis stats app`` as root)."""
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
ATTACH_WAIT_SECONDS = 2.0


def validate_name(name: object) -> str:
    """The name itself, or InvalidName saying what is allowed."""
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise InvalidName(
            f"cache name {name!r} is not valid: use 1 to 64 characters from A-Z a-z 0-9 _ . -",
            context={"name": name},
        )
    return name


def shm_name(name: str) -> str:
    """The POSIX shared-memory object name of a cache."""
    return f"/metis.{name}"


def shm_path(name: str) -> str:
    """Where the object shows up in the file system (Linux)."""
    return os.path.join(SHM_DIR, f"metis.{name}")


def check_free_space(name: str, needed: int) -> None:
    """Raise ShmNoSpace if the shm file system cannot hold `needed` more bytes."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if free < needed:
        raise ShmNoSpace(
            f"cache {name!r} needs a {format_size(needed)} segment but {SHM_DIR} has only "
            f"{format_size(free)} free ({format_size(needed - free)} missing). Lower the "
            f"capacity, or give {SHM_DIR} more room (docker: --shm-size; Kubernetes: an "
            f"emptyDir with medium: Memory; a host: mount -o remount,size=... {SHM_DIR})",
            context={"needed": needed, "free": free, "missing": needed - free},
        )


# ---- owners and groups ---------------------------------------------------------


def resolve_group(group: int | str | None, what: str = "group") -> int | None:
    """The gid of ``group`` (a group name or a gid), None for None; InvalidConfig
    if no such group exists."""
    if group is None:
        return None
    return _resolve_id(
        group,
        what,
        expected="a group name or a gid",
        id_word="gid",
        lookup=lambda name: grp.getgrnam(name).gr_gid,
        unknown=f"there is no group named {group!r} on this machine (getent group "
        f"{group}); create it, or give an existing group name or gid",
    )


def resolve_uid(user: int | str, what: str = "trusted_owners") -> int:
    """The uid of ``user`` (a user name or a uid); InvalidConfig if unknown."""
    return _resolve_id(
        user,
        what,
        expected="user names or uids",
        id_word="uid",
        lookup=lambda name: pwd.getpwnam(name).pw_uid,
        unknown=f"there is no user named {user!r} on this machine",
    )


def _resolve_id(
    value: object,
    what: str,
    *,
    expected: str,
    id_word: str,
    lookup: Callable[[str], int],
    unknown: str,
) -> int:
    """A numeric id as given, or a name looked up; InvalidConfig otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidConfig(
            f"{what}: {value!r} is not valid; expected {expected}",
            context={"field": what, "value": value},
        )
    if isinstance(value, int) or value.isdigit():
        number = int(value)
        if not 0 <= number < 2**32:
            raise InvalidConfig(
                f"{what}: {value!r} is not a valid {id_word}",
                context={"field": what, "value": value},
            )
        return number
    try:
        return lookup(value)
    except (KeyError, ValueError):  # ValueError: a NUL in the name
        raise InvalidConfig(f"{what}: {unknown}", context={"field": what, "value": value}) from None


def user_name(uid: int) -> str:
    """``name (uid N)``, or ``uid N`` for a uid with no passwd entry."""
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def group_name(gid: int) -> str:
    """``name (gid N)``, or ``gid N`` for a gid with no group entry."""
    try:
        return f"{grp.getgrgid(gid).gr_name} (gid {gid})"
    except KeyError:
        return f"gid {gid}"


def effective_mode(mode: int, gid: int | None) -> int:
    """The permission bits a segment gets: ``mode``, plus group read and
    write when it is shared with a group."""
    return mode | 0o060 if gid is not None else mode


def apply_group(fd: int, gid: int, what: str) -> None:
    """``fchown`` the file to group ``gid``; a clear error if we may not."""
    try:
        os.fchown(fd, -1, gid)
    except PermissionError as exc:
        raise SegmentPermission(
            f"{what}: cannot give it to group {group_name(gid)}: {exc.strerror}. A process "
            f"can only give its files to a group it is a member of (see `id`), unless it "
            f"runs as root",
            context={"gid": gid},
        ) from exc


@dataclass(frozen=True)
class OwnerCheck:
    """Which owners of an existing segment this process accepts.

    Accepted: a segment whose file owner and header creator uid are this
    process's effective uid, root, or in ``trusted_uids``; or one shared
    through ``group`` (its file group is ``group``, its mode gives the group
    read and write, and this process is a member); or any at all with
    ``allow_any``.
    """

    trusted_uids: frozenset[int] = field(default_factory=frozenset)
    group: int | None = None
    allow_any: bool = False

    @classmethod
    def build(
        cls,
        *,
        trusted_owners: Iterable[int | str] = (),
        group: int | str | None = None,
        allow_foreign_owner: bool = False,
    ) -> OwnerCheck:
        """From the arguments of ``Cache`` (names resolved to ids) and
        ``$METIS_TRUSTED_OWNERS``."""
        if isinstance(trusted_owners, str | int):
            trusted_owners = [trusted_owners]
        from_env = os.environ.get(TRUSTED_OWNERS_ENV, "")
        uids = frozenset(resolve_uid(u) for u in trusted_owners) | frozenset(
            resolve_uid(p.strip(), TRUSTED_OWNERS_ENV) for p in from_env.split(",") if p.strip()
        )
        return cls(uids, resolve_group(group), bool(allow_foreign_owner))

    def problem(self, st: os.stat_result, creator_uid: int | None) -> str | None:
        """Why a segment with this status and creator is refused (None: accepted)."""
        if self.allow_any:
            return None
        trusted = {os.geteuid(), 0} | self.trusted_uids
        if (
            self.group is not None
            and st.st_gid == self.group
            and st.st_mode & 0o060 == 0o060
            and (self.group == os.getegid() or self.group in os.getgroups())
        ):
            return None
        if st.st_uid not in trusted:
            return f"is owned by {user_name(st.st_uid)}"
        if creator_uid is not None and creator_uid not in trusted:
            return f"was created by {user_name(creator_uid)} (its header says so)"
        return None


DEFAULT_OWNER_CHECK = OwnerCheck()


def _check_owner(name: str, fd: int, check: OwnerCheck, creator_uid: int | None) -> None:
    st = os.fstat(fd)
    why = check.problem(st, creator_uid)
    if why is None:
        return
    me = user_name(os.geteuid())
    raise SegmentOwner(
        f"cache {name!r}: {shm_path(name)} {why}, group {group_name(st.st_gid)}, mode "
        f"{stat.S_IMODE(st.st_mode):04o}; this process runs as {me} and does not attach to "
        f"a segment another user controls (whoever can write it decides what every reader "
        f"gets). If that user is trusted: Cache(..., trusted_owners=[{st.st_uid}]), or share "
        f"the cache through a group (group=... on both sides), or allow_foreign_owner=True; "
        f"metisd: caches[].trusted_owners; metis commands: {TRUSTED_OWNERS_ENV}="
        f"{st.st_uid}, or run them as the owner. Otherwise remove it: Cache.destroy({name!r})",
        context={
            "name": name,
            "owner_uid": st.st_uid,
            "creator_uid": creator_uid,
            "gid": st.st_gid,
            "mode": stat.S_IMODE(st.st_mode),
            "euid": os.geteuid(),
        },
    )


# ---- opening -------------------------------------------------------------------


@dataclass
class Opened:
    """An open segment file descriptor and what we learnt about it."""

    fd: int
    size: int
    created: bool
    header: dict[str, Any] | None


def create_or_open(
    name: str,
    plan: dict[str, int],
    mode: int,
    create: bool,
    *,
    gid: int | None = None,
    owners: OwnerCheck = DEFAULT_OWNER_CHECK,
) -> Opened:
    """Create the segment (sized, pages reserved; mode ``mode``, or shared
    with group ``gid``) or open the existing one (its owner checked)."""
    if create:
        try:
            # 0600 until the group is set: nobody else opens it half-made.
            shm = posix_ipc.SharedMemory(shm_name(name), posix_ipc.O_CREX, mode=0o600)
        except posix_ipc.ExistentialError:
            pass
        except posix_ipc.PermissionsError as exc:
            raise SegmentPermission(str(exc), context={"name": name}) from exc
        else:
            fd = shm.fd
            try:
                if gid is not None:
                    apply_group(fd, gid, f"cache {name!r}")
                # shm_open applies the umask; we promise the mode
                os.fchmod(fd, effective_mode(mode, gid))
                _reserve(name, fd, plan["segment_size"])
            except BaseException:
                os.close(fd)
                _unlink_quietly(name)
                raise
            return Opened(fd, plan["segment_size"], True, None)
    return attach(name, owners)


def _reserve(name: str, fd: int, size: int) -> None:
    check_free_space(name, size)
    os.ftruncate(fd, size)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.ENOMEM):
            check_free_space(name, size)
            raise ShmNoSpace(
                f"cache {name!r}: {SHM_DIR} could not reserve {format_size(size)} ({exc})",
                context={"needed": size},
            ) from exc
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise


def attach(name: str, owners: OwnerCheck = DEFAULT_OWNER_CHECK) -> Opened:
    """Open an existing segment and check that its owner is one ``owners``
    accepts and that it is a ready Metis segment we can read."""
    try:
        shm = posix_ipc.SharedMemory(shm_name(name))
    except posix_ipc.ExistentialError:
        raise SegmentNotFound(
            f"no cache named {name!r} ({shm_path(name)} does not exist)",
            context={"name": name},
        ) from None
    except posix_ipc.PermissionsError as exc:
        raise _permission_denied(name, exc) from exc
    fd = shm.fd
    try:
        # Before reading the header: nothing from a foreign segment is used.
        _check_owner(name, fd, owners, None)
        header = _wait_ready(name, fd)
        _check_owner(name, fd, owners, int(header["creator_uid"]))
    except BaseException:
        os.close(fd)
        raise
    return Opened(fd, header["segment_size"], False, header)


def _permission_denied(name: str, exc: Exception) -> SegmentPermission:
    """EACCES at open: say whose segment it is and how to share it."""
    context: dict[str, Any] = {"name": name, "euid": os.geteuid()}
    try:
        st = os.stat(shm_path(name))
    except OSError:
        whose = ""
    else:
        context.update(owner_uid=st.st_uid, gid=st.st_gid, mode=stat.S_IMODE(st.st_mode))
        whose = (
            f": it belongs to {user_name(st.st_uid)}, group {group_name(st.st_gid)}, mode "
            f"{stat.S_IMODE(st.st_mode):04o}"
        )
    return SegmentPermission(
        f"cannot open cache {name!r} ({shm_path(name)}) as {user_name(os.geteuid())}: "
        f"permission denied{whose}. Segments are created 0600 (only their owner opens "
        f"them); to share one, create it with group=GROUP (mode 0660; metisd: "
        f"caches[].group) and run the other processes in that group, or run them as "
        f"the owner",
        context=context,
    )


def _wait_ready(name: str, fd: int) -> dict[str, Any]:
    deadline = time.monotonic() + ATTACH_WAIT_SECONDS
    while True:
        size = os.fstat(fd).st_size
        raw = os.pread(fd, _engine.HEADER_BYTES, 0)
        magic = raw[:8]
        if magic and magic.strip(b"\0") and magic != _engine.MAGIC:
            raise SegmentForeign(
                f"{shm_path(name)} exists but is not a Metis segment (it starts with "
                f"{magic!r}); remove it or pick another cache name",
                context={"name": name},
            )
        if len(raw) == _engine.HEADER_BYTES:
            header = _engine.read_header(raw)
            if header["magic"] == _engine.MAGIC and header["state"] == 1:
                _validate(name, header, size)
                return header
        if time.monotonic() > deadline:
            raise SegmentCorrupt(
                f"{shm_path(name)} is {size} bytes and never became a ready Metis segment "
                f"(its creator may have died while creating it); destroy it with "
                f"Cache.destroy({name!r}) and open it again",
                context={"name": name, "size": size},
            )
        time.sleep(0.01)


def _validate(name: str, header: dict[str, Any], size: int) -> None:
    if header["layout_version"] != _engine.LAYOUT:
        raise SegmentVersionMismatch(
            f"cache {name!r} has segment layout version {header['layout_version']}; this "
            f"metis_shm reads version {_engine.LAYOUT}. Use the metis_shm version that "
            f"created it, or Cache.destroy({name!r}) (its contents are lost) and recreate",
            context={"name": name, "found": header["layout_version"], "expected": _engine.LAYOUT},
        )
    if size < header["segment_size"]:
        raise SegmentCorrupt(
            f"cache {name!r} is truncated: {size} bytes, its header says {header['segment_size']}",
            context={"name": name, "size": size, "expected": header["segment_size"]},
        )
    for setting, known in (("serializer", SERIALIZERS), ("policy", _engine.POLICIES)):
        if header[setting] not in known.values():
            raise SegmentCorrupt(
                f"cache {name!r} has an impossible header: {setting} {header[setting]} is none "
                f"of {sorted(known.values())} ({', '.join(sorted(known))})",
                context={"name": name, "field": setting},
            )
    try:
        plan = _engine.plan_layout(
            header["capacity"],
            header["n_shards"],
            header["max_entries"],
            header["n_slots"],
            header["policy"],
        )
    except ValueError as exc:
        raise SegmentCorrupt(f"cache {name!r} has an impossible header: {exc}") from exc
    for key, value in plan.items():
        if header.get(key, value) != value:
            raise SegmentCorrupt(
                f"cache {name!r} has an inconsistent header: {key} is {header[key]}, "
                f"the layout says {value}",
                context={"name": name, "field": key},
            )


def destroy(name: str) -> bool:
    """Unlink the segment; processes that have it mapped keep their mapping."""
    validate_name(name)
    return _unlink_quietly(name)


def exists(name: str) -> bool:
    """Is there a shared-memory object for this cache name?"""
    validate_name(name)
    return os.path.exists(shm_path(name))


def _unlink_quietly(name: str) -> bool:
    try:
        posix_ipc.unlink_shared_memory(shm_name(name))
    except posix_ipc.ExistentialError:
        return False
    return True


# ---- who has a segment mapped ----------------------------------------------------

_MAPPED = re.compile(
    rb"^\S+\s+\S+\s+\S+\s+\S+\s+\d+\s+"
    + re.escape(SHM_DIR.encode())
    + rb"/metis\.([A-Za-z0-9_.-]{1,64})"
    rb"( \(deleted\))?$",
    re.M,
)


@dataclass
class Attachments:
    """Which processes map which cache segments, from ``/proc/*/maps``.

    ``live[name]``: processes that map the segment now behind the name;
    ``stale[name]``: processes that still map a segment of that name that was
    destroyed (their maps say ``/dev/shm/metis.NAME (deleted)``): they work
    on a copy that no other process sees (``Cache.stale`` in the process
    itself). A process can be in both. ``unreadable``: processes whose maps
    this process may not read (other users', when not root): not counted.
    """

    live: dict[str, list[int]] = field(default_factory=dict)
    stale: dict[str, list[int]] = field(default_factory=dict)
    unreadable: int = 0


def scan_attachments(proc: str = "/proc") -> Attachments:
    """Read every process's ``/proc/PID/maps`` once: who maps which segment."""
    found = Attachments()
    marker = f"{SHM_DIR}/metis.".encode()
    try:
        entries = os.listdir(proc)
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(os.path.join(proc, entry, "maps"), "rb") as f:
                text = f.read()
        except PermissionError:
            found.unreadable += 1
            continue
        except OSError:  # gone meanwhile
            continue
        if marker not in text:
            continue
        pid = int(entry)
        for m in _MAPPED.finditer(text):
            table = found.stale if m.group(2) else found.live
            pids = table.setdefault(m.group(1).decode(), [])
            if not pids or pids[-1] != pid:
                pids.append(pid)
    for table in (found.live, found.stale):
        for pids in table.values():
            pids.sort()
    return found


def attached_processes(name: str, proc: str = "/proc") -> tuple[list[int], list[int]]:
    """(pids that map cache ``name``'s segment, pids that still map a destroyed
    segment of that name), each sorted; see ``Attachments``."""
    validate_name(name)
    found = scan_attachments(proc)
    return found.live.get(name, []), found.stale.get(name, [])


def process_alive(pid: int, since_ns: int | None = None) -> bool:
    """Is ``pid`` a running process? With ``since_ns`` (a ``time_ns()``), only
    if it was already running then: a later process that reuses the pid is not it."""
    if pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        started = proc.create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's live process
        return True
    # create_time has ~10 ms resolution
    return since_ns is None or started <= since_ns / 1e9 + 1.0
