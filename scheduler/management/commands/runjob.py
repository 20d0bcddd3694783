from __future__ import annotations

import getpass
import sys
import time
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.utils import timezone

from scheduler import checkins, conf, db, health, lease
from scheduler.body import make_call
from scheduler.management.base import SchedulerCommand
from scheduler.models import JobRun
from scheduler.registry import JobSpec, autodiscover
from scheduler.requests import notify
from scheduler.runner import Runner

Status = JobRun.Status

# Seconds between two looks at whether the run may start.
WAIT_STEP = 0.25


class Command(SchedulerCommand):
    help = (
        "Run one registered job now, in the foreground, and record it as a manual run. "
        "Like every run of the job, it waits for one of the job's max_instances slots "
        "(the active scheduler hands them out; runs of the scheduler and of other runjob "
        "processes count). Exits 0 on success, 1 when the job failed, 2 when the id is "
        "unknown, 3 with --no-wait when no slot is free."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "job_id", help="The id of a registered job (see runapscheduler --list)."
        )
        parser.add_argument(
            "--no-wait",
            action="store_true",
            help="Do not wait for a free slot: record the request as skipped and exit 3.",
        )

    def handle(self, *args: Any, job_id: str, no_wait: bool, **options: Any) -> None:
        specs = autodiscover()
        if job_id not in specs:
            known = ", ".join(sorted(specs)) or "none"
            self.stderr.write(f"Unknown job id {job_id!r}. Registered jobs: {known}.")
            sys.exit(2)
        spec = specs[job_id]
        try:
            db.retrying(db.check_migrated, "read the migrations")
        except db.NotMigrated as exc:
            raise CommandError(str(exc)) from None
        presence = lease.Presence()
        presence.start()
        # Its runs check in as the scheduler's do (Healthchecks pings, Sentry Crons).
        sender = checkins.CheckIns()
        sender.start()
        checkins.connect(sender)
        try:
            try:
                run = Slot(spec, presence.instance_id, self.stdout.write).take(no_wait)
            except KeyboardInterrupt:
                self.stderr.write("Stopped waiting; the job did not run.")
                sys.exit(130)
            if run is None:
                self.stderr.write(
                    f"Job {job_id!r} not run: {spec.max_instances} run(s) still going "
                    "(max_instances); recorded as skipped."
                )
                sys.exit(3)
            # On its own: no lease, and its one result is written at once. A failure its
            # job retries files the next attempt as this process's, which it waits for.
            worker = Runner(lease.Alone(presence.instance_id))
            worker.retry_owner = presence.instance_id
            filed: list[JobRun] = []
            worker.queued = filed.append
            while True:
                worker.results.opened([run])
                run.started_at = timezone.now()
                worker.execute(
                    run, make_call(spec, None, run.scheduled_at, run.arguments, run.pk), spec
                )
                if not filed:
                    break
                retry = filed.pop()
                outcome = Status(run.status).label
                self.stderr.write(
                    f"Job {job_id!r} {outcome} (attempt {run.attempt}, run #{run.pk}); "
                    f"attempt {retry.attempt} at {retry.scheduled_at.isoformat()} (run "
                    f"#{retry.pk})."
                )
                try:
                    run = Slot(spec, presence.instance_id, self.stdout.write, retry).take(False)
                except KeyboardInterrupt:
                    self.stderr.write(f"Stopped waiting; attempt {retry.attempt} did not run.")
                    sys.exit(130)
                assert run is not None, "a slot waited for is granted"
        finally:
            checkins.disconnect(sender)
            sender.stop(time.monotonic() + 5.0)
            presence.finish()
        if run.status == Status.SUCCEEDED:
            self.stdout.write(f"Job {job_id!r} succeeded in {run.duration:.3f} s (run #{run.pk}).")
            return
        attempts = f", attempt {run.attempt}" if run.attempt > 1 else ""
        outcome = Status(run.status).label
        self.stderr.write(
            f"Job {job_id!r} {outcome} after {run.duration:.3f} s (run #{run.pk}{attempts}):"
        )
        self.stderr.write(run.traceback or run.exception)
        sys.exit(1)


class Slot:
    """Takes one of a job's ``max_instances`` slots for a run in this process.

    With an active scheduler, the request is a ``queued`` row of this process
    (its instance id set), which the scheduler turns ``running`` once a slot
    is free, as it does for run-now requests from the admin: one place decides,
    so a scheduled fire time never overlaps this run beyond the limit. Without
    one, this process counts the job's ``running`` rows itself.
    """

    def __init__(
        self, spec: JobSpec, instance_id: str, say: Any, request: JobRun | None = None
    ) -> None:
        self.spec = spec
        self.say = say
        self.runs = JobRun.objects
        # A new request, or a queued row of this process already stored (a next attempt).
        self.request = request or JobRun.objects.request_row(
            spec.id, spec.name, f"runjob ({_user()})", instance_id
        )

    def take(self, no_wait: bool) -> JobRun | None:
        """The ``running`` row of this run, or None (with ``no_wait``, when no slot is free:
        the request is recorded skipped). A request due later (a next attempt) is waited
        for first."""
        said = False
        try:
            while (wait := (self.request.scheduled_at - timezone.now()).total_seconds()) > 0:
                time.sleep(min(wait, WAIT_STEP * 4))
            waited_since = time.monotonic()
            while True:
                if self._granted():
                    return self.request
                waited = time.monotonic() - waited_since
                # Without a scheduler (no request row yet) there is no one to wait for.
                if no_wait and (self.request.pk is None or waited > self._patience()):
                    if self._settle(Status.SKIPPED):
                        return None
                    continue  # granted meanwhile
                if not said and waited > self._patience():
                    said = True
                    self.say(self._waiting())
                time.sleep(WAIT_STEP)
        except BaseException:
            # Ctrl+C or an error while waiting: the request must not run later.
            if self.request.pk is not None:
                self.runs.filter(pk=self.request.pk, status=Status.QUEUED).delete()
            raise

    def _patience(self) -> float:
        # Long enough for the active scheduler to look at the request once.
        return 2 * float(conf.get("POLL_INTERVAL")) + 1.0

    def _granted(self) -> bool:
        if health.health_or_error()["ok"]:
            if self.request.pk is None:
                self.request.save(using=conf.database(), force_insert=True)
                notify()
            status = self.runs.filter(pk=self.request.pk).values_list("status", flat=True).first()
            if status == Status.RUNNING:
                self.request.status = Status.RUNNING
                return True
            if status != Status.QUEUED:
                raise CommandError(f"The request (run #{self.request.pk}) ended as {status}.")
            return False
        # No active scheduler: count the job's running runs here.
        running = self.runs.filter(job_id=self.spec.id, status=Status.RUNNING)
        if running.count() >= self.spec.max_instances:
            return False
        self.request.status = Status.RUNNING
        if self.request.pk is None:
            self.request.save(using=conf.database(), force_insert=True)
            return True
        return bool(
            self.runs.filter(pk=self.request.pk, status=Status.QUEUED).update(status=Status.RUNNING)
        )

    def _settle(self, status: str) -> bool:
        """Record the request as ``status`` unless it was granted meanwhile."""
        reason = (
            f"Skipped: {self.spec.max_instances} run(s) of this job still going (max_instances)."
        )
        if self.request.pk is None:
            self.request.status, self.request.exception = status, reason
            self.request.finished_at = timezone.now()
            self.request.save(using=conf.database(), force_insert=True)
            return True
        return bool(
            self.runs.filter(pk=self.request.pk, status=Status.QUEUED).update(
                status=status, exception=reason, finished_at=timezone.now()
            )
        )

    def _waiting(self) -> str:
        going = list(
            self.runs.filter(job_id=self.spec.id, status=Status.RUNNING).values_list(
                "id", "hostname", "pid"
            )[:5]
        )
        where = ", ".join(f"run #{pk} on {host}:{pid}" for pk, host, pid in going)
        return (
            f"Waiting for a free slot of {self.spec.id!r} (max_instances="
            f"{self.spec.max_instances})" + (f": {where} still going." if where else ".")
        )


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown user"
