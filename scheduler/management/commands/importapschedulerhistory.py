from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db import connections
from django_apscheduler.models import DjangoJobExecution

from scheduler import conf
from scheduler.management.base import SchedulerCommand
from scheduler.models import JobRun

# django-apscheduler's statuses, mapped to ours.
STATUSES = {
    DjangoJobExecution.SUCCESS: JobRun.Status.SUCCEEDED,
    DjangoJobExecution.ERROR: JobRun.Status.FAILED,
    DjangoJobExecution.MISSED: JobRun.Status.MISSED,
    DjangoJobExecution.MAX_INSTANCES: JobRun.Status.SKIPPED,
    DjangoJobExecution.SENT: JobRun.Status.INTERRUPTED,
}
UNKNOWN_STATUS = (
    "Imported from django-apscheduler with status {status!r}, which scheduler has no "
    "equivalent for."
)


class Command(SchedulerCommand):
    help = (
        "Import django-apscheduler's run history (DjangoJobExecution) into scheduler's "
        "JobRun table. Safe to run twice: runs already imported are left alone."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--batch-size",
            type=int,
            default=2000,
            help="executions read and written per statement (default 2000)",
        )

    def handle(self, *args: Any, batch_size: int, **options: Any) -> None:
        if batch_size < 1:
            # Checked here rather than by argparse: one line, not a usage screen.
            raise CommandError(f"--batch-size must be a positive number of rows, not {batch_size}.")
        alias = conf.database()
        self.check_tables(alias)
        executions = DjangoJobExecution.objects.using(alias).order_by("id")
        imported = seen = 0
        unknown: Counter[str] = Counter()
        batch: list[JobRun] = []
        for execution in executions.iterator(chunk_size=batch_size):
            seen += 1
            if execution.status not in STATUSES:
                unknown[execution.status] += 1
            batch.append(self.convert(execution))
            if len(batch) >= batch_size:
                imported += self.save(batch, alias)
                batch = []
        imported += self.save(batch, alias)
        self.stdout.write(
            f"Imported {imported} of {seen} django-apscheduler executions "
            f"({seen - imported} were already imported)."
        )
        if unknown:
            statuses = ", ".join(f"{status!r} ({count})" for status, count in unknown.most_common())
            self.stdout.write(
                f"{unknown.total()} had a status scheduler has no equivalent for: {statuses}. "
                "They are recorded as interrupted, with the original status in their exception."
            )

    @staticmethod
    def check_tables(alias: str) -> None:
        """Fail in one line naming the missing table, rather than with a database traceback."""
        tables = set(connections[alias].introspection.table_names())
        source = DjangoJobExecution._meta.db_table
        database = "" if alias == "default" else f" --database {alias}"
        if source not in tables:
            raise CommandError(
                f"The database {alias!r} has no table {source} (django-apscheduler's run "
                "history): if that history is in this database, run django_apscheduler's "
                f"migrations first (python manage.py migrate django_apscheduler{database}); "
                "if it never had any, there is nothing to import."
            )
        target = JobRun._meta.db_table
        if target not in tables:
            raise CommandError(
                f"The database {alias!r} has no table {target} (scheduler's run history): "
                f"run python manage.py migrate scheduler{database} first."
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
        elif execution.status not in STATUSES:
            # Keep what django-apscheduler said, so that nothing is lost in the mapping.
            note = UNKNOWN_STATUS.format(status=execution.status)
            exception = f"{note}\n{exception}" if exception else note
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
