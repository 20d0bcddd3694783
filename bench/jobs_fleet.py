"""This project's jobs in the fleet scenarios (7, 7b), run on Celery workers.

BENCH_SCENARIO  fleet (equal load: each job's defaults, one run at a time) or fleet_rate
BENCH_JOBS      how many jobs, each ``@cron(second="*", executor="celery")``

The job records its first statement's ``time.time()``, the fire time it is passed
(``scheduled_at``) and when its message was published (bench/fleet_app.py).

In fleet_rate the jobs allow overlapping runs (``overlap="allow"``, ``max_instances``
RATE_MAX_INSTANCES): with the defaults (one run at a time, ``overlap="skip"``) a run still
waiting in the broker holds its job's slot, so a fleet more than a second behind would
have the next fire times skipped; there the scheduler's dispatch is measured, and the
workers may catch up after the window, as Beat's do (Beat has no such rule).
"""

from __future__ import annotations

import os
import time
from datetime import datetime

from celery import current_task

from bench.fleet_app import observe, sent_at
from scheduler import cron

# Runs of one job in flight at once in fleet_rate: more than the seconds a window lasts.
RATE_MAX_INSTANCES = 1000


def tick(index: int, scheduled_at: datetime) -> None:
    start = time.time()
    observe(index, scheduled_at.timestamp(), start, sent_at(current_task.request))


def declare() -> None:
    scenario = os.environ.get("BENCH_SCENARIO", "")
    count = int(os.environ.get("BENCH_JOBS", "0") or 0)
    options: dict = {}
    if scenario == "fleet_rate":
        options = {"overlap": "allow", "max_instances": RATE_MAX_INSTANCES}
    elif scenario != "fleet":
        return
    for i in range(count):
        cron(
            second="*",
            id=f"bench.fleet.{i:05d}",
            args=(i,),
            timezone="UTC",
            executor="celery",
            **options,
        )(tick)


declare()
