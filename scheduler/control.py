"""Requests from the admin, carried out by the running scheduler.

The admin never runs a job in a web request. "Run now" inserts a ``queued``
manual run; "pause"/"resume" set ``Job.paused`` and flag the change. This
thread polls for both every ``SCHEDULER['POLL_INTERVAL']`` seconds (1 s by
default), so a request takes effect within about a second.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Executor

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.base import BaseScheduler
from django.db import close_old_connections
from django.utils import timezone

from scheduler import conf, db, lease, runner
from scheduler.models import Job, JobRun

logger = logging.getLogger(__name__)


class Control(threading.Thread):
    def __init__(self, scheduler: BaseScheduler, pool: Executor, stop: threading.Event) -> None:
        super().__init__(name="scheduler-control", daemon=True)
        self.scheduler = scheduler
        self.pool = pool
        self.stop = stop

    def run(self) -> None:
        interval = conf.get("POLL_INTERVAL")
        while not self.stop.wait(interval):
            close_old_connections()
            try:
                self.poll()
            except db.TRANSIENT as exc:
                db.close_broken()
                logger.warning("Could not poll for admin requests, database unavailable: %s", exc)
            except Exception:
                logger.exception("Error while polling for admin requests")

    def poll(self) -> None:
        if not lease.holds():
            return  # the active scheduler carries out admin requests
        changed = self.apply_pause_changes()
        started = self.start_queued_runs()
        if changed or started:
            self.scheduler.wakeup()

    def start_queued_runs(self) -> int:
        runs = JobRun.objects.using(db.alias())
        queued = list(
            runs.filter(status=JobRun.Status.QUEUED)
            .order_by("id")
            .values_list("id", flat=True)[:100]
        )
        started = 0
        for run_id in queued:
            claimed = runs.filter(pk=run_id, status=JobRun.Status.QUEUED).update(
                status=JobRun.Status.RUNNING,
                started_at=timezone.now(),
                hostname=runner.HOSTNAME,
                pid=os.getpid(),
                instance=lease.instance_id(),
            )
            if claimed:
                run = runs.get(pk=run_id)
                logger.info(
                    "Running %r now, as requested by %s", run.job_id, run.requested_by or "?"
                )
                self.pool.submit(runner.run_manual, run)
                started += 1
        return started

    def apply_pause_changes(self) -> int:
        jobs = Job.objects.using(db.alias())
        applied = 0
        for job in jobs.filter(pending_change=True):
            try:
                if job.paused:
                    self.scheduler.pause_job(job.id)
                else:
                    self.scheduler.resume_job(job.id)
            except JobLookupError:
                logger.warning(
                    "Cannot %s job %r: it is not scheduled.",
                    "pause" if job.paused else "resume",
                    job.id,
                )
            logger.info("Job %r %s from the admin", job.id, "paused" if job.paused else "resumed")
            # Clear the flag only if nobody flipped it again meanwhile.
            jobs.filter(pk=job.pk, paused=job.paused).update(pending_change=False)
            applied += 1
        return applied
