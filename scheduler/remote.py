"""A run sent to another process, on that process's side: take the row, run, record.

Shared by the workers of every fleet the scheduler sends runs to
(``scheduler.worker`` for Celery, ``scheduler.taskworker`` for Django's task
framework): the worker takes the run's row with a conditional update
(``queued`` for that executor, to ``running`` with the worker's host, pid and
instance), so that a message delivered twice, or a run cancelled in the admin
while it waited, runs at most once; it looks the job up by id among the jobs
registered in its own code (never imports anything the message names), runs
it and records the outcome through the runner, as the scheduler records its
own runs (output, exception, traceback, duration, the next attempt of a
failure its job retries).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid

from django.db import close_old_connections
from django.utils import timezone

from scheduler import checkins, conf, lease, signals
from scheduler.body import Outcome, TimedOut, make_call, run_here
from scheduler.models import JobRun, SchedulerInstance
from scheduler.registry import autodiscover
from scheduler.runner import Runner

logger = logging.getLogger(__name__)

NOT_RUN = "not run"
# The fleets runs are sent to, as their rows record them (``JobRun.executor``).
CELERY, TASKS = "celery", "tasks"


class WorkerIdentity:
    """A worker process's instance id, recorded in the rows it runs, and its heartbeat (a
    ``SchedulerInstance`` of role ``worker``): the active scheduler counts the worker's
    runs against their jobs' ``max_instances`` and marks them interrupted if it dies."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._id = ""
        self._presence: lease.Presence | None = None
        self._checkins: checkins.CheckIns | None = None

    def instance_id(self) -> str:
        """The id (made at the first ask: a Celery worker asks before its pool forks, so
        that its pool processes share it)."""
        with self._lock:
            if not self._id:
                self._id = uuid.uuid4().hex
            return self._id

    def heartbeat(self) -> None:
        """Start heartbeating, once (in the process that stays: not before a fork), and the
        check-ins of the runs this worker runs (Healthchecks pings, Sentry Crons)."""
        instance_id = self.instance_id()
        with self._lock:
            if self._presence is None:
                self._presence = lease.Presence(SchedulerInstance.Role.WORKER, instance_id)
                self._presence.start()
                self._checkins = checkins.CheckIns()
                self._checkins.start()
                checkins.connect(self._checkins)

    def stop(self) -> None:
        with self._lock:
            presence, self._presence = self._presence, None
            sender, self._checkins = self._checkins, None
        if sender is not None:
            checkins.disconnect(sender)
            sender.stop(time.monotonic() + 2.0)
        if presence is not None:
            presence.finish()


# This process's, when it is a worker of a fleet (scheduler.worker, scheduler.taskworker).
worker_identity = WorkerIdentity()


def carry_out(
    run_id: int,
    job_id: str,
    executor: str,
    host: str,
    instance: str,
    stops: tuple[type[BaseException], ...] = (),
) -> str:
    """Take the run ``run_id`` sent to ``executor`` and run it here; its final status (or
    ``NOT_RUN``: it was not waiting for a worker any more).

    With ``stops`` (Celery's soft time limit), the job's timeout is the fleet's to
    enforce: one of them raised in the job is its timeout. Without, the runner
    watches the timeout here, as in the scheduler (and honours ``isolation``)."""
    close_old_connections()
    try:
        specs = autodiscover()
        runs = JobRun.objects
        taken = runs.filter(pk=run_id, status=JobRun.Status.QUEUED, executor=executor).update(
            status=JobRun.Status.RUNNING,
            started_at=timezone.now(),
            hostname=host[:255],
            pid=os.getpid(),
            instance=instance,
        )
        if not taken:
            logger.info("Run #%s of %r is not waiting for a worker: %s.", run_id, job_id, NOT_RUN)
            return NOT_RUN
        row = runs.get(pk=run_id)
        runner = Runner(lease.Alone(instance))
        runner.results.opened([row])
        spec = specs.get(job_id)
        if spec is None:
            outcome = Outcome(
                JobRun.Status.FAILED,
                f"Job {job_id!r} is not registered in this worker's code.",
                "",
                "",
                0.0,
            )
            runner.record_outcome(row, None, outcome)
        elif stops:
            call = make_call(spec, None, row.scheduled_at, row.arguments, row.pk)
            signals.started(Runner, row)
            outcome = run_here(
                call, conf.get("MAX_OUTPUT"), retry_on=spec.retry_on, stops=(TimedOut, *stops)
            )
            runner.record_outcome(row, spec, outcome)
        else:
            runner.execute(
                row, make_call(spec, None, row.scheduled_at, row.arguments, row.pk), spec
            )
        return str(row.status)
    finally:
        close_old_connections()


def settle_lost(run_id: int, instance: str, status: str, reason: str) -> None:
    """Finish a run whose process was killed under it (a time limit, a lost process), through
    the runner: a timeout its job retries files the next attempt, as any timeout does."""
    row = JobRun.objects.filter(pk=run_id, status=JobRun.Status.RUNNING).first()
    if row is None:
        return
    row.status, row.exception = status, reason
    row.finished_at = timezone.now()
    if row.started_at is not None:
        row.duration = (row.finished_at - row.started_at).total_seconds()
    runner = Runner(lease.Alone(instance))
    runner.results.opened([row])
    runner.finish(row, autodiscover().get(row.job_id), status == JobRun.Status.TIMED_OUT)
