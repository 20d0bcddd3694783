"""APScheduler's job store: django-apscheduler's ``DjangoJobStore``, made fit for production.

What changes against the parent class:

* history is ours (``scheduler.JobRun``), so its execution listeners are not registered;
* every query goes to ``SCHEDULER['DATABASE']``;
* database errors are retried, and the calls APScheduler's main loop does not
  guard never raise, so a database restart cannot kill the scheduler;
* a stored job that cannot be loaded is reported by id and removed;
* many jobs are written in one statement (:meth:`put_jobs`) at start-up;
* inside the main loop (:meth:`batched`), the next run times of the due jobs
  are written together in one transaction after all of them were submitted,
  instead of one write between each submission and the next.
"""

from __future__ import annotations

import logging
import pickle
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from apscheduler.job import Job
from apscheduler.jobstores.base import ConflictingIdError, JobLookupError
from django.db import IntegrityError, transaction
from django_apscheduler.jobstores import DjangoJobStore
from django_apscheduler.models import DjangoJob
from django_apscheduler.util import get_apscheduler_datetime, get_django_internal_datetime

from scheduler import db, lease

logger = logging.getLogger(__name__)

# How soon the main loop looks again after the database failed it.
RETRY_WAKEUP = timedelta(seconds=2)
# The main loop must not block for long on a missing database: other
# scheduler duties (shutdown, leadership) wait on it.
LOOP_RETRY_TIMEOUT = 5.0


class JobStore(DjangoJobStore):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._batch = threading.local()
        self._pending: dict[str, Job] = {}
        self._pending_lock = threading.Lock()

    @contextmanager
    def batched(self) -> Iterator[None]:
        """Defer this thread's ``update_job`` writes until :meth:`flush` (or the end)."""
        self._batch.active = True
        try:
            yield
        finally:
            self._batch.active = False
            self.flush()

    def flush(self) -> None:
        with self._pending_lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        if not lease.holds():
            # The store now belongs to the new leader: our old next run times would undo its work.
            logger.warning("Lost the lease: dropping %d unsaved next run times.", len(pending))
            return
        rows = [
            DjangoJob(
                id=job.id,
                next_run_time=get_django_internal_datetime(job.next_run_time),
                job_state=self._dump(job),
            )
            for job in pending.values()
        ]

        def write() -> None:
            with transaction.atomic(using=db.alias()):
                db.update_many(DjangoJob, rows, ["next_run_time", "job_state"])

        try:
            db.retrying(write, f"store the next run time of {len(rows)} jobs", LOOP_RETRY_TIMEOUT)
        except db.TRANSIENT:
            # The runs were already claimed in the history table, which fences off a
            # repeat; keep the writes for the next wake-up.
            with self._pending_lock:
                self._pending = {**pending, **self._pending}
            logger.error("Could not store the next run times of %d jobs; will retry.", len(rows))

    def register_event_listeners(self) -> None:
        # Our runner records every run itself, with the real start time;
        # django-apscheduler's listeners would write a second, less exact history.
        return None

    @property
    def _objects(self):
        return DjangoJob.objects.using(db.alias())

    def lookup_job(self, job_id: str) -> Job | None:
        def lookup() -> bytes | None:
            return self._objects.filter(id=job_id).values_list("job_state", flat=True).first()

        state = db.retrying(lookup, f"look up job {job_id!r}")
        if state is None:
            return None
        job = self._load(job_id, state)
        if job is None:
            self._remove_broken([job_id])
        return job

    def get_due_jobs(self, now: datetime) -> list[Job]:
        if not lease.holds():
            # A scheduler that lost its lease must not advance the shared next run times.
            return []
        return self._get_jobs(next_run_time__lte=get_django_internal_datetime(now))

    def get_next_run_time(self) -> datetime | None:
        # The main loop asks this after handling the due jobs: write their new times first.
        self.flush()

        def earliest() -> datetime | None:
            return (
                self._objects.filter(next_run_time__isnull=False)
                .order_by("next_run_time")
                .values_list("next_run_time", flat=True)
                .first()
            )

        try:
            next_run_time = db.retrying(earliest, "read the next run time", LOOP_RETRY_TIMEOUT)
        except db.TRANSIENT:
            # APScheduler's main loop does not catch errors here: wake up soon and try again.
            return datetime.now(UTC) + RETRY_WAKEUP
        return get_apscheduler_datetime(next_run_time, self._scheduler) if next_run_time else None

    def add_job(self, job: Job) -> None:
        def add() -> None:
            try:
                with transaction.atomic(using=db.alias()):
                    self._objects.create(
                        id=job.id,
                        next_run_time=get_django_internal_datetime(job.next_run_time),
                        job_state=self._dump(job),
                    )
            except IntegrityError:
                raise ConflictingIdError(job.id) from None

        db.retrying(add, f"add job {job.id!r}")

    def update_job(self, job: Job) -> None:
        if getattr(self._batch, "active", False):
            with self._pending_lock:
                self._pending[job.id] = job
            return

        def update() -> int:
            return self._objects.filter(id=job.id).update(
                next_run_time=get_django_internal_datetime(job.next_run_time),
                job_state=self._dump(job),
            )

        try:
            updated = db.retrying(update, f"update job {job.id!r}", LOOP_RETRY_TIMEOUT)
        except db.TRANSIENT:
            # The run was already claimed in the history table, which fences off a
            # repeat; the next wake-up retries this write.
            logger.error("Could not store the next run time of job %r; will retry.", job.id)
            return
        if not updated:
            raise JobLookupError(job.id)

    def remove_job(self, job_id: str) -> None:
        deleted = db.retrying(
            lambda: self._objects.filter(id=job_id).delete()[0], f"remove job {job_id!r}"
        )
        if not deleted:
            raise JobLookupError(job_id)

    def remove_all_jobs(self) -> None:
        db.retrying(lambda: self._objects.all().delete(), "remove all jobs")

    def put_jobs(self, jobs: Iterable[Job]) -> None:
        """Insert or replace many jobs at once."""
        rows = [
            DjangoJob(
                id=job.id,
                next_run_time=get_django_internal_datetime(job.next_run_time),
                job_state=self._dump(job),
            )
            for job in jobs
        ]
        if not rows:
            return

        def put() -> None:
            with transaction.atomic(using=db.alias()):
                db.upsert(DjangoJob, rows, ["next_run_time", "job_state"])

        db.retrying(put, f"store {len(rows)} jobs")

    def remove_jobs(self, job_ids: Iterable[str]) -> None:
        ids = list(job_ids)
        if ids:
            db.retrying(lambda: self._objects.filter(id__in=ids).delete(), "remove jobs")

    def stored_ids(self) -> set[str]:
        return set(
            db.retrying(lambda: list(self._objects.values_list("id", flat=True)), "list jobs")
        )

    def shutdown(self) -> None:
        db.close_broken()

    def _dump(self, job: Job) -> bytes:
        return pickle.dumps(job.__getstate__(), self.pickle_protocol)

    def _load(self, job_id: str, state: bytes) -> Job | None:
        try:
            return self._reconstitute_job(state)
        except Exception as exc:
            logger.error(
                "Stored job %r cannot be loaded (%s: %s); removing it from the job store. "
                "Its run history is kept.",
                job_id,
                type(exc).__name__,
                exc,
            )
            return None

    def _remove_broken(self, job_ids: list[str]) -> None:
        try:
            self.remove_jobs(job_ids)
        except db.TRANSIENT:
            logger.error("Could not remove broken jobs %s; will try again.", job_ids)

    def _get_jobs(self, **filters) -> list[Job]:
        def fetch() -> list[tuple[str, bytes]]:
            return list(
                self._objects.filter(**filters)
                .order_by("next_run_time")
                .values_list("id", "job_state")
            )

        # get_due_jobs errors are caught by APScheduler's loop (it retries later).
        rows = db.retrying(fetch, "read due jobs", LOOP_RETRY_TIMEOUT)
        jobs, broken = [], []
        for job_id, state in rows:
            job = self._load(job_id, state)
            if job is None:
                broken.append(job_id)
            else:
                jobs.append(job)
        if broken:
            self._remove_broken(broken)
        return jobs

    def __repr__(self) -> str:
        return f"<{type(self).__name__}(database={db.alias()!r})>"
