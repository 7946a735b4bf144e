"""Who may attach to a segment: real Unix users, real permission checks.

* a 0600 segment: another user is refused at open (EACCES), with a message
  naming the owner;
* a segment another user can open (chmod 0666) but that belongs to a third
  user: refused by the owner check, unless that owner is trusted or
  ``allow_foreign_owner=True``; root gets no exemption;
* group mode: ``group=`` makes the segment 0660 and gives it to the group;
  a member of the group attaches (and must name the group), a non-member is
  refused at open; giving a segment to a group one is not in, or to a group
  that does not exist, is a clear error;
* metisd refuses a foreign segment (exit 3) unless ``trusted_owners`` names
  its owner.

Run as root (the children drop to unprivileged ids); not root = a failure.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest
from _metisd import write_config
from _users import NOBODY, OTHER_A, OTHER_B, OTHER_C, require_root, run_as
from _workers import shm_path

from metis_shm import Cache, InvalidConfig, SegmentPermission
from metis_shm.errors import SegmentOwner


@pytest.fixture(autouse=True)
def _root() -> None:
    require_root()


def _attach(name: str, **kwargs: Any) -> tuple[Any, ...]:
    """In the child: open ``name`` and read "k"; what happened, picklable."""
    try:
        with Cache(name, create=False, **kwargs) as cache:
            return ("ok", cache.get("k"))
    except Exception as exc:  # reported to the test
        code = getattr(exc, "code", "")
        return ("error", type(exc).__name__, code, str(exc), getattr(exc, "context", {}))


def _create(name: str, **kwargs: Any) -> tuple[Any, ...]:
    """In the child: create ``name`` and store "k"; what happened, picklable."""
    try:
        with Cache(name, capacity="1MiB", **kwargs) as cache:
            cache.set("k", f"from uid {os.geteuid()}")
            st = os.stat(shm_path(name))
            return ("ok", st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
    except Exception as exc:
        return ("error", type(exc).__name__, getattr(exc, "code", ""), str(exc))


def test_other_user_cannot_open_a_0600_segment(names: Any) -> None:
    name = names()
    with Cache(name, capacity="1MiB") as cache:
        cache.set("k", "secret")
        assert stat.S_IMODE(os.stat(shm_path(name)).st_mode) == 0o600
        got = run_as(NOBODY, NOBODY, _attach, name)
        assert got[:3] == ("error", "SegmentPermission", "SEGMENT_PERMISSION"), got
        message = got[3]
        assert "permission denied" in message and "root (uid 0)" in message, message
        assert "mode 0600" in message and "group=" in message, message
        assert got[4]["owner_uid"] == 0
        # Asking to create it changes nothing: the name exists, the open is refused.
        created = run_as(NOBODY, NOBODY, _create, name)
        assert created[:2] == ("error", "SegmentPermission"), created
        assert cache.get("k") == "secret"


def test_readable_foreign_segment_is_refused_by_the_owner_check(names: Any) -> None:
    name = names()
    with Cache(name, capacity="1MiB") as cache:
        cache.set("k", "planted")
    path = shm_path(name)
    # A segment another user (OTHER_A) owns and lets everyone open.
    os.chown(path, OTHER_A, OTHER_A)
    os.chmod(path, 0o666)

    got = run_as(NOBODY, NOBODY, _attach, name)
    assert got[:3] == ("error", "SegmentOwner", "SEGMENT_OWNER"), got
    message = got[3]
    assert f"is owned by uid {OTHER_A}" in message, message
    assert f"trusted_owners=[{OTHER_A}]" in message and "allow_foreign_owner" in message
    assert got[4]["owner_uid"] == OTHER_A and got[4]["euid"] == NOBODY

    # Trusted by uid, or any owner allowed: it attaches and reads.
    assert run_as(NOBODY, NOBODY, _attach, name, trusted_owners=[OTHER_A]) == ("ok", "planted")
    assert run_as(NOBODY, NOBODY, _attach, name, allow_foreign_owner=True) == ("ok", "planted")
    # Trusting somebody else does not help.
    got = run_as(NOBODY, NOBODY, _attach, name, trusted_owners=[OTHER_B])
    assert got[:2] == ("error", "SegmentOwner"), got

    # Root is not exempt: it does not attach to a user's segment either.
    with pytest.raises(SegmentOwner) as info:
        Cache(name, create=False)
    assert info.value.context["owner_uid"] == OTHER_A
    assert isinstance(info.value, SegmentPermission) and isinstance(info.value, PermissionError)
    with Cache(name, create=False, trusted_owners=[str(OTHER_A)]) as cache:
        assert cache.get("k") == "planted"


def test_header_creator_uid_is_checked_too(names: Any) -> None:
    """A segment created by one user and then chowned to another: the file
    owner is trusted, the creator named in its header is not."""
    name = names()
    assert run_as(OTHER_B, OTHER_B, _create, name)[:2] == ("ok", OTHER_B)
    os.chown(shm_path(name), OTHER_A, OTHER_A)
    got = run_as(OTHER_A, OTHER_A, _attach, name)
    assert got[:2] == ("error", "SegmentOwner"), got
    assert f"was created by uid {OTHER_B}" in got[3], got[3]
    assert got[4]["creator_uid"] == OTHER_B
    assert run_as(OTHER_A, OTHER_A, _attach, name, trusted_owners=[OTHER_B])[0] == "ok"


def test_own_segment_and_roots_segment_attach(names: Any) -> None:
    name, other = names(), names()
    # A user attaches to its own segment...
    assert run_as(OTHER_A, OTHER_A, _create, name)[:4] == ("ok", OTHER_A, OTHER_A, 0o600)
    assert run_as(OTHER_A, OTHER_A, _attach, name) == ("ok", f"from uid {OTHER_A}")
    # ...and to root's, when root shares it (root can read every process anyway).
    with Cache(other, capacity="1MiB") as cache:
        cache.set("k", "root's")
        os.chmod(shm_path(other), 0o644 | 0o002 | 0o020)
        assert run_as(OTHER_A, OTHER_A, _attach, other) == ("ok", "root's")


def test_group_mode_lets_members_attach(names: Any) -> None:
    name = names()
    group = NOBODY  # nogroup
    # The owner (OTHER_A, a member of the group) creates it shared with the group.
    made = run_as(OTHER_A, OTHER_A, _create, name, group=group, groups=[group])
    assert made == ("ok", OTHER_A, group, 0o660), made

    # Another member attaches, naming the group.
    got = run_as(OTHER_B, OTHER_B, _attach, name, group=group, groups=[group])
    assert got == ("ok", f"from uid {OTHER_A}"), got
    # A member that does not name the group: the owner check refuses.
    got = run_as(OTHER_B, OTHER_B, _attach, name, groups=[group])
    assert got[:2] == ("error", "SegmentOwner"), got
    # A user outside the group cannot even open it, group= or not.
    got = run_as(OTHER_C, OTHER_C, _attach, name, group=group)
    assert got[:3] == ("error", "SegmentPermission", "SEGMENT_PERMISSION"), got
    assert "group nogroup (gid 65534)" in got[3] and "mode 0660" in got[3], got[3]


def test_group_errors(names: Any) -> None:
    name = names()
    # Not a member: the kernel refuses the chown; the error says why; nothing is left.
    got = run_as(OTHER_A, OTHER_A, _create, name, group=NOBODY)
    assert got[:3] == ("error", "SegmentPermission", "SEGMENT_PERMISSION"), got
    assert "cannot give it to group nogroup (gid 65534)" in got[3]
    assert "member" in got[3], got[3]
    assert not Cache.exists(name)
    # A group that does not exist.
    with pytest.raises(InvalidConfig, match="no group named 'metis-no-such-group'"):
        Cache(name, capacity="1MiB", group="metis-no-such-group")
    assert not Cache.exists(name)
    # Root may give it to any group; the mode gets the group's read and write.
    with Cache(name, capacity="1MiB", group="nogroup", mode=0o600):
        st = os.stat(shm_path(name))
        assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, 0o660)


def test_metisd_refuses_a_foreign_segment_unless_trusted(
    tmp_path: Path, daemons: Any, names: Any
) -> None:
    name = names()
    made = run_as(OTHER_A, OTHER_A, _create, name)
    assert made[0] == "ok", made
    config = write_config(tmp_path / "metisd.toml", [{"name": name, "capacity": "1MiB"}])
    refused = daemons(config)
    assert refused.wait() == 3
    assert f"is owned by uid {OTHER_A}" in refused.log()
    assert "trusted_owners" in refused.log()

    trusted = write_config(
        tmp_path / "trusted.toml",
        [{"name": name, "capacity": "1MiB", "trusted_owners": str(OTHER_A)}],
    )
    d = daemons(trusted).wait_ready()
    assert "re-attached to the existing segment" in d.log()
    assert d.stop() == 0


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f"read {len(f.read())} bytes"
    except PermissionError:
        return "permission denied"


def test_snapshot_files_default_0600_and_group_mode(names: Any) -> None:
    from metis_shm.daemon.snapshots.format import write_snapshot

    name = names()
    # Not pytest's tmp_path: its parents are 0700, other users could not walk to it.
    base = Path(tempfile.mkdtemp(prefix="metis-sec-"))
    try:
        os.chmod(base, 0o755)
        with Cache(name, capacity="1MiB") as cache:
            cache.set("k", "v")
            private = write_snapshot(cache, base / "private")
            shared = write_snapshot(cache, base / "shared", group="nogroup")
        st = os.stat(private.path)
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o600, 0)
        assert stat.S_IMODE(os.stat(base / "private").st_mode) == 0o700
        st = os.stat(shared.path)
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o640, NOBODY)
        st = os.stat(base / "shared")
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o750, NOBODY)
        # A member of the group reads the shared snapshot, not the private one.
        assert run_as(OTHER_A, OTHER_A, _read, shared.path, groups=[NOBODY]).startswith("read ")
        assert run_as(OTHER_A, OTHER_A, _read, private.path, groups=[NOBODY]) == (
            "permission denied"
        )
        # Anyone else reads neither.
        assert run_as(OTHER_B, OTHER_B, _read, shared.path) == "permission denied"
    finally:
        shutil.rmtree(base)


def test_metis_commands_and_the_trusted_owners_variable(names: Any) -> None:
    """Root's ``metis stats`` refuses the service user's segment, unless
    METIS_TRUSTED_OWNERS names that user."""
    import subprocess
    import sys

    from _metisd import ROOT, python_env

    name = names()
    assert run_as(OTHER_A, OTHER_A, _create, name)[0] == "ok"

    def stats(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "metis_shm", "stats", name],
            capture_output=True, text=True, timeout=60, env=python_env(env), cwd=ROOT,
        )  # fmt: skip

    refused = stats({})
    assert refused.returncode == 2 and "SEGMENT_OWNER" in refused.stderr, refused.stderr
    assert f"METIS_TRUSTED_OWNERS={OTHER_A}" in refused.stderr
    trusted = stats({"METIS_TRUSTED_OWNERS": f"root, {OTHER_A}"})
    assert trusted.returncode == 0 and f"cache '{name}'" in trusted.stdout, trusted.stderr
    unknown = stats({"METIS_TRUSTED_OWNERS": "metis-no-such-user"})
    assert unknown.returncode == 2 and "METIS_TRUSTED_OWNERS" in unknown.stderr
