"""Django's own cache tests, ``BaseCacheTests`` of Django's ``tests/cache/tests.py``,
run against ``metis_shm.contrib.django.MetisCache``.

The suite is not copied into this repository: ``sh tests/fetch-suites.sh
.venv/bin/python`` extracts it from the sdist of the installed Django (PyPI)
into ``tests/.suites/django-<version>/``. Without it these tests fail and say
so (they do not skip).

Django's suite runs ``BaseCacheTests`` once per backend, as a subclass
``class XCacheTests(BaseCacheTests, TestCase)`` under
``@override_settings(CACHES=caches_setting_for_tests(base=..., exclude=...))``.
The same is done here for Metis, the way Django does it for memcached and
Redis: every alias (``default``, ``prefix``, ``v2``, ``custom_key``,
``custom_key2``) shares one Metis segment (one server for memcached and
Redis), and the ``cull`` and ``zero_cull`` aliases are excluded (see
``EXCLUDED``), so the three cull tests skip themselves ("Culling isn't
implemented."), as they do for memcached and Redis.

The suite runs once, in a child process (``python
tests/contrib/test_django_suite.py --child``): Django settings are
process-wide, and the suite needs its own (``INSTALLED_APPS=["cache"]`` for
its ``Poll`` model, an in-memory sqlite database for ``TestCase``), unlike
the tests of ``django_backend/`` in this process. Each of Django's tests is then
reported here as its own pytest item, ``test_django_base_cache_test[name]``,
with Django's traceback when it fails; ``test_django_suite_ran_completely``
checks the whole run and prints the counts.

``test_max_entries_bounds_the_whole_cache`` checks what Django's cull tests
cannot (their counts are Django's own culling algorithm): Django's
``OPTIONS={"MAX_ENTRIES": 30}`` keeps at most 30 items in the whole cache.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import unittest
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DJANGO_VERSION = importlib.metadata.version("django")
# Django's tests/ directory (with only tests/cache/ in it), as fetch-suites.sh extracts it.
SUITE_TESTS = ROOT / "tests" / ".suites" / f"django-{DJANGO_VERSION}" / "tests"
SUITE_FILE = SUITE_TESTS / "cache" / "tests.py"
FETCH_COMMAND = "sh tests/fetch-suites.sh .venv/bin/python"
BACKEND = "metis_shm.contrib.django.MetisCache"
# The base configuration of every alias (Django's base_params for a backend).
OPTIONS = {"capacity": "16MiB"}
LOCATION_ENV = "METIS_DJANGO_SUITE_LOCATION"

# Django runs BaseCacheTests on memcached and Redis with
# caches_setting_for_tests(..., exclude=memcached_excluded_caches /
# redis_excluded_caches), both {"cull", "zero_cull"}: "The memcached backends
# don't support cull-related options like `MAX_ENTRIES`" / "The redis backend
# does not support cull-related options like `MAX_ENTRIES`". The same applies
# to Metis: MAX_ENTRIES is honoured as a bound, but Django's culling (delete
# 1/CULL_FREQUENCY of the entries once MAX_ENTRIES is reached, everything for
# CULL_FREQUENCY=0), whose exact counts these tests check, is Django's own
# algorithm: Metis evicts one item chosen by its policy instead.
EXCLUDED_CACHES = frozenset({"cull", "zero_cull"})
_EXCLUDED_WHY = (
    "excluded as Django excludes it for memcached and Redis: caches 'cull' and 'zero_cull' "
    "are not configured (no Django-style culling by MAX_ENTRIES/CULL_FREQUENCY); "
)
EXCLUDED: dict[str, str] = {
    "test_cull": _EXCLUDED_WHY + "it expects Django's cull: 49 sets, MAX_ENTRIES=30 leave 29",
    "test_zero_cull": _EXCLUDED_WHY
    + "it expects Django's CULL_FREQUENCY=0 (empty the cache when full): 49 sets leave 19",
    "test_cull_delete_when_store_empty": _EXCLUDED_WHY
    + "it sets BaseCache._max_entries = -1 to force Django's _cull()",
}


def _missing_message() -> str:
    return (
        f"Django's cache test suite for the installed Django {DJANGO_VERSION} is missing: "
        f"{SUITE_FILE.relative_to(ROOT)} does not exist. Fetch it (from the Django sdist "
        f"on PyPI) with: {FETCH_COMMAND}"
    )


def _base_cache_test_names() -> list[str]:
    """The test methods of Django's BaseCacheTests, read (not imported) from tests.py."""
    if not SUITE_FILE.is_file():
        return []
    tree = ast.parse(SUITE_FILE.read_text(encoding="utf-8"), str(SUITE_FILE))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "BaseCacheTests":
            return [
                item.name
                for item in node.body
                if isinstance(item, ast.FunctionDef) and item.name.startswith("test")
            ]
    raise AssertionError(f"{SUITE_FILE}: no class BaseCacheTests")


NAMES = _base_cache_test_names()


# --------------------------------------------------------------------------
# The child process: Django's runner, Django's tests, our backend
# --------------------------------------------------------------------------


class _RecordingResult(unittest.TextTestResult):
    """A verbose text result that also keeps every test's outcome for the parent."""

    # a test's outcome is its worst: an error in one subtest fails the whole test
    _SEVERITY = ("passed", "expected failure", "skipped", "failed", "error")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.records: dict[str, dict[str, Any]] = {}

    def _record(self, test: Any, outcome: str, detail: str = "") -> None:
        name = getattr(test, "_testMethodName", None) or test.id()
        entry = self.records.setdefault(name, {"outcome": outcome, "detail": ""})
        if self._SEVERITY.index(outcome) > self._SEVERITY.index(entry["outcome"]):
            entry["outcome"] = outcome
        entry["detail"] += detail

    def addSuccess(self, test: Any) -> None:
        super().addSuccess(test)
        self._record(test, "passed")

    def addFailure(self, test: Any, err: Any) -> None:
        super().addFailure(test, err)
        self._record(test, "failed", self._exc_info_to_string(err, test))

    def addError(self, test: Any, err: Any) -> None:
        super().addError(test, err)
        self._record(test, "error", self._exc_info_to_string(err, test))

    def addSkip(self, test: Any, reason: str) -> None:
        super().addSkip(test, reason)
        self._record(test, "skipped", reason)

    def addExpectedFailure(self, test: Any, err: Any) -> None:
        super().addExpectedFailure(test, err)
        self._record(test, "expected failure", self._exc_info_to_string(err, test))

    def addUnexpectedSuccess(self, test: Any) -> None:
        super().addUnexpectedSuccess(test)
        self._record(test, "failed", "unexpected success")

    def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            self._record(
                test,
                "failed" if failed else "error",
                f"{subtest._subDescription()}:\n{self._exc_info_to_string(err, test)}",
            )


def _child(out_path: str) -> int:
    """Run Django's BaseCacheTests on MetisCache; write the outcomes to ``out_path``."""
    location = os.environ[LOCATION_ENV]
    if not SUITE_FILE.is_file():
        print(_missing_message(), file=sys.stderr)
        return 3
    # Django's runtests.py puts tests/ on sys.path and the test app ("cache")
    # in INSTALLED_APPS; its tests name modules "cache.tests", "cache.models".
    sys.path.insert(0, str(SUITE_TESTS))
    import django
    from django.conf import settings

    base = {"BACKEND": BACKEND, "LOCATION": location, "OPTIONS": dict(OPTIONS)}
    settings.configure(
        # what Django's tests/test_sqlite.py and runtests.py give the cache tests
        SECRET_KEY="metis-django-suite",
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        INSTALLED_APPS=["cache"],
        USE_TZ=False,
        CACHES={"default": base},
    )
    django.setup()
    from cache import tests as django_cache_tests  # Django's tests/cache/tests.py
    from django.test import TestCase, override_settings
    from django.test.runner import DiscoverRunner

    @override_settings(
        CACHES=django_cache_tests.caches_setting_for_tests(base=base, exclude=EXCLUDED_CACHES)
    )
    class MetisCacheTests(django_cache_tests.BaseCacheTests, TestCase):  # type: ignore[misc]
        pass

    MetisCacheTests.__qualname__ = "MetisCacheTests"  # ids: test_django_suite.MetisCacheTests.x
    MetisCacheTests.__module__ = "test_django_suite"

    runner = DiscoverRunner(verbosity=0, interactive=False)
    runner.setup_test_environment()
    old_config = runner.setup_databases()
    try:
        suite = unittest.defaultTestLoader.loadTestsFromTestCase(MetisCacheTests)
        methods = {t._testMethodName for t in suite}  # type: ignore[attr-defined]
        print(f"Django {django.get_version()} BaseCacheTests on {BACKEND} ({location})")
        result = unittest.TextTestRunner(
            stream=sys.stdout, verbosity=2, resultclass=_RecordingResult
        ).run(suite)
    finally:
        runner.teardown_databases(old_config)
        runner.teardown_test_environment()
    assert isinstance(result, _RecordingResult)
    records = result.records
    # errors outside a test method (setUpClass, tearDownClass) have no method name
    for name in list(records):
        if name not in methods:
            records[name]["outcome"] = "error"
    Path(out_path).write_text(
        json.dumps({"django": django.get_version(), "tests": records}), encoding="utf-8"
    )
    return 0 if result.wasSuccessful() else 1


# --------------------------------------------------------------------------
# The parent: pytest
# --------------------------------------------------------------------------


def _require_suite() -> None:
    if not SUITE_FILE.is_file():
        pytest.fail(_missing_message(), pytrace=False)


@pytest.fixture(scope="module")
def django_suite() -> Iterator[dict[str, Any]]:
    """Run Django's BaseCacheTests once, in a child process, on a fresh segment."""
    if not SUITE_FILE.is_file():
        yield {}
        return
    from _workers import new_name  # tests/ is on sys.path (conftest.py)

    from metis_shm import Cache

    location = new_name()
    with tempfile.TemporaryDirectory(prefix="metis-django-suite-") as tmp:
        out = Path(tmp) / "results.json"
        env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
        env[LOCATION_ENV] = location
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        try:
            proc = subprocess.run(
                [sys.executable, __file__, "--child", str(out)],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
        finally:
            Cache.destroy(location)
        if not out.is_file():
            raise AssertionError(
                f"Django's cache suite did not report (exit {proc.returncode}):\n"
                f"{proc.stdout}\n{proc.stderr}"
            )
        report = json.loads(out.read_text(encoding="utf-8"))
    report["output"] = proc.stdout + proc.stderr
    report["returncode"] = proc.returncode
    yield report


@pytest.mark.parametrize("name", NAMES or ["suite-missing"])
def test_django_base_cache_test(name: str, django_suite: dict[str, Any]) -> None:
    """One of Django's BaseCacheTests, as it ran on MetisCache in the child."""
    _require_suite()
    record = django_suite["tests"].get(name)
    if record is None:
        pytest.fail(f"Django's {name} did not run:\n{django_suite['output']}", pytrace=False)
    outcome, detail = record["outcome"], record["detail"]
    if name in EXCLUDED:
        # What is checked here is the exclusion itself: Django's suite left
        # the test out for our backend, as it does for memcached and Redis.
        assert outcome == "skipped", f"{name} is excluded but {outcome}:\n{detail}"
        return
    if outcome != "passed":
        pytest.fail(
            f"Django {django_suite['django']}'s BaseCacheTests.{name} {outcome} on "
            f"MetisCache:\n{detail}",
            pytrace=False,
        )


def test_django_suite_ran_completely(django_suite: dict[str, Any]) -> None:
    """Every BaseCacheTests method ran; only the EXCLUDED ones skipped; all others passed."""
    _require_suite()
    records: dict[str, dict[str, Any]] = django_suite["tests"]
    print(django_suite["output"])
    assert django_suite["django"] == DJANGO_VERSION
    assert set(EXCLUDED) <= set(NAMES), "an excluded test is gone from Django's suite"
    assert set(records) == set(NAMES), (
        f"ran {sorted(set(records) - set(NAMES))} beyond, "
        f"missed {sorted(set(NAMES) - set(records))} of BaseCacheTests"
    )
    skipped = sorted(n for n, r in records.items() if r["outcome"] == "skipped")
    assert skipped == sorted(EXCLUDED)
    passed = [n for n, r in records.items() if r["outcome"] == "passed"]
    bad = {n: r["outcome"] for n, r in records.items() if r["outcome"] not in ("passed", "skipped")}
    ran = len(records) - len(skipped)
    print(
        f"Django {DJANGO_VERSION} BaseCacheTests on MetisCache: {len(records)} tests, "
        f"{ran} ran, {len(passed)} passed, {len(skipped)} excluded ({', '.join(skipped)})"
    )
    assert not bad, f"failed: {bad}"
    assert django_suite["returncode"] == 0
    assert len(passed) == ran


# --------------------------------------------------------------------------
# MAX_ENTRIES bounds the whole cache
# --------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["set", "set_many", "add"])
def test_max_entries_bounds_the_whole_cache(how: str, names: Any) -> None:
    """Django's ``OPTIONS={"MAX_ENTRIES": 30}``, default shards: 100 keys stored, at most 30 kept.

    (It kept 32 when each of the 8 default shards rounded its share of the
    bound up.)
    """
    from metis_shm.contrib.django import MetisCache

    backend = MetisCache(names(), {"OPTIONS": {"MAX_ENTRIES": 30}})
    try:
        keys = [f"cull{i}" for i in range(100)]
        if how == "set":
            for key in keys:
                backend.set(key, "value", 1000)
        elif how == "set_many":
            for start in range(0, 100, 10):
                assert backend.set_many({k: "value" for k in keys[start : start + 10]}, 1000) == []
        else:
            for key in keys:
                assert backend.add(key, "value", 1000) is True
        metis = backend.cache
        assert metis.settings["max_entries"] == 30
        kept = [k for k in keys if backend.has_key(k)]
        print(f"{how}: {len(kept)} of 100 kept, {metis.n_shards} shards")
        assert len(kept) <= 30
        assert len(metis) <= 30
        assert metis.stats().items <= 30
        assert backend.has_key(keys[-1]), "the newest key was stored (evicting, not refusing)"
    finally:
        backend.detach()


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    sys.exit(_child(sys.argv[2]))
