"""Jobs run on the Celery workers of the fleet tests (executor="celery").

Each marks its start in the ``PROC_MARKS`` file, the proof of what really ran
(``start <job id> <fire time> pid=<pid>``): the file is appended to by every
worker of the test, so a run that ran twice shows twice.
"""

import os
import time
from datetime import datetime

from celery.exceptions import SoftTimeLimitExceeded

from scheduler import cron, job
from tests.proc.marks import mark

ON_REQUEST = "0 0 1 1 *"


def started(job_id: str, scheduled_at: datetime) -> None:
    mark(f"start {job_id} {scheduled_at.isoformat()} pid={os.getpid()}")


@cron(second="*", id="fleet.tick", executor="celery")
def tick(scheduled_at: datetime) -> None:
    """Every second, on a worker."""
    started("fleet.tick", scheduled_at)
    print(f"tick {scheduled_at.isoformat()}")


@cron(second="*/2", id="fleet.work", executor="celery")
def work(scheduled_at: datetime) -> None:
    """Every two seconds, a third of a second of work."""
    started("fleet.work", scheduled_at)
    time.sleep(0.3)


@cron(ON_REQUEST, id="fleet.sleeps", executor="celery", timeout=1)
def sleeps(scheduled_at: datetime) -> None:
    """An hour asleep: Celery's soft time limit (its timeout) stops it."""
    started("fleet.sleeps", scheduled_at)
    print("going to sleep", flush=True)
    time.sleep(3600)


@cron(ON_REQUEST, id="fleet.deaf", executor="celery", timeout=1, retries=1, retry_backoff=0)
def deaf(scheduled_at: datetime) -> None:
    """Swallows the soft time limit: Celery's hard one kills its process. A timeout is
    retried; the second attempt returns at once."""
    started("fleet.deaf", scheduled_at)
    path = os.environ.get("PROC_MARKS", "")
    with open(path) as marks:
        if sum(line.startswith("start fleet.deaf ") for line in marks) > 1:
            return
    try:
        time.sleep(3600)
    except SoftTimeLimitExceeded:
        time.sleep(3600)


@cron(ON_REQUEST, id="fleet.long", executor="celery")
def long(scheduled_at: datetime) -> None:
    """A minute of work: its worker is killed meanwhile."""
    started("fleet.long", scheduled_at)
    time.sleep(60)


@cron(ON_REQUEST, id="fleet.flaky", executor="celery", retries=1, retry_backoff=0)
def flaky(scheduled_at: datetime) -> None:
    """Fails on its first attempt, succeeds on its second (each on some worker)."""
    started("fleet.flaky", scheduled_at)
    path = os.environ.get("PROC_MARKS", "")
    with open(path) as marks:
        attempts = sum(line.startswith("start fleet.flaky ") for line in marks)
    if attempts < 2:
        raise ConnectionError("the partner API blinked")


@job(id="fleet.greet", executor="celery")
def greet(name: str, times: int = 1) -> None:
    """A run scheduled from code, sent to a worker with its arguments."""
    mark(f"start fleet.greet {name}x{times} pid={os.getpid()}")
