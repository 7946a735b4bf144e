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
"""

from __future__ import annotations

import errno
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import posix_ipc

from metis_shm import _engine
from metis_shm.errors import (
    InvalidName,
    SegmentCorrupt,
    SegmentForeign,
    SegmentNotFound,
    SegmentPermission,
    SegmentVersionMismatch,
    ShmNoSpace,
)
from metis_shm.units import format_size

SHM_DIR = "/dev/shm"
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


@dataclass
class Opened:
    """An open segment file descriptor and what we learnt about it."""

    fd: int
    size: int
    created: bool
    header: dict[str, Any] | None


def create_or_open(name: str, plan: dict[str, int], mode: int, create: bool) -> Opened:
    """Create the segment (sized, pages reserved) or open the existing one."""
    if create:
        try:
            shm = posix_ipc.SharedMemory(shm_name(name), posix_ipc.O_CREX, mode=mode)
        except posix_ipc.ExistentialError:
            pass
        except posix_ipc.PermissionsError as exc:
            raise SegmentPermission(str(exc), context={"name": name}) from exc
        else:
            fd = shm.fd
            try:
                os.fchmod(fd, mode)  # shm_open applies the umask; we promise `mode`
                _reserve(name, fd, plan["segment_size"])
            except BaseException:
                os.close(fd)
                _unlink_quietly(name)
                raise
            return Opened(fd, plan["segment_size"], True, None)
    return attach(name)


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


def attach(name: str) -> Opened:
    """Open an existing segment and check it is a ready Metis segment we can read."""
    try:
        shm = posix_ipc.SharedMemory(shm_name(name))
    except posix_ipc.ExistentialError:
        raise SegmentNotFound(
            f"no cache named {name!r} ({shm_path(name)} does not exist)",
            context={"name": name},
        ) from None
    except posix_ipc.PermissionsError as exc:
        raise SegmentPermission(
            f"cannot open cache {name!r}: {exc} (segments are created mode 0600 by their owner)",
            context={"name": name},
        ) from exc
    fd = shm.fd
    try:
        header = _wait_ready(name, fd)
    except BaseException:
        os.close(fd)
        raise
    return Opened(fd, header["segment_size"], False, header)


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
