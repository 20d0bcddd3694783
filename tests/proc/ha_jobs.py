"""Jobs of the high-availability tests (tests/test_ha.py).

Three every-second jobs and a slow job due every 5 seconds. Each call appends
"job_id fire_time pid" to the file named by ``PROC_MARKS``: the proof of how
many times, and where, each fire time really ran.
"""

import os
import time
from datetime import datetime

from scheduler import cron
from tests.proc.marks import mark

FAST = ("ha.a", "ha.b", "ha.c")
SLOW = "ha.slow"


def _mark(job_id: str, scheduled_at: datetime) -> None:
    mark(f"{job_id} {scheduled_at.isoformat()} {os.getpid()}")


@cron(second="*", id="ha.a")
def job_a(scheduled_at: datetime) -> None:
    """Every second: A."""
    _mark("ha.a", scheduled_at)


@cron(second="*", id="ha.b")
def job_b(scheduled_at: datetime) -> None:
    """Every second: B."""
    _mark("ha.b", scheduled_at)


@cron(second="*", id="ha.c")
def job_c(scheduled_at: datetime) -> None:
    """Every second: C."""
    _mark("ha.c", scheduled_at)


@cron(second="*/5", id="ha.slow", max_instances=1)
def slow(scheduled_at: datetime) -> None:
    """Every 5 seconds, runs for ``PROC_SLOW_SECONDS`` (default 3)."""
    mark(f"ha.slow-start {scheduled_at.isoformat()} {os.getpid()}")
    time.sleep(float(os.environ.get("PROC_SLOW_SECONDS", "3")))
    _mark("ha.slow", scheduled_at)
