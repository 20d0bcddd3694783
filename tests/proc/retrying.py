"""Jobs that fail and are tried again (retries=), for tests/test_retries.py.

Each marks its start in the ``PROC_MARKS`` file ("start <job id> <fire time>"); the
jobs that fail a set number of times count their own earlier starts there, so that
the count survives a restart of the scheduler.
"""

import os
import time
from datetime import datetime

from scheduler import Backoff, cron
from tests.proc.marks import mark

ON_REQUEST = "0 0 1 1 *"
NO_JITTER = Backoff(base=1, cap=10, jitter=False)


def starts(job_id: str) -> int:
    """How many times ``job_id`` started so far (this start included)."""
    path = os.environ.get("PROC_MARKS", "")
    try:
        with open(path) as marks:
            return sum(line.startswith(f"start {job_id} ") for line in marks)
    except FileNotFoundError:
        return 0


@cron(ON_REQUEST, id="retry.flaky", retries=3, retry_backoff=NO_JITTER)
def flaky(scheduled_at: datetime) -> None:
    """Fails twice, then succeeds: three rows, attempts 1-3, 1 s then 2 s apart."""
    mark(f"start retry.flaky {scheduled_at.isoformat()}")
    attempt = starts("retry.flaky")
    print(f"attempt {attempt}")
    if attempt < 3:
        raise ConnectionError(f"the partner API blinked ({attempt})")


@cron(ON_REQUEST, id="retry.always", retries=2, retry_backoff=Backoff(base=0.2, jitter=False))
def always(scheduled_at: datetime) -> None:
    """Fails every time: three attempts, then it is left failed."""
    mark(f"start retry.always {scheduled_at.isoformat()}")
    raise RuntimeError("still broken")


@cron(ON_REQUEST, id="retry.picky", retries=3, retry_on=ConnectionError, retry_backoff=0)
def picky(scheduled_at: datetime) -> None:
    """Retried on ConnectionError only; fails with ValueError: one row."""
    mark(f"start retry.picky {scheduled_at.isoformat()}")
    raise ValueError("a bug, not a blink")


@cron(ON_REQUEST, id="retry.slow", retries=1, retry_backoff=Backoff(base=4, jitter=False))
def slow(scheduled_at: datetime) -> None:
    """Fails once, then succeeds; its retry waits 4 s (time to kill a scheduler)."""
    mark(f"start retry.slow {scheduled_at.isoformat()}")
    if starts("retry.slow") < 2:
        raise ConnectionError("first attempt fails")


@cron(ON_REQUEST, id="retry.hangs_once", timeout=0.5, retries=1, retry_backoff=0)
def hangs_once(scheduled_at: datetime) -> None:
    """Runs past its timeout (in a thread) once, then finishes: a timeout is retried."""
    mark(f"start retry.hangs_once {scheduled_at.isoformat()}")
    if starts("retry.hangs_once") < 2:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(0.01)
