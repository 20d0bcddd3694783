"""Jobs run through Django's task framework (executor="tasks"), by django-tasks-db's
``db_worker``. Each marks its start in the ``PROC_MARKS`` file."""

import os
import time
from datetime import datetime

from scheduler import cron
from tests.proc.marks import mark

ON_REQUEST = "0 0 1 1 *"


def started(job_id: str, scheduled_at: datetime) -> None:
    mark(f"start {job_id} {scheduled_at.isoformat()} pid={os.getpid()}")


@cron(second="*", id="tasks.tick", executor="tasks")
def tick(scheduled_at: datetime) -> None:
    started("tasks.tick", scheduled_at)
    print(f"tick {scheduled_at.isoformat()}")


@cron(ON_REQUEST, id="tasks.sleeps", executor="tasks", timeout=1)
def sleeps(scheduled_at: datetime) -> None:
    """Python code past its timeout: stopped in the worker's thread."""
    started("tasks.sleeps", scheduled_at)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.01)


@cron(ON_REQUEST, id="tasks.long", executor="tasks")
def long(scheduled_at: datetime) -> None:
    started("tasks.long", scheduled_at)
    time.sleep(60)
