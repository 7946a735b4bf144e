"""Fuzz target: the trace readers (``metis_shm.sim.traces.read_trace``), every
format, plain or compressed (gzip, xz/lzma, bzip2: recognised from the
file's first bytes).

Input: one control byte, then the trace file's bytes.

* control bits 0-2: the format, ``FORMATS[n]`` (lirs, int32, int64, text,
  csv); 5-7: guessed from the file name (``trace.txt``: text);
* for csv, bit 3: ``csv_header=True``; bit 4: the column is the name
  ``"key"`` (else the index, bits 5-6); bit 7: ``;`` as the delimiter.

Allowed outcomes: an iterator of ``bytes`` keys, read to the end (at most
``MAX_KEYS``), or ``TraceFormatError`` (``TraceNotFound`` is one) raised by
the call or while iterating. Anything else is a finding.

    python tests/fuzz/fuzz_traces.py NEW_DIR tests/fuzz/corpus/traces -max_total_time=600
"""

from __future__ import annotations

import sys
from typing import Any

from _fuzz_support import (
    clean_up_when_gone,
    instrumenting_metis,
    run_libfuzzer,
    scratch_directory,
)

with instrumenting_metis(__name__):
    from metis_shm.errors import TraceFormatError
    from metis_shm.sim import traces

MAX_KEYS = 1 << 20  # a small compressed file may expand a lot: stop reading here


def reader_arguments(control: int) -> dict[str, Any]:
    """``read_trace`` keyword arguments for a control byte (module docstring)."""
    n = control & 7
    if n >= len(traces.FORMATS):
        return {"format": None}
    fmt = traces.FORMATS[n]
    if fmt != "csv":
        return {"format": fmt}
    return {
        "format": fmt,
        "csv_header": bool(control & 8),
        "csv_column": "key" if control & 16 else (control >> 5) & 3,
        "csv_delimiter": ";" if control & 128 else ",",
    }


def TestOneInput(data: bytes) -> None:
    """Read ``data`` as a trace file; raise on a finding."""
    if not data:
        return
    path = scratch_directory("traces") / "trace.txt"
    path.write_bytes(data[1:])
    try:
        for n, key in enumerate(traces.read_trace(path, **reader_arguments(data[0]))):
            if type(key) is not bytes:
                raise AssertionError(f"read_trace yielded {type(key).__name__}, not bytes")
            if n >= MAX_KEYS:
                break
    except TraceFormatError:
        return


def main() -> None:
    """Run under libFuzzer with this process's command line."""
    clean_up_when_gone([], [scratch_directory("traces")])
    run_libfuzzer(TestOneInput)


if __name__ == "__main__":
    sys.exit(main())
