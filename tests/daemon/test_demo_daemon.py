"""README command 1: ``python -m metis_shm.demo`` runs metisd and
workers sharing its cache, prints live stats, and cleans up after itself."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

from _metisd import ROOT, python_env


def test_demo_daemon_runs_and_cleans_up() -> None:
    before = set(glob.glob("/dev/shm/metis.demo-daemon-*"))
    proc = subprocess.run(
        [sys.executable, "-m", "metis_shm.demo", "--workers", "4", "--seconds", "1"],
        env=python_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "metisd | " in out and "ready (pid" in out
    assert len(re.findall(r"worker \d \(pid \d+\) attached", out)) == 4
    assert "live numbers from metisd's /stats:" in out
    assert re.search(r"t= *\d+\.\d+s +items=", out)
    assert "snapshot" in out and "metisd exited with 0" in out
    assert out.rstrip().splitlines()[-2] == "OK"
    directory = re.search(r"removed cache '[^']+' and (\S+)", out)
    assert directory and not os.path.exists(directory.group(1))
    assert set(glob.glob("/dev/shm/metis.demo-daemon-*")) == before
