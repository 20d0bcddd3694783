"""Bring the job store in line with the code registry at start-up.

New jobs are added, changed ones replaced, vanished ones removed; a job whose
declaration did not change keeps its stored next run time, so a restart
neither skips nor repeats a run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from apscheduler.job import Job as APSJob
from apscheduler.schedulers.base import BaseScheduler
from django.db import transaction
from django.utils import timezone as dj_timezone

from scheduler import bulk, conf, db
from scheduler.jobstore import JobStore, build_job
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


def first_job(
    scheduler: BaseScheduler,
    spec: JobSpec,
    now: datetime,
    paused: bool,
    first_fire_times: dict[int, datetime | None] | None = None,
) -> APSJob:
    """A declaration's job as first stored: due at its first fire time after ``now``."""
    trigger = spec.make_trigger()
    if paused:
        next_run_time = None
    elif first_fire_times is not None and not spec.jitter:
        # Jobs with the same schedule share one trigger, and so their first fire time.
        key = id(trigger)
        if key not in first_fire_times:
            first_fire_times[key] = trigger.get_next_fire_time(None, now)
        next_run_time = first_fire_times[key]
    else:
        next_run_time = trigger.get_next_fire_time(None, now)
    return build_job(scheduler, spec, next_run_time)


def display_schedule(spec: JobSpec) -> str:
    """The schedule as display text, cut to fit its column (a long crontab list can be longer)."""
    text = spec.schedule_text
    limit = cast(int, Job._meta.get_field("schedule").max_length)  # a CharField's: never None
    return text if len(text) <= limit else text[: limit - 1] + "…"


def catalog_values(spec: JobSpec, fingerprint: str) -> dict[str, Any]:
    """The catalog row of a job, but for ``paused`` (set in the admin) and ``synced_at``."""
    return {
        "name": spec.name,
        "func": spec.func_ref,
        "kind": spec.kind,
        "schedule": display_schedule(spec),
        "schedule_fields": spec.schedule,
        "timezone": spec.timezone,
        "options": spec.options,
        "enabled": spec.enabled,
        "fingerprint": fingerprint,
    }


_CATALOG_FIELDS = [
    "name",
    "func",
    "kind",
    "schedule",
    "schedule_fields",
    "timezone",
    "options",
    "enabled",
    "fingerprint",
]


def sync(scheduler: BaseScheduler, store: JobStore, specs: dict[str, JobSpec]) -> SyncReport:
    report = SyncReport()
    # The store rebuilds its jobs from these declarations, never from what it reads.
    store.specs = specs
    jobs = Job.objects

    def read_catalog() -> tuple[dict[str, Mapping[str, Any]], set[str]]:
        # The fingerprint covers every other catalog field, but for the schedule's fields
        # on rows written before they were kept (migration 0005 left them empty).
        rows = jobs.values("id", "paused", "name", "enabled", "fingerprint")
        unstructured = jobs.filter(schedule_fields={}).values_list("id", flat=True)
        return {row["id"]: row for row in rows}, set(unstructured)

    catalog, unstructured = db.retrying(read_catalog, "read the job catalog")
    stored = store.stored_ids()
    now = datetime.now(UTC)
    synced_at = dj_timezone.now()
    first_fire_times: dict[int, datetime | None] = {}

    to_store: list[APSJob] = []
    to_catalog: list[Job] = []
    for spec in specs.values():
        row = catalog.get(spec.id)
        paused = row["paused"] if row else False
        fingerprint = spec.fingerprint
        catalog_changed = (
            row is None
            or (row["fingerprint"], row["name"], row["enabled"])
            != (fingerprint, spec.name, spec.enabled)
            or spec.id in unstructured
        )
        store_stale = spec.enabled and (
            row is None or row["fingerprint"] != fingerprint or spec.id not in stored
        )
        if catalog_changed:
            values = catalog_values(spec, fingerprint)
            to_catalog.append(Job(id=spec.id, paused=paused, synced_at=synced_at, **values))
        if store_stale:
            to_store.append(first_job(scheduler, spec, now, paused, first_fire_times))
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
        with transaction.atomic(using=conf.database()):
            bulk.upsert(Job, to_catalog, [*_CATALOG_FIELDS, "synced_at"])
            if gone_from_code:
                jobs.filter(id__in=gone_from_code).delete()

    db.retrying(write, "update the job catalog")
    store.remove_jobs(gone_from_store)
    store.put_jobs(to_store)
    return report
