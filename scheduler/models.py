from __future__ import annotations

import os
from datetime import datetime
from typing import Any, ClassVar, Self, TypeVar

from django.db import models
from django.db.models import Q
from django.utils import timezone as dj_timezone
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy

from scheduler.conf import HOSTNAME

_M = TypeVar("_M", bound=models.Model)


class OnSchedulerDatabase(models.Manager[_M]):
    """The scheduler's tables live in ``SCHEDULER['DATABASE']``: every query of this
    manager goes there, whether or not the project installs ``scheduler.router``."""

    def get_queryset(self) -> models.QuerySet[_M]:
        from scheduler import conf  # settings are read when the first query is built

        return super().get_queryset().using(conf.database())


class JobRunManager(OnSchedulerDatabase["JobRun"]):
    """Queries go to the scheduler's database; the rows the scheduler makes are made here."""

    def claim_row(
        self, job_id: str, job_name: str, scheduled_at: datetime, instance: str
    ) -> JobRun:
        """The (unsaved) ``running`` row that claims a scheduled fire time for this process."""
        return self.model(
            job_id=job_id,
            job_name=job_name,
            status=RunStatus.RUNNING,
            trigger=RunTrigger.SCHEDULE,
            scheduled_at=scheduled_at,
            started_at=dj_timezone.now(),
            hostname=HOSTNAME,
            pid=os.getpid(),
            instance=instance,
        )

    def not_run_rows(
        self,
        job_id: str,
        job_name: str,
        status: str,
        times: list[datetime],
        reason: str,
        instance: str,
    ) -> list[JobRun]:
        """(Unsaved) rows of fire times that did not run (``missed``, ``skipped``)."""
        now = dj_timezone.now()
        return [
            self.model(
                job_id=job_id,
                job_name=job_name,
                status=status,
                trigger=RunTrigger.SCHEDULE,
                scheduled_at=at,
                finished_at=now,
                hostname=HOSTNAME,
                pid=os.getpid(),
                instance=instance,
                exception=reason,
            )
            for at in times
        ]

    def request_row(
        self, job_id: str, job_name: str, requested_by: str, instance: str = ""
    ) -> JobRun:
        """An (unsaved) ``queued`` manual run: a run-now request. With ``instance``, the
        request of a ``runjob`` process, which runs the job itself once granted a slot."""
        return self.model(
            job_id=job_id,
            job_name=job_name,
            status=RunStatus.QUEUED,
            trigger=RunTrigger.MANUAL,
            scheduled_at=dj_timezone.now(),
            hostname=HOSTNAME if instance else "",
            pid=os.getpid() if instance else None,
            instance=instance,
            requested_by=requested_by[:150],
        )

    def retry_row(self, failed: JobRun, due: datetime, instance: str = "") -> JobRun:
        """The (unsaved) ``queued`` next attempt of ``failed``, due at ``due``. With
        ``instance``, a ``runjob`` process's, which runs it itself once granted a slot."""
        return self.model(
            job_id=failed.job_id,
            job_name=failed.job_name,
            status=RunStatus.QUEUED,
            trigger=RunTrigger.RETRY,
            scheduled_at=due,
            hostname=HOSTNAME if instance else "",
            pid=os.getpid() if instance else None,
            instance=instance,
            requested_by=failed.requested_by,
            attempt=failed.attempt + 1,
            retry_of=failed.retry_of or failed.pk,
            # A run scheduled from code is tried again with its arguments (its key stays
            # with the first attempt); a task's attempt keeps its queue and priority.
            arguments=failed.arguments,
            result=_task_fields(failed.result),
        )

    def scheduled_row(
        self,
        job_id: str,
        job_name: str,
        due: datetime,
        arguments: dict[str, Any],
        key: str = "",
        requested_by: str = "",
        trigger: str = "code",
    ) -> JobRun:
        """An (unsaved) ``queued`` run scheduled from code for ``due``, with its arguments
        (``{"args": [...], "kwargs": {...}}``, checked by ``scheduler.arguments``) and
        its idempotency ``key`` (unique per job while the row exists)."""
        return self.model(
            job_id=job_id,
            job_name=job_name,
            status=RunStatus.QUEUED,
            trigger=trigger,
            scheduled_at=due,
            arguments=arguments,
            key=key,
            requested_by=requested_by[:150],
        )

    def prune(self, before: datetime, batch: int = 10_000) -> int:
        """Delete finished runs scheduled before ``before``, ``batch`` at a time (a
        million rows in one statement would hold the table's write lock for long).
        Returns how many were deleted."""
        deleted = 0
        while True:
            ids = list(
                self.filter(scheduled_at__lt=before, status__in=JobRun.FINAL)
                .order_by()
                .values_list("id", flat=True)[:batch]
            )
            if not ids:
                return deleted
            deleted += self.filter(pk__in=ids).delete()[0]


def _task_fields(result: Any) -> Any:
    """What a task run's next attempt keeps of its ``result``: where and how it was
    enqueued, not how it ended."""
    if not isinstance(result, dict):
        return None
    return {k: v for k, v in result.items() if k not in ("return_value", "exception_class")}


class Job(models.Model):
    """A job as registered in code, mirrored for the admin and for pause/resume.

    APScheduler's own state (pickled trigger, next run time) lives in
    django-apscheduler's ``DjangoJob`` table under the same id.
    """

    id = models.CharField(_("id"), max_length=255, primary_key=True)
    name = models.CharField(_("name"), max_length=255)
    func = models.CharField(_("function"), max_length=255)
    kind = models.CharField(_("kind"), max_length=16)
    # Display text only ("minute=*/5, hour=1"; cut to the column, with an ellipsis).
    schedule = models.CharField(_("schedule"), max_length=255)
    # The schedule itself, as declared: {"crontab": "0 3 * * *"}, {"minute": "*/5"} or
    # {"minutes": 5}. The admin words it and rebuilds its trigger from this, never from
    # the text, which cannot be parsed back ("day=last fri, 1st mon" has ", " in a value).
    schedule_fields = models.JSONField(
        _("schedule fields"), default=dict, db_default={}, blank=True
    )
    timezone = models.CharField(_("time zone"), max_length=64)
    options = models.JSONField(_("options"), default=dict)
    # How a run happens (timeout, isolation, retries, overlap), as declared; {} for the
    # defaults. Not in the fingerprint: changing it must not move the job's schedule.
    run_options = models.JSONField(_("run options"), default=dict, db_default={}, blank=True)
    enabled = models.BooleanField(
        _("enabled"), default=True, help_text=_("Set in code with enabled=False.")
    )
    paused = models.BooleanField(_("paused"), default=False)
    # Set when the admin changes ``paused``; the running scheduler applies the
    # change to its store and clears it.
    pending_change = models.BooleanField(default=False, db_index=True)
    fingerprint = models.CharField(max_length=64)
    synced_at = models.DateTimeField(_("synced at"))

    objects: ClassVar[OnSchedulerDatabase[Self]] = OnSchedulerDatabase()

    class Meta:
        verbose_name = _("job")
        verbose_name_plural = _("jobs")
        ordering = ["id"]
        permissions = [
            ("run_job", _("Can run jobs now")),
            ("pause_job", _("Can pause and resume jobs")),
        ]
        indexes = [
            # The jobs with a pause or resume to apply, in id order: what the running
            # scheduler asks every poll and at take-over. SQLite reads "WHERE
            # pending_change" through no index on that column, and went over all
            # 100,000 rows, in id order, for each ask (31 ms); this one holds only the
            # rows with a change to apply (0.06 ms).
            models.Index(
                fields=["id"], condition=Q(pending_change=True), name="scheduler_job_pending"
            ),
        ]

    def __str__(self) -> str:
        return self.id


class RunStatus(models.TextChoices):
    QUEUED = "queued", _("queued")
    RUNNING = "running", _("running")
    SUCCEEDED = "succeeded", _("succeeded")
    FAILED = "failed", _("failed")
    MISSED = "missed", _("missed")
    SKIPPED = "skipped", _("skipped")
    INTERRUPTED = "interrupted", _("interrupted")
    TIMED_OUT = "timed_out", _("timed out")


class RunTrigger(models.TextChoices):
    SCHEDULE = "schedule", _("schedule")
    MANUAL = "manual", _("manual")
    # Another attempt of a failed run (the job's ``retries``).
    RETRY = "retry", _("retry")
    # Scheduled from code at run time (``myjob.schedule(...)``, ``scheduler.schedule``).
    CODE = "code", _("from code")
    # Enqueued through Django's task framework (``scheduler.tasks.SchedulerBackend``).
    TASK = "task", _("task")


class JobRun(models.Model):
    """One run of a job: scheduled, caught up, missed, skipped or run by hand."""

    Status = RunStatus
    Trigger = RunTrigger

    FINAL = (
        Status.SUCCEEDED,
        Status.FAILED,
        Status.MISSED,
        Status.SKIPPED,
        Status.INTERRUPTED,
        Status.TIMED_OUT,
    )

    id = models.BigAutoField(primary_key=True)
    # Plain text, not a foreign key: history outlives its job. Not indexed on its
    # own: run_job_recent starts with it, and every index costs each run's INSERT.
    job_id = models.CharField(_("job"), max_length=255)
    job_name = models.CharField(_("job name"), max_length=255, blank=True)
    status = models.CharField(_("status"), max_length=12, choices=Status.choices)
    trigger = models.CharField(_("trigger"), max_length=8, choices=Trigger.choices)
    scheduled_at = models.DateTimeField(
        _("scheduled at"), help_text=_("The fire time it serves, or when it was requested.")
    )
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)
    duration = models.FloatField(
        _("duration"), null=True, blank=True, help_text=_("Seconds of real execution.")
    )
    hostname = models.CharField(_("host"), max_length=255, blank=True)
    pid = models.IntegerField(_("pid"), null=True, blank=True)
    # The SchedulerInstance that ran it: a run left ``running`` by an instance
    # whose heartbeat stopped is marked interrupted by the next leader (found
    # through run_status_recent: few rows are running).
    instance = models.CharField(max_length=32, blank=True)
    requested_by = models.CharField(_("requested by"), max_length=150, blank=True)
    exception = models.TextField(_("exception"), blank=True)
    traceback = models.TextField(_("traceback"), blank=True)
    output = models.TextField(_("output"), blank=True)
    # Which attempt this is (1 for the first), and the first attempt's id on the later
    # ones (plain ids, as the job: history outlives what it links to).
    attempt = models.PositiveSmallIntegerField(_("attempt"), default=1, db_default=1)
    # Where its body ran: "" in the scheduler (a thread or a child process), "celery" on a
    # Celery worker (``hostname`` is then the worker's). A ``queued`` row with an
    # executor waits for a worker, not for the scheduler.
    executor = models.CharField(_("executor"), max_length=16, blank=True, default="", db_default="")
    retry_of = models.BigIntegerField(_("retry of"), null=True, blank=True)
    # What a run scheduled from code is called with: {"args": [...], "kwargs": {...}},
    # plain JSON only (checked against the function when it is scheduled); {} otherwise.
    arguments = models.JSONField(_("arguments"), default=dict, db_default={}, blank=True)
    # A task's side of a run enqueued through Django's task framework
    # (scheduler.tasks.SchedulerBackend): {"return_value": ...} once it succeeded,
    # {"exception_class": "module.Class"} once it failed; its queue and priority. None
    # for every other run.
    result = models.JSONField(_("task result"), null=True, blank=True, default=None)
    # A run scheduled from code with an idempotency key: one row per job and key.
    key = models.CharField(
        _("idempotency key"), max_length=255, blank=True, default="", db_default=""
    )

    objects: ClassVar[JobRunManager] = JobRunManager()

    class Meta:
        verbose_name = _("run")
        verbose_name_plural = _("runs")
        ordering = ["-scheduled_at", "-id"]
        indexes = [
            models.Index(fields=["-scheduled_at", "-id"], name="run_recent"),
            models.Index(fields=["job_id", "-scheduled_at", "-id"], name="run_job_recent"),
            models.Index(fields=["status", "-scheduled_at", "-id"], name="run_status_recent"),
            models.Index(fields=["trigger", "-scheduled_at", "-id"], name="run_trigger_recent"),
            # A first attempt's later ones (the admin's run page); only retries are in it.
            models.Index(
                fields=["retry_of", "attempt"],
                condition=Q(retry_of__isnull=False),
                name="run_attempts",
            ),
            # The runs waiting for their due time (run-now requests, retries, runs scheduled
            # from code, fire times waiting their turn), in the order they fall due: the
            # control thread's "what is due" and "when is the next one" read only these,
            # however many finished rows there are, and a million waiting runs are a
            # range scan away.
            models.Index(
                fields=["scheduled_at", "id"],
                condition=Q(status="queued"),
                name="run_queued_due",
            ),
            # What finished since the detector's last pass (scheduler.incidents): a range of
            # the runs that ended in it, however long the history.
            models.Index(fields=["finished_at"], name="run_finished"),
            # The same rows by where they wait and why: the dashboard's bounded counts of
            # waiting runs, each kind a range of its own (stats.queued_by_trigger).
            models.Index(
                fields=["executor", "trigger", "scheduled_at"],
                condition=Q(status="queued"),
                name="run_queued_kind",
            ),
        ]
        constraints = [
            # The fence: one row per job and fire time, whoever tries to run it.
            models.UniqueConstraint(
                fields=["job_id", "scheduled_at"],
                condition=Q(trigger="schedule"),
                name="one_run_per_fire_time",
            ),
            # A request retried by the caller's code never schedules a second run.
            models.UniqueConstraint(
                fields=["job_id", "key"], condition=~Q(key=""), name="one_run_per_key"
            ),
            models.CheckConstraint(
                condition=Q(status__in=RunStatus.values), name="run_status_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.job_id} @ {self.scheduled_at:%Y-%m-%d %H:%M:%S %Z}"

    def cancel(self, reason: str = "") -> bool:
        """Cancel this run if it has not started (``scheduler.requests.cancel``); whether it
        was. The row is read again either way."""
        from scheduler.requests import cancel

        return cancel(self, reason)

    @property
    def lateness(self) -> float | None:
        """Seconds between the fire time and the real start."""
        if self.started_at is None or self.trigger != self.Trigger.SCHEDULE:
            return None
        return (self.started_at - self.scheduled_at).total_seconds()


class SchedulerInstance(models.Model):
    """A running ``runapscheduler`` process, as it last reported itself."""

    class Role(models.TextChoices):
        ACTIVE = "active", pgettext_lazy("scheduler instance role", "active")
        STANDBY = "standby", _("standby")
        STOPPED = "stopped", _("stopped")
        # A ``runjob`` process running one job by hand.
        RUNJOB = "runjob", _("runjob")
        # A Celery worker running jobs sent to it (executor="celery").
        WORKER = "worker", _("worker")

    id = models.CharField(_("id"), max_length=32, primary_key=True)
    hostname = models.CharField(_("host"), max_length=255)
    pid = models.IntegerField(_("pid"))
    version = models.CharField(_("version"), max_length=32)
    role = models.CharField(_("role"), max_length=8, choices=Role.choices)
    started_at = models.DateTimeField(_("started at"))
    heartbeat_at = models.DateTimeField(_("last heartbeat"), db_index=True)
    stopped_at = models.DateTimeField(_("stopped at"), null=True, blank=True)

    objects: ClassVar[OnSchedulerDatabase[Self]] = OnSchedulerDatabase()

    class Meta:
        verbose_name = _("scheduler instance")
        verbose_name_plural = _("scheduler instances")
        ordering = ["-heartbeat_at"]

    def __str__(self) -> str:
        return f"{self.hostname}:{self.pid}"


class Lease(models.Model):
    """The leader lease: whoever holds an unexpired lease is the one active scheduler."""

    name = models.CharField(max_length=64, primary_key=True)
    holder = models.CharField(max_length=32)
    # Grows by one each time the lease changes hands.
    token = models.BigIntegerField(default=1)
    acquired_at = models.DateTimeField()
    expires_at = models.DateTimeField()

    objects: ClassVar[OnSchedulerDatabase[Self]] = OnSchedulerDatabase()

    class Meta:
        verbose_name = _("leader lease")
        verbose_name_plural = _("leader leases")

    def __str__(self) -> str:
        return f"{self.name} held by {self.holder} until {self.expires_at}"


class Incident(models.Model):
    """Something that broke, detected from the history by the active scheduler
    (``scheduler.incidents``): open until it is over (``resolved_at``). One open
    incident per kind and job, however many fire times it spans."""

    class Kind(models.TextChoices):
        FAILING = "failing", _("failing")
        MISSED = "missed", _("missed fire time")
        OVERDUE = "overdue", _("no successful run")
        STUCK = "stuck", _("stuck run")
        NO_SCHEDULER = "no_scheduler", _("no active scheduler")

    id = models.BigAutoField(primary_key=True)
    kind = models.CharField(_("kind"), max_length=16, choices=Kind.choices)
    # "" for an incident of the scheduler itself (no active scheduler).
    job_id = models.CharField(_("job"), max_length=255, blank=True)
    title = models.CharField(_("title"), max_length=255)
    detail = models.TextField(_("detail"), blank=True)
    opened_at = models.DateTimeField(_("opened at"))
    last_seen_at = models.DateTimeField(_("last seen at"))
    resolved_at = models.DateTimeField(_("resolved at"), null=True, blank=True)
    # How many times it was seen while open (failed runs, missed fire times).
    occurrences = models.PositiveIntegerField(_("occurrences"), default=1)
    # The run that opened it, and the one that ended it, when runs did.
    run_id = models.BigIntegerField(_("run"), null=True, blank=True)
    resolved_by = models.BigIntegerField(_("resolved by run"), null=True, blank=True)

    objects: ClassVar[OnSchedulerDatabase[Self]] = OnSchedulerDatabase()

    class Meta:
        verbose_name = _("incident")
        verbose_name_plural = _("incidents")
        ordering = ["-opened_at", "-id"]
        indexes = [models.Index(fields=["-opened_at", "-id"], name="incident_recent")]
        constraints = [
            # De-duplication: a second detector (after a take-over) finds the open one.
            models.UniqueConstraint(
                fields=["kind", "job_id"],
                condition=Q(resolved_at__isnull=True),
                name="one_open_incident",
            ),
        ]

    def __str__(self) -> str:
        return self.title

    @property
    def is_open(self) -> bool:
        return self.resolved_at is None


class Notification(models.Model):
    """The outbox of alerts: one row per incident change (opened, resolved) and notifier,
    sent by the active scheduler's delivery thread, tried again until it goes through
    (or gives up, saying why). In the database, so that a take-over loses none."""

    incident = models.ForeignKey(Incident, models.CASCADE, related_name="notifications")
    state = models.CharField(_("state"), max_length=8)  # alerts.OPENED or alerts.RESOLVED
    notifier = models.CharField(_("notifier"), max_length=64)
    created_at = models.DateTimeField(_("created at"))
    next_try_at = models.DateTimeField(_("next try at"))
    sent_at = models.DateTimeField(_("sent at"), null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(_("attempts"), default=0)
    # Set when it was given up (too many attempts): it is not tried again.
    given_up_at = models.DateTimeField(_("given up at"), null=True, blank=True)
    last_error = models.TextField(_("last error"), blank=True)

    objects: ClassVar[OnSchedulerDatabase[Self]] = OnSchedulerDatabase()

    class Meta:
        verbose_name = _("notification")
        verbose_name_plural = _("notifications")
        indexes = [
            models.Index(
                fields=["next_try_at"],
                condition=Q(sent_at__isnull=True, given_up_at__isnull=True),
                name="notification_due",
            )
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["incident", "state", "notifier"], name="one_notification_each"
            )
        ]

    def __str__(self) -> str:
        return f"{self.notifier}: {self.state} #{self.incident_id}"


class Dashboard(JobRun):
    """The scheduler dashboard's entry in the admin index (no table of its own)."""

    class Meta:
        proxy = True
        verbose_name = _("dashboard")
        verbose_name_plural = _("dashboard")
