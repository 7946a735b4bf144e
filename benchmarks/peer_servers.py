"""Start and stop the Redis and memcached servers that benchmarks compare Metis with.

Each context manager runs one real server binary found on ``PATH`` (Debian:
``apt-get install redis-server memcached``), bound to loopback or a unix socket
inside ``workdir``, with persistence off, waits until it answers, and stops it
when the block exits, also on an exception or KeyboardInterrupt.

    with redis_server(Path(tmp)) as srv:
        r = srv.client(unix=True)
        r.set("k", b"v")
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import pymemcache.client.base
    import redis

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
PORT_TRIES = 5  # a free port can be taken between the probe and the server's bind
INSTALL_HINT = "apt-get install redis-server memcached"
S = TypeVar("S")
PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>


class ServerError(RuntimeError):
    """A server binary is missing, or the server did not start in time."""


@dataclass
class RedisServer:
    """A running redis-server: its pid, its loopback TCP port and its unix socket."""

    pid: int
    port: int
    unix_path: str

    def client(self, *, unix: bool) -> redis.Redis:
        """A redis-py client over the unix socket (``unix=True``) or loopback TCP.

        redis-py picks its hiredis parser by itself when ``hiredis`` is installed.
        """
        import redis

        if unix:
            return redis.Redis(unix_socket_path=self.unix_path)
        return redis.Redis(host="127.0.0.1", port=self.port)


@dataclass
class MemcachedServer:
    """A running memcached: either a loopback TCP port or a unix socket, not both."""

    pid: int
    port: int | None
    unix_path: str | None

    def client(self) -> pymemcache.client.base.Client:
        """A pymemcache client for this server's transport (Nagle off on TCP)."""
        from pymemcache.client.base import Client

        if self.unix_path is not None:
            return Client(self.unix_path, no_delay=True)
        assert self.port is not None
        return Client(("127.0.0.1", self.port), no_delay=True)


def find_binary(name: str) -> str:
    """The path of server binary ``name``, or a ServerError saying how to install it."""
    path = shutil.which(name)
    if path is None:
        raise ServerError(f"{name} not found on PATH; install it with: {INSTALL_HINT}")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def redis_server(workdir: Path, *, maxmemory: str | None = None) -> Iterator[RedisServer]:
    """One redis-server on 127.0.0.1:<free port> and on a unix socket in ``workdir``.

    RDB snapshots (``save ""``) and the append-only file are off, so no disk
    I/O competes with the benchmark. ``maxmemory`` (e.g. ``"256mb"``) caps
    memory with ``allkeys-lru`` eviction; None leaves Redis unbounded.
    """
    binary = find_binary("redis-server")
    unix_path = str(workdir / "redis.sock")

    def launch() -> tuple[list[str], Path, Callable[[int], RedisServer]]:
        port = free_port()
        cmd = [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--unixsocket", unix_path,
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(workdir),
            "--daemonize", "no",
        ]  # fmt: skip
        if maxmemory is not None:
            cmd += ["--maxmemory", maxmemory, "--maxmemory-policy", "allkeys-lru"]
        return cmd, workdir / f"redis-{port}.log", lambda pid: RedisServer(pid, port, unix_path)

    with _serve("redis-server", PORT_TRIES, launch, _redis_answers) as server:
        yield server


@contextmanager
def memcached_server(
    workdir: Path, *, unix: bool, memory_mb: int = 1024, item_size_max: str = "2m"
) -> Iterator[MemcachedServer]:
    """One memcached on a unix socket in ``workdir`` (``unix=True``) or on loopback TCP.

    memcached listens on either a socket file or TCP, so each transport needs
    its own process. UDP is off; ``memory_mb`` is its ``-m``, ``item_size_max``
    its ``-I``. It keeps nothing on disk.
    """
    binary = find_binary("memcached")
    base = [binary, "-m", str(memory_mb), "-I", item_size_max, "-U", "0", "-t", "2"]
    if os.geteuid() == 0:  # memcached refuses to run as root unless told which user to be
        base += ["-u", "root"]

    def launch() -> tuple[list[str], Path, Callable[[int], MemcachedServer]]:
        if unix:
            path = str(workdir / "memcached.sock")
            cmd = [*base, "-s", path, "-a", "0700"]
            return cmd, workdir / "memcached-unix.log", lambda pid: MemcachedServer(pid, None, path)
        port = free_port()
        cmd = [*base, "-l", "127.0.0.1", "-p", str(port)]
        return cmd, workdir / f"memcached-{port}.log", lambda pid: MemcachedServer(pid, port, None)

    tries = 1 if unix else PORT_TRIES  # only a TCP port can have been taken meanwhile
    with _serve("memcached", tries, launch, _memcached_answers) as server:
        yield server


@contextmanager
def _serve(
    what: str,
    tries: int,
    launch: Callable[[], tuple[list[str], Path, Callable[[int], S]]],
    answers: Callable[[S], bool],
) -> Iterator[S]:
    """Start a server (a new port on each try) until it answers; stop it on exit.

    ``launch`` gives the command, the file for its output and how to describe
    the running server from its pid.
    """
    for attempt in range(tries):
        cmd, log, describe = launch()
        proc = _spawn(cmd, log)
        try:
            server = describe(proc.pid)
            if _wait_ready(proc, functools.partial(answers, server)):
                yield server
                return
            if attempt == tries - 1:
                raise ServerError(
                    f"{what} did not answer within {START_TIMEOUT_S:g} s; output: {_tail(log)}"
                )
        finally:
            _stop(proc)


def _spawn(cmd: list[str], out: Path) -> subprocess.Popen[bytes]:
    """Start a server in its own session, so a terminal's Ctrl-C reaches only us
    and the server is stopped in order by our ``finally``; on Linux it also
    gets SIGTERM if we die without running it (SIGKILL, a crash)."""
    with out.open("wb") as f:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_term_with_parent if sys.platform == "linux" else None,
        )


def _term_with_parent() -> None:
    """In the child before exec: ask the kernel for SIGTERM when the parent dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _wait_ready(proc: subprocess.Popen[bytes], answers: Callable[[], bool]) -> bool:
    """Poll until ``answers()`` is true (ready) or the server exits or time runs out."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if answers():
            return True
        time.sleep(0.02)
    return False


def _redis_answers(server: RedisServer) -> bool:
    import redis

    for unix in (False, True):
        client = server.client(unix=unix)
        try:
            if not client.ping():
                return False
        except (redis.ConnectionError, OSError):
            return False
        finally:
            client.close()
    return True


def _memcached_answers(server: MemcachedServer) -> bool:
    client = server.client()
    try:
        client.version()
        return True
    except OSError:
        return False
    finally:
        client.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT_S; always reaps the process."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(path: Path, n: int = 800) -> str:
    try:
        return path.read_text(errors="replace")[-n:].strip() or "(empty)"
    except OSError:
        return "(none)"
