#!/bin/sh
# Fetches the third-party test suites that tests/contrib/ runs against Metis's
# backends, without copying them into this repository:
#
#   Django's cache tests (tests/cache/ of the sdist of the INSTALLED Django,
#   from PyPI) -> tests/.suites/django-<version>/tests/cache/
#
# Used by tests/contrib/test_django_suite.py. Usage:
#
#   sh tests/fetch-suites.sh .venv/bin/python
#
# The python given is the one whose installed Django is matched. Idempotent:
# nothing is downloaded when the suite for that version is already there.
# tests/.suites/ is in .gitignore.
set -eu

if [ $# -ne 1 ]; then
    echo "usage: sh tests/fetch-suites.sh PYTHON   (e.g. sh tests/fetch-suites.sh .venv/bin/python)" >&2
    exit 2
fi
py=$1
here=$(cd "$(dirname "$0")" && pwd)
suites="$here/.suites"

version=$("$py" -c 'import importlib.metadata as m; print(m.version("django"))') || {
    echo "fetch-suites: Django is not installed for $py (install the test extras first)" >&2
    exit 1
}
target="$suites/django-$version"
if [ -f "$target/.complete" ]; then
    exit 0
fi

mkdir -p "$suites"
work=$(mktemp -d "$suites/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM

echo "fetch-suites: downloading the sdist of Django $version (Django's cache tests)" >&2
"$py" -m pip download --quiet --no-binary :all: --no-deps "django==$version" -d "$work/dl"

# Extract only tests/cache/ (the cache tests and the models, backends and
# modules they import, all inside that directory) and Django's LICENSE.
"$py" - "$work/dl" "$work/out" <<'EOF'
import pathlib
import sys
import tarfile

dl, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
sdists = sorted(dl.glob("*.tar.gz"))
if len(sdists) != 1:
    sys.exit(f"fetch-suites: expected one Django sdist in {dl}, found {sdists}")
with tarfile.open(sdists[0]) as tar:
    wanted = []
    for member in tar.getmembers():
        parts = pathlib.PurePosixPath(member.name).parts
        if len(parts) >= 4 and parts[1:3] == ("tests", "cache") and member.isfile():
            wanted.append(member)
        elif parts[1:] == ("LICENSE",) and member.isfile():
            wanted.append(member)
    if not any(m.name.endswith("/tests/cache/tests.py") for m in wanted):
        sys.exit(f"fetch-suites: {sdists[0].name} has no tests/cache/tests.py")
    for member in wanted:
        member.name = "/".join(pathlib.PurePosixPath(member.name).parts[1:])
    extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    tar.extractall(out, members=wanted, **extra)
print(f"fetch-suites: extracted {len(wanted)} files of {sdists[0].name}", file=sys.stderr)
EOF

echo "$version" >"$work/out/.complete"
# Into place in one rename; a run that finished meanwhile wins (same content).
[ -f "$target/.complete" ] || rm -rf "$target"
"$py" -c 'import os, sys
try:
    os.rename(sys.argv[1], sys.argv[2])
except OSError:
    if not os.path.isfile(os.path.join(sys.argv[2], ".complete")):
        raise' "$work/out" "$target"
echo "fetch-suites: Django $version cache tests in tests/.suites/django-$version" >&2
