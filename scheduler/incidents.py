"""Incidents: the history turned into what people must be told, by the active scheduler.

``Incidents`` keeps the incident table (one open incident per kind and job,
however many fire times it spans) and writes the outbox rows of each change
(opened, resolved) for every configured notifier; ``Detector`` looks at the
history every ``ALERTS["INTERVAL"]`` seconds, from the active scheduler's control
thread, and opens and resolves incidents:

* ``failing``: a job's last runs failed or timed out, ``alert_after`` (or
  ``ALERTS["FAILURES"]``) in a row; an attempt that will be tried again does not
  count. Resolved by its next successful run.
* ``missed``: a fire time was recorded missed. Resolved by the next successful run.
* ``overdue``: no successful run within the job's expected interval (its
  ``expected_every``, else the longest gap between its next fire times) plus
  ``ALERTS["OVERDUE_GRACE"]``, counted from its last success or from when this
  scheduler became active, whichever is later. Resolved by a success.
* ``stuck``: a run still ``running`` past its timeout plus ``ALERTS["STUCK_GRACE"]``
  (or, without a timeout, ten times its median duration and at least an hour).
  Resolved when it ends.
* ``no_scheduler``: no active scheduler. Opened by ``schedulerstatus`` when it finds
  none, and by a standby that takes over from a scheduler that died (stopped
  heartbeating without saying it stopped); resolved by the scheduler that is active.

What finished since the last pass is read through the index on
``finished_at``; each pass reads the rows that ended since the last one, once.
After a take-over the new active scheduler looks back a little further (a
second look at a run is harmless: an open incident is only counted again).
Jobs declared with ``alerts=False`` raise nothing.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.db import IntegrityError, transaction
from django.db.models import F, Max
from django.utils import timezone

from scheduler import alerts, conf
from scheduler.models import Incident, Job, JobRun, Notification, SchedulerInstance
from scheduler.registry import JobSpec, registry
from scheduler.text import storable

if TYPE_CHECKING:
    from scheduler.lease import Standing

logger = logging.getLogger(__name__)

Status = JobRun.Status
FAILED_STATUSES = (Status.FAILED, Status.TIMED_OUT, Status.INTERRUPTED)
# What the detector reads run by run (successes it reads as the last one per job).
PROBLEMS = (*FAILED_STATUSES, Status.MISSED)
# Rows read from the history a statement (a pass reads on until it is through).
BATCH = 2000
# Seconds each pass looks back past where the last one reached: a row is written a
# little after its run ended (up to results.INTERVAL, more while the database is slow).
# A result written later than this after its run ended (a long database outage) is not
# judged.
LOOK_BACK = 120.0
# Fire times looked at to find a cron job's longest gap between two of them.
GAPS_LOOKED_AT = 30
# The least a run without a timeout must go on before it counts as stuck.
STUCK_WITHOUT_TIMEOUT = 3600.0


def _detail(text: str) -> str:
    return storable(text, 4000, "head")


class Incidents:
    """The incident table and the outbox: opens, counts again and resolves incidents,
    each change followed by one notification per notifier (``notifier_names``)."""

    def __init__(
        self, notifier_names: list[str], changed: Callable[[], None] | None = None
    ) -> None:
        self.notifier_names = notifier_names
        # Called after each change that left notifications (the outbox wakes up).
        self.changed = changed

    def open(
        self,
        kind: str,
        job_id: str,
        title: str,
        detail: str,
        run_id: int | None = None,
        at: datetime | None = None,
    ) -> Incident | None:
        """Open an incident of ``kind`` for ``job_id``, or count the open one again.
        Returns the incident when it was opened now (then its notifications are due)."""
        now = at or timezone.now()
        incidents = Incident.objects
        counted = incidents.filter(kind=kind, job_id=job_id, resolved_at__isnull=True).update(
            occurrences=F("occurrences") + 1, last_seen_at=now
        )
        if counted:
            return None
        incident = Incident(
            kind=kind,
            job_id=job_id,
            title=storable(title, 255, "head"),
            detail=_detail(detail),
            opened_at=now,
            last_seen_at=now,
            run_id=run_id,
        )
        try:
            with transaction.atomic(using=conf.database()):
                incident.save(using=conf.database(), force_insert=True)
                self._outbox(incident, alerts.OPENED, now)
        except IntegrityError:
            return None  # another scheduler opened it meanwhile (the partial unique index)
        logger.warning("Incident opened: %s", incident.title)
        return incident

    def resolve(
        self,
        kind: str,
        job_id: str,
        detail: str,
        run_id: int | None = None,
        at: datetime | None = None,
    ) -> Incident | None:
        """Resolve the open incident of ``kind`` for ``job_id``, if there is one."""
        now = at or timezone.now()
        incident = Incident.objects.filter(
            kind=kind, job_id=job_id, resolved_at__isnull=True
        ).first()
        if incident is None:
            return None
        with transaction.atomic(using=conf.database()):
            resolved = Incident.objects.filter(pk=incident.pk, resolved_at__isnull=True).update(
                resolved_at=now,
                resolved_by=run_id,
                detail=_detail(f"{incident.detail}\n\nResolved: {detail}".strip()),
            )
            if not resolved:
                return None
            self._outbox(incident, alerts.RESOLVED, now)
        incident.resolved_at, incident.resolved_by = now, run_id
        logger.info("Incident resolved: %s (%s)", incident.title, detail)
        return incident

    def open_ones(self, job_id: str | None = None) -> set[tuple[str, str]]:
        """(kind, job id) of the open incidents (of ``job_id``)."""
        rows = Incident.objects.filter(resolved_at__isnull=True)
        if job_id is not None:
            rows = rows.filter(job_id=job_id)
        return set(rows.values_list("kind", "job_id"))

    def _outbox(self, incident: Incident, state: str, now: datetime) -> None:
        if self.notifier_names and self.changed is not None:
            transaction.on_commit(self.changed, using=conf.database())
        Notification.objects.bulk_create(
            [
                Notification(
                    incident=incident, state=state, notifier=name, created_at=now, next_try_at=now
                )
                for name in self.notifier_names
            ],
            ignore_conflicts=True,
        )


def expected_interval(spec: JobSpec) -> float | None:
    """Seconds within which ``spec`` should succeed: its ``expected_every``, else the
    longest gap between its next fire times (None: no schedule to judge by)."""
    if spec.expected_every is not None:
        return spec.expected_every
    if spec.on_demand:
        return None
    trigger = spec.make_trigger()
    now = timezone.now()
    times: list[datetime] = []
    at = trigger.get_next_fire_time(None, now)
    while at is not None and len(times) < GAPS_LOOKED_AT:
        times.append(at)
        at = trigger.get_next_fire_time(at, at + timedelta(microseconds=1))
    if len(times) < 2:
        return None
    return max((b - a).total_seconds() for a, b in zip(times, times[1:], strict=False))


class Detector:
    """The active scheduler's detector (see the module docstring); owned by the service,
    stepped by the control thread, which holds the lease when it calls ``step``."""

    def __init__(self, incidents: Incidents, standing: Standing) -> None:
        self.incidents = incidents
        self.standing = standing
        self._cursor: datetime | None = None
        self._active_since: datetime | None = None
        self._last_pass = float("-inf")
        self._last_success: dict[str, datetime] = {}
        self._expected: dict[str, float | None] = {}
        # The runs judged within the look-back (id -> finished_at): each is judged once.
        self._judged: dict[int, datetime] = {}
        # (kind, job id) of the open incidents, as the pass under way knows them.
        self._open: set[tuple[str, str]] = set()

    def took_over(self, previous_holder: str | None) -> None:
        """This process became the active scheduler (after ``previous_holder``, if it took
        the lease over from another): a dead predecessor is an incident of its own, over
        now that this one is active."""
        now = timezone.now()
        self._active_since = now
        # A little further back than one pass: what finished while nobody looked.
        back = float(conf.get("LEASE_SECONDS")) * 2 + float(conf.alerts()["INTERVAL"])
        self._cursor = now - timedelta(seconds=back)
        self._last_success = self._load_last_success(now)
        self._last_pass = float("-inf")
        if previous_holder is None or previous_holder == self.standing.instance_id:
            return
        dead = SchedulerInstance.objects.filter(pk=previous_holder, stopped_at__isnull=True).first()
        if dead is None:
            return  # it stopped cleanly (it said so): a hand-over, not an incident
        silent = (now - dead.heartbeat_at).total_seconds()
        me = f"{conf.HOSTNAME} (instance {self.standing.instance_id[:8]})"
        self.incidents.open(
            alerts.NO_SCHEDULER,
            "",
            f"No active scheduler: {dead.hostname}:{dead.pid} stopped heartbeating",
            f"The active scheduler {dead.hostname}:{dead.pid} (instance {dead.id[:8]}) sent "
            f"its last heartbeat at {dead.heartbeat_at.isoformat()} and did not say it "
            f"stopped (killed, crashed or frozen); {me} took over {silent:.0f} s later.",
            at=now,
        )

    def step(self) -> None:
        """A pass over the history, if one is due (every ``ALERTS["INTERVAL"]`` seconds)."""
        interval = float(conf.alerts()["INTERVAL"])
        if time.monotonic() - self._last_pass < interval:
            return
        self._last_pass = time.monotonic()
        if self._active_since is None:
            self.took_over(None)
        self.run_pass(timezone.now())

    def run_pass(self, now: datetime) -> None:
        me = f"{conf.HOSTNAME} (instance {self.standing.instance_id[:8]})"
        self.incidents.resolve(alerts.NO_SCHEDULER, "", f"{me} is the active scheduler.", at=now)
        self._finished(now)
        self._stuck(now)
        self._overdue(now)

    # -- what finished since the last pass ------------------------------------------

    def _finished(self, now: datetime) -> None:
        """Judge what ended since the last pass, in the order it ended.

        Successes are read as one row per job (its last, grouped by the database): a
        pass costs the same at 20 runs a second as at 1,000 (reading every row of the
        look-back held the control thread, and the GIL, for tens of milliseconds a pass,
        which showed in the fleet's lateness, bench 7). Problems (failed, timed out,
        interrupted, missed) are read one by one, looking back ``LOOK_BACK`` further than
        the last pass reached, since a row is written a little after its run ended; each
        is judged once."""
        assert self._cursor is not None, "took_over() sets it"
        since = self._cursor
        events: list[tuple[datetime, int, dict[str, Any]]] = []
        successes = (
            JobRun.objects.filter(
                status=Status.SUCCEEDED, finished_at__gt=since, finished_at__lte=now
            )
            .values("job_id")
            .annotate(last=Max("finished_at"), run=Max("id"))
            .values_list("job_id", "last", "run")
        )
        for job_id, last, run_id in successes:
            row = {"id": run_id, "job_id": job_id, "status": Status.SUCCEEDED, "finished_at": last}
            events.append((last, run_id, row))
        fields = ["id", "job_id", "status", "trigger", "exception", "finished_at"]
        fields += ["attempt", "retry_of", "scheduled_at"]
        cursor, last_id = since - timedelta(seconds=LOOK_BACK), 0
        while True:
            rows = list(
                JobRun.objects.filter(
                    status__in=PROBLEMS, finished_at__gte=cursor, finished_at__lte=now
                )
                .exclude(finished_at=cursor, id__lte=last_id)
                .order_by("finished_at", "id")
                .values(*fields)[:BATCH]
            )
            for row in rows:
                if row["id"] not in self._judged:
                    self._judged[row["id"]] = row["finished_at"]
                    events.append((row["finished_at"], row["id"], row))
            if rows:
                cursor, last_id = rows[-1]["finished_at"], rows[-1]["id"]
            if len(rows) < BATCH:
                break
        # The open incidents, read once a pass: a success resolves only what is open
        # (three lookups a job with a success, every pass, were 3,000 statements at
        # 1,000 jobs).
        self._open = self.incidents.open_ones() if events else set()
        for _at, _id, row in sorted(events, key=lambda event: (event[0], event[1])):
            self._judge(row, now)
        self._cursor = now
        # Forget what falls out of the next pass's look-back.
        horizon = now - timedelta(seconds=LOOK_BACK)
        self._judged = {pk: at for pk, at in self._judged.items() if at >= horizon}

    def _judge(self, row: dict[str, Any], now: datetime) -> None:
        job_id = row["job_id"]
        spec = registry.get(job_id)
        if spec is None or not spec.alerts:
            return
        status = row["status"]
        if status == Status.SUCCEEDED:
            self._last_success[job_id] = max(
                row["finished_at"], self._last_success.get(job_id, row["finished_at"])
            )
            done = f"run #{row['id']} succeeded at {row['finished_at'].isoformat()}"
            for kind in (alerts.FAILING, alerts.MISSED, alerts.OVERDUE):
                if (kind, job_id) in self._open:
                    self.incidents.resolve(kind, job_id, done, row["id"], now)
                    self._open.discard((kind, job_id))
        elif status == Status.MISSED and row["trigger"] == JobRun.Trigger.SCHEDULE:
            self._open.add((alerts.MISSED, job_id))  # (a later success in this pass resolves it)
            self.incidents.open(
                alerts.MISSED,
                job_id,
                f"{spec.name} ({job_id}) missed a fire time",
                f"The fire time {row['scheduled_at'].isoformat()} was missed: {row['exception']}",
                row["id"],
                now,
            )
        elif status in FAILED_STATUSES and not self._tried_again(row):
            self._failure(spec, row, now)

    @staticmethod
    def _tried_again(row: dict[str, Any]) -> bool:
        """Whether a next attempt of this failed run was filed (it is not the last word)."""
        first = row["retry_of"] or row["id"]
        return JobRun.objects.filter(retry_of=first, attempt=row["attempt"] + 1).exists()

    def _failure(self, spec: JobSpec, row: dict[str, Any], now: datetime) -> None:
        needed = spec.alert_after or int(conf.alerts()["FAILURES"])
        if needed > 1 and not self._last_runs_failed(spec.id, needed):
            return
        times = "once" if needed == 1 else f"{needed} times in a row"
        self._open.add((alerts.FAILING, spec.id))  # (a later success in this pass resolves it)
        self.incidents.open(
            alerts.FAILING,
            spec.id,
            f"{spec.name} ({spec.id}) failed {times}",
            f"Run #{row['id']} ended {row['status']} at {row['finished_at'].isoformat()}: "
            f"{row['exception']}",
            row["id"],
            now,
        )

    @staticmethod
    def _last_runs_failed(job_id: str, needed: int) -> bool:
        """Whether the job's last ``needed`` runs that ended all failed. A run's attempts
        are one run: an attempt that was tried again does not count, its last one does."""
        rows = list(
            JobRun.objects.filter(job_id=job_id, status__in=JobRun.FINAL)
            .exclude(status__in=(Status.SKIPPED, Status.MISSED))
            .order_by("-scheduled_at", "-id")
            .values_list("id", "status", "retry_of", "attempt")[: needed * 4]
        )
        firsts = {retry_of or pk for pk, _, retry_of, _ in rows}
        retried = set(JobRun.objects.filter(retry_of__in=firsts).values_list("retry_of", "attempt"))
        last = [
            status
            for pk, status, retry_of, attempt in rows
            if (retry_of or pk, attempt + 1) not in retried
        ][:needed]
        return len(last) == needed and all(s in FAILED_STATUSES for s in last)

    # -- runs that do not end ---------------------------------------------------------

    def _stuck(self, now: datetime) -> None:
        grace = float(conf.alerts()["STUCK_GRACE"])
        going = list(
            JobRun.objects.filter(status=Status.RUNNING, started_at__isnull=False).values_list(
                "id", "job_id", "started_at"
            )
        )
        stuck_jobs: set[str] = set()
        for run_id, job_id, started in going:
            spec = registry.get(job_id)
            if spec is None or not spec.alerts or started is None:
                continue
            limit = self._stuck_after(spec)
            if limit is None:
                continue
            running = (now - started).total_seconds()
            if running <= limit + grace:
                continue
            stuck_jobs.add(job_id)
            self.incidents.open(
                alerts.STUCK,
                job_id,
                f"{spec.name} ({job_id}) has a run stuck for {running / 60:.0f} min",
                f"Run #{run_id} started at {started.isoformat()} and is still running, "
                f"{running:.0f} s later (expected at most {limit:.0f} s).",
                run_id,
                now,
            )
        for kind, job_id in self.incidents.open_ones():
            if kind == alerts.STUCK and job_id not in stuck_jobs:
                self.incidents.resolve(kind, job_id, "no run of it is stuck any more", at=now)

    @staticmethod
    def _stuck_after(spec: JobSpec) -> float | None:
        if spec.effective_timeout is not None:
            return spec.effective_timeout
        durations = list(
            JobRun.objects.filter(job_id=spec.id, status=Status.SUCCEEDED)
            .order_by("-scheduled_at", "-id")
            .values_list("duration", flat=True)[:20]
        )
        known = [d for d in durations if d is not None]
        if len(known) < 5:
            return None
        return max(STUCK_WITHOUT_TIMEOUT, 10 * statistics.median(known))

    # -- jobs that do not succeed ---------------------------------------------------------

    def _overdue(self, now: datetime) -> None:
        assert self._active_since is not None
        grace = float(conf.alerts()["OVERDUE_GRACE"])
        paused = set(Job.objects.filter(paused=True).values_list("id", flat=True))
        open_overdue = {job for kind, job in self.incidents.open_ones() if kind == alerts.OVERDUE}
        for spec in list(registry.values()):
            if not (spec.alerts and spec.enabled) or spec.id in paused:
                continue
            expected = self._expected_of(spec)
            if expected is None:
                continue
            since = max(self._last_success.get(spec.id, self._active_since), self._active_since)
            waited = (now - since).total_seconds()
            if waited <= expected + grace or spec.id in open_overdue:
                continue
            last = self._last_success.get(spec.id)
            self.incidents.open(
                alerts.OVERDUE,
                spec.id,
                f"{spec.name} ({spec.id}) has not succeeded for {waited / 60:.0f} min",
                f"Its last successful run {'ended ' + last.isoformat() if last else 'is unknown'}"
                f"; it should succeed at least every {expected:.0f} s (plus {grace:.0f} s).",
                at=now,
            )

    def _expected_of(self, spec: JobSpec) -> float | None:
        if spec.id not in self._expected:
            try:
                self._expected[spec.id] = expected_interval(spec)
            except (ValueError, OverflowError):
                self._expected[spec.id] = None
        return self._expected[spec.id]

    def _load_last_success(self, now: datetime) -> dict[str, datetime]:
        """Each job's last success, from as far back as the longest expected interval
        needs (at most 31 days): read once, when this scheduler becomes active."""
        longest = max(
            (e for spec in registry.values() if (e := self._expected_of(spec)) is not None),
            default=0.0,
        )
        days = min(31.0, max(1.0, math.ceil(2 * longest / 86400)))
        rows = (
            JobRun.objects.filter(
                status=Status.SUCCEEDED, finished_at__gte=now - timedelta(days=days)
            )
            .values("job_id")
            .annotate(last=Max("finished_at"))
            .values_list("job_id", "last")
        )
        return {job_id: last for job_id, last in rows if last is not None}
