"""The worker's side of ``executor="tasks"``: the task that runs a claimed run on a
``django.tasks`` backend (Django 6's task framework, or the ``django-tasks`` backport on
Django 5.2).

The scheduler enqueues ``run_task(run_id, job_id)`` on ``SCHEDULER['TASK_BACKEND']``;
the backend's worker (``manage.py db_worker`` of django-tasks-db, say) runs it,
and it takes the row, runs the job registered under that id in the worker's code
and records the outcome (``scheduler.remote``). The framework has no time limits:
the job's ``timeout`` is watched here as in the scheduler (and
``isolation="process"`` holds). Each worker process heartbeats as a
``SchedulerInstance`` (role ``worker``) from its first run on, so that the active
scheduler marks the runs of a worker that died interrupted.

Importing this module declares the task, which the framework checks against the
configured backend: only processes that send or run such runs import it.
"""

from __future__ import annotations

try:  # Django 6
    from django.tasks import task
    from django.tasks.exceptions import TaskException
except ImportError:  # Django 5.2 and the backport
    from django_tasks import task  # type: ignore[no-redef,assignment,unused-ignore]
    from django_tasks.exceptions import TaskException  # type: ignore[no-redef,assignment,unused-ignore]

# What the framework raises for a task it will not take (a bad priority, say): sending
# again will not cure it.
InvalidTask = TaskException

__all__ = ["InvalidTask", "run_task"]


@task()
def run_task(run_id: int, job_id: str) -> str:
    """Run the run ``run_id`` of the job registered as ``job_id``; its outcome goes to the
    row. Returns the final status (or why it did not run)."""
    from scheduler import conf
    from scheduler.remote import TASKS, carry_out, worker_identity

    worker_identity.heartbeat()  # from its first run on
    return carry_out(run_id, job_id, TASKS, conf.HOSTNAME, worker_identity.instance_id())
