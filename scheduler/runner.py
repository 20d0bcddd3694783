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
from concurrent.futures import Future
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


class _Starts:
    """Claimed runs handed to workers and not yet started.

    With the GIL, a worker writing its finished run's result competes with the
    workers still starting theirs: twenty jobs due together started one after
    another, each behind the result of the one before. Results wait (briefly)
    until the burst has started.
    """

    def __init__(self) -> None:
        self._pending = 0
        self._changed = threading.Condition(threading.Lock())

    def add(self) -> None:
        with self._changed:
            self._pending += 1

    def started(self) -> None:
        with self._changed:
            self._pending -= 1
            if self._pending <= 0:
                self._changed.notify_all()

    def wait(self, timeout: float = 0.05) -> None:
        if self._pending > 0:
            with self._changed:
                self._changed.wait_for(lambda: self._pending <= 0, timeout)


_starts = _Starts()


def active_runs() -> dict[int, str]:
    with _active_lock:
        return dict(_active)


def _new_run(job_id: str, job_name: str, scheduled_at: datetime) -> JobRun:
    return JobRun(
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


def claim(job_id: str, job_name: str, scheduled_at: datetime) -> JobRun | None:
    """Insert the ``running`` row for a scheduled fire time; None if another process has it."""
    if not lease.holds():
        logger.warning("Not starting %r: this scheduler no longer holds the lease.", job_id)
        return None
    run = _new_run(job_id, job_name, scheduled_at)
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
        _starts.wait()
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
    """APScheduler's thread pool, running each fire time through the runner.

    Before the main loop submits the jobs that are due, ``claim_due`` claims
    the fire times that a free worker will start at once, all in one INSERT in
    the main loop's thread; a worker then has nothing to write before calling
    the job. Fire times it does not claim (no free worker, more than one fire
    time, late beyond the grace time, database trouble) are claimed by their
    worker, which retries and records them as before.
    """

    def __init__(self, max_workers: int) -> None:
        super().__init__(max_workers)
        self._max_workers = max_workers
        self._busy = 0  # submissions, scheduled or manual, not finished yet
        self._busy_lock = threading.Lock()
        self._claimed: dict[str, JobRun] = {}  # job id -> its claimed run, until submitted

    def claim_due(self, jobs: list[Job], now: datetime) -> None:
        """Claim the fire times of ``jobs`` that the main loop will submit for ``now``."""
        self._abandon_claims("Missed: the scheduler claimed this fire time but did not start it.")
        if not jobs or not lease.holds():
            return
        wall = datetime.now(UTC)
        free = self._max_workers - self._busy
        runs = []
        for job in jobs:
            if len(runs) >= free:
                break
            if self._instances[job.id] >= job.max_instances:
                continue  # submit_job records it skipped
            times = job._get_run_times(now)
            if job.coalesce:
                times = times[-1:]
            grace = job.misfire_grace_time
            if len(times) != 1 or (
                grace is not None and wall - times[0] > timedelta(seconds=grace)
            ):
                continue
            spec = registry.get(job.id)
            runs.append(_new_run(job.id, spec.name if spec else job.name, times[0]))
        if not runs:
            return
        try:
            won = claims.claim_many(runs)
        except db.TRANSIENT as exc:
            # The main loop must not wait out an outage: each worker claims its own, retrying.
            db.close_broken()
            logger.debug("Claiming %d due runs in one statement failed: %s", len(runs), exc)
            return
        for run in won:
            self._claimed[run.job_id] = run

    def submit_manual(self, run: JobRun) -> Future:
        """Start a claimed manual run on a worker."""
        return self._submit(run_manual, run)

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future = self._pool.submit(fn, *args)
        with self._busy_lock:
            self._busy += 1
        future.add_done_callback(self._done)
        return future

    def _done(self, future: Future) -> None:
        with self._busy_lock:
            self._busy -= 1

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
            reason = f"Skipped: {job.max_instances} run(s) of this job still going (max_instances)."
            run = self._claimed.pop(job.id, None)
            if run is not None:
                _abandon(run, Status.SKIPPED, reason)
            else:
                record(job.id, name, Status.SKIPPED, run_times, reason)
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
        run = self._claimed.pop(job.id, None)
        if run is not None and run_times != [run.scheduled_at]:
            _abandon(run, Status.MISSED, "Missed: the scheduler submitted other fire times.")
            run = None

        def callback(future) -> None:
            if future.cancelled():
                # The scheduler stopped before a worker was free to start it.
                self._run_job_success(job.id, [])
                reason = "Missed: the scheduler stopped before the run could start."
                if run is not None:
                    _starts.started()
                    _abandon(run, Status.MISSED, reason)
                else:
                    record(job.id, job.name, Status.MISSED, run_times, reason)
                return
            exc = future.exception()
            if exc:
                if run is not None and run.status == Status.RUNNING:
                    # It failed before the job was called, so nothing else finishes its row.
                    _abandon(run, Status.FAILED, f"The scheduler could not start the run: {exc!r}")
                self._run_job_error(job.id, exc, exc.__traceback__)
            else:
                self._run_job_success(job.id, [])

        if run is not None:
            _starts.add()
        try:
            future = self._submit(run_scheduled, job, run_times, run)
        except BaseException:
            if run is not None:
                _starts.started()
                _abandon(run, Status.MISSED, "Missed: the scheduler could not start the run.")
            raise
        future.add_done_callback(callback)

    def _abandon_claims(self, reason: str) -> None:
        while self._claimed:
            _abandon(self._claimed.popitem()[1], Status.MISSED, reason)

    def shutdown(self, wait: bool = True) -> None:
        self._abandon_claims("Missed: the scheduler stopped before the run could start.")
        super().shutdown(wait)


def _abandon(run: JobRun, status: str, reason: str) -> None:
    """Finish a claimed run that was never started."""
    run.status, run.exception = status, reason
    run.finished_at = timezone.now()
    finish(run)


def run_scheduled(job: Job, run_times: list[datetime], claimed: JobRun | None = None) -> None:
    """Worker-thread body for one submission of a scheduled job."""
    if claimed is not None:
        _starts.started()
    db.close_old_connections()
    try:
        spec = registry.get(job.id)
        if claimed is not None:  # the main loop claimed its fire time
            claimed.started_at = timezone.now()
            execute(claimed, make_call(spec, job, claimed.scheduled_at))
            return
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
