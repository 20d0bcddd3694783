"""The chaos soak (scripts/chaos.py), short: 40 s per database, as CI runs it (25 s of
chaos, then the quiet end; the real soak is ``scripts/chaos.py --seconds 600``).

A real subprocess, as a person runs it: three schedulers on a throwaway
PostgreSQL cluster, two on one SQLite file, killed, frozen, cut off from the
database and restarted at random while the jobs of tests/proc/chaos_jobs.py
run, then checked against what the jobs themselves wrote. Each run draws a
new seed (printed in the report; ``--seed`` replays it). Select with ``-m chaos``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.proc.harness import ROOT
from tests.proc.pg import NOT_FOUND, find_bindir

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

SECONDS = 40
# Setup (initdb, migrate), the soak, the final stop and the checks, on a slow machine.
TIMEOUT = SECONDS + 240


@pytest.mark.parametrize(
    "database", [pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"]
)
def test_chaos_soak_loses_and_doubles_nothing(database: str) -> None:
    if database == "postgres" and find_bindir() is None:
        pytest.skip(NOT_FOUND)
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    soak = subprocess.Popen(
        [sys.executable, "scripts/chaos.py", "--db", database, "--seconds", str(SECONDS)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        # Its own process group: if all else fails, nothing it started outlives the test.
        start_new_session=True,
    )
    try:
        output, _ = soak.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        # SIGTERM first: the script then stops its schedulers and its PostgreSQL.
        soak.send_signal(signal.SIGTERM)
        try:
            output, _ = soak.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(soak.pid, signal.SIGKILL)
            output, _ = soak.communicate()
        pytest.fail(f"scripts/chaos.py still running after {TIMEOUT} s:\n{output[-30000:]}")
    print(output[-5000:])
    assert soak.returncode == 0, (
        f"scripts/chaos.py --db {database} exited with {soak.returncode}:\n{output[-30000:]}"
    )
