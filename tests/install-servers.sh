#!/bin/sh
# Installs the servers the test suite starts for real: redis-server and
# memcached (the peer benchmark's smoke tests and the memory comparison run
# them on loopback). Debian's packages; nothing happens when both are present.
set -eu

missing=""
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
command -v memcached >/dev/null 2>&1 || missing="$missing memcached"
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
    run=""
elif command -v sudo >/dev/null 2>&1; then
    run="sudo"
else
    echo "tests need:$missing; install them (apt-get install$missing) or run as root" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "tests need:$missing; this script knows apt-get only: install them by hand" >&2
    exit 1
fi

echo "installing$missing (Debian packages) for the tests" >&2
export DEBIAN_FRONTEND=noninteractive
# A fresh machine may have empty package lists: update once, only if needed.
# shellcheck disable=SC2086
$run apt-get install -y -q --no-install-recommends $missing >/dev/null 2>&1 || {
    $run apt-get update -q >/dev/null
    $run apt-get install -y -q --no-install-recommends $missing >/dev/null
}
