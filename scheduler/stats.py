"""Figures for the dashboard and the job pages, computed with index-friendly queries."""

from __future__ import annotations

import math
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger
from django.db import connections
from django.db.models import Avg, Count, Max, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone
from django_apscheduler.models import DjangoJob

from scheduler import conf, registry
from scheduler.models import Incident, Job, JobRun, JobRunManager

Status = JobRun.Status


def _runs() -> JobRunManager:
    return JobRun.objects


def last_day_by_status(now: datetime) -> dict[str, int]:
    since = now - timedelta(hours=24)
    # Bounded above too: runs scheduled from code for later are not the last day's (a
    # million of them waiting made this count a million "queued" runs, in 278 ms).
    runs = _runs().filter(scheduled_at__gte=since, scheduled_at__lte=now)
    if connections[conf.database()].vendor == "sqlite":
        # Every status, as the check constraint run_status_valid allows: named, SQLite
        # counts each one's range of run_status_recent, the day's entries only (2.5 ms at
        # 1,000,000 runs a month). Without statistics (Django runs no ANALYZE) it would
        # scan all of that index rather than sort to group (70 ms). PostgreSQL plans
        # from its statistics and is left its plan.
        runs = runs.filter(status__in=Status.values)
    counts = dict(
        runs.order_by().values_list("status").annotate(n=Count("id")).values_list("status", "n")
    )
    return {status: counts.get(status, 0) for status in Status.values}


# The dashboard counts waiting runs up to this many (and says "10,000+" beyond): a
# million runs scheduled from code must not make each view of it count a million rows.
COUNT_CAP = 10_000


@dataclass(frozen=True)
class Bounded:
    """A count, exact up to ``COUNT_CAP``; beyond it ``more`` and ``n == COUNT_CAP + 1``."""

    n: int

    @property
    def more(self) -> bool:
        return self.n > COUNT_CAP

    @property
    def text(self) -> str:
        return f"{COUNT_CAP:,}+" if self.more else f"{self.n:,}"


def queued_by_trigger(now: datetime) -> dict[str, Bounded]:
    """How many runs wait in the queue, by trigger: fire times waiting their turn
    (``schedule``), run-now requests (``manual``), pending retries (``retry``), runs
    scheduled from code (``code``) and tasks (``task``); whatever their trigger, runs sent
    to a fleet that no worker took yet (``worker``); and of those waiting here, how many
    fall due within the hour (``next_hour``).

    One statement of bounded counts, each a range of the partial index run_queued_kind
    (the queued rows only, by executor, trigger and due time), read no further than
    ``COUNT_CAP`` + 1 entries: 1 ms with a million runs scheduled from code waiting.
    """
    connection = connections[conf.database()]
    qn = connection.ops.quote_name
    table = qn(JobRun._meta.db_table)
    status, executor, trigger, at = qn("status"), qn("executor"), qn("trigger"), qn("scheduled_at")
    limit = COUNT_CAP + 1

    def bounded(where: str) -> str:
        return (
            f"(SELECT COUNT(*) FROM (SELECT 1 FROM {table} WHERE {status} = %s AND {where} "
            f"LIMIT {limit}) AS counted)"
        )

    triggers = list(JobRun.Trigger.values)
    parts = [bounded(f"{executor} = %s AND {trigger} = %s") for _ in triggers]
    # One equality each (executor > '', or IN, SQLite read through run_status_recent,
    # every queued row, having no statistics to tell).
    fleets = ("celery", "tasks")
    parts += [bounded(f"{executor} = %s") for _ in fleets]
    # Due within the hour: later ones, and those due already that wait for a slot.
    waiting_here = (JobRun.Trigger.CODE, JobRun.Trigger.TASK, JobRun.Trigger.RETRY)
    parts += [bounded(f"{executor} = %s AND {trigger} = %s AND {at} < %s") for _ in waiting_here]
    params: list[Any] = []
    for kind in triggers:
        params += [Status.QUEUED, "", kind]
    for fleet in fleets:
        params += [Status.QUEUED, fleet]
    end = connection.ops.adapt_datetimefield_value(now + timedelta(hours=1))
    for kind in waiting_here:
        params += [Status.QUEUED, "", kind, end]
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(parts)}", params)
        row = cursor.fetchone()
    counts = [int(n) for n in row]
    found = {kind: Bounded(n) for kind, n in zip(triggers, counts, strict=False)}
    rest = counts[len(triggers) :]
    found["worker"] = Bounded(min(sum(rest[: len(fleets)]), limit))
    found["next_hour"] = Bounded(min(sum(rest[len(fleets) :]), limit))
    return found


def next_queued(now: datetime, limit: int = 10) -> list[dict[str, Any]]:
    """The next runs scheduled from code (or enqueued as tasks) due from ``now`` on."""
    rows = (
        _runs()
        .filter(
            status=Status.QUEUED,
            executor="",
            trigger__in=[JobRun.Trigger.CODE, JobRun.Trigger.TASK],
            scheduled_at__gte=now,
        )
        .order_by("scheduled_at", "id")
        .values("id", "job_id", "job_name", "trigger", "scheduled_at", "arguments")[:limit]
    )
    return [dict(row) for row in rows]


def open_incidents(limit: int = 10) -> list[Incident]:
    """The open incidents, newest first (a handful: one per kind and job at most)."""
    return list(Incident.objects.filter(resolved_at__isnull=True).order_by("-opened_at")[:limit])


def failing_jobs() -> list[Job]:
    """Jobs whose latest finished run failed (or timed out)."""
    last = (
        _runs()
        .filter(job_id=OuterRef("pk"), status__in=JobRun.FINAL)
        .order_by("-scheduled_at", "-id")
    )
    jobs = Job.objects.annotate(
        last_status=Subquery(last.values("status")[:1]),
        last_failed_at=Subquery(last.values("finished_at")[:1]),
        last_exception=Subquery(last.values("exception")[:1]),
    )
    failed = (Status.FAILED, Status.TIMED_OUT)
    return list(jobs.filter(last_status__in=failed).order_by("-last_failed_at")[:20])


def next_runs(limit: int = 10) -> list[dict[str, Any]]:
    rows = list(
        DjangoJob.objects.using(conf.database())
        .filter(next_run_time__isnull=False)
        .order_by("next_run_time")
        .values("id", "next_run_time")[:limit]
    )
    names = dict(Job.objects.filter(id__in=[row["id"] for row in rows]).values_list("id", "name"))
    return [{**row, "name": names.get(row["id"], row["id"])} for row in rows]


def slowest_jobs(now: datetime, limit: int = 10) -> list[dict[str, Any]]:
    since = now - timedelta(hours=24)
    grouped = list(
        _runs()
        .filter(scheduled_at__gte=since, scheduled_at__lte=now, duration__isnull=False)
        .order_by()
        # Grouped by an expression that no index holds: SQLite (without ANALYZE, as
        # Django leaves it) would otherwise walk all of run_job_recent, a row lookup
        # for each of the million runs, to group by job_id (110 ms at 1,000,000 rows),
        # rather than the last day's range of run_recent (15 ms). job_id is never null.
        .values(job=Coalesce("job_id", Value("")))
        .annotate(avg=Avg("duration"), longest=Max("duration"), runs=Count("id"))
        .order_by("-avg", "job")[:limit]
    )
    rows: list[dict[str, Any]] = [
        {"job_id": row["job"], "avg": row["avg"], "longest": row["longest"], "runs": row["runs"]}
        for row in grouped
    ]
    names = dict(
        Job.objects.filter(id__in=[row["job_id"] for row in rows]).values_list("id", "name")
    )
    return [{**row, "name": names.get(row["job_id"], row["job_id"])} for row in rows]


def job_summary(job_id: str, sample: int = 100) -> dict[str, Any]:
    """Success rate and durations over the job's last ``sample`` finished runs."""
    runs = list(
        _runs()
        .filter(job_id=job_id, status__in=JobRun.FINAL)
        .order_by("-scheduled_at", "-id")
        .values("id", "status", "duration", "scheduled_at")[:sample]
    )
    durations = sorted(r["duration"] for r in runs if r["duration"] is not None)
    succeeded = sum(r["status"] == Status.SUCCEEDED for r in runs)
    attempted = sum(
        r["status"] in (Status.SUCCEEDED, Status.FAILED, Status.INTERRUPTED, Status.TIMED_OUT)
        for r in runs
    )
    return {
        "runs": list(reversed(runs)),
        "count": len(runs),
        "success_rate": succeeded / attempted if attempted else None,
        "average": sum(durations) / len(durations) if durations else None,
        "p95": _percentile(durations, 0.95),
    }


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def next_fire_times(job: Job, count: int = 5) -> list[datetime]:
    """The next fire times, from the stored next run time (or now) on."""
    if not job.enabled or job.paused:
        return []
    trigger = trigger_for(job)
    if trigger is None:
        return []
    stored = (
        DjangoJob.objects.using(conf.database())
        .filter(id=job.id)
        .values_list("next_run_time", flat=True)
        .first()
    )
    now = timezone.now()
    at = stored
    if at is None or at < now:
        # Overdue (the scheduler is not running): show what comes after now.
        if isinstance(trigger, IntervalTrigger) and at is not None:
            steps = math.ceil((now - at).total_seconds() / trigger.interval_length)
            at = _later(lambda: at + steps * trigger.interval)
        else:
            at = _later(trigger.get_next_fire_time, None, now)
    times: list[datetime] = []
    while at is not None and len(times) < count:
        times.append(at)
        at = _later(trigger.get_next_fire_time, at, at)
    return times


def _later(compute: Callable[..., datetime | None], *args: Any) -> datetime | None:
    """A fire time, or None past the last date Python can hold (a start date in 9990)."""
    try:
        return compute(*args)
    except (OverflowError, ValueError):
        return None


def trigger_for(job: Job) -> BaseTrigger | None:
    """Rebuild a job's trigger from its catalog row, without importing its code.

    From the schedule's fields as declared (``Job.schedule_fields``), never from the
    display text. None for a row without them (written before migration 0005, until
    the scheduler next syncs) or that this code cannot read (written by other code).
    """
    fields = job.schedule_fields
    if not isinstance(fields, dict) or not fields:
        return None
    options = job.options if isinstance(job.options, dict) else {}
    try:
        dates = {
            key: datetime.fromisoformat(options[key]) if options.get(key) else None
            for key in ("start_date", "end_date")
        }
        return registry.build_trigger(
            job.kind,
            tuple(fields.items()),
            job.timezone,
            options.get("jitter"),
            dates["start_date"],
            dates["end_date"],
        )
    except (ValueError, TypeError, LookupError):  # (unknown zones are a LookupError)
        return None


def in_zone(value: datetime, zone: str) -> datetime:
    return value.astimezone(zoneinfo.ZoneInfo(zone))
