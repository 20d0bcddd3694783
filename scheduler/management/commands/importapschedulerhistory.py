from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand
from django_apscheduler.models import DjangoJobExecution

from scheduler import db
from scheduler.models import JobRun

# django-apscheduler's statuses, mapped to ours.
STATUSES = {
    DjangoJobExecution.SUCCESS: JobRun.Status.SUCCEEDED,
    DjangoJobExecution.ERROR: JobRun.Status.FAILED,
    DjangoJobExecution.MISSED: JobRun.Status.MISSED,
    DjangoJobExecution.MAX_INSTANCES: JobRun.Status.SKIPPED,
    DjangoJobExecution.SENT: JobRun.Status.INTERRUPTED,
}


class Command(BaseCommand):
    help = (
        "Import django-apscheduler's run history (DjangoJobExecution) into scheduler's "
        "JobRun table. Safe to run twice: runs already imported are left alone."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--batch-size", type=int, default=2000)

    def handle(self, *args: Any, batch_size: int, **options: Any) -> None:
        alias = db.alias()
        executions = DjangoJobExecution.objects.using(alias).order_by("id")
        imported = seen = 0
        batch: list[JobRun] = []
        for execution in executions.iterator(chunk_size=batch_size):
            seen += 1
            batch.append(self.convert(execution))
            if len(batch) >= batch_size:
                imported += self.save(batch, alias)
                batch = []
        imported += self.save(batch, alias)
        self.stdout.write(
            f"Imported {imported} of {seen} django-apscheduler executions "
            f"({seen - imported} were already imported)."
        )

    @staticmethod
    def convert(execution: DjangoJobExecution) -> JobRun:
        status = STATUSES.get(execution.status, JobRun.Status.INTERRUPTED)
        started = finished = duration = None
        if execution.finished is not None:
            # django-apscheduler measures from the scheduled time, not the real start.
            finished = execution.run_time + timedelta(seconds=float(execution.duration or 0))
            duration = float(execution.duration) if execution.duration is not None else None
            started = execution.run_time
        exception = execution.exception or ""
        if execution.status == DjangoJobExecution.SENT:
            exception = "Interrupted: imported from django-apscheduler without a result."
        return JobRun(
            job_id=execution.job_id,
            job_name=execution.job_id,
            status=status,
            trigger=JobRun.Trigger.SCHEDULE,
            scheduled_at=execution.run_time,
            started_at=started,
            finished_at=finished,
            duration=duration,
            hostname="(imported from django-apscheduler)",
            exception=exception,
            traceback=execution.traceback or "",
        )

    @staticmethod
    def save(batch: list[JobRun], alias: str) -> int:
        if not batch:
            return 0
        before = JobRun.objects.using(alias).count()
        JobRun.objects.using(alias).bulk_create(batch, ignore_conflicts=True)
        return JobRun.objects.using(alias).count() - before
