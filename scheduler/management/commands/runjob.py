from __future__ import annotations

import getpass
import os
import sys
from typing import Any

from django.core.management.base import BaseCommand
from django.utils import timezone

from scheduler import db, runner
from scheduler.models import JobRun
from scheduler.registry import autodiscover


class Command(BaseCommand):
    help = (
        "Run one registered job now, in the foreground, and record it as a manual run. "
        "Exits 0 on success, 1 when the job failed, 2 when the id is unknown."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "job_id", help="The id of a registered job (see runapscheduler --list)."
        )

    def handle(self, *args: Any, job_id: str, **options: Any) -> None:
        specs = autodiscover()
        if job_id not in specs:
            known = ", ".join(sorted(specs)) or "none"
            self.stderr.write(f"Unknown job id {job_id!r}. Registered jobs: {known}.")
            sys.exit(2)
        spec = specs[job_id]
        now = timezone.now()
        run = JobRun(
            job_id=job_id,
            job_name=spec.name,
            status=JobRun.Status.RUNNING,
            trigger=JobRun.Trigger.MANUAL,
            scheduled_at=now,
            started_at=now,
            hostname=runner.HOSTNAME,
            pid=os.getpid(),
            requested_by=f"runjob ({_user()})",
        )
        run.save(using=db.alias(), force_insert=True)
        runner.execute(run, runner.make_call(spec, None, now))
        if run.status == JobRun.Status.SUCCEEDED:
            self.stdout.write(f"Job {job_id!r} succeeded in {run.duration:.3f} s (run #{run.pk}).")
            return
        self.stderr.write(f"Job {job_id!r} failed after {run.duration:.3f} s (run #{run.pk}):")
        self.stderr.write(run.traceback or run.exception)
        sys.exit(1)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown user"
