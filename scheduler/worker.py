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
from typing import Any

from celery import Task, shared_task
from celery.signals import worker_init, worker_ready, worker_shutdown

logger = logging.getLogger(__name__)


def _name_the_worker(**kwargs: Any) -> None:
    from scheduler.remote import worker_identity

    worker_identity.instance_id()  # before the pool forks: its processes share it


def _heartbeat(**kwargs: Any) -> None:
    from scheduler.remote import worker_identity

    worker_identity.heartbeat()


def _stopped(**kwargs: Any) -> None:
    from scheduler.remote import worker_identity

    worker_identity.stop()


# (Connected by hand: Celery's decorators are untyped.) weak=False: module-level functions.
worker_init.connect(_name_the_worker, weak=False)
worker_ready.connect(_heartbeat, weak=False)
worker_shutdown.connect(_stopped, weak=False)


def _instance() -> str:
    from scheduler.remote import worker_identity

    return worker_identity.instance_id()


class RunTask(Task):  # type: ignore[misc]  # Celery is untyped
    """Records what Celery itself saw go wrong: the hard time limit, a lost pool process."""

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        from billiard.exceptions import WorkerLostError
        from celery.exceptions import TimeLimitExceeded

        from scheduler.remote import settle_lost

        run_id = args[0] if args else None
        if run_id is None:
            return
        if isinstance(exc, TimeLimitExceeded):
            settle_lost(
                run_id,
                _instance(),
                "timed_out",
                f"Timed out: Celery's hard time limit ({exc}) stopped its worker process.",
            )
        elif isinstance(exc, WorkerLostError):
            lost = f"Interrupted: its worker process was lost ({exc})."
            settle_lost(run_id, _instance(), "interrupted", lost)


def _run(self: Task, run_id: int, job_id: str) -> str:
    """Run the run ``run_id`` of the job registered as ``job_id`` (scheduler.remote); its
    outcome goes to the row. Returns the final status (or why it did not run)."""
    from celery.exceptions import SoftTimeLimitExceeded

    from scheduler import conf
    from scheduler.remote import CELERY, carry_out

    host = str(getattr(self.request, "hostname", "") or conf.HOSTNAME)
    return carry_out(run_id, job_id, CELERY, host, _instance(), stops=(SoftTimeLimitExceeded,))


# The task the scheduler sends runs to, by name (scheduler.fleet.CELERY_TASK).
run: Any = shared_task(bind=True, base=RunTask, name="scheduler.run", ignore_result=True)(_run)
