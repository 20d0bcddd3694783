"""Prometheus metrics, read from the scheduler's database on every scrape.

A custom collector (:class:`SchedulerCollector`) in a registry of its own
(:data:`REGISTRY`): the figures come from the tables, not from counters kept in a
process, so whichever web worker serves the view tells the same story, whether or not
it ever ran a job and whatever scheduler is active. prometheus_client's default
registry is never used: it would mix in the process metrics of the worker that
answered (a different process at each scrape).

Every label of a job is ``job_id``, not ``job``: Prometheus gives every series of a
target the label ``job`` (the scrape job's name) and would rename ours
``exported_job``.

Like the admin, this reads and never loads the runtime (tests/test_layering.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import (
    Case,
    CharField,
    Count,
    F,
    FloatField,
    Func,
    Max,
    OuterRef,
    Q,
    Subquery,
    Sum,
    Value,
    When,
)
from django.db.models.sql.compiler import SQLCompiler
from django.utils import timezone
from django_apscheduler.models import DjangoJob
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from scheduler import conf, health, stats
from scheduler.models import Incident, Job, JobRun

Status = JobRun.Status

# Upper bounds (seconds) of the histograms' buckets. Jobs take from milliseconds (a
# cache refresh) to an hour (a nightly export); a fire time is met within milliseconds
# when all is well, and a run that starts a minute late is a problem whatever the job.
# Few buckets: each is a series per job (13 + 3 and 11 + 3 here, with _sum, _count and
# +Inf), and a project with 1,000 jobs has a thousand of each.
DURATION_BUCKETS = (0.005, 0.025, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 600, 1800, 3600)
LATENESS_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60)

# Running rows read per scrape: a few normally (at most THREADS per scheduler, plus a
# fleet's); past this many, runs are stuck in bulk and the counts say "at least".
RUNNING_CAP = stats.COUNT_CAP + 1

# What scheduler_runs_queued{kind} counts: the queued runs this scheduler runs, by
# trigger, and those sent to a worker fleet that no worker took yet.
QUEUED_KINDS = (*JobRun.Trigger.values, "worker")


def period_start(now: datetime) -> datetime:
    """The start of what the counter and histograms count: today, 00:00 UTC.

    Why they count a period that starts again each day, rather than all the history:
    the history is pruned (``HISTORY_DAYS``), and a count over all of it drops by the
    runs deleted each night. ``rate()`` and ``increase()`` read any drop as a counter
    reset and add the whole remaining count as new runs: a job with 10,000 failures
    kept would "fail" 10,000 times at 03:17, and every failure alert would fire.
    Counting only the runs finished since 00:00 UTC keeps each series monotonic
    through the day, and drops it to the day's first runs at midnight: what the
    counter of a restarted process does, which ``rate()`` handles (it loses only the
    runs between the last scrape before midnight and midnight). It also bounds the
    work: one day's range of the ``run_finished`` index, whatever the history holds.
    """
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _scheduled_since(start: datetime) -> datetime | None:
    """Runs scheduled before this are left out of the period's counts (None: none are).

    A run scheduled longer than ``HISTORY_DAYS`` ago can finish within the period (a
    missed fire time recorded at a catch-up after a long downtime), and the nightly
    prune can then delete it the same day: its count would drop. The prune's cut-off
    is at most the period's end less ``HISTORY_DAYS``; a run scheduled since then is
    kept until the period is over.
    """
    days = conf.get("HISTORY_DAYS")
    if days is None:
        return None
    return start + timedelta(days=1) - timedelta(days=days)


class SecondsBetween(Func):
    """``end - start`` in seconds, in SQL: a run's lateness bucketed by the database,
    not a day of rows fetched and parsed in Python."""

    output_field = FloatField()

    def __init__(self, end: str, start: str) -> None:
        super().__init__(F(end), F(start))

    def as_sqlite(
        self, compiler: SQLCompiler, connection: BaseDatabaseWrapper, **extra: Any
    ) -> Any:
        # julianday() parses Django's stored text in C (Django's own datetime difference
        # on SQLite is a Python function called for each row). Its double is exact to
        # about 50 microseconds at today's dates, well below the smallest bucket (1 ms).
        return self.as_sql(
            compiler,
            connection,
            template="((julianday(%(expressions)s)) * 86400.0)",
            arg_joiner=") - julianday(",
            **extra,
        )

    def as_postgresql(
        self, compiler: SQLCompiler, connection: BaseDatabaseWrapper, **extra: Any
    ) -> Any:
        return self.as_sql(
            compiler,
            connection,
            template="EXTRACT(EPOCH FROM (%(expressions)s))::float",
            arg_joiner=" - ",
            **extra,
        )

    def as_mysql(self, compiler: SQLCompiler, connection: BaseDatabaseWrapper, **extra: Any) -> Any:
        # TIMESTAMPDIFF(unit, a, b) is b - a: given (end, start), it is start - end.
        return self.as_sql(
            compiler,
            connection,
            template="(TIMESTAMPDIFF(MICROSECOND, %(expressions)s) / -1000000.0)",
            arg_joiner=", ",
            **extra,
        )


@dataclass
class Histogram:
    """One job's observations: cumulative counts per bucket bound, their sum and count."""

    bounds: tuple[float, ...]
    cumulative: list[int]
    total: float
    count: int

    def buckets(self) -> list[tuple[str, float]]:
        found: list[tuple[str, float]] = [
            (_bound(bound), n) for bound, n in zip(self.bounds, self.cumulative, strict=True)
        ]
        return [*found, ("+Inf", self.count)]

    def add(self, other: Histogram) -> None:
        self.cumulative = [a + b for a, b in zip(self.cumulative, other.cumulative, strict=True)]
        self.total += other.total
        self.count += other.count


def _bound(value: float) -> str:
    # As prometheus_client writes its own buckets: 1.0, 0.005, 3600.0.
    return repr(float(value))


@dataclass
class Snapshot:
    """What one scrape reads from the database."""

    now: datetime
    catalog: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[tuple[str, str], int] = field(default_factory=dict)
    duration: dict[str, Histogram] = field(default_factory=dict)
    lateness: dict[str, Histogram] = field(default_factory=dict)
    last_success: dict[str, datetime] = field(default_factory=dict)
    next_fire: dict[str, datetime] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=dict)
    oldest_running: dict[str, datetime] = field(default_factory=dict)
    queued: dict[str, int] = field(default_factory=dict)
    health: dict[str, Any] = field(default_factory=dict)
    incidents: dict[str, int] = field(default_factory=dict)


def read(now: datetime | None = None) -> Snapshot:
    """Everything the metrics say, read from the scheduler's database.

    Every query is bounded: the catalog and the job store (a row per job), one day of
    finished runs through ``run_finished``, each job's runs back to its last success
    through ``run_job_recent``, the running rows through ``run_status_recent``
    (capped), the queue's capped counts (``stats``), the lease and instances
    (``health``), the open incidents (``one_open_incident``'s rows).

    Measured on SQLite with 1,000 jobs and 1,000,000 runs over 30 days (33,000 a
    day; one job with 50,000 failures and no success): 10 queries, 74 ms at 07:00 UTC
    and 161 ms just before midnight (a full day in the period; the day's grouped
    bucket counts are most of it). The whole view is 300 ms then 370 ms: writing
    40,000 series (mostly the two histograms' buckets, 30 per job) costs prometheus_client
    about 200 ms, and gzip makes the 2.8 MB of text 160 KB.
    """
    now = now or timezone.now()
    snapshot = Snapshot(now=now)
    for job_id, enabled, paused, run_options in Job.objects.values_list(
        "id", "enabled", "paused", "run_options"
    ):
        options = run_options if isinstance(run_options, dict) else {}
        snapshot.catalog[job_id] = {
            "enabled": bool(enabled and not paused),
            "expected_every": options.get("expected_every"),
        }
    _read_period(snapshot)
    _read_last_success(snapshot)
    stored = DjangoJob.objects.using(conf.database()).filter(next_run_time__isnull=False)
    snapshot.next_fire = {
        job_id: at for job_id, at in stored.values_list("id", "next_run_time") if at is not None
    }
    _read_running(snapshot)
    snapshot.queued = {
        kind: bounded.n
        for kind, bounded in stats.queued_by_trigger(now).items()
        if kind in QUEUED_KINDS
    }
    snapshot.health = health.health()
    snapshot.incidents = dict(
        Incident.objects.filter(resolved_at__isnull=True)
        .order_by()
        .values_list("kind")
        .annotate(n=Count("id"))
        .values_list("kind", "n")
    )
    return snapshot


def _read_period(snapshot: Snapshot) -> None:
    """The period's finished runs, grouped by job and status, in one statement: their
    count, the last success, and the duration and lateness histograms as bucket counts.

    A range of ``run_finished`` (one day at most), two-sided: with only a lower bound,
    SQLite (without statistics: Django runs no ANALYZE) walks all of run_job_recent to
    group without sorting, a row lookup for each of a million runs (1,100 ms), rather
    than the day's range (7 ms). Not filtered by status for the same reason (SQLite took
    run_status_recent, the whole month of each final status: 220 ms): rows that are not
    final have no ``finished_at``, and any other group is dropped here.
    """
    start = period_start(snapshot.now)
    # Up to now: the counts as they were at ``now``. (A run that a host whose clock runs
    # ahead says finished in the future counts once that time has come.)
    runs = JobRun.objects.filter(finished_at__gte=start, finished_at__lte=snapshot.now)
    since = _scheduled_since(start)
    if since is not None:
        runs = runs.filter(scheduled_at__gte=since)
    on_schedule = Q(trigger=JobRun.Trigger.SCHEDULE, started_at__isnull=False)
    timed = Q(duration__isnull=False)
    aggregates: dict[str, Any] = {
        "n": Count("id"),
        "last_success": Max("finished_at", filter=Q(status=Status.SUCCEEDED)),
        "d_sum": Sum("duration", filter=timed),
        "d_n": Count("id", filter=timed),
        "l_n": Count("id", filter=on_schedule),
        # Early by a few milliseconds is on time (the main loop claims a fire time up to
        # 40 ms ahead): the sum counts it as 0, as the first bucket does.
        "l_sum": Sum(
            Case(When(on_schedule & Q(late__gt=0), then=F("late")), default=Value(0.0)),
            output_field=FloatField(),
        ),
    }
    for index, bound in enumerate(DURATION_BUCKETS):
        aggregates[f"d{index}"] = Count("id", filter=Q(duration__lte=bound))
    for index, bound in enumerate(LATENESS_BUCKETS):
        aggregates[f"l{index}"] = Count("id", filter=on_schedule & Q(late__lte=bound))
    rows = (
        runs.alias(late=SecondsBetween("started_at", "scheduled_at"))
        .order_by()
        .values("job_id", "status")
        .annotate(**aggregates)
    )
    row: dict[str, Any]
    final = set(JobRun.FINAL)
    for row in rows:  # type: ignore[assignment]  # (django-stubs types only job_id, status)
        if row["status"] not in final:
            continue
        job_id = row["job_id"]
        snapshot.runs[job_id, row["status"]] = row["n"]
        if row["last_success"] is not None:
            snapshot.last_success[job_id] = row["last_success"]
        _merge(
            snapshot.duration,
            job_id,
            Histogram(
                DURATION_BUCKETS,
                [row[f"d{i}"] for i in range(len(DURATION_BUCKETS))],
                float(row["d_sum"] or 0.0),
                row["d_n"],
            ),
        )
        _merge(
            snapshot.lateness,
            job_id,
            Histogram(
                LATENESS_BUCKETS,
                [row[f"l{i}"] for i in range(len(LATENESS_BUCKETS))],
                float(row["l_sum"] or 0.0),
                row["l_n"],
            ),
        )


def _merge(into: dict[str, Histogram], job_id: str, histogram: Histogram) -> None:
    if histogram.count == 0:
        return
    if job_id in into:
        into[job_id].add(histogram)
    else:
        into[job_id] = histogram


class Unindexed(Func):
    """A column that SQLite must not pick an index by: ``+"column"``, SQLite's own way
    to say so. Elsewhere the column itself (PostgreSQL plans from its statistics)."""

    template = "%(expressions)s"

    def as_sqlite(
        self, compiler: SQLCompiler, connection: BaseDatabaseWrapper, **extra: Any
    ) -> Any:
        return self.as_sql(compiler, connection, template="+%(expressions)s", **extra)


def _read_last_success(snapshot: Snapshot) -> None:
    """The last success of the catalog's jobs that did not succeed in the period: the
    latest succeeded run of each, read newest first through ``run_job_recent``.

    Through run_job_recent, not run_status_recent, which SQLite prefers: that one walks
    every success of every job, newest first, until one of this job's, and all million
    rows for a job that never succeeded (110 ms for each such job); this one walks only
    the job's own runs back to its last success (all 1,000 jobs: 7 ms; a job with 50,000
    failures and no success: 5 ms).
    """
    missing = [job_id for job_id in snapshot.catalog if job_id not in snapshot.last_success]
    if not missing:
        return
    last = (
        JobRun.objects.alias(state=Unindexed("status", output_field=CharField()))
        .filter(job_id=OuterRef("pk"), state=Status.SUCCEEDED)
        .order_by("-scheduled_at", "-id")
        .values("finished_at")[:1]
    )
    found = (
        Job.objects.filter(pk__in=missing).annotate(last=Subquery(last)).values_list("id", "last")
    )
    snapshot.last_success.update({job_id: at for job_id, at in found if at is not None})


def _read_running(snapshot: Snapshot) -> None:
    rows = (
        JobRun.objects.filter(status=Status.RUNNING)
        .order_by()
        .values_list("job_id", "started_at")[:RUNNING_CAP]
    )
    for job_id, started_at in rows:
        snapshot.in_flight[job_id] = snapshot.in_flight.get(job_id, 0) + 1
        if started_at is not None:
            oldest = snapshot.oldest_running.get(job_id)
            if oldest is None or started_at < oldest:
                snapshot.oldest_running[job_id] = started_at


def families(snapshot: Snapshot) -> Iterator[Metric]:
    """The metric families of a snapshot."""
    jobs = sorted(snapshot.catalog)
    start = period_start(snapshot.now)

    runs = CounterMetricFamily(
        "scheduler_runs",
        "Finished runs by job and final status, counted from the run history since "
        f"00:00 UTC (it starts again each day, as after a restart: use rate() or "
        f"increase(); this period began {start.isoformat()}).",
        labels=["job_id", "status"],
    )
    # Every final status of every job in the catalog, at 0 if it has no runs: an
    # alert on increase(...{status="failed"}[10m]) needs the series before the first
    # failure (a series that appears at 1 has no increase).
    counted = dict(snapshot.runs)
    for job_id in jobs:
        for final in JobRun.FINAL:
            counted.setdefault((job_id, str(final)), 0)
    for (job_id, status), n in sorted(counted.items()):
        runs.add_metric([job_id, status], n)
    yield runs

    yield _histogram(
        "scheduler_run_duration_seconds",
        "Seconds of real execution of the runs finished since 00:00 UTC, by job.",
        snapshot.duration,
    )
    yield _histogram(
        "scheduler_run_lateness_seconds",
        "Seconds between the fire time and the real start of the scheduled runs "
        "finished since 00:00 UTC, by job (an early start counts as 0).",
        snapshot.lateness,
    )
    yield _gauge(
        "scheduler_job_last_success_timestamp_seconds",
        "When the job's last successful run finished (Unix time), within the kept history.",
        {job_id: at.timestamp() for job_id, at in snapshot.last_success.items()},
    )
    yield _gauge(
        "scheduler_job_next_fire_timestamp_seconds",
        "The job's next fire time in the job store (Unix time); none while it is paused "
        "or has no further fire time.",
        {job_id: at.timestamp() for job_id, at in snapshot.next_fire.items()},
    )
    yield _gauge(
        "scheduler_job_enabled",
        "1 if the job fires on its schedule, 0 if it is disabled in code or paused.",
        {job_id: float(job["enabled"]) for job_id, job in snapshot.catalog.items()},
    )
    yield _gauge(
        "scheduler_job_expected_interval_seconds",
        "The job's expected_every: longest expected time between two successful runs.",
        {
            job_id: float(job["expected_every"])
            for job_id, job in snapshot.catalog.items()
            if job["expected_every"] is not None
        },
    )
    in_flight = {job_id: 0 for job_id in jobs}
    in_flight.update(snapshot.in_flight)
    yield _gauge(
        "scheduler_runs_in_flight",
        f"Runs running now, by job (the first {RUNNING_CAP:,} running rows read).",
        in_flight,
    )
    yield _gauge(
        "scheduler_run_oldest_start_timestamp_seconds",
        "When the job's longest-running run in flight started (Unix time).",
        {job_id: at.timestamp() for job_id, at in snapshot.oldest_running.items()},
    )
    queued = GaugeMetricFamily(
        "scheduler_runs_queued",
        "Runs waiting for their turn, by kind: the trigger of those this scheduler runs "
        "(schedule, manual, retry, code, task), 'worker' for those sent to a worker fleet "
        f"not taken yet. Counted up to {stats.COUNT_CAP + 1:,} each ({stats.COUNT_CAP + 1:,}: "
        "at least that many).",
        labels=["kind"],
    )
    for kind in QUEUED_KINDS:
        queued.add_metric([kind], snapshot.queued.get(kind, 0))
    yield queued

    alive = snapshot.health
    yield GaugeMetricFamily(
        "scheduler_active_scheduler",
        "1 if an active scheduler holds the lease and its heartbeat is fresh, else 0.",
        value=1 if alive.get("ok") else 0,
    )
    yield GaugeMetricFamily(
        "scheduler_standby_schedulers",
        "Standby schedulers with a fresh heartbeat, ready to take over.",
        value=alive.get("standbys", 0),
    )
    seen = alive.get("active") or alive.get("last_seen")
    heartbeat = GaugeMetricFamily(
        "scheduler_heartbeat_age_seconds",
        "Seconds since the active scheduler's last heartbeat (with none active, the last "
        "scheduler seen; absent if none ever ran).",
    )
    if seen is not None:
        heartbeat.add_metric([], float(seen["heartbeat_age"]))
    yield heartbeat

    incidents = {kind: 0 for kind in Incident.Kind.values}
    incidents.update(snapshot.incidents)
    yield _gauge(
        "scheduler_incidents_open",
        "Open incidents by kind (failing, missed, overdue, stuck, no_scheduler).",
        incidents,
        label="kind",
    )


def _gauge(name: str, help_text: str, values: Mapping[str, float], label: str = "job_id") -> Metric:
    family = GaugeMetricFamily(name, help_text, labels=[label])
    for key in sorted(values):
        family.add_metric([key], values[key])
    return family


def _histogram(name: str, help_text: str, by_job: dict[str, Histogram]) -> Metric:
    family = HistogramMetricFamily(name, help_text, labels=["job_id"])
    for job_id in sorted(by_job):
        histogram = by_job[job_id]
        family.add_metric([job_id], histogram.buckets(), histogram.total)
    return family


class SchedulerCollector:
    """A prometheus_client collector of the scheduler's metrics, read at each scrape.

    Register it in a registry of your own to serve the metrics from another
    exporter; :data:`REGISTRY` holds it alone. ``now`` fixes the time it reads at
    (tests); by default, the time of each scrape.
    """

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now

    def collect(self) -> Iterable[Metric]:
        # Read in full before anything is written: a database error fails the scrape
        # as a whole, never halfway through the text.
        return list(families(read(self.now)))


# The one registry the view serves: this collector only (no process metrics).
REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(SchedulerCollector())


def exposition(now: datetime | None = None) -> bytes:
    """The metrics in Prometheus' text format 0.0.4 (as of ``now``, by default the
    present). Raises DatabaseError when the scheduler's database cannot be read."""
    if now is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SchedulerCollector(now))
    return generate_latest(registry)
