"""Prepares the browser tests' database; run by ``manage.py shell -c``, never by pytest.

Migrates, creates the admin login and writes a day of run history, so that the
dashboard, the job pages and their screenshots show what a real day looks like.
The runs the tests themselves start are real: ``runapscheduler`` runs them.
"""

import os
import random
import socket
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.utils import timezone

from scheduler.models import JobRun
from tests.browser.jobs import XSS

TRACEBACK = f"""Traceback (most recent call last):
  File "/srv/app/scheduler/runner.py", line 131, in execute
    call()
  File "/srv/app/scheduler/runner.py", line 187, in <lambda>
    return lambda: func(*args, **kwargs)
                   ^^^^^^^^^^^^^^^^^^^^^
  File "/srv/app/tests/browser/jobs.py", line 36, in fail
    raise RuntimeError(f"the shop API answered {{XSS}}")
RuntimeError: the shop API answered {XSS}
"""
QUICK, SLOW, FAIL = (
    ("browser.quick", "Refresh the exchange-rate cache"),
    ("browser.slow", "Rebuild the search index"),
    ("browser.fail", "Sync orders from the shop API"),
)


def run() -> None:
    call_command("migrate", verbosity=0, interactive=False)
    get_user_model().objects.create_superuser(
        os.environ["BROWSER_USERNAME"], "admin@example.com", os.environ["BROWSER_PASSWORD"]
    )
    JobRun.objects.bulk_create(history())


def history() -> list[JobRun]:
    """The last 24 hours of the jobs in tests/browser/jobs.py, on their schedules."""
    rng = random.Random(7)
    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    host = socket.gethostname()
    runs = []

    def add(job, at, status, seconds=0.0, **text):
        final = status in (JobRun.Status.SUCCEEDED, JobRun.Status.FAILED)
        started = at + timedelta(seconds=rng.uniform(0.005, 0.05))
        runs.append(
            JobRun(
                job_id=job[0],
                job_name=job[1],
                status=status,
                trigger=JobRun.Trigger.SCHEDULE,
                scheduled_at=at,
                started_at=started if final else None,
                finished_at=started + timedelta(seconds=seconds) if final else None,
                duration=seconds if final else None,
                hostname=host if final else "",
                pid=4242 if final else None,
                **text,
            )
        )

    # Every 30 minutes; one fire time missed while the scheduler was down.
    for step in range(47):
        at = hour - timedelta(minutes=30 * step)
        if step == 19:
            add(QUICK, at, JobRun.Status.MISSED)
        else:
            seconds = rng.uniform(0.12, 0.6) * (3 if step in (6, 30) else 1)
            add(QUICK, at, JobRun.Status.SUCCEEDED, seconds, output="refreshed 12 rates\n")
    # Every 4 hours; one run skipped because the one before was still running.
    for step in range(6):
        at = hour.replace(hour=hour.hour - hour.hour % 4) - timedelta(hours=4 * step)
        if step == 2:
            add(SLOW, at, JobRun.Status.SKIPPED)
        else:
            add(SLOW, at, JobRun.Status.SUCCEEDED, rng.uniform(1.8, 2.6))
    # Hourly, failing for the last three hours.
    for step in range(12):
        at = hour - timedelta(hours=step)
        if step < 3:
            add(
                FAIL,
                at,
                JobRun.Status.FAILED,
                rng.uniform(0.3, 0.5),
                exception=f"RuntimeError: the shop API answered {XSS}",
                traceback=TRACEBACK,
                output="calling the shop API\n",
            )
        else:
            add(
                FAIL,
                at,
                JobRun.Status.SUCCEEDED,
                rng.uniform(0.4, 0.9),
                output="calling the shop API\nsynced 17 orders\n",
            )
    return runs
