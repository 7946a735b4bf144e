"""The crash and chaos tests under AddressSanitizer + UndefinedBehaviorSanitizer.

The engine is built with ``METIS_SANITIZE=1`` (setup.py) into a copy of the
package in a temp directory, never in place: other processes use the
checkout's ``metis_shm/_engine*.so``. A pytest in a subprocess then runs
``tests/test_crash.py``, ``tests/chaos/``, the view and array tests and the
batched reads' tests with that copy first on
``PYTHONPATH`` (so every process the tests start gets it too) and gcc's
libasan preloaded (CPython itself is not instrumented). The plugin
``sanitized_engine_check`` stops that pytest unless the engine it imports is
the sanitized one and libasan and libubsan are mapped.

Every sanitizer report goes to a file (``log_path``) as well as being fatal
(``halt_on_error``), so a report from any process counts, even one whose
output a test captured: the test passes only when the inner pytest passed
and no report file exists and no report text is in its output. Leak
detection is off: CPython keeps memory alive until exit by design.

The saved inputs of the segment and snapshot fuzz targets are replayed on
the same build (some findings, such as the read_header over-read, show
only under a sanitizer), and the corpus of
each, grown for 10 s on the normal engine, is replayed and mutated for 10 s
on it.

Needs gcc (with its libasan) and, for the build, Cython in this Python or
PyPI to fetch it; anything missing fails with a message saying what.
Takes about 3.5 minutes on 2 cores: ~45 s build, ~75 s crash and chaos
tests, ~10 s of replays, ~50 s of fuzzing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SANITIZE_DIR = Path(__file__).resolve().parent
FUZZ_DIR = REPO / "tests" / "fuzz"
sys.path.insert(0, str(FUZZ_DIR))  # the fuzz targets' findings and paths

from _fuzz_support import REGRESSIONS_DIR, target_script  # noqa: E402

ENGINE_TARGETS = ("segment", "snapshot")  # the fuzz targets that reach native code
GROW_SECONDS = 10  # coverage-guided, on the normal engine
SANITIZED_SECONDS = 10  # the grown corpus replayed, then mutated, on the sanitized one
# The crash and chaos tests, the view and array tests (memory handed out of
# the segment, kept or given back by pins), and get_many (prefetched loads).
SUITES = (
    "tests/test_crash.py",
    "tests/chaos",
    "tests/test_views.py",
    "tests/test_views_processes.py",
    "tests/test_arrays.py",
    "tests/test_get_many.py",
)
BUILD_TIMEOUT = 300
RUN_TIMEOUT = 300
REPORT_MARKERS = (
    "ERROR: AddressSanitizer",
    "ERROR: LeakSanitizer",
    "runtime error:",  # UBSan
    "SUMMARY: AddressSanitizer",
    "SUMMARY: UndefinedBehaviorSanitizer",
)
MARKER = "sanitized engine loaded from"  # printed by sanitized_engine_check


def _tail(text: str, lines: int = 80) -> str:
    return "\n".join(text.splitlines()[-lines:])


def libasan_path() -> str:
    """gcc's libasan (to preload), or a failure saying what to install."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("the sanitized build needs gcc: apt-get install gcc")
    out = subprocess.run(
        [gcc, "-print-file-name=libasan.so"], capture_output=True, text=True, timeout=30
    ).stdout.strip()
    if not os.path.isabs(out) or not os.path.exists(out):
        pytest.fail(f"gcc has no libasan.so ({out!r}): apt-get install gcc libasan8")
    return os.path.realpath(out)


def copy_sources(tree: Path) -> None:
    """What setup.py builds from, without any compiled file of the checkout."""
    tree.mkdir(parents=True)
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, tree / name)
    skip = shutil.ignore_patterns("*.so", "*.c", "*.html", "__pycache__")
    shutil.copytree(REPO / "cython_src", tree / "cython_src", ignore=skip)
    shutil.copytree(REPO / "metis_shm", tree / "metis_shm", ignore=skip)


def build_sanitized(tree: Path, work: Path) -> Path:
    """Build the engine with METIS_SANITIZE=1 inside ``tree``; its .so path.

    With Cython importable: ``setup.py build_ext --inplace`` in the copy.
    Without (CI's venv has only the runtime and test packages): ``pip
    wheel``, which fetches the build requirements of pyproject.toml into an
    isolated environment, and the .so is taken out of the wheel.
    """
    env = {**os.environ, "METIS_SANITIZE": "1"}
    env.pop("METIS_DEBUG", None)
    if importlib.util.find_spec("Cython") is not None:
        build_temp = str(work / "build-temp")
        command = [sys.executable, "setup.py", "build_ext", "--inplace", "--build-temp", build_temp]
        how = "setup.py build_ext (Cython from this Python)"
    else:
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work), "."]
        how = "pip wheel (Cython and setuptools fetched from PyPI)"
    try:
        done = subprocess.run(
            command, cwd=tree, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the sanitized build ({how}) took over {BUILD_TIMEOUT} s")
    if done.returncode != 0:
        pytest.fail(
            f"the sanitized build failed ({how}); it needs gcc, Python headers and Cython "
            f"(pip install Cython) or PyPI:\n{_tail(done.stdout + done.stderr)}"
        )
    for wheel in work.glob("*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if member.startswith("metis_shm/_engine") and member.endswith(".so"):
                    (tree / member).write_bytes(archive.read(member))
    built = sorted((tree / "metis_shm").glob("_engine*.so"))
    assert len(built) == 1, f"expected one sanitized engine in {tree}, found {built}"
    return built[0]


@pytest.fixture(scope="module")
def sanitized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(the tree holding the sanitized package, libasan's path)."""
    libasan = libasan_path()
    work = tmp_path_factory.mktemp("sanitized")
    tree = work / "tree"
    copy_sources(tree)
    build_sanitized(tree, work)
    return tree, libasan


def sanitizer_env(tree: Path, libasan: str, reports: Path) -> dict[str, str]:
    """The environment of a process that loads the sanitized engine."""
    reports.mkdir(exist_ok=True)
    return {
        **os.environ,
        "LD_PRELOAD": libasan,
        "ASAN_OPTIONS": ":".join(
            (
                "detect_leaks=0",  # CPython frees little at exit, by design
                "halt_on_error=1",
                "abort_on_error=1",
                "disable_coredump=1",
                f"log_path={reports}/asan",
            )
        ),
        "UBSAN_OPTIONS": f"halt_on_error=1:print_stacktrace=1:log_path={reports}/ubsan",
        "PYTHONPATH": os.pathsep.join((str(tree), str(SANITIZE_DIR))),
        "METIS_SANITIZED_TREE": str(tree),
    }


def _reports(reports: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in reports.iterdir())


def test_sanitizer_reports_are_caught(sanitized: tuple[Path, str], tmp_path: Path) -> None:
    """A deliberate heap overflow in a process started like the ones below is
    fatal and leaves a report file: the check of the real run is not vacuous."""
    tree, libasan = sanitized
    reports = tmp_path / "reports"
    overflow = (
        "import ctypes; a = ctypes.create_string_buffer(4096); "
        "b = ctypes.create_string_buffer(8192); ctypes.memmove(b, a, 4200)"
    )
    done = subprocess.run(
        [sys.executable, "-c", overflow],
        env=sanitizer_env(tree, libasan, reports),
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=60,
    )
    text = _reports(reports)
    assert done.returncode != 0, "the overflow went unnoticed: is libasan preloaded?"
    assert "heap-buffer-overflow" in text, f"no report file:\n{text}\n{done.stderr}"


def _engine_regressions() -> list[object]:
    """The saved inputs of the targets that reach the engine."""
    return [
        pytest.param(target, path, id=f"{target}/{path.name}")
        for target in ENGINE_TARGETS
        for path in sorted((REGRESSIONS_DIR / target).iterdir())
    ]


def _run_target(
    target: str, arguments: list[str], env: dict[str, str], timeout: float
) -> tuple[int, str]:
    try:
        done = subprocess.run(
            [sys.executable, str(target_script(target)), *arguments],
            env=env,
            cwd=FUZZ_DIR,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"fuzz_{target} {arguments} took over {timeout} s")
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize(("target", "path"), _engine_regressions())
def test_fuzz_regression_sanitized(
    sanitized: tuple[Path, str], target: str, path: Path, tmp_path: Path
) -> None:
    """Every saved input of the targets that reach the engine passes under
    the sanitizers too (some findings show only there)."""
    tree, libasan = sanitized
    reports = tmp_path / "reports"
    env = sanitizer_env(tree, libasan, reports)
    arguments = [str(path), "-timeout=5", f"-artifact_prefix={tmp_path}/"]
    code, output = _run_target(target, arguments, env, timeout=90)
    found = _reports(reports)
    assert code == 0 and not found, f"{target}/{path.name} (exit {code}):\n{found}\n{_tail(output)}"


@pytest.mark.parametrize("target", ENGINE_TARGETS)
def test_fuzz_corpus_sanitized(sanitized: tuple[Path, str], target: str, tmp_path: Path) -> None:
    """A target's corpus, grown by a short coverage-guided run on the normal
    engine, replayed on the sanitized engine, then mutated there.

    Under gcc's libasan the fuzzer gets no coverage (libasan defines the
    coverage hooks that atheris's libFuzzer would need, and atheris's own
    ASan runtime is clang's, which a gcc-built engine cannot load), so
    libFuzzer cannot grow a corpus there: it is grown first without the
    sanitizers, where coverage works.
    """
    tree, libasan = sanitized
    grown, artifacts = tmp_path / "grown", tmp_path / "artifacts"
    grown.mkdir()
    artifacts.mkdir()
    corpus = [str(grown), str(FUZZ_DIR / "corpus" / target)]
    limits = ["-timeout=10", "-rss_limit_mb=4096", f"-artifact_prefix={artifacts}/"]
    code, output = _run_target(
        target, [*corpus, f"-max_total_time={GROW_SECONDS}", *limits], dict(os.environ),
        timeout=GROW_SECONDS + 90,
    )  # fmt: skip
    assert code == 0, f"growing the corpus failed (exit {code}):\n{_tail(output)}"
    reports = tmp_path / "reports"
    code, output = _run_target(
        target, [*corpus, f"-max_total_time={SANITIZED_SECONDS}", *limits],
        sanitizer_env(tree, libasan, reports), timeout=SANITIZED_SECONDS + 120,
    )  # fmt: skip
    found = _reports(reports)
    crashes = sorted(p.name for p in artifacts.iterdir())
    assert code == 0 and not found and not crashes, (
        f"exit {code}, inputs {crashes} in {artifacts}:\n{found}\n{_tail(output)}"
    )
    inputs = len(list(grown.iterdir()))
    assert "Done " in output, _tail(output)
    print(f"fuzz_{target}: {inputs} grown inputs and the seeds replayed sanitized")


def test_crash_and_chaos_tests_pass_sanitized(sanitized: tuple[Path, str], tmp_path: Path) -> None:
    tree, libasan = sanitized
    suites = [str(REPO / s) for s in SUITES if (REPO / s).exists()]
    assert str(REPO / SUITES[0]) in suites, f"{SUITES[0]} is missing"
    reports = tmp_path / "reports"
    command = [
        sys.executable, "-m", "pytest", "-p", "sanitized_engine_check", "-p", "no:cacheprovider",
        "-q", "-x", "--rootdir", str(REPO), *suites,
    ]  # fmt: skip
    try:
        done = subprocess.run(
            command,
            env=sanitizer_env(tree, libasan, reports),
            cwd=tree,  # `python -m` puts the cwd first on sys.path: the sanitized copy
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        pytest.fail(f"the sanitized run took over {RUN_TIMEOUT} s:\n{_tail(out)}")
    output = done.stdout + done.stderr
    found = _reports(reports)
    assert MARKER in output, f"the engine check did not run:\n{_tail(output)}"
    assert done.returncode == 0, f"the sanitized run failed:\n{_tail(output)}\n{found}"
    assert not found, f"sanitizer reports:\n{found}"
    hits = [m for m in REPORT_MARKERS if m in output]
    assert not hits, f"sanitizer report text {hits} in the output:\n{_tail(output)}"
    print(f"ran {', '.join(suites)} on the sanitized engine:\n{_tail(output, 5)}")
