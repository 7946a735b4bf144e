"""Real redis-server processes on loopback for the far-tier tests.

``RedisServer`` is one standalone server, ``RedisCluster`` three primaries
made into a cluster with ``redis-cli --cluster create``. Each runs on
127.0.0.1 on a free port, in its own directory, persistence off (``--save ""
--appendonly no``), its output in ``redis.log`` there. A start waits (at
most START_TIMEOUT_S) for the server to answer PING; ``terminate`` kills it
(SIGKILL, after SIGCONT if it was stopped) and reaps it. On Linux a server
also gets SIGKILL if the test process dies without tearing down.
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis
import redis.cluster

START_TIMEOUT_S = 10.0
CLUSTER_TIMEOUT_S = 30.0
PORT_TRIES = 5  # a free port can be taken between the probe and the server's bind
INSTALL_HINT = "run tests/install-servers.sh (it installs redis-server and redis-cli)"
PR_SET_PDEATHSIG = 1  # <sys/prctl.h>


class ServerError(RuntimeError):
    """A server binary is missing, or a server did not start in time."""


def binary(name: str) -> str:
    """The path of ``name`` on PATH, or a ServerError saying how to install it."""
    path = shutil.which(name)
    if path is None:
        raise ServerError(f"{name} not found on PATH; {INSTALL_HINT}")
    return path


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(*, with_bus: bool = False) -> int:
    """A loopback TCP port that was free a moment ago; ``with_bus``: and so was
    port + 10000, the cluster bus of a cluster node."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if not with_bus or (port + 10000 <= 65535 and _port_free(port + 10000)):
            return port
    raise ServerError("no free port pair for a cluster node")


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class RedisServer:
    """One redis-server on 127.0.0.1; ``start()`` before use, ``terminate()`` after."""

    def __init__(self, workdir: Path, *, extra_args: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "redis.log"
        self.extra_args = extra_args
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>``."""
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        """Start on a free port (tried PORT_TRIES times) and wait until it answers."""
        for _ in range(PORT_TRIES):
            self.port = free_port(with_bus="--cluster-enabled" in self.extra_args)
            if self._launch():
                return self
        raise ServerError(f"redis-server did not start; its log:\n{self.log_tail()}")

    def _launch(self) -> bool:
        cmd = [
            binary("redis-server"),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--daemonize", "no",
            *self.extra_args,
        ]  # fmt: skip
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False  # the port was taken meanwhile, or a bad argument: see the log
            if self._answers():
                return True
            time.sleep(0.02)
        self.terminate()
        raise ServerError(f"redis-server did not answer within {START_TIMEOUT_S:g} s:\n"
                          f"{self.log_tail()}")  # fmt: skip

    def _answers(self) -> bool:
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5)
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False
        except redis.ResponseError:  # LOADING and the like: up, not ready
            return False
        finally:
            client.close()

    def client(self, **kwargs: Any) -> redis.Redis:
        """A redis-py client of this server (``kwargs`` go to ``redis.Redis``)."""
        kwargs.setdefault("socket_timeout", 5.0)
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)

    def kill(self) -> None:
        """SIGKILL the server and reap it: a crash, as the clients see it."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
                self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        """Kill the server if it runs, then start it again on the same port."""
        self.kill()
        if not self._launch():
            raise ServerError(f"redis-server did not restart on {self.port}:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGSTOP: the server keeps its sockets open and answers nothing."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def cont(self) -> None:
        """SIGCONT after ``stop``."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def terminate(self) -> None:
        """Kill and reap (idempotent); the log stays."""
        self.kill()

    def log_tail(self, n: int = 3000) -> str:
        """The end of the server's output."""
        try:
            return self.log.read_text(errors="replace")[-n:].strip() or "(empty)"
        except OSError:
            return "(no log)"


class RedisCluster:
    """Three primaries, no replicas, all slots assigned; ``start()``, then ``terminate()``."""

    def __init__(self, workdir: Path, primaries: int = 3) -> None:
        args = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "5000")  # fmt: skip
        self.nodes = [RedisServer(workdir / f"node{i}", extra_args=args) for i in range(primaries)]
        self.log = workdir / "cluster-create.log"

    @property
    def urls(self) -> list[str]:
        """One URL per node."""
        return [n.url for n in self.nodes]

    @property
    def seed_url(self) -> str:
        """The URL of the first node, to find the cluster by."""
        return self.nodes[0].url

    def start(self) -> RedisCluster:
        """Start the nodes, create the cluster and wait until every node says it is ok."""
        try:
            for node in self.nodes:
                node.start()
            cmd = [binary("redis-cli"), "--cluster", "create",
                   *(f"127.0.0.1:{n.port}" for n in self.nodes),
                   "--cluster-replicas", "0", "--cluster-yes"]  # fmt: skip
            done = subprocess.run(
                cmd, capture_output=True, timeout=CLUSTER_TIMEOUT_S, stdin=subprocess.DEVNULL
            )
            self.log.write_bytes(done.stdout + done.stderr)
            if done.returncode != 0:
                raise ServerError(f"redis-cli --cluster create failed:\n{self.log_tail()}")
            deadline = time.monotonic() + CLUSTER_TIMEOUT_S
            while not all(self._ok(n) for n in self.nodes):
                if time.monotonic() > deadline:
                    raise ServerError(f"cluster_state never became ok:\n{self.log_tail()}")
                time.sleep(0.05)
        except BaseException:
            self.terminate()
            raise
        return self

    @staticmethod
    def _ok(node: RedisServer) -> bool:
        client = node.client(socket_timeout=1.0)
        try:
            info = client.execute_command("CLUSTER", "INFO")
        finally:
            client.close()
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text and "cluster_slots_ok:16384" in text

    def client(self, **kwargs: Any) -> redis.cluster.RedisCluster:
        """A redis-py cluster client, found through the first node."""
        kwargs.setdefault("socket_timeout", 5.0)
        return redis.cluster.RedisCluster(host="127.0.0.1", port=self.nodes[0].port, **kwargs)

    def terminate(self) -> None:
        """Kill every node (idempotent)."""
        for node in self.nodes:
            node.terminate()

    def log_tail(self) -> str:
        """What redis-cli said, then the end of each node's log."""
        parts = []
        with contextlib.suppress(OSError):
            parts.append("redis-cli: " + self.log.read_text(errors="replace")[-2000:])
        parts += [f"node {n.port}: {n.log_tail(1000)}" for n in self.nodes]
        return "\n".join(parts)
