"""Running test code as another Unix user: a forked child that drops root.

The tests that prove "another user cannot attach" need two real users; they
run as root (as the test suite does here and in CI) and fork children that
call ``setgroups``/``setgid``/``setuid`` to unprivileged ids. Not root: the
test fails with a message saying so (never a skip).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from _workers import run_in_fork

# Ids with no passwd/group entry needed: the kernel checks numbers only.
NOBODY = 65534  # nobody / nogroup on Debian
OTHER_A = 65533
OTHER_B = 65532
OTHER_C = 65531


def require_root() -> None:
    """Fail (not skip) when the tests cannot switch users."""
    if os.geteuid() != 0:
        pytest.fail(
            "the security tests switch to other Unix users (setuid) and must run as root "
            f"(they do in CI); this run has euid {os.geteuid()}: run them as root, e.g. "
            "sudo python -m pytest tests/security"
        )


def _drop_and_call(
    uid: int,
    gid: int,
    groups: Sequence[int],
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    os.setgroups(list(groups))
    os.setgid(gid)
    os.setuid(uid)
    assert (os.getuid(), os.geteuid(), os.getegid()) == (uid, uid, gid)
    return fn(*args, **kwargs)


def run_as(
    uid: int,
    gid: int,
    fn: Callable[..., Any],
    *args: Any,
    groups: Sequence[int] = (),
    timeout: float = 30.0,
    **kwargs: Any,
) -> Any:
    """``fn(*args, **kwargs)`` in a forked child running as ``uid``/``gid``
    with the supplementary ``groups``; its return value (or ChildFailed)."""
    require_root()
    return run_in_fork(_drop_and_call, uid, gid, tuple(groups), fn, args, kwargs, timeout=timeout)
