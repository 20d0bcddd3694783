"""Jobs whose runs overlap (overlap=), for tests/test_overlap.py: each fires more often than
it takes to run. Each marks its start and end in the ``PROC_MARKS`` file
("start <job id> <fire time> pid=<pid>", "end ..."). ``PROC_OVERLAP`` names the one job
to declare (a test watches one policy at a time).
"""

import os
import time
from datetime import datetime

from scheduler import cron
from tests.proc.marks import mark


def busy(job_id: str, scheduled_at: datetime, seconds: float) -> None:
    mark(f"start {job_id} {scheduled_at.isoformat()} pid={os.getpid()}")
    time.sleep(seconds)
    mark(f"end {job_id} {scheduled_at.isoformat()}")


ONLY = os.environ.get("PROC_OVERLAP", "")


def declared(job_id: str, **options: object) -> object:
    """``@cron(..., id=job_id, **options)`` if the test asked for this job, else nothing."""
    if ONLY and ONLY != job_id:
        return lambda func: func
    return cron(id=job_id, **options)


@declared("overlap.skip", second="*", overlap="skip")
def overlap_skip(scheduled_at: datetime) -> None:
    busy("overlap.skip", scheduled_at, 2.5)


@declared("overlap.queue", second="*", overlap="queue")
def overlap_queue(scheduled_at: datetime) -> None:
    busy("overlap.queue", scheduled_at, 2.5)


@declared("overlap.allow", second="*", overlap="allow", max_instances=2)
def overlap_allow(scheduled_at: datetime) -> None:
    busy("overlap.allow", scheduled_at, 2.5)


@declared("overlap.replace", second="*/2", overlap="replace", isolation="process")
def overlap_replace(scheduled_at: datetime) -> None:
    """Would run for an hour; each next fire time replaces it."""
    busy("overlap.replace", scheduled_at, 3600)
