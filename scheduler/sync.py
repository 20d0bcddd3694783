"""Bring the job store in line with the code registry at start-up.

New jobs are added, changed ones replaced, vanished ones removed; a job whose
declaration did not change keeps its stored next run time, so a restart
neither skips nor repeats a run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from apscheduler.job import Job as APSJob
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.base import BaseTrigger
from django.db import DatabaseError, connections, transaction
from django.utils import timezone as dj_timezone
from django_apscheduler.models import DjangoJob

from scheduler import bulk, conf, db
from scheduler.jobstore import JobStore, build_job
from scheduler.models import Job
from scheduler.registry import JobSpec, gc_paused

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


def first_run_time(
    spec: JobSpec,
    now: datetime,
    paused: bool,
    first_fire_times: dict[int, tuple[BaseTrigger, datetime | None]] | None = None,
) -> datetime | None:
    """A declaration's first next run time after ``now`` (None: paused)."""
    if paused:
        return None
    trigger = spec.make_trigger()
    if first_fire_times is not None and not spec.jitter:
        # Jobs with the same schedule share one trigger, and so their first fire time.
        # (The trigger is kept with it: a trigger that was let go may leave its id to
        # another. Cron triggers also remember their own last answer.)
        known = first_fire_times.get(id(trigger))
        if known is not None and known[0] is trigger:
            next_run_time = known[1]
        else:
            next_run_time = trigger.get_next_fire_time(None, now)
            if len(first_fire_times) >= _FIRE_TIMES_KEPT:
                first_fire_times.clear()
            first_fire_times[id(trigger)] = (trigger, next_run_time)
    else:
        next_run_time = trigger.get_next_fire_time(None, now)
    return next_run_time


# First fire times remembered by ``first_run_time`` at most: enough for the schedules
# that jobs share, without keeping a trigger per job of 100,000 with schedules of their own.
_FIRE_TIMES_KEPT = 4096


def first_job(
    scheduler: BaseScheduler,
    spec: JobSpec,
    now: datetime,
    paused: bool,
    first_fire_times: dict[int, tuple[BaseTrigger, datetime | None]] | None = None,
) -> APSJob:
    """A declaration's job as first stored: due at its first fire time after ``now``."""
    return build_job(scheduler, spec, first_run_time(spec, now, paused, first_fire_times))


def display_schedule(spec: JobSpec) -> str:
    """The schedule as display text, cut to fit its column (a long crontab list can be longer)."""
    text = spec.schedule_text
    limit = _SCHEDULE_LENGTH
    return text if len(text) <= limit else text[: limit - 1] + "…"


_SCHEDULE_LENGTH = int(getattr(Job._meta.get_field("schedule"), "max_length", None) or 255)


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
        "run_options": spec.run_options,
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
    "run_options",
    "enabled",
    "fingerprint",
]
# The columns a sync writes, in this order (``catalog_row``); a row already there keeps
# its ``paused`` and ``pending_change`` (set in the admin).
_CATALOG_COLUMNS = ["id", *_CATALOG_FIELDS, "paused", "pending_change", "synced_at"]
# Catalog rows built and written at a time: a first start of 100,000 jobs does not hold
# the rows of all (their options, their JSON) at once; the peak memory of that start
# was mostly such rows.
_CATALOG_BATCH = 2000
# Ids in one DELETE: SQLite takes at most 32,766 parameters in a statement.
_DELETE_BATCH = 500


def catalog_row(
    spec: JobSpec, fingerprint: str, paused: bool, synced_at: datetime
) -> tuple[Any, ...]:
    """The values of ``_CATALOG_COLUMNS`` for a job: ``catalog_values`` without a dict or
    a model instance (7 µs a job), its JSON fields as the text Django writes for them
    (``json.dumps``; through Django's field layers, 3 µs more a job)."""
    return (
        spec.id,
        spec.name,
        spec.func_ref,
        spec.kind,
        display_schedule(spec),
        json.dumps(spec.schedule),
        spec.timezone,
        _options_json(spec),
        _run_options_json(spec),
        spec.enabled,
        fingerprint,
        paused,
        False,
        synced_at,
    )


def _options_json(spec: JobSpec) -> str:
    """json.dumps(spec.options); the same text for jobs alike in their options (exact
    types: 1 == True) is made once (2.5 µs a job)."""
    jitter, grace = spec.jitter, spec.effective_grace_time
    if (
        spec.args
        or type(spec.kwargs) is not dict
        or spec.kwargs
        or spec.start_date is not None
        or spec.end_date is not None
        or type(spec.coalesce) is not bool
        or type(spec.max_instances) is not int
        or (jitter is not None and type(jitter) is not int)
        or (grace is not None and type(grace) is not int)
    ):
        return json.dumps(spec.options)
    key = (jitter, spec.max_instances, spec.coalesce, grace)
    text = _options_texts.get(key)
    if text is None:
        text = json.dumps(spec.options)
        if len(_options_texts) >= 1024:
            _options_texts.clear()
        _options_texts[key] = text
    return text


_options_texts: dict[tuple[Any, ...], str] = {}


def _run_options_json(spec: JobSpec) -> str:
    """json.dumps(spec.run_options, sort_keys=True): "{}" for most jobs, made at once."""
    run_options = spec.run_options
    return json.dumps(run_options, sort_keys=True) if run_options else "{}"


def _same_run_options(stored: Any, spec: JobSpec) -> bool:
    """Whether the catalog's ``run_options`` (text on SQLite, decoded on PostgreSQL) are
    the job's."""
    if isinstance(stored, str):
        if stored == "{}":
            return not spec.run_options
        try:
            stored = json.loads(stored)
        except ValueError:
            return False
    # run_options is JSON-ready: equal to what the column holds once decoded.
    return bool(stored == spec.run_options)


# Catalog columns ``catalog_row`` gives as the database takes them.
_CATALOG_RAW = ("schedule_fields", "options", "run_options")


_READ_COLUMNS = ("id", "paused", "name", "enabled", "fingerprint", "run_options")


def _catalog_rows() -> list[tuple[str, bool, str, bool, str, Any]]:
    """``Job.objects.values_list(*_READ_COLUMNS)``: on SQLite and PostgreSQL one plain
    query, whose drivers return these columns as the ORM would (SQLite's converts
    "bool" columns, as Django registers); the ORM's converters were 0.2 s of each start
    of 100,000 jobs."""
    connection = connections[conf.database()]
    if connection.vendor not in ("sqlite", "postgresql"):
        return list(Job.objects.values_list(*_READ_COLUMNS))
    meta = Job._meta
    qn = connection.ops.quote_name
    columns = ", ".join(qn(bulk.column_of(meta.get_field(name))) for name in _READ_COLUMNS)
    with db.cursor() as c:
        c.execute(f"SELECT {columns} FROM {qn(meta.db_table)}")
        rows: list[tuple[str, bool, str, bool, str, Any]] = c.fetchall()
    return rows


def sync(scheduler: BaseScheduler, store: JobStore, specs: dict[str, JobSpec]) -> SyncReport:
    """Bring the store and the catalog in line with ``specs`` (see ``_sync``), with the
    cyclic garbage collector paused (``registry.gc_paused``: 0.6 s of the first sync
    of 100,000 jobs)."""
    with gc_paused():
        return _sync(scheduler, store, specs)


def _sync(scheduler: BaseScheduler, store: JobStore, specs: dict[str, JobSpec]) -> SyncReport:
    """Bring the store and the catalog in line with ``specs``.

    Each table is read once (the catalog: five columns; the store: its ids), and nothing
    is built per job but what is written: catalog rows and (id, next run time) pairs,
    no model instances and no APScheduler jobs (the store builds those when they fall
    due). At 100,000 jobs each of those had cost a second or more of a first start.
    """
    report = SyncReport()
    # The store rebuilds its jobs from these declarations, never from what it reads.
    store.specs = specs
    jobs = Job.objects

    def read_catalog() -> tuple[dict[str, tuple[str, bool, str, bool, str, Any]], set[str]]:
        # The fingerprint covers every other catalog field, but for the schedule's fields
        # on rows written before they were kept (migration 0005 left them empty).
        rows = _catalog_rows()
        unstructured = jobs.filter(schedule_fields={}).values_list("id", flat=True)
        return {row[0]: row for row in rows}, set(unstructured)

    catalog, unstructured = db.retrying(read_catalog, "read the job catalog")
    stored = store.stored_ids()
    now = datetime.now(UTC)
    synced_at = dj_timezone.now()
    first_fire_times: dict[int, tuple[BaseTrigger, datetime | None]] = {}

    to_store: list[tuple[str, datetime | None]] = []
    to_catalog: list[tuple[JobSpec, str, bool]] = []
    unchanged = 0
    for spec in specs.values():
        job_id = spec.id
        row = catalog.get(job_id)
        paused = row[1] if row else False
        fingerprint = spec.fingerprint
        catalog_changed = (
            row is None
            or row[4] != fingerprint
            or row[2] != spec.name
            or row[3] != spec.enabled
            or job_id in unstructured
            or not _same_run_options(row[5], spec)
        )
        # A job without a schedule (@job) has no place in the store: nothing fires it.
        store_stale = (
            spec.enabled
            and not spec.on_demand
            and (row is None or row[4] != fingerprint or job_id not in stored)
        )
        if catalog_changed:
            to_catalog.append((spec, fingerprint, paused))
        if store_stale:
            to_store.append((job_id, first_run_time(spec, now, paused, first_fire_times)))
        if row is None:
            report.added.append(job_id)
        elif catalog_changed or store_stale:
            report.updated.append(job_id)
        else:
            unchanged += 1
    report.unchanged = unchanged

    wanted = {spec.id for spec in specs.values() if spec.enabled and not spec.on_demand}
    gone_from_store = stored - wanted
    gone_from_code = set(catalog) - set(specs)
    for job_id in sorted((gone_from_store | gone_from_code) - set(specs)):
        logger.warning("Job %r is no longer in code; removed it (its run history is kept).", job_id)
        report.removed.append(job_id)

    def write() -> None:
        with transaction.atomic(using=conf.database()):
            for start in range(0, len(to_catalog), _CATALOG_BATCH):
                rows = [
                    catalog_row(spec, fingerprint, paused, synced_at)
                    for spec, fingerprint, paused in to_catalog[start : start + _CATALOG_BATCH]
                ]
                bulk.upsert_rows(
                    Job, rows, [*_CATALOG_FIELDS, "synced_at"], _CATALOG_COLUMNS, _CATALOG_RAW
                )
            gone = sorted(gone_from_code)
            for start in range(0, len(gone), _DELETE_BATCH):
                jobs.filter(id__in=gone[start : start + _DELETE_BATCH]).delete()

    db.retrying(write, "update the job catalog")
    store.remove_jobs(gone_from_store)
    store.put_times(to_store)
    if max(len(to_catalog), len(to_store)) >= _ANALYZE_AFTER:
        _analyze()
    return report


# Rows written by a sync past which PostgreSQL is asked to ANALYZE the two tables.
_ANALYZE_AFTER = 1000


def _analyze() -> None:
    """PostgreSQL: ANALYZE the catalog and the store after many rows were written.

    Until autovacuum gets to a table that was just filled (a minute or more), the
    planner has no statistics for it and reads the whole table for the standbys'
    "what is due" query: 8.9 ms a wake-up at 100,000 jobs, 0.8 ms once analyzed (the
    bench's wake-up after a first start). Skipped, with a warning from the server,
    where the scheduler's user does not own the tables; never fails the start.
    """
    connection = connections[conf.database()]
    if connection.vendor != "postgresql":
        return
    qn = connection.ops.quote_name
    try:
        with db.cursor() as c:
            for model in (Job, DjangoJob):
                c.execute(f"ANALYZE {qn(model._meta.db_table)}")
    except DatabaseError as exc:
        logger.warning("Could not ANALYZE the job tables: %s", exc)
