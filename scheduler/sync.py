"""Bring the job store in line with the code registry at start-up.

New jobs are added, changed ones replaced, vanished ones removed; a job whose
declaration did not change keeps its stored next run time, so a restart
neither skips nor repeats a run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from apscheduler.job import Job as APSJob
from apscheduler.schedulers.base import BaseScheduler
from django.db import transaction
from django.utils import timezone as dj_timezone

from scheduler import db
from scheduler.jobstore import JobStore
from scheduler.models import Job
from scheduler.registry import JobSpec

logger = logging.getLogger(__name__)


@dataclass
class SyncReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0

    def __str__(self) -> str:
        return (
            f"{len(self.added)} added, {len(self.updated)} updated, "
            f"{len(self.removed)} removed, {self.unchanged} unchanged"
        )


def build_job(scheduler: BaseScheduler, spec: JobSpec, now: datetime, paused: bool) -> APSJob:
    trigger = spec.make_trigger()
    return APSJob(
        scheduler,
        id=spec.id,
        name=spec.name,
        func=spec.func,
        args=spec.args,
        kwargs=spec.call_kwargs(None),
        trigger=trigger,
        executor="default",
        misfire_grace_time=spec.effective_grace_time,
        coalesce=spec.coalesce,
        max_instances=spec.max_instances,
        next_run_time=None if paused else trigger.get_next_fire_time(None, now),
    )


def catalog_row(spec: JobSpec, paused: bool) -> Job:
    return Job(
        id=spec.id,
        name=spec.name,
        func=spec.func_ref,
        kind=spec.kind,
        schedule=spec.schedule_text,
        timezone=spec.timezone,
        options={
            "jitter": spec.jitter,
            "start_date": spec.start_date.isoformat() if spec.start_date else None,
            "end_date": spec.end_date.isoformat() if spec.end_date else None,
            "max_instances": spec.max_instances,
            "coalesce": spec.coalesce,
            "misfire_grace_time": spec.effective_grace_time,
            "args": list(spec.args),
            "kwargs": spec.kwargs,
        },
        enabled=spec.enabled,
        paused=paused,
        fingerprint=spec.fingerprint,
        synced_at=dj_timezone.now(),
    )


_CATALOG_FIELDS = [
    "name",
    "func",
    "kind",
    "schedule",
    "timezone",
    "options",
    "enabled",
    "fingerprint",
]


def sync(scheduler: BaseScheduler, store: JobStore, specs: dict[str, JobSpec]) -> SyncReport:
    report = SyncReport()
    jobs = Job.objects.using(db.alias())
    catalog = {row.id: row for row in db.retrying(lambda: list(jobs.all()), "read the job catalog")}
    stored = store.stored_ids()
    now = datetime.now(UTC)

    to_store: list[APSJob] = []
    to_catalog: list[Job] = []
    for spec in specs.values():
        row = catalog.get(spec.id)
        paused = row.paused if row else False
        new_row = catalog_row(spec, paused)
        catalog_changed = row is None or any(
            getattr(row, name) != getattr(new_row, name) for name in _CATALOG_FIELDS
        )
        store_stale = spec.enabled and (
            row is None or row.fingerprint != spec.fingerprint or spec.id not in stored
        )
        if catalog_changed:
            to_catalog.append(new_row)
        if store_stale:
            to_store.append(build_job(scheduler, spec, now, paused))
        if row is None:
            report.added.append(spec.id)
        elif catalog_changed or store_stale:
            report.updated.append(spec.id)
        else:
            report.unchanged += 1

    wanted = {spec.id for spec in specs.values() if spec.enabled}
    gone_from_store = stored - wanted
    gone_from_code = set(catalog) - set(specs)
    for job_id in sorted((gone_from_store | gone_from_code) - set(specs)):
        logger.warning("Job %r is no longer in code; removed it (its run history is kept).", job_id)
        report.removed.append(job_id)

    def write() -> None:
        with transaction.atomic(using=db.alias()):
            if to_catalog:
                jobs.bulk_create(
                    to_catalog,
                    batch_size=500,
                    update_conflicts=True,
                    unique_fields=["id"],
                    update_fields=[*_CATALOG_FIELDS, "synced_at"],
                )
            if gone_from_code:
                jobs.filter(id__in=gone_from_code).delete()

    db.retrying(write, "update the job catalog")
    store.remove_jobs(gone_from_store)
    store.put_jobs(to_store)
    return report
