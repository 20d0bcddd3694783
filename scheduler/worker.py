"""The worker's side of ``executor="celery"``: the Celery task that runs a claimed run.

Include it in your Celery app (``app.autodiscover_tasks(["scheduler"],
related_name="worker")``, or ``include=["scheduler.worker"]``); the workers
need the same code as the scheduler (the jobs are looked up by id among those
registered in it, never imported from the message) and the same database.

The task ``scheduler.run`` gets a run's row id and job id. It takes the row
with a conditional update (``queued`` for a worker, to ``running`` with this
worker's host, pid and instance), so that a message delivered twice, or a run
cancelled in the admin meanwhile, runs at most once; then it runs the job in
the worker's process and records the outcome through the runner, as the
scheduler records its own runs (output, exception, traceback, duration, the
next attempt of a failure its job retries). Celery's soft time limit (the
job's ``timeout``) stops the job with an exception, recorded ``timed_out``; a
hard time limit or a lost pool process is recorded by the task's
``on_failure``, which Celery calls in the worker's main process.

Each worker has a ``SchedulerInstance`` row (role ``worker``) that its main
process heartbeats: the active scheduler counts its runs against their job's
``max_instances``, and marks them interrupted if the worker dies.

Nothing of the runtime is imported until a run comes: a web process whose
Celery app discovers this module loads Celery's task only.
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import Any

from celery import Task, shared_task
from celery.signals import worker_init, worker_ready, worker_shutdown

logger = logging.getLogger(__name__)


class _Worker:
    """This worker's identity (made in the main process before the pool forks, so that its
    children share it) and its heartbeat."""

    instance_id = ""
    presence: Any = None


def _name_the_worker(**kwargs: Any) -> None:
    _Worker.instance_id = uuid.uuid4().hex


def _heartbeat(**kwargs: Any) -> None:
    from scheduler.lease import Presence
    from scheduler.models import SchedulerInstance

    if not _Worker.instance_id:
        _Worker.instance_id = uuid.uuid4().hex
    presence = Presence(SchedulerInstance.Role.WORKER, _Worker.instance_id)
    presence.start()
    _Worker.presence = presence


def _stopped(**kwargs: Any) -> None:
    if _Worker.presence is not None:
        _Worker.presence.finish()


# (Connected by hand: Celery's decorators are untyped.) weak=False: module-level functions.
worker_init.connect(_name_the_worker, weak=False)
worker_ready.connect(_heartbeat, weak=False)
worker_shutdown.connect(_stopped, weak=False)


def _instance() -> str:
    if not _Worker.instance_id:  # a worker started without its signals (a test's eager app)
        _Worker.instance_id = uuid.uuid4().hex
    return _Worker.instance_id


class RunTask(Task):  # type: ignore[misc]  # Celery is untyped
    """Records what Celery itself saw go wrong: the hard time limit, a lost pool process."""

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        from billiard.exceptions import WorkerLostError
        from celery.exceptions import TimeLimitExceeded

        run_id = args[0] if args else None
        if run_id is None:
            return
        if isinstance(exc, TimeLimitExceeded):
            _settle(
                run_id,
                "timed_out",
                f"Timed out: Celery's hard time limit ({exc}) stopped its worker process.",
            )
        elif isinstance(exc, WorkerLostError):
            _settle(run_id, "interrupted", f"Interrupted: its worker process was lost ({exc}).")


def _settle(run_id: int, status: str, reason: str) -> None:
    """Finish a run its pool process could not finish (it was killed), through the runner:
    a timeout its job retries files the next attempt, as any timeout does."""
    from django.utils import timezone

    from scheduler import lease
    from scheduler.models import JobRun
    from scheduler.registry import autodiscover
    from scheduler.runner import Runner

    row = JobRun.objects.filter(pk=run_id, status=JobRun.Status.RUNNING).first()
    if row is None:
        return
    row.status, row.exception = status, reason
    row.finished_at = timezone.now()
    if row.started_at is not None:
        row.duration = (row.finished_at - row.started_at).total_seconds()
    runner = Runner(lease.Alone(_instance()))
    runner.results.opened([row])
    runner.finish(row, autodiscover().get(row.job_id), status == JobRun.Status.TIMED_OUT)


def _run(self: Task, run_id: int, job_id: str) -> str:
    """Run the run ``run_id`` of the job registered as ``job_id``; its outcome goes to the
    row. Returns the final status (or why it did not run) for Celery's logs."""
    from celery.exceptions import SoftTimeLimitExceeded
    from django.db import close_old_connections
    from django.utils import timezone

    from scheduler import conf, lease
    from scheduler.fleet import EXECUTOR
    from scheduler.isolation import Outcome
    from scheduler.models import JobRun
    from scheduler.registry import autodiscover
    from scheduler.runner import Runner, make_call, run_here

    close_old_connections()
    try:
        specs = autodiscover()
        host = str(getattr(self.request, "hostname", "") or conf.HOSTNAME)[:255]
        runs = JobRun.objects
        taken = runs.filter(pk=run_id, status=JobRun.Status.QUEUED, executor=EXECUTOR).update(
            status=JobRun.Status.RUNNING,
            started_at=timezone.now(),
            hostname=host,
            pid=os.getpid(),
            instance=_instance(),
        )
        if not taken:
            # Run already (a message delivered twice), cancelled, or settled meanwhile.
            logger.info("Run #%s of %r is not waiting for a worker: not run.", run_id, job_id)
            return "not run"
        row = runs.get(pk=run_id)
        runner = Runner(lease.Alone(_instance()))
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
        else:
            limit = conf.get("MAX_OUTPUT")
            call = make_call(spec, None, row.scheduled_at)
            outcome = run_here(call, limit, retry_on=spec.retry_on, stops=(SoftTimeLimitExceeded,))
        runner.record_outcome(row, spec, outcome)
        return str(row.status)
    finally:
        close_old_connections()


# The task the scheduler sends runs to, by name (scheduler.fleet.TASK).
run: Any = shared_task(bind=True, base=RunTask, name="scheduler.run", ignore_result=True)(_run)
