"""The wheel: built from a copy of the sources, installed into fresh virtual
environments, used from there.

* ``test_wheel_installs_imports_and_serves_django``: the wheel that
  ``pip wheel`` builds (a ``linux_x86_64`` one, compiled here) goes into a
  new venv; every module of the installed package imports (walked with
  ``pkgutil.walk_packages``, and checked against the modules of the source
  tree, so a subpackage that package discovery missed fails), the compiled
  engine, its stub and ``py.typed`` come from that venv, and a tiny Django
  site run by that venv's Python serves a request whose response Django's
  ``cache_page`` stores in Metis (the second request is served from the
  cache; the keys are in the segment).
* ``test_repaired_wheel_installs_without_a_compiler``: ``auditwheel repair``
  turns that wheel into a ``manylinux`` one (docs/installation.md), which
  installs into another new venv with ``CC=/bin/false`` (and no index: pip
  may not build anything or fetch anything) and opens a ``Cache``. That
  ``CC=/bin/false`` does stop a compiler is checked on a one-line C
  extension first.

The new venvs have no pip and no packages of their own: the main venv's pip
installs into them (``pip --python``) with ``--no-deps``, and a ``.pth`` file
puts the main venv's site-packages after their own, for the runtime
dependencies (posix_ipc, msgspec, psutil) and Django, so nothing is
downloaded. metis_shm itself is only in the new venv (the main venv has it as
an editable install, whose import hook a ``.pth`` path does not load); the
tests check where every module came from.

The build: ``pip wheel --no-deps --no-build-isolation`` when this Python
has Cython and a setuptools with ``bdist_wheel`` (>= 70.1, or the ``wheel``
package), else ``pip wheel --no-deps`` with build isolation, which takes
setuptools and Cython from pip's cache or PyPI, as ``pip install .`` does.
About 25 s in all, most of it compiling the engine.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path
from typing import Any

import pytest
from _workers import new_name

from metis_shm import Cache

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT = 240
#: what the wheel is built from (as tests/sanitize copies it): no compiled file
SOURCES = ("setup.py", "pyproject.toml", "README.md", "cython_src", "metis_shm")


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _run(cmd: list[str], what: str, timeout: float = 120, **kwargs: Any) -> str:
    """Run ``cmd``; its stdout, or a failure with ``what`` and the output's tail."""
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} took over {timeout} s: {cmd}")
    if done.returncode != 0:
        pytest.fail(f"{what} failed ({done.returncode}): {cmd}\n{_tail(done.stdout + done.stderr)}")
    return str(done.stdout)


def _can_build_without_isolation() -> bool:
    if importlib.util.find_spec("Cython") is None:
        return False
    if importlib.util.find_spec("wheel") is not None:
        return True
    major, minor = (int(p) for p in importlib.metadata.version("setuptools").split(".")[:2])
    return (major, minor) >= (70, 1)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``linux`` wheel built from a copy of the sources."""
    work = tmp_path_factory.mktemp("wheel")
    tree = work / "src"
    tree.mkdir()
    skip = shutil.ignore_patterns("*.so", "*.c", "*.html", "__pycache__")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, tree / name, ignore=skip)
        else:
            shutil.copy2(ROOT / name, tree / name)
    out = work / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out)]
    if _can_build_without_isolation():
        cmd.append("--no-build-isolation")
    # "./src", not "src": a bare word is a project name to look up on the index
    _run([*cmd, "./src"], "pip wheel", timeout=BUILD_TIMEOUT, cwd=work)
    (built,) = out.glob("metis_shm-*.whl")
    return built


def _new_venv(where: Path) -> Path:
    """A venv without pip whose Python also sees the main venv's packages
    (after its own); its python's path."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(where)], "python -m venv")
    python = where / "bin" / "python"
    own = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        "the new venv's python",
    ).strip()
    main_site = sysconfig.get_paths()["purelib"]
    assert Path(own) != Path(main_site)
    (Path(own) / "zz-main-venv-packages.pth").write_text(main_site + "\n")
    return python


def _pip_install(python: Path, wheel: Path, env: dict[str, str] | None = None) -> str:
    return _run(
        [
            sys.executable, "-m", "pip", "--python", str(python), "install",
            "--no-deps", "--no-index", "--no-cache-dir", str(wheel),
        ],
        f"pip install {wheel.name}", env=env,
    )  # fmt: skip


def _source_modules() -> set[str]:
    """The modules of the source tree: metis_shm.x.y for every .py and the engine."""
    names = {"metis_shm._engine"}
    for path in (ROOT / "metis_shm").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


_IMPORT_ALL = """
import importlib, json, pkgutil, sys
import metis_shm
failed, found = {}, []
for info in pkgutil.walk_packages(metis_shm.__path__, "metis_shm.", onerror=lambda n: None):
    try:
        module = importlib.import_module(info.name)
    except BaseException as exc:  # SystemExit too: no module may run on import
        failed[info.name] = repr(exc)
        continue
    found.append((info.name, getattr(module, "__file__", None)))
import metis_shm._engine as engine
print(json.dumps({
    "package": metis_shm.__file__, "version": metis_shm.__version__,
    "engine": engine.__file__, "modules": found, "failed": failed,
}))
"""

_SETTINGS = """
import os
SECRET_KEY = "only-for-this-test"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "wheel_urls"
INSTALLED_APPS = []
MIDDLEWARE = []
USE_TZ = True
CACHES = {
    "default": {
        "BACKEND": "metis_shm.contrib.django.MetisCache",
        "LOCATION": os.environ["WHEEL_TEST_CACHE"],
        "OPTIONS": {"capacity": "8MiB"},
    }
}
"""

_URLS = """
from django.http import HttpResponse
from django.urls import path
from django.views.decorators.cache import cache_page

CALLS = []


@cache_page(60)
def hello(request):
    CALLS.append(request.path)
    return HttpResponse(f"hello, call {len(CALLS)}", content_type="text/plain")


urlpatterns = [path("hello", hello)]
"""

_SERVE = """
import json, os, sys, wsgiref.util
import django, metis_shm
from django.core.cache import caches
from django.core.wsgi import get_wsgi_application
from metis_shm import Cache

application = get_wsgi_application()


def get(path):
    environ = {}
    wsgiref.util.setup_testing_defaults(environ)
    environ["PATH_INFO"] = path
    started = []
    body = b"".join(application(environ, lambda status, headers, exc=None: started.append(status)))
    return started[0], body.decode()


first, second = get("/hello"), get("/hello")
import wheel_urls
# the Django backend pickles responses: reading them needs the same consent
with Cache(os.environ["WHEEL_TEST_CACHE"], create=False, serializer="pickle") as raw:
    keys = sorted(raw.keys())
print(json.dumps({
    "first": first, "second": second, "calls": len(wheel_urls.CALLS), "keys": keys,
    "backend": type(caches["default"]).__module__ + "." + type(caches["default"]).__name__,
    "backend_file": sys.modules[type(caches["default"]).__module__].__file__,
    "metis": metis_shm.__file__, "django": django.__version__,
}))
"""


def test_wheel_installs_imports_and_serves_django(wheel: Path, tmp_path: Path) -> None:
    assert "-linux_" in wheel.name, wheel.name  # compiled here, for this platform only
    venv = tmp_path / "venv"
    python = _new_venv(venv)
    _pip_install(python, wheel)

    # every module, from the new venv
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    report = json.loads(
        _run([str(python), "-E", "-s", "-c", _IMPORT_ALL], "importing", cwd=tmp_path, env=env)
    )
    assert not report["failed"], report["failed"]
    for key in ("package", "engine"):
        assert Path(report[key]).is_relative_to(venv), (key, report[key])
    outside = [n for n, f in report["modules"] if f and not Path(f).is_relative_to(venv)]
    assert not outside, outside
    imported = {n for n, _ in report["modules"]}
    assert _source_modules() <= imported | {"metis_shm"}, _source_modules() - imported
    package_dir = Path(report["package"]).parent
    assert (package_dir / "py.typed").exists() and (package_dir / "_engine.pyi").exists()
    assert report["version"] == importlib.metadata.version("metis-shm")

    # a Django site served by the new venv's Python, its cache in Metis
    site = tmp_path / "site"
    site.mkdir()
    (site / "wheel_settings.py").write_text(_SETTINGS)
    (site / "wheel_urls.py").write_text(_URLS)
    (site / "serve.py").write_text(_SERVE)
    name = new_name()
    env |= {"DJANGO_SETTINGS_MODULE": "wheel_settings", "WHEEL_TEST_CACHE": name}
    try:
        out = _run([str(python), "-E", "-s", str(site / "serve.py")], "serving", cwd=site, env=env)
    finally:
        Cache.destroy(name)
    served = json.loads(out.splitlines()[-1])
    assert Path(served["metis"]).is_relative_to(venv)
    assert served["backend"] == "metis_shm.contrib.django.MetisCache"
    assert Path(served["backend_file"]).is_relative_to(venv)
    assert served["first"] == ["200 OK", "hello, call 1"]
    assert served["second"] == ["200 OK", "hello, call 1"], "not served from the cache"
    assert served["calls"] == 1
    assert any("views.decorators.cache.cache_page" in k for k in served["keys"]), served["keys"]
    assert any("views.decorators.cache.cache_header" in k for k in served["keys"]), served["keys"]


_TINY_EXTENSION = """
from setuptools import Extension, setup
setup(name="tiny", version="0", ext_modules=[Extension("tiny", ["tiny.c"])])
"""

_OPEN_A_CACHE = """
import sys
import metis_shm
from metis_shm import Cache
with Cache(sys.argv[1], capacity="1MiB") as cache:
    cache.set("k", b"v")
    assert cache.get("k") == b"v"
Cache.destroy(sys.argv[1])
print(metis_shm._engine.__file__)
"""


def test_repaired_wheel_installs_without_a_compiler(wheel: Path, tmp_path: Path) -> None:
    auditwheel = shutil.which("auditwheel", path=os.path.dirname(sys.executable))
    assert auditwheel, "auditwheel is in the test extras: pip install -e '.[test]'"
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    # the policy the wheel meets: the newest glibc symbol version it needs
    # (manylinux_2_34 where glibc >= 2.34 built it: docs/installation.md says why)
    shown = " ".join(_run([auditwheel, "show", str(wheel)], "auditwheel show", env=env).split())
    found = re.search(
        r'consistent with the following platform tag: "(manylinux_\d+_\d+_\w+)"', shown
    )
    assert found, shown
    policy = found.group(1)
    repaired_dir = tmp_path / "repaired"
    _run([auditwheel, "repair", "-w", str(repaired_dir), str(wheel)], "auditwheel repair", env=env)
    (repaired,) = repaired_dir.glob("*.whl")
    assert repaired.name.endswith(f"-{policy}.whl"), (repaired.name, policy)
    with zipfile.ZipFile(repaired) as archive:
        names = archive.namelist()
        (wheel_file,) = [n for n in names if n.endswith(".dist-info/WHEEL")]
        tags = archive.read(wheel_file).decode()
    assert any(n.startswith("metis_shm/_engine") and n.endswith(".so") for n in names)
    assert not any(n.startswith("metis_shm.libs/") for n in names)  # only libc: nothing grafted
    assert f"-{policy}" in tags, tags

    no_cc = {**os.environ, "CC": "/bin/false", "CXX": "/bin/false", "LDSHARED": "/bin/false"}
    no_cc.pop("PYTHONPATH", None)
    # the control: with CC=/bin/false, setuptools cannot compile even one line of C
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    (tiny / "setup.py").write_text(_TINY_EXTENSION)
    (tiny / "tiny.c").write_text("int tiny_answer(void) { return 42; }\n")
    control = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--build-temp", str(tiny / "tmp")],
        cwd=tiny, env=no_cc, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert control.returncode != 0, "CC=/bin/false did not stop a C build"

    python = _new_venv(tmp_path / "venv")
    out = _pip_install(python, repaired, env=no_cc)
    assert "Building wheel" not in out and "setup.py" not in out, out
    engine = _run(
        [str(python), "-E", "-s", "-c", _OPEN_A_CACHE, new_name()],
        "opening a Cache from the repaired wheel", cwd=tmp_path, env=no_cc,
    ).strip()  # fmt: skip
    assert Path(engine).is_relative_to(tmp_path / "venv"), engine
