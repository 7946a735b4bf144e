"""What the fuzz targets share: running a target as a libFuzzer program,
cleaning up after a process that libFuzzer ends with ``exit()``, and the
names of the targets.

A target module defines ``TestOneInput(data: bytes) -> None`` (one input,
raising only on a finding) and ``main()``, which registers what the process
creates with ``clean_up_when_gone`` and hands ``TestOneInput`` to libFuzzer.
The tests run targets as scripts only: a corpus run, or one saved input
replayed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import posix_ipc

FUZZ_DIR = Path(__file__).resolve().parent
CORPUS_DIR = FUZZ_DIR / "corpus"
REGRESSIONS_DIR = FUZZ_DIR / "regressions"
TARGETS = ("snapshot", "segment", "config", "traces")


def target_script(target: str) -> Path:
    """The runnable module of a target: ``tests/fuzz/fuzz_<target>.py``."""
    return FUZZ_DIR / f"fuzz_{target}.py"


def segment_name(target: str) -> str:
    """A cache name for this process's segment (the pid keeps parallel runs apart)."""
    return f"fuzz-{target}-{os.getpid()}"


def unlink_segment(name: str) -> None:
    """Remove the segment of cache ``name`` if it is there."""
    with contextlib.suppress(posix_ipc.ExistentialError):
        posix_ipc.unlink_shared_memory(f"/metis.{name}")


@functools.cache
def scratch_directory(target: str) -> Path:
    """This process's temp directory for the files a target writes (the same
    one on every call; register it with ``clean_up_when_gone``)."""
    return Path(tempfile.mkdtemp(prefix=f"metis-fuzz-{target}-"))


def clean_up_when_gone(segments: Iterable[str], directories: Iterable[str | Path]) -> None:
    """Unlink ``segments`` and remove ``directories`` once this process is gone.

    libFuzzer ends a run with C ``exit()`` (``-max_total_time``, ``-runs``, a
    crash), so neither ``atexit`` nor ``finally`` runs. A forked watcher
    blocks on a pipe whose write end only this process holds; the pipe
    reaches end-of-file however the process ends, SIGKILL included.
    """
    segments, directories = list(segments), [str(d) for d in directories]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(read_end)
        return  # write_end stays open, unused, for the life of this process
    try:
        os.close(write_end)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C on the run: clean up anyway
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # do not hold the caller's pipes open
            os.dup2(devnull, fd)
        while os.read(read_end, 1):
            pass
        for name in segments:
            unlink_segment(name)
        for directory in directories:
            shutil.rmtree(directory, ignore_errors=True)
    finally:
        os._exit(0)


def instrumenting_metis(module_name: str) -> AbstractContextManager[Any]:
    """A context in which imports of ``metis_shm`` are instrumented for
    coverage when the target runs as a script (``module_name`` is
    ``"__main__"``), and nothing is done when a test imports it."""
    if module_name != "__main__":
        return contextlib.nullcontext()
    import atheris

    return atheris.instrument_imports(include=["metis_shm"])


def run_libfuzzer(test_one_input: Callable[[bytes], None]) -> None:
    """Hand ``test_one_input`` to libFuzzer with this process's arguments
    (corpus directories, ``-max_total_time=``, a crash file to replay...)."""
    import atheris

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
