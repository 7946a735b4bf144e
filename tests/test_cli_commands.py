"""The `metis` subcommands get, set, delete, keys, inspect, bench and top, end
to end through ``main([...])``; and `metis top` live, under a pseudo-terminal
(pexpect), with its screen captured and compared with docs/cli.md."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pexpect
import pytest

from metis_shm import Cache
from metis_shm.cli import main
from metis_shm.cli.inspect import render_top

ROOT = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_set_get_delete(cache: Cache, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["set", cache.name, "greeting", "hello"]) == 0
    assert "stored greeting (str)" in capsys.readouterr().out
    assert cache.get("greeting") == "hello"
    assert main(["get", cache.name, "greeting"]) == 0
    assert capsys.readouterr().out == "hello\n"
    assert main(["get", cache.name, "greeting", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "name": cache.name,
        "key": "greeting",
        "found": True,
        "type": "str",
        "value": "hello",
    }
    assert main(["delete", cache.name, "greeting"]) == 0
    assert "deleted greeting" in capsys.readouterr().out
    assert "greeting" not in cache


def test_get_and_delete_missing_key_exit_1(
    cache: Cache, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["get", cache.name, "absent"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "[KEY_NOT_FOUND]" in captured.err
    assert main(["get", cache.name, "absent", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["found"] is False
    assert main(["delete", cache.name, "absent"]) == 1
    assert "[KEY_NOT_FOUND]" in capsys.readouterr().err


def test_set_types_and_ttl(cache: Cache, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["set", cache.name, "n", "41", "--type", "int"]) == 0
    assert cache.incr("n") == 42
    assert main(["set", cache.name, "doc", '{"a": [1, 2]}', "--type", "json"]) == 0
    assert cache.get("doc") == {"a": [1, 2]}
    capsys.readouterr()
    assert main(["get", cache.name, "doc"]) == 0
    assert json.loads(capsys.readouterr().out) == {"a": [1, 2]}
    assert main(["set", cache.name, "raw", "bytes!", "--type", "bytes", "--bytes-key"]) == 0
    assert cache.get(b"raw") == b"bytes!" and cache.get("raw") is None
    assert main(["get", cache.name, "raw", "--bytes-key"]) == 0
    assert capsys.readouterr().out.endswith("bytes!\n")
    assert main(["set", cache.name, "short", "v", "--ttl", "100ms"]) == 0
    assert "expires in 0.1 s" in capsys.readouterr().out
    time.sleep(0.2)
    assert main(["get", cache.name, "short"]) == 1
    cache.set("blob", b"\xff\x00")
    assert main(["get", cache.name, "blob", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["value"] == {"base64": "/wA="}


def test_set_bad_input_exit_2(cache: Cache, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["set", cache.name, "n", "x", "--type", "int"]) == 2
    assert "not an integer" in capsys.readouterr().err
    assert main(["set", cache.name, "n", "{", "--type", "json"]) == 2
    assert "not JSON" in capsys.readouterr().err
    assert main(["set", cache.name, "n", "1", "--ttl", "soon"]) == 2
    assert "argument --ttl: 'soon' is not a duration" in capsys.readouterr().err
    assert main(["set", cache.name, "k" * 2000, "1"]) == 2
    assert "[KEY_TOO_LARGE]" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["get", "NAME", "k"],
        ["set", "NAME", "k", "v"],
        ["delete", "NAME", "k"],
        ["keys", "NAME"],
        ["inspect", "NAME"],
        ["top", "NAME", "--once"],
        ["bench", "NAME"],
    ],
)
def test_missing_cache_prints_its_code(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.replace("NAME", "no-such-cache-here") for a in argv]
    assert main(argv) == 2
    assert "[SEGMENT_NOT_FOUND]" in capsys.readouterr().err


def test_keys_prefix_limit(cache: Cache, capsys: pytest.CaptureFixture[str]) -> None:
    cache.set_many({f"user:{i}": i for i in range(30)})
    cache.set_many({f"page:{i}": i for i in range(5)})
    cache.set(b"user:raw", 1)
    assert main(["keys", cache.name, "--prefix", "page:"]) == 0
    assert sorted(capsys.readouterr().out.split()) == [f"page:{i}" for i in range(5)]
    assert main(["keys", cache.name, "--prefix", "user:", "--limit", "10", "--json"]) == 0
    captured = capsys.readouterr()
    listed = json.loads(captured.out)
    assert len(listed) == 10 and all(k.startswith("user:") for k in listed)
    assert "--limit 10" in captured.err
    assert main(["keys", cache.name, "--limit", "0", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed) == 36 and "b'user:raw'" in listed
    assert main(["keys", cache.name, "--limit", "-1"]) == 2


def test_inspect(cache_name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with Cache(cache_name, capacity="4MiB", shards=4, policy="lru") as cache:
        cache.set_many({f"k{i}": b"v" * 100 for i in range(100)})
        cache.delete_many([f"k{i}" for i in range(0, 100, 3)])
        assert main(["inspect", cache_name, "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["name"] == cache_name and info["policy"] == "lru"
        assert info["header"]["policy"] == "lru" and info["header"]["magic"] == "METISSHM"
        assert info["header"]["n_shards"] == 4 and "arena_offset" in info["header"]
        assert len(info["shards"]) == 4
        assert sum(s["items"] for s in info["shards"]) == info["totals"]["items"] == len(cache)
        stats = cache.stats()
        for s, want in zip(info["shards"], stats.shards, strict=True):
            assert s["bytes_used"] == want.bytes_used and s["free_bytes"] == want.free_bytes
            assert s["largest_free"] == want.largest_free
            assert s["fragmentation"] == pytest.approx(want.fragmentation)
            assert isinstance(s["policy_state"], dict) and s["policy_state"]
        assert main(["inspect", cache_name]) == 0
        out = capsys.readouterr().out
        assert f"cache {cache_name!r}: policy lru, 4 shards" in out
        for word in ("settings:", "layout:", "offsets:", "largest free", "frag", "policy state:"):
            assert word in out
        assert re.search(r"^\s+all\s+66\s", out, re.M)


def test_bench_temp(capsys: pytest.CaptureFixture[str]) -> None:
    # Only this process's throwaway cache: other programs may create and
    # destroy segments meanwhile.
    temp = f"metis.metis-bench-{os.getpid()}"
    assert temp not in os.listdir("/dev/shm")
    assert main(["bench", "temp", "--seconds", "0.3", "--keys", "500", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["results"]) == {"set", "get (hit)", "get (miss)"}
    for r in data["results"].values():
        assert r["ops"] > 0 and 0 < r["ns_per_op"] < 1e7
    assert temp not in os.listdir("/dev/shm")
    assert main(["bench", "temp", "--seconds", "0.3", "--keys", "100"]) == 0
    out = capsys.readouterr().out
    assert "ns/op" in out and "get (hit)" in out
    assert main(["bench", "temp", "--seconds", "0"]) == 2


def test_bench_existing_cache_cleans_up(cache: Cache, capsys: pytest.CaptureFixture[str]) -> None:
    cache.set("mine", 1)
    assert main(["bench", cache.name, "--seconds", "0.2", "--keys", "100"]) == 0
    assert list(cache.keys()) == ["mine"]


def test_top_once(cache: Cache, capsys: pytest.CaptureFixture[str]) -> None:
    cache.set_many({f"k{i}": i for i in range(50)})
    for i in range(100):
        cache.get(f"k{i}")
    assert main(["top", cache.name, "--once", "--interval", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[" not in out  # one plain frame
    assert f"cache {cache.name!r}" in out
    assert "hit ratio   50.0%" in out
    assert "items 50" in out
    assert len([ln for ln in out.splitlines() if re.match(r"^\s+\d+\s", ln)]) == cache.n_shards
    assert main(["top", cache.name, "--interval", "0"]) == 2


def test_render_top_rates(cache: Cache) -> None:
    before = cache.stats()
    cache.set_many({f"k{i}": i for i in range(100)})
    for i in range(200):
        cache.get(f"k{i}")
    frame = render_top(cache.stats(), before, 2.0, width=100)
    assert re.search(r"ops/s\s+150\s+gets/s\s+100\s+sets/s\s+50", frame), frame
    assert "(last 2.0 s: 50.0%)" in frame
    assert all(len(line) <= 100 for line in frame.splitlines())


# ---- under a pseudo-terminal ---------------------------------------------------------


def _screen(raw: str) -> str:
    """The text of the last frame the terminal shows (after the last clear)."""
    last = raw.split("\x1b[2J")[-1]
    return ANSI.sub("", last).replace("\r", "")


def _spawn_top(name: str) -> object:
    env = {**os.environ, "COLUMNS": "100", "LINES": "30"}
    return pexpect.spawn(
        sys.executable,
        ["-m", "metis_shm", "top", name, "--interval", "0.2"],
        cwd=str(ROOT),
        env=env,
        encoding="utf-8",
        dimensions=(30, 100),
        timeout=20,
    )


def test_top_live_under_a_pty_q_quits(cache: Cache) -> None:
    cache.set_many({f"user:{i}": {"id": i} for i in range(200)})
    for i in range(300):
        cache.get(f"user:{i}")
    child = _spawn_top(cache.name)
    try:
        seen = ""
        for _ in range(3):  # three frames, the cache busy in between
            child.expect("q or Ctrl-C quits")  # type: ignore[attr-defined]
            seen += child.before + child.after  # type: ignore[attr-defined]
            for i in range(500):
                cache.get(f"user:{i % 250}")
        child.send("q")  # type: ignore[attr-defined]
        child.expect(pexpect.EOF)  # type: ignore[attr-defined]
        seen += child.before  # type: ignore[attr-defined]
    finally:
        child.close()  # type: ignore[attr-defined]
    assert child.exitstatus == 0  # type: ignore[attr-defined]
    assert seen.count("\x1b[2J") >= 3  # frames were redrawn in place
    assert "\x1b[?1049h" in seen and "\x1b[?1049l" in seen  # alternate screen, restored
    screen = _screen(seen.rsplit("\x1b[?1049l", 1)[0])
    assert f"cache {cache.name!r}" in screen
    assert re.search(r"hit ratio\s+\d+\.\d%", screen)
    assert re.search(r"ops/s\s+[1-9][\d,]*", screen), screen  # the gets between frames
    _check_docs_show(screen)
    if os.environ.get("METIS_CAPTURE_TOP"):
        Path(os.environ["METIS_CAPTURE_TOP"]).write_text(screen)


def test_top_live_ctrl_c_quits(cache: Cache) -> None:
    child = _spawn_top(cache.name)
    try:
        child.expect("hit ratio")  # type: ignore[attr-defined]
        child.sendintr()  # type: ignore[attr-defined]
        child.expect(pexpect.EOF)  # type: ignore[attr-defined]
    finally:
        child.close()  # type: ignore[attr-defined]
    assert child.exitstatus == 0  # type: ignore[attr-defined]


def _check_docs_show(screen: str) -> None:
    """docs/cli.md shows a real `metis top` screen: the same lines, by their labels."""
    doc = (ROOT / "docs" / "cli.md").read_text()
    block = doc.split("<!-- metis top screen -->", 1)[1].split("```text\n", 1)[1].split("```")[0]
    labels = [
        "metis top - cache",
        "ops/s",
        "hit ratio",
        "items",
        "memory",
        "shard     items",
        "q or Ctrl-C quits",
    ]
    for label in labels:
        assert label in screen, label
        assert label in block, f"docs/cli.md's top screen lacks {label!r}"


def test_get_unpickles_only_with_pickle_flag(
    cache_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with Cache(cache_name, capacity="1MiB", serializer="pickle") as owner:
        owner.set("doc", {"a": (1, 2)})
        assert main(["get", cache_name, "doc"]) != 0
        assert "serializer='pickle'" in capsys.readouterr().err
        assert main(["stats", cache_name]) == 0  # reads no value: attaches as it is
        capsys.readouterr()
        assert main(["get", cache_name, "doc", "--pickle", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["value"] == {"a": [1, 2]}
