"""metisd and worker processes sharing its cache: ``python -m metis_shm.demo``.

The demo

1. writes a demo configuration into a temporary directory (one cache, sweeps
   every 200 ms, snapshots into that directory, health on a free loopback
   port) and starts ``metisd`` with it, as systemd would;
2. starts ``--workers`` (default 4) worker processes that attach to the
   daemon's cache by name (``Cache(name, create=False)``: they never create
   it) and, for ``--seconds`` (default 4), bump a shared counter, write
   session-like keys with a 1 s TTL and read each other's keys;
3. prints live numbers every half second, read from metisd's ``/stats``
   over HTTP: items, hits, hit ratio, expired items the daemon swept;
4. stops everything cleanly: the workers finish, metisd gets SIGTERM and
   writes its shutdown snapshot; then the demo checks the counter, removes
   the demo segment and the temporary directory, and exits 0 when all went
   well.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from typing import Any

from metis_shm import Cache

COUNTER = "demo:requests"
START_TIMEOUT = 30.0


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def worker(index: int, name: str, seconds: float, go: Any, done: Any) -> None:
    """One worker: attach, share the cache for ``seconds``, report its increments."""
    rng = random.Random(index)
    increments = 0
    with Cache(name, create=False) as cache:
        say(f"  worker {index} (pid {os.getpid()}) attached to {name!r}")
        go.wait(timeout=60)
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline:
            n += 1
            cache.incr(COUNTER, default=0)
            increments += 1
            # a "session" that expires: metisd's sweeps remove it
            cache.set(f"session:{index}:{n}", {"worker": index, "n": n}, ttl=1.0)
            # a shared "page" every worker reads, now and then refreshed
            page = rng.randrange(200)
            if cache.get(f"page:{page}") is None:
                cache.set(f"page:{page}", f"page {page} rendered by worker {index}")
            cache.get(f"session:{(index + 1) % 4}:{max(1, n - 5)}")
    done.put((index, increments))


def _config(name: str, directory: str) -> str:
    return f"""# written by metis_shm.demo
log_level = "INFO"
heartbeat_interval = "500ms"

[sweep]
interval = "200ms"
budget = 100000

[snapshot]
path = "{directory}/snapshots"
interval = 0
on_shutdown = true

[health]
address = "127.0.0.1:0"

[[caches]]
name = "{name}"
capacity = "32MiB"
"""


class _Daemon:
    """metisd as a child process; its log lines echoed with a prefix."""

    def __init__(self, config: str) -> None:
        env = dict(os.environ)
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH", "")) if p
        )
        for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(var, None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "metis_shm.daemon", "--config", config],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self.url: str | None = None
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.rstrip("\n")
            self.lines.append(line)
            say(f"  metisd | {line.split(' ', 2)[-1] if line[:2].isdigit() else line}")
            m = re.search(r"health endpoints on (http://\S+)", line)
            if m:
                self.url = m.group(1)
            if "metis_shm.daemon: ready (pid" in line:
                self.ready.set()
        self.ready.set()

    def stats(self) -> dict[str, Any]:
        assert self.url is not None
        with urllib.request.urlopen(self.url + "/stats?shards=0", timeout=5) as resp:
            data: dict[str, Any] = json.loads(resp.read())
        return data

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._thread.join(timeout=5)
        return code


def _live_line(stats: dict[str, Any], name: str, t: float) -> str:
    c = stats["caches"][name]
    d = stats["daemon"]["caches"][name]
    return (
        f"  t={t:4.1f}s  items={c['items']:>6,}  hits={c['hits']:>8,}  "
        f"misses={c['misses']:>7,}  hit ratio={c['hit_ratio']:.2f}  "
        f"swept by metisd={d['swept_items']:>6,}  heartbeats={d['heartbeats']}"
    )


def run(n_workers: int, seconds: float) -> int:
    name = f"demo-daemon-{uuid.uuid4().hex[:8]}"
    directory = tempfile.mkdtemp(prefix="metis-demo-")
    config = os.path.join(directory, "metisd.toml")
    with open(config, "w") as f:
        f.write(_config(name, directory))
    say(f"demo config written to {config}; starting metisd")
    daemon = _Daemon(config)
    ctx = mp.get_context("spawn")  # workers are unrelated processes, as under gunicorn
    procs: list[Any] = []
    ok = False
    try:
        if not daemon.ready.wait(START_TIMEOUT) or daemon.proc.poll() is not None:
            say("metisd did not start")
            return 1
        assert daemon.url is not None
        say(f"metisd is ready (pid {daemon.proc.pid}); its endpoints: {daemon.url}/stats")
        say(f"starting {n_workers} workers for {seconds:g}s")
        go = ctx.Event()
        done = ctx.Queue()
        for i in range(n_workers):
            p = ctx.Process(target=worker, args=(i, name, seconds, go, done), name=f"worker-{i}")
            p.start()
            procs.append(p)
        # Every worker attached before they all start.
        deadline = time.monotonic() + START_TIMEOUT
        with Cache(name, create=False) as probe:
            while time.monotonic() < deadline and sum(1 for p in procs if p.is_alive()) < n_workers:
                time.sleep(0.05)
            say(f"cache {name!r}: daemon_alive={probe.daemon_alive}")
        time.sleep(1.0)  # spawn: let them import and attach
        go.set()
        t0 = time.monotonic()
        say("live numbers from metisd's /stats:")
        while any(p.is_alive() for p in procs) and time.monotonic() - t0 < seconds + 30:
            say(_live_line(daemon.stats(), name, time.monotonic() - t0))
            time.sleep(0.5)
        results = dict(done.get(timeout=30) for _ in procs)
        for p in procs:
            p.join(timeout=10)
        if any(p.exitcode != 0 for p in procs):
            say("a worker failed")
            return 1
        time.sleep(1.5)  # the last sessions expire; the daemon sweeps them
        final = daemon.stats()
        say(_live_line(final, name, time.monotonic() - t0))
        with Cache(name, create=False) as cache:
            counter = cache.get(COUNTER)
        total = sum(results.values())
        say(f"{COUNTER!r} = {counter:,}; sum of the workers' increments = {total:,}")
        swept = final["daemon"]["caches"][name]["swept_items"]
        say(f"metisd swept {swept:,} expired sessions while the workers ran")
        say("stopping metisd (SIGTERM): it writes a snapshot and leaves the segment")
        code = daemon.stop()
        snapshots = sorted(os.listdir(os.path.join(directory, "snapshots")))
        say(f"metisd exited with {code}; snapshot files: {snapshots}")
        ok = counter == total and code == 0 and len(snapshots) == 1
        say("OK" if ok else "something did not add up")
        return 0 if ok else 1
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        if daemon.proc.poll() is None:
            daemon.stop()
        Cache.destroy(name)
        shutil.rmtree(directory, ignore_errors=True)
        say(f"removed cache {name!r} and {directory}")


def main(argv: list[str] | None = None) -> int:
    """The demo's command line (``--workers``, ``--seconds``); returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m metis_shm.demo",
        description="metisd and worker processes sharing its cache, with live stats.",
    )
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument("--seconds", type=float, default=4.0, help="how long they run (default 4)")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.seconds <= 0:
        parser.error("--workers must be at least 1 and --seconds positive")
    return run(args.workers, args.seconds)


if __name__ == "__main__":
    sys.exit(main())
