"""APScheduler's job store: django-apscheduler's ``DjangoJobStore``, made fit for production.

What changes against the parent class:

* history is ours (``scheduler.JobRun``), so its execution listeners are not registered;
* every query goes to ``SCHEDULER['DATABASE']``;
* database errors are retried, and the calls APScheduler's main loop does not
  guard never raise, so a database restart cannot kill the scheduler;
* a stored job that cannot be loaded is reported by id and removed;
* many jobs are written in one statement (:meth:`put_jobs`) at start-up;
* while this process holds the lease (:meth:`activate`), it is the only
  writer, so it serves the main loop from an in-memory index of the jobs
  and writes changed next run times back in one batch about once a second
  (:meth:`flush`), instead of two or three queries per wake-up. If it dies
  before a write-back, the store is at most a second behind; the history
  table's unique (job, fire time) claim keeps the next leader from running
  those fire times again.
"""

from __future__ import annotations

import bisect
import logging
import pickle
import threading
from collections.abc import Callable, Iterable
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


class _Index:
    """The jobs of the active scheduler, ordered by next run time.

    A job's pickled state is read from the database only when the main loop
    first needs the job (``None`` until then), so that taking over 10,000
    daily jobs neither transfers nor holds 10 MB of pickles.
    """

    def __init__(self, rows: Iterable[tuple[str, datetime | None]]) -> None:
        # A job, its stored (pickle, next run time) not unpickled yet, or None: not read yet.
        self.jobs: dict[str, Job | tuple[bytes, datetime | None] | None] = {}
        self.times: dict[str, float] = {}
        self.order: list[tuple[float, str]] = []
        for job_id, next_run_time in rows:
            self.jobs[job_id] = None
            if next_run_time is not None:
                self.times[job_id] = next_run_time.timestamp()
        self.order = sorted((at, job_id) for job_id, at in self.times.items())

    def put(self, job: Job) -> None:
        self.drop(job.id)
        self.jobs[job.id] = job
        if job.next_run_time is not None:
            at = job.next_run_time.timestamp()
            self.times[job.id] = at
            bisect.insort(self.order, (at, job.id))

    def drop(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)
        at = self.times.pop(job_id, None)
        if at is not None:
            index = bisect.bisect_left(self.order, (at, job_id))
            if index < len(self.order) and self.order[index] == (at, job_id):
                del self.order[index]

    def due(self, now: float) -> list[str]:
        end = bisect.bisect_right(self.order, (now, "\U0010ffff"))
        return [job_id for _, job_id in self.order[:end]]

    def next_time(self) -> float | None:
        return self.order[0][0] if self.order else None


def _fixed(job: Job, state: dict | None = None) -> tuple:
    """A job's state but for its next run time, to tell whether its pickle is current."""
    state = state if state is not None else job.__getstate__()
    return tuple(value for key, value in state.items() if key != "next_run_time")


class _TimeRow:
    """A job's new next run time, as ``db.update_many`` reads it (building 200 model
    instances a second cost more than writing them)."""

    __slots__ = ("pk", "next_run_time")

    def __init__(self, job: Job) -> None:
        self.pk = job.id
        self.next_run_time = get_django_internal_datetime(job.next_run_time)


class JobStore(DjangoJobStore):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._lock = threading.RLock()
        self._index: _Index | None = None
        self._dirty: set[str] = set()
        self._closed = False
        # Job id -> what its stored pickle holds but for the next run time.
        self._written: dict[str, tuple] = {}
        # Called with the due jobs the index hands to the main loop, before it submits
        # them, and with a way to look ahead (``upcoming``).
        self.on_due: Callable[..., None] | None = None
        # Called with a job's id and new next run time when it changes or goes.
        self.on_change: Callable[[str, datetime | None], None] | None = None

    # -- the active scheduler's in-memory index ------------------------------------

    def activate(self) -> None:
        """Index every job in memory: this process now holds the lease."""

        def load() -> list[tuple[str, datetime | None]]:
            return list(self._objects.values_list("id", "next_run_time"))

        rows = db.retrying(load, "load the jobs")
        with self._lock:
            self._index = _Index(rows)
            self._dirty = set()

    def deactivate(self) -> None:
        """Forget the index: the lease is gone, and the store belongs to the next leader."""
        with self._lock:
            self._drop_dirty()
            self._index = None

    def flush(self) -> None:
        """Write the changed next run times back, in one transaction."""
        with self._lock:
            if self._index is None or not self._dirty:
                return
            if not lease.holds():
                # The store now belongs to the new leader: our old times would undo its work.
                self._drop_dirty()
                return
            dirty, self._dirty = self._dirty, set()
            jobs = [self._job(job_id) for job_id in dirty if job_id in self._index.jobs]
            # Most changes are a next run time; the state is pickled again only when
            # something else changed (pickling 200 jobs a second was a tenth of the
            # scheduler's CPU under load).
            changed, moved = [], []
            for job in jobs:
                if job is None:
                    continue
                if self._written.get(job.id) == _fixed(job):
                    moved.append(job)
                else:
                    changed.append(job)
            rows = [self._row(job) for job in changed]
            times = [_TimeRow(job) for job in moved]

        def write() -> None:
            with db.writing(), transaction.atomic(using=db.alias()):
                db.update_many(DjangoJob, rows, ["next_run_time", "job_state"])
                db.update_many(DjangoJob, times, ["next_run_time"])

        try:
            db.retrying(write, f"store the next run times of {len(jobs)} jobs", LOOP_RETRY_TIMEOUT)
        except db.TRANSIENT:
            with self._lock:
                self._dirty |= {row.pk for row in rows + times}
            logger.error("Could not store the next run times of %d jobs; will retry.", len(jobs))

    def _drop_dirty(self) -> None:
        if self._dirty:
            logger.warning("Lost the lease: dropping %d unsaved next run times.", len(self._dirty))
        self._dirty = set()

    def _fetch_states(self, job_ids: Iterable[str]) -> None:
        """Read the pickled states of index jobs not read yet, in a few queries."""
        missing = [job_id for job_id in job_ids if self._index.jobs.get(job_id, b"") is None]
        for start in range(0, len(missing), 500):
            chunk = missing[start : start + 500]

            def fetch(chunk: list[str] = chunk) -> list[tuple[str, bytes, datetime | None]]:
                return list(
                    self._objects.filter(id__in=chunk).values_list(
                        "id", "job_state", "next_run_time"
                    )
                )

            found = {row[0]: row[1:] for row in db.retrying(fetch, "read jobs", LOOP_RETRY_TIMEOUT)}
            for job_id in chunk:
                if job_id in found:
                    self._index.jobs[job_id] = found[job_id]
                else:  # deleted behind our back: forget it
                    self._index.drop(job_id)
                    self._dirty.discard(job_id)

    def _jobs(self, job_ids: list[str]) -> list[Job]:
        """The index's jobs of ``job_ids`` that can be loaded, their states read in a few
        queries."""
        self._fetch_states(job_ids)
        return [job for job in map(self._job, job_ids) if job is not None]

    def _job(self, job_id: str) -> Job | None:
        """A job of the index whose state was read, unpickled on first use (None, and
        removed, if it cannot be)."""
        job = self._index.jobs.get(job_id)
        if isinstance(job, tuple):
            loaded = self._load(job_id, *job)
            if loaded is None:
                self._index.drop(job_id)
                self._remove_broken([job_id])
                return None
            self._index.jobs[job_id] = job = loaded
        return job

    def register_event_listeners(self) -> None:
        # Our runner records every run itself, with the real start time;
        # django-apscheduler's listeners would write a second, less exact history.
        return None

    @property
    def _objects(self):
        return DjangoJob.objects.using(db.alias())

    def lookup_job(self, job_id: str) -> Job | None:
        with self._lock:
            if self._index is not None:
                self._fetch_states([job_id])
                return self._job(job_id)

        def lookup() -> tuple[bytes, datetime | None] | None:
            return self._objects.filter(id=job_id).values_list("job_state", "next_run_time").first()

        found = db.retrying(lookup, f"look up job {job_id!r}")
        if found is None:
            return None
        job = self._load(job_id, *found)
        if job is None:
            self._remove_broken([job_id])
        return job

    def close(self) -> None:
        """Hand no more due jobs to the main loop: the scheduler is stopping."""
        self._closed = True

    def get_due_jobs(self, now: datetime) -> list[Job]:
        if self._closed or not lease.holds():
            # A scheduler that stops or lost its lease must not advance the shared
            # next run times.
            return []
        with self._lock:
            due = None
            if self._index is not None:
                due = self._jobs(self._index.due(now.timestamp()))
        if due is None:
            return self._get_jobs(next_run_time__lte=get_django_internal_datetime(now))
        if due and self.on_due is not None:
            try:
                self.on_due(due, now, self.upcoming)
            except Exception:
                # The due jobs still run: each worker claims its own fire time.
                logger.exception("Could not claim %d due jobs ahead of their workers.", len(due))
        return due

    def upcoming(self, after: datetime, until: datetime) -> list[Job]:
        """The active store's jobs due after ``after`` and no later than ``until``."""
        with self._lock:
            if self._index is None:
                return []
            start = after.timestamp()
            return self._jobs(
                [
                    job_id
                    for job_id in self._index.due(until.timestamp())
                    if self._index.times[job_id] > start
                ]
            )

    def get_next_run_time(self) -> datetime | None:
        with self._lock:
            if self._index is not None:
                at = self._index.next_time()
                return datetime.fromtimestamp(at, UTC) if at is not None else None

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

    def get_all_jobs(self) -> list[Job]:
        with self._lock:
            if self._index is not None:
                jobs = self._jobs(list(self._index.jobs))
                jobs.sort(key=lambda j: (j.next_run_time is None, j.next_run_time or 0))
                return jobs
        return super().get_all_jobs()

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
        with self._lock:
            if self._index is not None:
                self._index.put(job)

    def update_job(self, job: Job) -> None:
        with self._lock:
            indexed = self._index is not None
            if indexed:
                if job.id not in self._index.jobs:
                    raise JobLookupError(job.id)
                self._index.put(job)
                self._dirty.add(job.id)
        if indexed:
            if self.on_change is not None:
                self.on_change(job.id, job.next_run_time)
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
        self._written.pop(job_id, None)
        with self._lock:
            if self._index is not None:
                self._index.drop(job_id)
                self._dirty.discard(job_id)
        if self.on_change is not None:
            self.on_change(job_id, None)
        deleted = db.retrying(
            lambda: self._objects.filter(id=job_id).delete()[0], f"remove job {job_id!r}"
        )
        if not deleted:
            raise JobLookupError(job_id)

    def remove_all_jobs(self) -> None:
        with self._lock:
            if self._index is not None:
                self._index = _Index([])
                self._dirty = set()
        db.retrying(lambda: self._objects.all().delete(), "remove all jobs")

    def put_jobs(self, jobs: Iterable[Job]) -> None:
        """Insert or replace many jobs at once (in one transaction)."""
        jobs = list(jobs)
        if not jobs:
            return

        def put() -> None:
            # Pickled a thousand at a time: 10,000 pickles at once were 10 MB of peak memory.
            with transaction.atomic(using=db.alias()):
                for start in range(0, len(jobs), 1000):
                    rows = [self._row(job) for job in jobs[start : start + 1000]]
                    db.upsert(DjangoJob, rows, ["next_run_time", "job_state"])

        db.retrying(put, f"store {len(jobs)} jobs")

    def remove_jobs(self, job_ids: Iterable[str]) -> None:
        ids = list(job_ids)
        if ids:
            db.retrying(lambda: self._objects.filter(id__in=ids).delete(), "remove jobs")

    def stored_ids(self) -> set[str]:
        return set(
            db.retrying(lambda: list(self._objects.values_list("id", flat=True)), "list jobs")
        )

    def shutdown(self) -> None:
        self.flush()
        db.close_broken()

    def _row(self, job: Job) -> DjangoJob:
        return DjangoJob(
            id=job.id,
            next_run_time=get_django_internal_datetime(job.next_run_time),
            job_state=self._dump(job),
        )

    def _dump(self, job: Job) -> bytes:
        state = job.__getstate__()
        self._written[job.id] = _fixed(job, state)
        return pickle.dumps(state, self.pickle_protocol)

    def _load(self, job_id: str, state: bytes, next_run_time: datetime | None) -> Job | None:
        """Unpickle a stored job; its next run time is the column's, which the pickle
        does not follow (see ``flush``)."""
        try:
            job = self._reconstitute_job(state)
            if job.next_run_time != next_run_time:
                zone = getattr(job.trigger, "timezone", UTC)
                job.next_run_time = next_run_time.astimezone(zone) if next_run_time else None
            self._written[job_id] = _fixed(job)
            return job
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
        def fetch() -> list[tuple[str, bytes, datetime | None]]:
            return list(
                self._objects.filter(**filters)
                .order_by("next_run_time")
                .values_list("id", "job_state", "next_run_time")
            )

        # get_due_jobs errors are caught by APScheduler's loop (it retries later).
        rows = db.retrying(fetch, "read due jobs", LOOP_RETRY_TIMEOUT)
        jobs, broken = [], []
        for job_id, state, next_run_time in rows:
            job = self._load(job_id, state, next_run_time)
            if job is None:
                broken.append(job_id)
            else:
                jobs.append(job)
        if broken:
            self._remove_broken(broken)
        return jobs

    def __repr__(self) -> str:
        return f"<{type(self).__name__}(database={db.alias()!r})>"
