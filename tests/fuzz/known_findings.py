"""Findings of the fuzz targets that are not fixed yet, in one place.

Each finding has a regression input under ``regressions/<target>/<file>``;
its replay in ``test_fuzz.py`` is a strict xfail while the finding is listed
here, so the test turns red the day the fix lands and the entry must go.

While a finding is open, its target passes over the inputs that reach it
(the ``passes_over_*`` and ``tolerates_*`` functions below): otherwise every
bounded CI run would stop at the same known crash and look no further. When
a fix lands, delete the finding and its clause there; the regression input
stays. A finding that shows only under the sanitizers (``sanitizer_only``)
is a strict xfail in ``tests/sanitize/`` instead, where the engine targets'
inputs are replayed on the sanitized build.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Finding:
    """A bug a fuzz target found: where it is and the fix it needs."""

    target: str
    regressions: tuple[str, ...]  # file names under regressions/<target>/
    where: str
    summary: str
    fix: str
    sanitizer_only: bool = False  # shows only under METIS_SANITIZE=1 (tests/sanitize/)


OPEN: tuple[Finding, ...] = (
    Finding(
        target="segment",
        regressions=("n-shards-zero-sigfpe",),
        where="cython_src/engine.pyx plan_layout (and metis_shm/segment.py _validate)",
        summary=(
            "a segment header with n_shards = 0 kills the attaching process with SIGFPE: "
            "plan_layout divides capacity by n_shards (cdivision) before it checks n_shards"
        ),
        fix=(
            "plan_layout: check n_shards (zero, not a power of two) before computing "
            "arena = capacity // n_shards; segment._validate: refuse n_shards == 0 or not a "
            "power of two, or above MAX_SHARDS, with SegmentCorrupt before calling plan_layout"
        ),
    ),
    Finding(
        target="segment",
        regressions=("max-entries-2p60-overflow", "max-entries-huge-hang"),
        where="cython_src/engine.pyx plan_layout/_pow2_at_least (and metis_shm/cache.py _settings)",
        summary=(
            "max_entries is not bounded. A segment header with max_entries = 2**60 makes "
            "attach raise OverflowError from plan_layout (n_shards * policy_stride does not "
            "fit in 64 bits; _validate only turns ValueError into SegmentCorrupt); with "
            "max_entries >= 2**61 attach hangs for ever: _pow2_at_least(n) doubles p until "
            "p >= n, and for n > 2**63 p overflows to 0 (4 * entries also wraps). "
            "Cache(name, max_entries=2**63 + 5) hangs the same way"
        ),
        fix=(
            "plan_layout: raise ValueError when max_entries > 2**32 * n_shards (an index of "
            "32-bit offsets cannot hold more) before any arithmetic on it; _pow2_at_least: "
            "refuse n > 2**63; cache._settings: bound max_entries (InvalidConfig); "
            "segment._validate already turns plan_layout's ValueError into SegmentCorrupt"
        ),
    ),
    Finding(
        target="segment",
        regressions=("header-without-nul-overread",),
        where="cython_src/engine.pyx read_header (used by Engine._header too)",
        summary=(
            "read_header converts the SegmentHeader struct with dict(h); Cython turns the "
            "char magic[8] field into bytes with PyBytes_FromString, i.e. strlen, which reads "
            "past the 8 bytes until a zero byte: into the next fields for every real header "
            "(b'METISSHM' has no NUL), past the struct on the stack when a header has no zero "
            "byte (ASan: stack-buffer-overflow READ in __pyx_convert__to_py_struct)"
        ),
        fix=(
            "read_header: take magic = PyBytes_FromStringAndSize(h.magic, 8), then "
            "memset(h.magic, 0, 8) before d = dict(h), then d['magic'] = magic (or build the "
            "dict field by field); the same for any other dict(<SegmentHeader>)"
        ),
        sanitizer_only=True,
    ),
    Finding(
        target="segment",
        regressions=("serializer-unknown-stopiteration",),
        where="metis_shm/segment.py _validate (and metis_shm/cache.py _serializer_name)",
        summary=(
            "a segment header whose serializer is not 0 (msgpack) or 1 (pickle) passes "
            "_validate, and Cache() then raises a bare StopIteration from _serializer_name"
        ),
        fix=(
            "segment._validate: raise SegmentCorrupt when header['serializer'] is not in "
            "codec.SERIALIZERS.values() or header['policy'] is not in _engine.POLICIES.values()"
        ),
    ),
    Finding(
        target="config",
        regressions=("json-nested-recursionerror", "toml-nested-recursionerror"),
        where="metis_shm/config.py _read_file (and _key_lines)",
        summary=(
            "a config file nested about 500 levels deep (TOML arrays) or 1000 (JSON) makes "
            "load_config raise RecursionError instead of InvalidConfig: _read_file catches "
            "only JSONDecodeError / TOMLDecodeError"
        ),
        fix=(
            "_read_file: also catch RecursionError from json.loads / tomllib.loads and raise "
            "InvalidConfig('PATH: nested too deeply', context={'file': path, 'field': None}); "
            "_key_lines: catch RecursionError beside ValueError and IndexError"
        ),
    ),
    Finding(
        target="config",
        regressions=("toml-caches-index-key-indexerror", "json-caches-index-key-indexerror"),
        where="metis_shm/config.py _Merge.set_field",
        summary=(
            'a file key spelled like a dotted field, \'"caches[3].name" = "x"\' in TOML or '
            '{"caches[3].name": "x"} in JSON, makes load_config raise IndexError: '
            "add_mapping hands it to set_field, which indexes self.caches[3] unchecked"
        ),
        fix=(
            "set_field: when the index is not below len(self.caches), raise the unknown-field "
            "InvalidConfig (or refuse 'caches[N].x' keys coming from a file: add_mapping "
            "should call _unknown for any key that is not a section, 'caches' or a top field)"
        ),
    ),
    Finding(
        target="config",
        regressions=("group-nul-valueerror", "owner-nul-valueerror"),
        where="metis_shm/segment.py resolve_group / resolve_uid",
        summary=(
            'a group or user name with a NUL in it (TOML: group = "wheel\\u0000x", '
            'trusted_owners = ["root\\u0000x"]; found by libFuzzer through '
            "METIS_SNAPSHOT_GROUP) makes load_config raise ValueError('embedded null byte') "
            "from grp.getgrnam / pwd.getpwnam; Cache(group=...) the same"
        ),
        fix=(
            "resolve_group / resolve_uid: catch ValueError beside KeyError (or refuse a name "
            "containing NUL first) and raise the same InvalidConfig as for an unknown name"
        ),
    ),
    Finding(
        target="config",
        regressions=("max-entries-huge-hang",),
        where="metis_shm/config.py CACHE_RULES max_entries (root cause: plan_layout, above)",
        summary=(
            "caches[].max_entries = 9223372036854775807 (or METIS_CACHE_MAX_ENTRIES) hangs "
            "load_config for ever in _check_cache -> _engine.plan_layout (the segment "
            "finding max-entries-huge-hang)"
        ),
        fix=(
            "bound the max_entries rule (e.g. at most 2**32 per shard, the index's reach) "
            "and fix plan_layout as said for the segment finding"
        ),
    ),
    Finding(
        target="snapshot",
        regressions=("str-value-invalid-utf8", "str-key-invalid-utf8"),
        where="metis_shm/snapshot.py _load (or cython_src/engine.pyx _import_item)",
        summary=(
            "restore stores items whose str value or str key (flags KIND_STR / FLAG_KEY_STR) "
            "is not valid UTF-8 (a crafted snapshot with a correct checksum): get then "
            "raises UnicodeDecodeError from the engine's str fast path, and keys() yields "
            "a surrogate-escaped str that get(key) refuses with UnicodeEncodeError"
        ),
        fix=(
            "_load: count as rejected (like over-limit items) an item whose flags say str "
            "key (0x1000) or str value (kind 2, no codec bits) when those bytes do not "
            "decode as UTF-8; or the same check in Engine._import_item raising "
            "SerializationFailed, which _load counts as rejected. (Values the codec decodes "
            "now raise SerializationFailed: metis_shm/codec.py.)"
        ),
    ),
)


REACH_KNOWN_ENV = "METIS_FUZZ_REACH_KNOWN"
"""Set to 1 (the regression replays do) to pass over nothing: every input
reaches its finding."""


def open_findings(target: str) -> dict[str, Finding]:
    """Regression file name -> open finding, for one target (none at all
    when ``METIS_FUZZ_REACH_KNOWN=1``)."""
    if os.environ.get(REACH_KNOWN_ENV) == "1":
        return {}
    return {r: f for f in OPEN if f.target == target for r in f.regressions}


def passes_over_segment_header(
    raw: bytes, struct_size: int, decode: Callable[[bytes], dict[str, Any]]
) -> bool:
    """A segment header page (``raw``; the C struct is its first
    ``struct_size`` bytes, ``decode`` reads its fields) that reaches an open
    finding of ``segment``."""
    findings = open_findings("segment")
    if "header-without-nul-overread" in findings and 0 not in raw[:struct_size]:
        return True  # before decode(): decoding it is the finding
    header = decode(raw)
    return (
        ("n-shards-zero-sigfpe" in findings and header.get("n_shards") == 0)
        or ("max-entries-2p60-overflow" in findings and header.get("max_entries", 0) >= 2**40)
        or (
            "serializer-unknown-stopiteration" in findings
            and header.get("serializer") not in (0, 1)
        )
    )


_HUGE_MAX_ENTRIES = re.compile(rb"(?i)max.entries[\"']?\s*[=:]\s*[\"']?\s*(0[xob])?[0-9a-f_]{11,}")
_CACHES_INDEX_KEY = re.compile(rb"caches\[\d+\]")
_NUL_ESCAPE = re.compile(rb"\\u0000|\\U00000000")
_DEEP = 250  # brackets open at once; tomllib recurses about twice per level


def _nesting(text: bytes) -> int:
    depth = deepest = 0
    for byte in text:
        if byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif byte in b"]}":
            depth = max(0, depth - 1)
    return deepest


def passes_over_config(text: bytes) -> bool:
    """Config file and environment bytes that reach an open finding of ``config``."""
    findings = open_findings("config")
    return (
        ("json-nested-recursionerror" in findings and _nesting(text) > _DEEP)
        or ("toml-caches-index-key-indexerror" in findings and bool(_CACHES_INDEX_KEY.search(text)))
        or ("max-entries-huge-hang" in findings and bool(_HUGE_MAX_ENTRIES.search(text)))
        or (
            "group-nul-valueerror" in findings
            and (bool(_NUL_ESCAPE.search(text)) or text.count(0) > 1)  # > 1: one ends the file
        )
    )


def tolerates_snapshot_read_error(exc: BaseException) -> bool:
    """An error of ``get`` after a restore that an open ``snapshot`` finding explains."""
    return "str-value-invalid-utf8" in open_findings("snapshot") and isinstance(exc, UnicodeError)
