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


OPEN: tuple[Finding, ...] = ()


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
