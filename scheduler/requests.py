"""Requests for the scheduler, filed from the web side (the admin) or any code: run a
job now, pause it, resume it, cancel a run that has not started.

Nothing here runs a job. A request is a row: a ``queued`` manual run, or a job's
``paused`` flag marked changed; the active scheduler carries it out within
``SCHEDULER['POLL_INTERVAL']`` (``scheduler.control``), at once on PostgreSQL,
where ``notify`` wakes it. This module loads no part of the runtime.
"""

from __future__ import annotations

import logging

from django.db import connections
from django.db.models import QuerySet
from django.utils import timezone

from scheduler import conf
from scheduler.models import Job, JobRun

logger = logging.getLogger(__name__)

# The channel the active scheduler LISTENs on (PostgreSQL).
CHANNEL = "scheduler_control"


def notify() -> None:
    """Wake the active scheduler now (PostgreSQL; elsewhere it finds the request by polling)."""
    from django.db import InterfaceError, OperationalError

    connection = connections[conf.database()]
    if connection.vendor != "postgresql":
        return
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"NOTIFY {CHANNEL}")
    except (OperationalError, InterfaceError) as exc:
        logger.warning("Could not notify the scheduler (it will poll): %s", exc)


def queue_run(job: Job, user: str) -> JobRun:
    """Ask for a run of ``job`` now, on behalf of ``user``: a ``queued`` manual run."""
    run = JobRun.objects.request_row(job.id, job.name, user)
    run.save(using=conf.database(), force_insert=True)
    notify()
    return run


def set_paused(jobs: QuerySet[Job], paused: bool) -> int:
    """Pause (or resume) ``jobs``: the active scheduler applies it within a poll."""
    changed = (
        jobs.filter(enabled=True).exclude(paused=paused).update(paused=paused, pending_change=True)
    )
    if changed:
        notify()
    return changed


def cancel_queued(runs: QuerySet[JobRun], reason: str) -> int:
    """Cancel those of ``runs`` still ``queued`` (a run-now request, a pending retry, a
    fire time waiting its turn): each ends ``skipped`` with ``reason``. Returns how many.

    Conditional on ``queued``, as the scheduler's claim of a queued run is: whichever
    of the two comes first wins, and a run that started meanwhile is left alone.
    """
    return runs.filter(status=JobRun.Status.QUEUED).update(
        status=JobRun.Status.SKIPPED, finished_at=timezone.now(), exception=reason
    )
