"""Figures for the dashboard and the job pages, computed with index-friendly queries."""

from __future__ import annotations

import math
import zoneinfo
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger
from django.db import connections
from django.db.models import Avg, Case, Count, Max, OuterRef, Q, Subquery, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone
from django_apscheduler.models import DjangoJob

from scheduler import conf, registry
from scheduler.models import Job, JobRun, JobRunManager

Status = JobRun.Status


def _runs() -> JobRunManager:
    return JobRun.objects


def last_day_by_status(now: datetime) -> dict[str, int]:
    since = now - timedelta(hours=24)
    runs = _runs().filter(scheduled_at__gte=since)
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


def queued_by_trigger() -> dict[str, int]:
    """How many runs wait in the queue, by trigger: fire times waiting their turn
    (``schedule``), run-now requests (``manual``) and pending retries (``retry``); and,
    whatever their trigger, runs sent to Celery that no worker took yet (``worker``)."""
    counts = dict(
        _runs()
        .filter(status=Status.QUEUED)
        .order_by()
        # Grouped by an expression no index holds (as in slowest_jobs): SQLite would
        # otherwise walk all of run_trigger_recent, every run ever, to group by trigger,
        # rather than the queued rows' range of run_status_recent (a handful).
        .values(
            kind=Case(
                When(~Q(executor=""), then=Value("worker")),
                default=Coalesce("trigger", Value("")),
            )
        )
        .annotate(n=Count("id"))
        .values_list("kind", "n")
    )
    kinds = [*JobRun.Trigger.values, "worker"]
    return {kind: counts.get(kind, 0) for kind in kinds}


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
        .filter(scheduled_at__gte=since, duration__isnull=False)
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
