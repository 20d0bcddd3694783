"""Requests for the scheduler, filed from the web side (the admin) or any code: run a
job now or at a given time with given arguments, pause it, resume it, cancel a run
that has not started. The public API (``scheduler.schedule``, ``run_now``,
``pause``, ``resume``; ``myjob.schedule(...)``), and what the admin's buttons use.

Nothing here runs a job, and no scheduler needs to run in the calling process. A
request is a row: a ``queued`` run (run now, or scheduled from code for its due
time, with its arguments), or a job's ``paused`` flag marked changed; the active
scheduler carries it out within ``SCHEDULER['POLL_INTERVAL']``
(``scheduler.control``), at once on PostgreSQL, where ``notify`` wakes it. The
row is written in the caller's transaction when the scheduler's tables are in
the caller's database: a run scheduled in a transaction that rolls back is
never there to run. This module loads no part of the runtime.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, connections, transaction
from django.db.models import QuerySet
from django.utils import timezone

from scheduler import arguments, conf
from scheduler.models import Job, JobRun
from scheduler.registry import JobSpec, autodiscover, registry

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


class UnknownJob(LookupError):
    """A request for a job id that the code does not declare; the message names it."""


def _job_id(job: str | Callable[..., Any]) -> str:
    if isinstance(job, str):
        return job
    found: tuple[str, ...] = tuple(getattr(job, "scheduler_job_ids", ()))
    if len(found) != 1:
        name = getattr(job, "__qualname__", repr(job))
        raise UnknownJob(
            f"{name} is not a job (declare it with @job, @cron or @interval)"
            if not found
            else f"{name} is declared as {len(found)} jobs ({', '.join(found)}): pass the id."
        )
    return str(found[0])


def _spec(job_id: str) -> JobSpec:
    """The declaration of ``job_id`` in this process's code (the job modules are
    imported on first use, as the scheduler imports them)."""
    spec = autodiscover().get(job_id)
    if spec is None:
        known = ", ".join(sorted(registry)[:10])
        raise UnknownJob(
            f"No job {job_id!r} is declared in this code (jobs are found in each installed "
            f"app's jobs.py and in SCHEDULER['JOB_MODULES']; declared: {known or 'none'})."
        )
    return spec


def _due(at: datetime | None, delay: timedelta | float | None) -> datetime:
    now = timezone.now()
    if at is not None and delay is not None:
        raise ValueError("Give at= or delay=, not both.")
    if at is not None:
        if not isinstance(at, datetime):
            raise TypeError(f"at={at!r} must be a datetime.")
        if timezone.is_naive(at):
            raise ValueError(
                f"at={at.isoformat()} has no time zone; pass an aware datetime "
                "(django.utils.timezone.now() + timedelta(...), or one with tzinfo)."
            )
        return at
    if delay is None:
        return now
    if isinstance(delay, timedelta):
        seconds = delay.total_seconds()
    elif isinstance(delay, (int, float)) and not isinstance(delay, bool):
        seconds = float(delay)
    else:
        raise TypeError(f"delay={delay!r} must be a timedelta or a number of seconds.")
    if not 0 <= seconds <= MAX_DELAY.total_seconds():
        raise ValueError(f"delay={delay!r} must be from 0 to {MAX_DELAY.days} days.")
    return now + timedelta(seconds=seconds)


# The furthest ahead a run may be scheduled (as the longest interval a job may declare).
MAX_DELAY = timedelta(days=3653)


def schedule(
    job: str | Callable[..., Any],
    *,
    at: datetime | None = None,
    delay: timedelta | float | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    key: str = "",
    requested_by: str = "",
) -> JobRun:
    """Schedule one run of ``job`` (its id, or its decorated function) at ``at`` (an aware
    datetime), after ``delay`` (a timedelta or seconds), or now, called with ``args`` and
    ``kwargs`` (plain JSON values, checked against the function now: ArgumentError).

    The run is a ``queued`` row, returned: the active scheduler runs it once at its time
    (or records it missed past the job's ``misfire_grace_time``), with the job's
    timeout, retries, isolation and executor. ``key``: an idempotency key; a second
    call with the same job and key returns the first call's row and schedules nothing
    (the first call's time and arguments stand). ``row.cancel()`` cancels it before it
    starts.
    """
    job_id = _job_id(job)
    spec = _spec(job_id)
    if not spec.enabled:
        raise ValueError(f"Job {job_id!r} is disabled in code (enabled=False): it does not run.")
    due = _due(at, delay)
    stored = arguments.check(spec, args, kwargs)
    if not isinstance(key, str) or len(key) > 255:
        raise ValueError(f"key={key!r} must be a string of at most 255 characters.")
    run = JobRun.objects.scheduled_row(job_id, spec.name, due, stored, key, requested_by)
    using = conf.database()
    if key:
        try:
            # A savepoint: in the caller's transaction, a duplicate key must not break it.
            with transaction.atomic(using=using):
                run.save(using=using, force_insert=True)
        except IntegrityError:
            existing = JobRun.objects.filter(job_id=job_id, key=key).first()
            if existing is None:
                raise  # not the key (another constraint): the caller must know
            return existing
    else:
        run.save(using=using, force_insert=True)
    notify()
    return run


def run_now(job: str | Callable[..., Any], requested_by: str = "") -> JobRun:
    """Ask for a run of ``job`` now (the admin's run-now button): its ``queued`` row,
    which the active scheduler starts when one of the job's slots is free."""
    job_id = _job_id(job)
    # The catalog first: the web side knows every job the scheduler synced without
    # importing the job modules; code declared but not synced yet, from the registry.
    catalog = Job.objects.filter(pk=job_id).values_list("name", flat=True).first()
    name = catalog if catalog is not None else _spec(job_id).name
    return _queue(job_id, name, requested_by)


def pause(job: str | Callable[..., Any]) -> bool:
    """Pause ``job``: its fire times are skipped until ``resume`` (runs scheduled from
    code wait). Whether it changed (False: it was paused already)."""
    return _set_one(_job_id(job), True)


def resume(job: str | Callable[..., Any]) -> bool:
    """Resume a paused ``job``. Whether it changed (False: it was not paused)."""
    return _set_one(_job_id(job), False)


def _set_one(job_id: str, paused: bool) -> bool:
    jobs = Job.objects.filter(pk=job_id)
    if not jobs.exists():
        raise UnknownJob(
            f"Job {job_id!r} is not in the job table: a scheduler adds each job declared in "
            "code when it starts."
        )
    return set_paused(jobs, paused) > 0


def cancel(run: JobRun | int, reason: str = "") -> bool:
    """Cancel a run that has not started (a row ``schedule`` or ``run_now`` returned, or
    its id): it ends ``skipped``. Whether it was cancelled (False: it started already,
    or had ended)."""
    run_id = run.pk if isinstance(run, JobRun) else run
    text = reason or "Cancelled before it started."
    done = cancel_queued(JobRun.objects.filter(pk=run_id), text) > 0
    if isinstance(run, JobRun):
        run.refresh_from_db(using=conf.database())
    return done


def _queue(job_id: str, name: str, user: str) -> JobRun:
    """A run of ``job_id`` now, on behalf of ``user``: a ``queued`` manual run."""
    run = JobRun.objects.request_row(job_id, name, user)
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
