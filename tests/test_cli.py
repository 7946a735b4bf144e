"""The `metis stats` and `metis check` subcommands, and that the checker
really finds damage: a segment corrupted by hand is reported, not passed."""

from __future__ import annotations

import json
import struct

import pytest

from metis_shm import Cache
from metis_shm.cli import main
from metis_shm.segment import shm_path


def test_stats_prints_counters(cache: Cache, capsys: pytest.CaptureFixture[str]) -> None:
    cache.set("a", b"1")
    cache.get("a")
    cache.get("missing")
    assert main(["stats", cache.name, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["hits"] == 1 and data["misses"] == 1 and data["items"] == 1
    assert len(data["shards"]) == cache.n_shards
    assert main(["stats", cache.name]) == 0
    assert "hit_ratio" in capsys.readouterr().out


def test_check_consistent(cache: Cache, capsys: pytest.CaptureFixture[str]) -> None:
    cache.set_many({f"k{i}": b"v" * i for i in range(200)})
    assert main(["check", cache.name, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"name": cache.name, "ok": True, "problems": []}


def test_check_finds_a_corrupted_index(cache_name: str, capsys: pytest.CaptureFixture[str]) -> None:
    cache = Cache(cache_name, capacity="1MiB", shards=1)
    cache.set_many({f"k{i}": b"v" for i in range(50)})
    header = cache.settings
    cache.close()
    # Point every bucket of the index at an offset inside the arena that is
    # not the start of an item.
    with open(shm_path(cache_name), "r+b") as f:
        f.seek(header["index_offset"])
        f.write(struct.pack("<I", 68) * header["index_buckets"])
    assert main(["check", cache_name]) == 1
    out = capsys.readouterr().out
    assert "problem" in out and "not a used block" in out


def test_check_missing_cache_is_a_usage_error(
    cache_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", cache_name]) == 2  # a unique name nobody created
    assert "SEGMENT_NOT_FOUND" in capsys.readouterr().err
