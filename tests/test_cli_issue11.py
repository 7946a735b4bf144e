"""The `metis` fixes of issue 11, each end to end:

* ``metis --version``; ``metis ls`` (size, creator, daemon, attached and
  stale processes, segments it cannot open) and ``segment.attached_processes``;
  metisd's ``stale_processes`` in /stats and its warning;
* ``metis top`` under a pseudo-terminal killed by SIGTERM/SIGHUP restores the
  terminal; ``--once`` and a non-terminal stdout get plain frames without the
  quit hint;
* ``metis stats`` per-shard rows, free and largest free; ``metis inspect``'s
  "all" row takes the largest block, not the sum;
* ``metis set --ttl`` 0 or negative is a usage error and changes nothing;
* ``metis restore`` of a missing cache names ``--create``;
* ``metis config show`` without a file shows the defaults and their sources.

Every cache here is one the test created (the ``names``/``cache_name``
fixtures); ``metis ls`` is always given those names.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pexpect
import pytest
from _metisd import python_env, write_config

from metis_shm import Cache, _engine, segment
from metis_shm.cli import main
from metis_shm.units import format_size

ROOT = Path(__file__).resolve().parent.parent
ALT_OFF = "\x1b[?25h\x1b[?1049l"  # show the cursor, leave the alternate screen


def _ls(capsys: pytest.CaptureFixture[str], *names: str) -> dict[str, dict[str, Any]]:
    assert main(["ls", *names, "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    return {e["name"]: e for e in listing["caches"]}


def _holder(name: str) -> subprocess.Popen[str]:
    """Another process that attaches to cache ``name`` and waits."""
    code = (
        "import sys, time\n"
        "from metis_shm import Cache\n"
        f"c = Cache({name!r}, create=False)\n"
        "print('attached', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=python_env(),
        cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "attached"
    return proc


def _release(holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None and holder.stdout is not None
    holder.stdin.close()
    holder.wait(timeout=10)
    holder.stdout.close()


# ---- --version -------------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert importlib.metadata.version("metis-shm") in out
    assert f"segment layout version {_engine.LAYOUT}" in out
    run = subprocess.run(
        [sys.executable, "-m", "metis_shm", "--version"],
        capture_output=True,
        text=True,
        env=python_env(),
        cwd=ROOT,
        check=True,
    )
    assert run.stdout == out


# ---- metis ls ----------------------------------------------------------------------------


def test_attached_processes_reads_proc_maps(tmp_path: Path) -> None:
    maps = {
        "101": "7f00-7f10 rw-s 00000000 00:1a 42    /dev/shm/metis.app\n"
        "7f10-7f20 rw-s 00000000 00:1a 43    /dev/shm/metis.app\n",  # twice: one pid
        "102": "7f00-7f10 rw-s 00000000 00:1a 41    /dev/shm/metis.app (deleted)\n"
        "7f10-7f20 r--p 00000000 08:01 99    /usr/lib/libc.so.6\n",
        "103": "7f00-7f10 rw-s 00000000 00:1a 42    /dev/shm/metis.app\n"
        "7f10-7f20 rw-s 00000000 00:1a 40    /dev/shm/metis.other (deleted)\n",
        "104": "7f00-7f10 rw-s 00000000 00:1a 44    /dev/shm/metis.application\n",
    }
    for pid, text in maps.items():
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "maps").write_text(text)
    (tmp_path / "self").mkdir()  # not a pid: skipped
    assert segment.attached_processes("app", proc=str(tmp_path)) == ([101, 103], [102])
    found = segment.scan_attachments(str(tmp_path))
    assert found.stale == {"app": [102], "other": [103]}
    assert found.live == {"app": [101, 103], "application": [104]}


def test_attached_processes_of_this_process(names: Any) -> None:
    name = names()
    with Cache(name, capacity="1MiB"):
        assert segment.attached_processes(name) == ([os.getpid()], [])
        Cache.destroy(name)
        assert segment.attached_processes(name) == ([], [os.getpid()])
    assert segment.attached_processes(name) == ([], [])


def test_ls_shows_size_creator_daemon_and_processes(
    names: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    name = names()
    me = os.getpid()
    with Cache(name, capacity="4MiB", shards=2) as cache:
        cache.set_many({f"k{i}": b"v" * 100 for i in range(200)})
        holder = _holder(name)
        try:
            entry = _ls(capsys, name)[name]
            assert entry["state"] == "ok" and entry["reason"] is None
            assert entry["capacity"] == cache.capacity == 4 << 20
            assert entry["bytes_used"] == cache.stats().bytes_used > 0
            assert entry["items"] == 200
            assert entry["creator"] == {"uid": os.geteuid(), "user": entry["creator"]["user"],
                                        "pid": me, "alive": True}  # fmt: skip
            assert entry["daemon"] is None
            assert entry["attached"] == sorted([me, holder.pid]) and entry["stale"] == []

            # A daemon's heartbeat, fresh and then old
            cache._set_daemon(holder.pid, time.time_ns())
            daemon = _ls(capsys, name)[name]["daemon"]
            assert daemon["pid"] == holder.pid and daemon["alive"] is True
            cache._set_daemon(holder.pid, time.time_ns() - 60 * 10**9)
            daemon = _ls(capsys, name)[name]["daemon"]
            assert daemon["alive"] is False and daemon["heartbeat_age_seconds"] >= 59

            assert main(["ls", name]) == 0
            out = capsys.readouterr().out
            lines = out.splitlines()
            assert lines[0].split() == [
                "NAME", "CAPACITY", "USED", "CREATOR", "DAEMON", "ATTACHED", "STALE",
            ]  # fmt: skip
            row = lines[1]
            assert row.startswith(name) and "4.0 MiB" in row and f"pid {me} alive" in row
            assert f"pid {holder.pid} stale" in row
            assert row.split()[-2:] == ["2", "0"]
        finally:
            _release(holder)


def test_ls_creator_exited(names: Any, capsys: pytest.CaptureFixture[str]) -> None:
    name = names()
    subprocess.run(
        [sys.executable, "-c", f"from metis_shm import Cache; Cache({name!r}, capacity='1MiB')"],
        env=python_env(),
        cwd=ROOT,
        check=True,
    )
    entry = _ls(capsys, name)[name]
    assert entry["state"] == "ok" and entry["creator"]["alive"] is False
    assert entry["attached"] == [] and entry["stale"] == []
    assert main(["ls", name]) == 0
    assert re.search(r"pid \d+ exited", capsys.readouterr().out)


def test_ls_stale_processes(names: Any, capsys: pytest.CaptureFixture[str]) -> None:
    recreated, destroyed = names(), names()
    me = os.getpid()
    old = Cache(recreated, capacity="1MiB")
    gone = Cache(destroyed, capacity="1MiB")
    try:
        Cache.destroy(recreated)
        Cache.destroy(destroyed)
        with Cache(recreated, capacity="2MiB") as new:
            assert old.stale and gone.stale and not new.stale
            listing = _ls(capsys, recreated, destroyed)
            assert listing[recreated]["state"] == "ok"
            assert listing[recreated]["capacity"] == 2 << 20  # the new segment
            assert listing[recreated]["attached"] == [me]
            assert listing[recreated]["stale"] == [me]
            assert listing[destroyed]["state"] == "destroyed"
            assert listing[destroyed]["attached"] == [] and listing[destroyed]["stale"] == [me]

            assert main(["ls", recreated, destroyed]) == 0
            out = capsys.readouterr().out
            stale_lines = [ln for ln in out.splitlines() if ln.startswith("  stale:")]
            assert len(stale_lines) == 2
            for line, name in zip(stale_lines, sorted([recreated, destroyed]), strict=True):
                assert f"pid {me} still maps a destroyed {segment.shm_path(name)} (deleted)" in line
            assert re.search(rf"^{re.escape(destroyed)} .*\(destroyed\)", out, re.M)
    finally:
        old.close()
        gone.close()
    # Closed: nothing stale any more, and the destroyed name is gone from the list.
    listing = _ls(capsys, recreated, destroyed)
    assert listing[recreated]["stale"] == [] and destroyed not in listing


def test_ls_segments_it_cannot_open(
    names: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(segment.TRUSTED_OWNERS_ENV, raising=False)
    foreign, other, fine = names(), names(), names()
    with open(segment.shm_path(foreign), "wb") as f:
        f.write(b"NOTMETIS" + b"\0" * 4088)
    os.chmod(segment.shm_path(foreign), 0o600)
    with Cache(fine, capacity="1MiB"):
        pass
    expect_owner = os.geteuid() == 0
    if expect_owner:  # a segment another user owns
        with Cache(other, capacity="1MiB"):
            pass
        os.chown(segment.shm_path(other), 65534, 65534)
    listing = _ls(capsys, foreign, other, fine)
    assert listing[fine]["state"] == "ok"
    assert listing[foreign]["state"] == "unreadable"
    assert listing[foreign]["reason"] == "[SEGMENT_FOREIGN] not a Metis segment"
    assert "[SEGMENT_FOREIGN]" in listing[foreign]["error"]
    assert listing[foreign]["file_size"] == 4096
    if expect_owner:
        assert listing[other]["state"] == "unreadable"
        assert listing[other]["reason"].startswith("[SEGMENT_OWNER] owned by ")
        assert "uid 65534" in listing[other]["reason"]
        assert f"{segment.TRUSTED_OWNERS_ENV}=65534" in listing[other]["reason"]
    assert main(["ls", foreign, other, fine]) == 0
    out = capsys.readouterr().out
    assert "cannot open: [SEGMENT_FOREIGN] not a Metis segment" in out
    if expect_owner:
        assert "cannot open: [SEGMENT_OWNER] owned by" in out
        # trusted for this command: listed like any other
        monkeypatch.setenv(segment.TRUSTED_OWNERS_ENV, "65534")
        assert _ls(capsys, other)[other]["state"] == "ok"


def test_ls_no_match(names: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ls", names()]) == 0
    assert capsys.readouterr().out.startswith("no caches in /dev/shm named ")


def test_metisd_reports_stale_processes(tmp_path: Path, daemons: Any, names: Any) -> None:
    name = names()
    me = os.getpid()
    old = Cache(name, capacity="4MiB")
    try:
        Cache.destroy(name)  # this process stays on the old segment
        config = write_config(
            tmp_path / "metisd.toml",
            [{"name": name, "capacity": "8MiB"}],
            heartbeat_interval="200ms",
        )
        d = daemons(config).wait_ready()
        stats = d.wait_stats(
            lambda s: me in s["daemon"]["caches"][name]["stale_processes"],
            what="this test's pid in stale_processes",
        )
        assert d.pid not in stats["daemon"]["caches"][name]["stale_processes"]
        line = d.wait_for(r"still attached to a destroyed segment").string
        assert "WARNING" in line and str(me) in line and repr(name) in line
        time.sleep(0.6)  # more roll-ups: the warning is not repeated
        assert d.log().count("still attached to a destroyed segment") == 1
        assert d.stop() == 0
    finally:
        old.close()


# ---- metis top ---------------------------------------------------------------------------


def _spawn_top(name: str) -> Any:
    return pexpect.spawn(
        sys.executable,
        ["-m", "metis_shm", "top", name, "--interval", "0.2"],
        cwd=str(ROOT),
        env={**python_env(), "COLUMNS": "100", "LINES": "30"},
        encoding="utf-8",
        dimensions=(30, 100),
        timeout=20,
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_top_restores_the_terminal_on_a_signal(cache: Cache, signum: int) -> None:
    cache.set_many({f"k{i}": i for i in range(20)})
    child = _spawn_top(cache.name)
    try:
        child.expect("q or Ctrl-C quits")
        seen = child.before + child.after
        child.expect("q or Ctrl-C quits")  # a second frame: the loop runs
        seen += child.before + child.after
        assert not termios.tcgetattr(child.child_fd)[3] & termios.ICANON  # keys unbuffered
        child.kill(signum)
        child.expect(pexpect.EOF)
        seen += child.before
        assert termios.tcgetattr(child.child_fd)[3] & termios.ICANON  # given back
    finally:
        child.close()
    assert "\x1b[?1049h\x1b[?25l" in seen  # it had the alternate screen, cursor hidden
    assert seen.endswith(ALT_OFF), repr(seen[-80:])
    assert child.exitstatus == 128 + signum and child.signalstatus is None


def test_top_once_plain_without_quit_hint(cache: Cache, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["top", cache.name, "--once", "--interval", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "q or Ctrl-C" not in out
    assert out.count("metis top - cache") == 1
    # under a terminal too: --once is one plain frame
    child = pexpect.spawn(
        sys.executable,
        ["-m", "metis_shm", "top", cache.name, "--once", "--interval", "0.05"],
        cwd=str(ROOT),
        env=python_env(),
        encoding="utf-8",
        timeout=20,
    )
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "\x1b" not in child.before and "q or Ctrl-C" not in child.before
    assert "metis top - cache" in child.before


def test_top_into_a_pipe_prints_plain_frames(cache: Cache) -> None:
    cache.set_many({f"k{i}": i for i in range(20)})
    proc = subprocess.Popen(
        [sys.executable, "-m", "metis_shm", "top", cache.name, "--interval", "0.1"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=python_env(),
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        lines = []
        while sum(ln.startswith("metis top - cache") for ln in lines) < 3:
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            lines.append(line)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    text = "".join(lines) + out
    assert "\x1b" not in text and "q or Ctrl-C" not in text
    frames = [f for f in re.split(r"(?m)^(?=metis top - cache)", text) if f]
    assert len(frames) >= 3  # one frame per refresh
    for frame in frames[:-1]:  # (the last one may be cut short by the interrupt)
        assert "items 20 " in frame and frame.endswith("%\n\n")  # a blank line between


# ---- metis stats / inspect ---------------------------------------------------------------


def _fragmented(name: str) -> Cache:
    cache = Cache(name, capacity="4MiB", shards=4, policy="lru")
    cache.set_many({f"k{i}": b"v" * (50 + i % 400) for i in range(4000)})
    cache.delete_many([f"k{i}" for i in range(0, 4000, 3)])
    for i in range(300):
        cache.get(f"k{i}")
    return cache


def test_stats_per_shard_rows_free_and_largest_free(
    cache_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with _fragmented(cache_name) as cache:
        stats = cache.stats()
        biggest = max(s.largest_free for s in stats.shards)
        assert biggest == stats.largest_free  # the library total is the largest block too

        assert main(["stats", cache_name, "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["free_bytes"] == stats.free_bytes == sum(s.free_bytes for s in stats.shards)
        assert data["largest_free"] == biggest
        assert [s["largest_free"] for s in data["shards"]] == [s.largest_free for s in stats.shards]

        assert main(["stats", cache_name]) == 0
        out = capsys.readouterr().out
        totals = dict(ln.split(None, 1) for ln in out.splitlines() if re.match(r"^ +[a-z_]+  ", ln))
        assert totals["free_bytes"].strip() == f"{stats.free_bytes:,}"
        assert totals["largest_free"].strip() == f"{biggest:,}"
        assert totals["hit_ratio"].strip() == f"{stats.hit_ratio:.4f}"
        head = next(ln for ln in out.splitlines() if ln.split()[:2] == ["shard", "items"])
        for word in ("used", "free", "largest free", "hits", "misses", "sets", "evictions"):
            assert word in head
        rows = {
            ln.split()[0]: ln.split() for ln in out.splitlines() if re.match(r"^ +(\d+|all) ", ln)
        }
        assert set(rows) == {"0", "1", "2", "3", "all"}
        for i, s in enumerate(stats.shards):
            assert rows[str(i)][1] == f"{s.items:,}"
            assert " ".join(rows[str(i)][2:4]) == format_size(s.bytes_used)
            assert f"{s.hits:,}" in rows[str(i)] and f"{s.misses:,}" in rows[str(i)]
        assert rows["all"][1] == f"{stats.items:,}"
        assert " ".join(rows["all"][6:8]) == format_size(biggest)  # largest free: the max


def test_inspect_all_row_largest_free_is_the_max(
    cache_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with _fragmented(cache_name) as cache:
        biggest = max(s.largest_free for s in cache.stats().shards)
        assert main(["inspect", cache_name, "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["totals"]["largest_free"] == biggest
        assert main(["inspect", cache_name]) == 0
        out = capsys.readouterr().out
        row = next(ln for ln in out.splitlines() if re.match(r"^ +all ", ln)).split()
        assert " ".join(row[6:8]) == format_size(biggest)


# ---- metis set --ttl ---------------------------------------------------------------------


@pytest.mark.parametrize("ttl", ["0", "0s", "0ms", "-5", "-1.5", "=-5", "=-5s", "=-0"])
def test_set_ttl_not_positive_is_a_usage_error(
    cache: Cache, capsys: pytest.CaptureFixture[str], ttl: str
) -> None:
    cache.set("k", "before")
    argv = ["set", cache.name, "k", "after"]
    argv += [f"--ttl{ttl}"] if ttl.startswith("=") else ["--ttl", ttl]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "usage: metis set" in captured.err
    assert "metis set: error: argument --ttl: " in captured.err
    assert "is not positive; expected a positive duration such as 30, 250ms" in captured.err
    assert cache.get("k") == "before"  # nothing changed
    argv = ["set", cache.name, "new", "v", *argv[4:]]
    assert main(argv) == 2 and "new" not in cache


def test_set_ttl_positive_still_works(cache: Cache, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["set", cache.name, "k", "v", "--ttl", "2s"]) == 0
    assert "expires in 2 s" in capsys.readouterr().out
    assert cache.get("k") == "v"


# ---- metis restore -----------------------------------------------------------------------


def test_restore_missing_cache_says_create(
    tmp_path: Path, names: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    name = names()
    assert main(["restore", name, "--dir", str(tmp_path), "-q"]) == 2
    err = capsys.readouterr().err
    assert "[SEGMENT_NOT_FOUND]" in err and "pass --create" in err
    # --create is the option's real name: it is accepted (no snapshot here: exit 1)
    assert main(["restore", name, "--dir", str(tmp_path), "--create", "-q"]) == 1
    assert "no usable snapshot" in capsys.readouterr().err
    assert not Cache.exists(name)


# ---- metis config show -------------------------------------------------------------------


@pytest.fixture
def no_metis_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in list(os.environ):
        if var.startswith("METIS_"):
            monkeypatch.delenv(var)
    return monkeypatch


def _show_rows(out: str) -> dict[str, list[str]]:
    return {ln.split()[0]: ln.split() for ln in out.splitlines() if ln and not ln.startswith("#")}


def test_config_show_without_a_file(
    no_metis_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# effective configuration; file: none")
    assert "at least one cache" in out
    rows = _show_rows(out)
    for field in ("log_level", "sweep.interval", "snapshot.path", "health.address"):
        assert rows[field][-1] == "default", rows[field]
    assert rows["log_level"][-2] == '"INFO"'
    assert rows["caches[N].name"][-3:] == ["required,", "no", "default"]
    assert rows["caches[N].policy"][-2:] == ['"wtinylfu"', "default"]
    assert not any(f.startswith("caches[0]") for f in rows)

    no_metis_env.setenv("METIS_LOG_LEVEL", "debug")
    no_metis_env.setenv("METIS_SWEEP_INTERVAL", "250ms")
    assert main(["config", "show"]) == 0
    rows = _show_rows(capsys.readouterr().out)
    assert rows["log_level"][-3:] == ['"DEBUG"', "env", "METIS_LOG_LEVEL"]
    assert rows["sweep.interval"][-3:] == ["0.25s", "env", "METIS_SWEEP_INTERVAL"]
    assert rows["sweep.budget"][-1] == "default"
    # --no-env: the defaults only; --set: an argument
    assert main(["config", "show", "--no-env", "--set", "sweep.budget=7"]) == 0
    rows = _show_rows(capsys.readouterr().out)
    assert rows["log_level"][-2:] == ['"INFO"', "default"]
    assert rows["sweep.budget"][-2:] == ["7", "argument"]

    assert main(["config", "show", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["file"] is None and data["config"]["caches"] == []
    assert data["sources"]["log_level"] == "env METIS_LOG_LEVEL"
    assert data["sources"]["health.address"] == "default"
    assert data["cache_required"] == ["name", "capacity"]
    assert data["cache_defaults"]["policy"] == "wtinylfu"


def test_config_show_real_errors_still_fail(
    tmp_path: Path, no_metis_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "nope.toml")
    assert main(["config", "show", "--config", missing]) == 2
    assert "not found" in capsys.readouterr().err
    no_metis_env.setenv("METIS_CONFIG", missing)
    assert main(["config", "show"]) == 2  # a file named, and missing
    assert "not found" in capsys.readouterr().err
    no_metis_env.delenv("METIS_CONFIG")
    no_metis_env.setenv("METIS_CACHE_NAME", "app")  # a cache without its capacity
    assert main(["config", "show"]) == 2
    assert "caches[0].capacity: missing" in capsys.readouterr().err
    no_metis_env.delenv("METIS_CACHE_NAME")
    no_metis_env.setenv("METIS_LOG_LEVEL", "loud")
    assert main(["config", "show"]) == 2
    assert "log_level" in capsys.readouterr().err


# ---- docs/cli.md -------------------------------------------------------------------------


def test_docs_show_the_new_output() -> None:
    doc = (ROOT / "docs" / "cli.md").read_text()
    for text in (
        "$ metis --version",
        f"segment layout version {_engine.LAYOUT}",
        "$ metis ls",
        "NAME ",
        "  stale: pid ",
        "cannot open: [SEGMENT_",
        "$ metis stats app",
        "largest_free",
        "largest free",
        "$ metis set app greeting hello --ttl 0",
        "argument --ttl",
        "pass --create",
        "caches[N].name",
    ):
        assert text in doc, text
