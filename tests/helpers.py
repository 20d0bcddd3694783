"""Helpers shared by the in-process tests of the runner, the claims, the results writer,
the sync and the job store (the ``store`` fixture is in conftest.py)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from apscheduler.job import Job as APSJob
from apscheduler.schedulers.background import BackgroundScheduler
from django_apscheduler.models import DjangoJob

import tests.jobs
from scheduler.crontab import CronTrigger
from scheduler.execution import RunExecutor
from scheduler.models import JobRun
from scheduler.registry import JobSpec
from scheduler.runner import Executor, Runner

T0 = datetime(2030, 5, 1, 12, 0, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)

# A runner on its own, as runjob makes one: no lease, each result written at once.
runner = Runner()


def row(run: JobRun) -> JobRun:
    return JobRun.objects.get(pk=run.pk)


def claimed(job_id: str = "t.job", at: datetime = T0) -> JobRun:
    run = runner.claim(job_id, "A job", at)
    assert run is not None
    return run


def spec(job_id: str, **changes) -> JobSpec:
    base = JobSpec(
        id=job_id,
        name=f"Job {job_id}",
        func=tests.jobs.hourly,
        kind="cron",
        schedule={"second": "*/10"},
        timezone="UTC",
    )
    return replace(base, **changes)


def specs_of(*items: JobSpec) -> dict[str, JobSpec]:
    return {item.id: item for item in items}


def stored_next(job_id: str) -> datetime | None:
    return DjangoJob.objects.get(id=job_id).next_run_time


def due_job(scheduler: BackgroundScheduler, job_id: str, at: datetime, **options: object) -> APSJob:
    return APSJob(
        scheduler,
        id=job_id,
        name=job_id,
        func=tests.jobs.nightly,
        args=(),
        kwargs={"scheduled_at": None},
        executor="default",
        misfire_grace_time=options.pop("misfire_grace_time", 60),
        coalesce=options.pop("coalesce", True),
        max_instances=options.pop("max_instances", 1),
        next_run_time=at,
        trigger=options.pop("trigger", CronTrigger(hour=3, timezone=UTC)),
    )


def started_executor(
    workers: int, runs: RunExecutor | None = None
) -> tuple[BackgroundScheduler, Executor]:
    """The scheduler's executor with ``workers`` threads (or ``runs``), started as the
    scheduler does."""
    scheduler = BackgroundScheduler(timezone="UTC")
    executor = Executor(workers, runs=runs)
    executor.start(scheduler, "default")
    return scheduler, executor
