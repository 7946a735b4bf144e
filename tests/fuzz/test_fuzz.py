"""The fuzz targets in CI: each one runs for a bounded time from its seed
corpus, and every saved finding is replayed.

* ``test_fuzz_target_runs_clean``: ``python tests/fuzz/fuzz_<target>.py``
  under libFuzzer for ``METIS_FUZZ_SECONDS`` (15 s by default) with an RSS
  and a per-input time limit; it must exit 0 and leave no crash, timeout or
  OOM file. New inputs go to a temp directory, never into the committed
  corpus. ``METIS_FUZZ_SEED`` fixes libFuzzer's seed (a failure prints the
  seed it used either way).
* ``test_regression_input``: every file under ``regressions/<target>/`` is
  run once through the same target (a subprocess: an input may kill the
  process it runs in) and must pass; ``tests/sanitize/`` replays the engine
  targets' inputs on the sanitized build too.

Long runs: docs/testing.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _fuzz_support import CORPUS_DIR, FUZZ_DIR, REGRESSIONS_DIR, TARGETS, target_script

FUZZ_SECONDS = int(os.environ.get("METIS_FUZZ_SECONDS", "15"))
RSS_LIMIT_MB = 2048
INPUT_TIMEOUT = 10  # seconds one input may take before libFuzzer calls it a hang
REPLAY_TIMEOUT = 5  # the same for a replay: the inputs saved are small
STARTUP_ALLOWANCE = 60  # imports, instrumentation, seed corpus, shutdown
ARTIFACT_PREFIXES = ("crash-", "timeout-", "oom-", "leak-", "slow-unit-")


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _run(command: list[str], timeout: float, late: str) -> tuple[subprocess.Popen[str], str]:
    """Run a target script in the fuzz directory; its process and its output.
    Fails the test with ``late`` and the output's tail after ``timeout``."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=FUZZ_DIR
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"{late}:\n{_tail(output)}")
    return process, output


def _segments_of(pid: int) -> list[str]:
    names = os.listdir("/dev/shm")
    return [n for n in names if n.startswith("metis.fuzz-") and n.endswith(f"-{pid}")]


def _wait_cleaned_up(pid: int, timeout: float = 10.0) -> list[str]:
    """The segments a finished target left; its watcher removes them just after it exits."""
    deadline = time.monotonic() + timeout
    while _segments_of(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _segments_of(pid)


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target_runs_clean(target: str, tmp_path: Path) -> None:
    new_inputs = tmp_path / "new-inputs"
    artifacts = tmp_path / "artifacts"
    new_inputs.mkdir()
    artifacts.mkdir()
    command = [
        sys.executable,
        str(target_script(target)),
        str(new_inputs),
        str(CORPUS_DIR / target),
        f"-max_total_time={FUZZ_SECONDS}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-timeout={INPUT_TIMEOUT}",
        f"-artifact_prefix={artifacts}/",
        "-print_final_stats=1",
    ]
    dictionary = FUZZ_DIR / f"{target}.dict"
    if dictionary.exists():
        command.append(f"-dict={dictionary}")
    if os.environ.get("METIS_FUZZ_SEED"):
        command.append(f"-seed={int(os.environ['METIS_FUZZ_SEED'])}")
    process, output = _run(
        command,
        FUZZ_SECONDS + STARTUP_ALLOWANCE,
        f"fuzz_{target} did not stop after -max_total_time",
    )
    found = sorted(p.name for p in artifacts.iterdir() if p.name.startswith(ARTIFACT_PREFIXES))
    replay = (
        f"replay: python tests/fuzz/fuzz_{target}.py FILE; "
        "then save the input under tests/fuzz/regressions/ (docs/testing.md)"
    )
    assert process.returncode == 0 and not found, (
        f"fuzz_{target} exited {process.returncode} with findings {found} in {artifacts}; "
        f"{replay}\n{_tail(output)}"
    )
    assert "Done " in output, f"fuzz_{target} never got to run:\n{_tail(output)}"
    assert not _wait_cleaned_up(process.pid), f"fuzz_{target} left its segment behind"


def _regression_inputs() -> list[object]:
    return [
        pytest.param(target, path, id=f"{target}/{path.name}")
        for target in TARGETS
        if (REGRESSIONS_DIR / target).exists()
        for path in sorted((REGRESSIONS_DIR / target).iterdir())
    ]


@pytest.mark.parametrize(("target", "path"), _regression_inputs())
def test_regression_input(target: str, path: Path, tmp_path: Path) -> None:
    command = [
        sys.executable,
        str(target_script(target)),
        str(path),
        f"-timeout={REPLAY_TIMEOUT}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-artifact_prefix={tmp_path}/",
    ]
    process, output = _run(
        command, REPLAY_TIMEOUT + STARTUP_ALLOWANCE, f"{path.name} did not finish"
    )
    assert not _wait_cleaned_up(process.pid), f"fuzz_{target} left its segment behind"
    assert process.returncode == 0, (
        f"regression input {target}/{path.name} fails again (exit {process.returncode}):\n"
        f"{_tail(output)}"
    )
