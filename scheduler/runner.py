"""The runner: claims each run in the history table, runs the job, and records the outcome.

Every run that starts has a ``JobRun`` row first (status ``running``), and that
row ends in a final status. Fire times that are not run are recorded too:
``missed`` (too late, or folded into one catch-up run by ``coalesce``) and
``skipped`` (the previous run was still going, ``max_instances``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.executors.base import MaxInstancesReachedError
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.job import Job
from django.utils import timezone

from scheduler import claims, conf, db, lease
from scheduler.capture import capture
from scheduler.models import JobRun
from scheduler.registry import JobSpec, registry

logger = logging.getLogger(__name__)

HOSTNAME = conf.HOSTNAME
Status = JobRun.Status


def _runs():
    return JobRun.objects.using(db.alias())


# Runs in progress in this process: id -> job id. Read at shutdown.
_active: dict[int, str] = {}
_active_lock = threading.Lock()


def active_runs() -> dict[int, str]:
    with _active_lock:
        return dict(_active)


def claim(job_id: str, job_name: str, scheduled_at: datetime) -> JobRun | None:
    """Insert the ``running`` row for a scheduled fire time; None if another process has it."""
    if not lease.holds():
        logger.warning("Not starting %r: this scheduler no longer holds the lease.", job_id)
        return None
    run = JobRun(
        job_id=job_id,
        job_name=job_name,
        status=Status.RUNNING,
        trigger=JobRun.Trigger.SCHEDULE,
        scheduled_at=scheduled_at,
        started_at=timezone.now(),
        hostname=HOSTNAME,
        pid=os.getpid(),
        instance=lease.instance_id(),
    )

    return run if claims.claim(run) else None


def record(
    job_id: str,
    job_name: str,
    status: str,
    times: list[datetime],
    reason: str,
    trigger: str = JobRun.Trigger.SCHEDULE,
) -> None:
    """Record fire times that did not run, one row each, in one statement."""
    if not lease.holds():
        return  # the fire times are the active scheduler's to run or record
    cap = max(1, conf.get("MAX_MISSED_ROWS"))
    if len(times) > cap:
        reason = (
            f"{reason} ({len(times) - cap} earlier fire times were missed too, "
            "not recorded one by one)"
        )
        times = times[-cap:]
    now = timezone.now()
    rows = [
        JobRun(
            job_id=job_id,
            job_name=job_name,
            status=status,
            trigger=trigger,
            scheduled_at=at,
            finished_at=now,
            hostname=HOSTNAME,
            pid=os.getpid(),
            instance=lease.instance_id(),
            exception=reason,
        )
        for at in times
    ]

    # A conflict means another scheduler already ran or recorded that fire time.
    def write() -> None:
        with db.writing():
            _runs().bulk_create(rows, batch_size=500, ignore_conflicts=True)

    db.retrying(
        write,
        f"record {status} runs of {job_id!r}",
    )


def execute(run: JobRun, call: Callable[[], Any]) -> JobRun:
    """Run ``call`` for an already-recorded ``running`` row and finish the row."""
    with _active_lock:
        _active[run.pk] = run.job_id
    try:
        exception = tb = ""
        status = Status.SUCCEEDED
        run.started_at = run.started_at or timezone.now()
        start = time.perf_counter()
        with capture(conf.get("MAX_OUTPUT")) as output:
            try:
                call()
            except BaseException as exc:  # noqa: BLE001 - a job's SystemExit is a failure too
                status = Status.FAILED
                exception = f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}".removeprefix(
                    "builtins."
                )
                tb = traceback.format_exc()
                logger.error("Job %r failed: %s", run.job_id, exception)
        run.duration = time.perf_counter() - start
        run.finished_at = run.started_at + timedelta(seconds=run.duration)
        run.status, run.exception, run.traceback = status, exception, tb
        run.output = output.getvalue()
        finish(run)
    finally:
        with _active_lock:
            _active.pop(run.pk, None)
    return run


def finish(run: JobRun) -> None:
    fields = {
        "status": run.status,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "duration": run.duration,
        "exception": run.exception,
        "traceback": run.traceback,
        "output": run.output,
    }
    # A row another scheduler marked interrupted (it could not see our heartbeat,
    # say while the database was away) still gets the outcome the run really had.
    db.retrying(
        lambda: db.update_one(
            JobRun, run.pk, fields, {"status": [Status.RUNNING, Status.INTERRUPTED]}
        ),
        f"record the result of {run.job_id!r}",
    )


def interrupt(run_ids: list[int], reason: str) -> int:
    """Mark runs that will never finish as interrupted."""
    now = timezone.now()
    return db.retrying(
        lambda: (
            _runs()
            .filter(pk__in=run_ids, status=Status.RUNNING)
            .update(status=Status.INTERRUPTED, finished_at=now, exception=reason)
        ),
        "mark runs interrupted",
    )


def make_call(spec: JobSpec | None, job: Job | None, scheduled_at: datetime) -> Callable[[], Any]:
    """The call that runs a job once, passing ``scheduled_at`` where the function asks for it."""
    func = spec.func if spec else job.func
    args = spec.args if spec else tuple(job.args)
    kwargs = spec.call_kwargs(scheduled_at) if spec else dict(job.kwargs)
    if asyncio.iscoroutinefunction(func):
        # Each run gets its own event loop in its worker thread.
        return lambda: asyncio.run(func(*args, **kwargs))
    return lambda: func(*args, **kwargs)


def run_manual(run: JobRun) -> JobRun:
    """Run a claimed manual run (status ``running``) of a registered job."""
    db.close_old_connections()
    try:
        run.started_at = timezone.now()
        spec = registry.get(run.job_id)
        if spec is None:
            run.status = Status.FAILED
            run.finished_at = run.started_at
            run.exception = f"Job {run.job_id!r} is not registered in this scheduler's code."
            finish(run)
            return run
        return execute(run, make_call(spec, None, run.scheduled_at))
    finally:
        db.close_old_connections()


class Executor(ThreadPoolExecutor):
    """APScheduler's thread pool, running each fire time through the runner."""

    def submit_job(self, job: Job, run_times: list[datetime]) -> None:
        spec = registry.get(job.id)
        name = spec.name if spec else job.name
        folded = self._coalesced_times(job, run_times)
        if folded:
            record(
                job.id,
                name,
                Status.MISSED,
                folded,
                f"Coalesced: the scheduler caught up on {len(folded) + 1} fire times "
                f"with one run at {run_times[-1].isoformat()}.",
            )
        try:
            super().submit_job(job, run_times)
        except MaxInstancesReachedError:
            record(
                job.id,
                name,
                Status.SKIPPED,
                run_times,
                f"Skipped: {job.max_instances} run(s) of this job still going (max_instances).",
            )
            raise

    @staticmethod
    def _coalesced_times(job: Job, run_times: list[datetime]) -> list[datetime]:
        if not job.coalesce or not run_times or job.next_run_time >= run_times[-1]:
            return []
        # APScheduler passes only the last due time; the ones before it would vanish silently.
        times, at = [], job.next_run_time
        now = run_times[-1]
        while at is not None and at < now:
            times.append(at)
            at = job.trigger.get_next_fire_time(at, now)
        return times

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        def callback(future) -> None:
            if future.cancelled():
                # The scheduler stopped before a worker was free to start it.
                self._run_job_success(job.id, [])
                record(
                    job.id,
                    job.name,
                    Status.MISSED,
                    run_times,
                    "Missed: the scheduler stopped before the run could start.",
                )
                return
            exc = future.exception()
            if exc:
                self._run_job_error(job.id, exc, exc.__traceback__)
            else:
                self._run_job_success(job.id, [])

        future = self._pool.submit(run_scheduled, job, run_times)
        future.add_done_callback(callback)


def run_scheduled(job: Job, run_times: list[datetime]) -> None:
    """Worker-thread body for one submission of a scheduled job."""
    db.close_old_connections()
    try:
        spec = registry.get(job.id)
        name = spec.name if spec else job.name
        for run_time in run_times:
            late = datetime.now(UTC) - run_time
            grace = job.misfire_grace_time
            if grace is not None and late > timedelta(seconds=grace):
                record(
                    job.id,
                    name,
                    Status.MISSED,
                    [run_time],
                    f"Missed: would have started {late.total_seconds():.0f} s late, "
                    f"beyond misfire_grace_time ({grace} s).",
                )
                continue
            run = claim(job.id, name, run_time)
            if run is None:
                logger.info(
                    "Run of %r at %s already claimed by another scheduler; skipping it.",
                    job.id,
                    run_time.isoformat(),
                )
                continue
            execute(run, make_call(spec, job, run_time))
    finally:
        db.close_old_connections()
