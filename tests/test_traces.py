"""Trace readers (metis_shm.sim.traces): every format on tiny hand-made files,
the real traces of benchmarks/traces against the table of their README (size,
SHA-256, requests, unique keys), how a trace name is found, and the errors
bad input gets.

The traces are part of the repository: a missing one is a failure, never a
reason to skip."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import re
import struct
from pathlib import Path

import pytest

from metis_shm.errors import MetisError
from metis_shm.sim import traces as traces_module
from metis_shm.sim.traces import (
    TRACES_ENV,
    TraceFormatError,
    TraceNotFound,
    detect_format,
    find_trace,
    load_trace,
    read_trace,
    trace_dir,
    trace_name,
)

ROOT = Path(__file__).resolve().parent.parent
TRACES = ROOT / "benchmarks" / "traces"
#: what the folder holds besides the traces: our README and the notices that
#: must travel with the files (benchmarks/traces/README.md says why)
NOT_TRACES = {"README.md", "lirs-README.txt", "cache2k-LICENSE.txt"}
_ROW = re.compile(
    r"^\| (\S+\.trace\.(?:gz|xz)) \| (\w+) \| (\d+) \| (\d+) \| (\d+) \| `([0-9a-f]{64})` \|$",
    re.M,
)


def _readme_rows() -> list[tuple[str, str, int, int, int, str]]:
    """The rows of the files table of benchmarks/traces/README.md."""
    text = (TRACES / "README.md").read_text()
    return [(m[1], m[2], int(m[3]), int(m[4]), int(m[5]), m[6]) for m in _ROW.finditer(text)]


# ---- formats, on tiny files ------------------------------------------------------


def test_lirs_text_gzip_crlf_blank_and_star_lines(tmp_path: Path) -> None:
    p = tmp_path / "lirs-tiny.trace.gz"
    p.write_bytes(gzip.compress(b"1\r\n  2 \r\n\r\n*\r\n3\n*\n\n-4\n1\n"))
    assert detect_format(p) == "lirs"
    assert load_trace(p) == [b"1", b"2", b"3", b"-4", b"1"]


def test_lirs_plain_uncompressed(tmp_path: Path) -> None:
    p = tmp_path / "keys.txt"
    p.write_bytes(b"10\n20\n")
    assert load_trace(p, "lirs") == [b"10", b"20"]


def test_int32_big_endian_xz(tmp_path: Path) -> None:
    values = [0, 1, -1, 2**31 - 1, -(2**31), 123456]
    p = tmp_path / "cache2k-tiny.trace.xz"
    p.write_bytes(lzma.compress(struct.pack(f">{len(values)}i", *values)))
    assert detect_format(p) == "int32"
    assert load_trace(p) == [str(v).encode() for v in values]


def test_int64_big_endian_gzip(tmp_path: Path) -> None:
    values = [0, -5, 2**63 - 1, -(2**63), 4115321255546405575]
    p = tmp_path / "corda-tiny.trace.gz"
    p.write_bytes(gzip.compress(struct.pack(f">{len(values)}q", *values)))
    assert detect_format(p) == "int64"
    assert load_trace(p) == [str(v).encode() for v in values]


def test_binary_longer_than_one_read_chunk(tmp_path: Path) -> None:
    values = list(range(200_000))
    p = tmp_path / "big.bin"
    p.write_bytes(struct.pack(f">{len(values)}i", *values))
    keys = load_trace(p, "int32")
    assert len(keys) == len(values) and keys[0] == b"0" and keys[-1] == b"199999"


def test_plain_text_any_bytes_and_compression(tmp_path: Path) -> None:
    content = b"user:1\r\n  /a/b?c=d \n\n\xff\xfe raw\nuser:1\n"
    expected = [b"user:1", b"/a/b?c=d", b"\xff\xfe raw", b"user:1"]
    plain = tmp_path / "requests.log"
    plain.write_bytes(content)
    (tmp_path / "requests.log.gz").write_bytes(gzip.compress(content))
    (tmp_path / "requests.log.xz").write_bytes(lzma.compress(content))
    (tmp_path / "requests.log.bz2").write_bytes(bz2.compress(content))
    for name in ("requests.log", "requests.log.gz", "requests.log.xz", "requests.log.bz2"):
        assert detect_format(tmp_path / name) == "text"
        assert load_trace(tmp_path / name) == expected, name


def test_csv_column_by_name_and_index(tmp_path: Path) -> None:
    p = tmp_path / "access.csv"
    p.write_text('ts,url,status\n1,/a,200\n2,"/b,c",404\n3,,200\n\n4,/a,200\n')
    assert detect_format(p) == "csv"
    assert load_trace(p, csv_column="url") == [b"/a", b"/b,c", b"/a"]
    # an index: the first row is data unless told otherwise
    assert load_trace(p, csv_column=1) == [b"url", b"/a", b"/b,c", b"/a"]
    assert load_trace(p, csv_column="1", csv_header=True) == [b"/a", b"/b,c", b"/a"]
    gz = tmp_path / "access.csv.gz"
    gz.write_bytes(gzip.compress(p.read_bytes()))
    assert load_trace(gz, csv_column="status") == [b"200", b"404", b"200", b"200"]


def test_read_trace_is_lazy(tmp_path: Path) -> None:
    p = tmp_path / "keys.txt"
    p.write_bytes(b"a\nb\n")
    it = read_trace(p)
    p.unlink()  # already open? no: nothing is read before the first next()
    with pytest.raises(FileNotFoundError):
        next(it)


def test_trace_name() -> None:
    assert trace_name("benchmarks/traces/lirs-cs.trace.gz") == "lirs-cs"
    assert trace_name("cache2k-web07.trace.xz") == "cache2k-web07"
    assert trace_name("/x/access.csv.gz") == "access"


# ---- the real traces ---------------------------------------------------------------


def test_the_folder_holds_what_its_readme_lists() -> None:
    listed = {row[0] for row in _readme_rows()}
    assert len(listed) == 16
    on_disk = {p.name for p in TRACES.iterdir()}
    assert on_disk == listed | NOT_TRACES
    # every trace the docs and the benchmark name is one of them
    assert trace_dir() == TRACES
    for doc in (ROOT / "docs" / "policies.md", ROOT / "README.md"):
        for name in re.findall(r"benchmarks/traces/([\w.-]+\.trace\.\w+)", doc.read_text()):
            assert name in listed, (doc.name, name)


@pytest.mark.parametrize(
    ("file", "fmt", "requests", "unique", "size", "sha256"), _readme_rows(), ids=lambda v: str(v)
)
def test_real_trace_matches_readme(
    file: str, fmt: str, requests: int, unique: int, size: int, sha256: str
) -> None:
    path = TRACES / file
    data = path.read_bytes()
    assert (len(data), hashlib.sha256(data).hexdigest()) == (size, sha256)
    assert detect_format(path) == fmt
    keys = load_trace(path)
    assert (len(keys), len(set(keys))) == (requests, unique)
    assert all(type(k) is bytes for k in keys[:100])


def test_real_trace_counts_match_the_published_ones() -> None:
    """A few counts as the traces' publisher gives them, apart from our README's."""
    for file, requests, unique in [
        ("lirs-cs.trace.gz", 6_781, 1_409),
        ("lirs-loop.trace.gz", 505_500, 1_011),  # CRLF
        ("cache2k-web07.trace.xz", 76_118, 20_484),
        ("corda-vaultservice.trace.gz", 135_702, 90_468),
    ]:
        keys = load_trace(TRACES / file)
        assert (len(keys), len(set(keys))) == (requests, unique), file


# ---- finding a trace by name -------------------------------------------------------


def test_bare_names_resolve_to_the_bundled_traces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TRACES_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # nothing of that name here
    assert find_trace("lirs-cs.trace.gz") == TRACES / "lirs-cs.trace.gz"
    assert find_trace("lirs-cs") == TRACES / "lirs-cs.trace.gz"  # suffixes may go
    assert find_trace("cache2k-web07") == TRACES / "cache2k-web07.trace.xz"
    assert len(load_trace("lirs-cs")) == 6_781
    # a file of that name in the current directory wins
    (tmp_path / "lirs-cs.trace.gz").write_bytes(gzip.compress(b"1\n2\n"))
    assert find_trace("lirs-cs.trace.gz") == Path("lirs-cs.trace.gz")
    assert load_trace("lirs-cs.trace.gz") == [b"1", b"2"]
    # a path with a directory part is taken as it is
    with pytest.raises(TraceNotFound, match=r"no such file$"):
        find_trace(os.path.join("sub", "lirs-gli.trace.gz"))
    # the README is not a trace
    with pytest.raises(TraceNotFound, match="in the trace folder"):
        find_trace("lirs-README")


def test_metis_traces_names_another_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "mine"
    other.mkdir()
    (other / "lirs-cs.trace.gz").write_bytes(gzip.compress(b"7\n"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(TRACES_ENV, str(other))
    assert trace_dir() == other
    assert load_trace("lirs-cs") == [b"7"]
    with pytest.raises(TraceNotFound, match="in the trace folder") as info:
        find_trace("lirs-gli.trace.gz")  # bundled, but not in the folder named
    assert info.value.context["trace_dir"] == str(other)


def test_without_a_trace_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As in an installed wheel: no checkout around the package."""
    monkeypatch.delenv(TRACES_ENV, raising=False)
    monkeypatch.setattr(traces_module, "CHECKOUT_TRACES", tmp_path / "absent")
    monkeypatch.chdir(tmp_path)
    assert trace_dir() is None
    with pytest.raises(TraceNotFound, match=f"set {TRACES_ENV}=DIR"):
        read_trace("lirs-cs.trace.gz")


# ---- bad input ---------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TraceNotFound) as info:
        read_trace(tmp_path / "nope.trace.gz")
    err = info.value
    assert isinstance(err, MetisError) and isinstance(err, FileNotFoundError)
    assert err.code == "TRACE_NOT_FOUND" and "nope.trace.gz" in str(err)


def test_unknown_format(tmp_path: Path) -> None:
    p = tmp_path / "keys.txt"
    p.write_bytes(b"1\n")
    with pytest.raises(TraceFormatError, match="unknown format 'int16'") as info:
        read_trace(p, "int16")
    assert info.value.code == "TRACE_FORMAT" and isinstance(info.value, ValueError)


@pytest.mark.parametrize(("fmt", "width"), [("int32", 4), ("int64", 8)])
def test_truncated_binary_record(tmp_path: Path, fmt: str, width: int) -> None:
    p = tmp_path / "cut.trace.gz"
    p.write_bytes(gzip.compress(b"\x00" * (3 * width + 3)))
    with pytest.raises(TraceFormatError, match=f"records are {width} bytes") as info:
        load_trace(p, fmt)
    assert info.value.context["offset"] == 3 * width


def test_csv_without_the_column(tmp_path: Path) -> None:
    p = tmp_path / "access.csv"
    p.write_text("ts,url\n1,/a\n2\n")
    with pytest.raises(TraceFormatError, match=r"no CSV column 'key'.*'ts', 'url'"):
        load_trace(p, csv_column="key")
    with pytest.raises(TraceFormatError, match="line 3: the row has 1 columns"):
        load_trace(p, csv_column="url")
    with pytest.raises(TraceFormatError, match="line 1: the row has 2 columns"):
        load_trace(p, csv_column=5)
    with pytest.raises(TraceFormatError, match="needs a column"):
        read_trace(p)


def test_lirs_rejects_non_numeric_lines(tmp_path: Path) -> None:
    p = tmp_path / "lirs-bad.trace"
    p.write_bytes(b"1\n2\nhello\n")
    with pytest.raises(TraceFormatError, match="line 3"):
        load_trace(p)


def test_corrupt_compressed_file(tmp_path: Path) -> None:
    p = tmp_path / "lirs-broken.trace.gz"
    p.write_bytes(gzip.compress(b"1\n2\n" * 1000)[:-20])
    with pytest.raises(TraceFormatError, match="cannot decompress"):
        load_trace(p)
