"""Requests from the admin, carried out by the running scheduler.

The admin never runs a job in a web request. "Run now" inserts a ``queued``
manual run; "pause"/"resume" set ``Job.paused`` and flag the change. The
active scheduler's control thread looks for both every
``SCHEDULER['POLL_INTERVAL']`` seconds (1 s by default), in one statement
that asks whether there is anything to do. On PostgreSQL the admin also
sends ``NOTIFY scheduler_control`` and the thread ``LISTEN``s, so a request
is picked up at once; there it looks without a notification only every
``LISTENING_POLL`` seconds (a request filed by other means than ours), or
every poll interval while a request waits for a free slot.

It also watches the ``running`` rows: those of other processes count against
their job's ``max_instances`` (every poll while there are any), and its own
that no thread will finish are swept (every heartbeat).

An idle active scheduler made 3.7 statements a second, three of them here (pause
changes, running rows, queued rows, every poll); now 1.9 on SQLite and 1.0 on
PostgreSQL in all, of which this thread's are one a poll on SQLite, one every
``LISTENING_POLL`` on PostgreSQL, and the running rows once a heartbeat (the rest
is the lease's renewal, heartbeat and sweep of dead instances).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.base import BaseScheduler
from django.db import connections
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone

from scheduler import conf, db, fleet
from scheduler.claims import WITHDRAW_TIMEOUT
from scheduler.incidents import Detector
from scheduler.jobstore import JobStore
from scheduler.models import Job, JobRun, SchedulerInstance
from scheduler.registry import registry
from scheduler.requests import CHANNEL
from scheduler.runner import Executor, Runner, replaced

logger = logging.getLogger(__name__)

# Seconds between looks for requests without a notification, while LISTENing.
LISTENING_POLL = 10.0


def _as_datetime(value: Any) -> datetime | None:
    """A timestamp read by a raw query: a datetime (PostgreSQL) or text in UTC (SQLite)."""
    if value is None or isinstance(value, datetime):
        return value
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


# Queued runs at most claimed by one statement (and read by one before it).
QUEUE_BATCH = 500
# The queued runs of a paused job that wait for its resume, rather than being skipped:
# each was asked for by code with its own arguments (a fire time or a retry is skipped).
WAIT_WHILE_PAUSED = (JobRun.Trigger.CODE, JobRun.Trigger.TASK)


def _why_queued(run: JobRun) -> str:
    if run.trigger == JobRun.Trigger.RETRY:
        return f"attempt {run.attempt} (retry of run #{run.retry_of})"
    if run.trigger == JobRun.Trigger.SCHEDULE:
        return f"the fire time {run.scheduled_at.isoformat()}, after waiting its turn"
    if run.trigger in WAIT_WHILE_PAUSED:
        return f"scheduled for {run.scheduled_at.isoformat()}{_by(run)}"
    return f"requested by {run.requested_by or '?'}"


def _priority(value: Any) -> int:
    """A task's priority as its row holds it (JSON: -100 to 100); 0 for anything else."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _by(run: JobRun) -> str:
    return f" by {run.requested_by}" if run.requested_by else ""


def _requeue_if_cancelled(runner: Runner, run: JobRun) -> Callable[[Future[Any]], None]:
    def callback(future: Future[Any]) -> None:
        if future.cancelled():
            # The scheduler stopped before a worker was free: the next one runs it.
            runner.requeue(run)

    return callback


class _Listener:
    """A dedicated PostgreSQL connection that LISTENs for admin requests."""

    def __init__(self) -> None:
        import psycopg

        params = connections[conf.database()].get_connection_params()
        for key in ("cursor_factory", "context", "prepare_threshold", "pool"):
            params.pop(key, None)
        self.connection = psycopg.connect(**params, autocommit=True)
        self.connection.execute(f"LISTEN {CHANNEL}")

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a notification; whether one came."""
        heard = False
        for _ in self.connection.notifies(timeout=timeout, stop_after=1):
            heard = True
        return heard

    def close(self) -> None:
        try:
            self.connection.close()
        except Exception:  # closing a broken connection may fail in any way; it is gone anyway
            pass


class Control(threading.Thread):
    def __init__(
        self,
        scheduler: BaseScheduler,
        store: JobStore,
        executor: Executor,
        stop: threading.Event,
    ) -> None:
        super().__init__(name="scheduler-control", daemon=True)
        self.scheduler = scheduler
        self.store = store
        self.executor = executor
        self.runner = executor.runner
        self.standing = executor.runner.standing
        self.stop = stop
        self._listener: _Listener | None = None
        self._listen = connections[conf.database()].vendor == "postgresql"
        self._last_sweep = time.monotonic()
        # A sweep a heartbeat: often enough to settle a lost run soon, cheap (one query).
        self._sweep_every = float(conf.get("HEARTBEAT_INTERVAL"))
        self._suspects: set[int] = set()
        # Whether the next poll must look for requests and at the running rows: a
        # notification came, the listener (re)connected, or this scheduler just took over.
        self._look = True
        self._last_look = float("-inf")
        self._waiting = False  # requests were queued at the last look
        self._held = False
        # The earliest queued run not due at the last look, and the earliest this process
        # queued since (``queued``): the queue is looked at again when one is due.
        self._due_at: datetime | None = None
        self._reported: datetime | None = None
        self._due_lock = threading.Lock()
        self.runner.queued = self.queued
        # Due runs were left queued for want of a free worker thread at the last look;
        # the end of a queued run then sets ``_freed``, and the next look comes at once.
        self._backlog = False
        self._freed = threading.Event()
        # The detector of incidents (scheduler.incidents), set by the service.
        self.detector: Detector | None = None

    def wait(self, interval: float) -> bool:
        """Wait for a notification or the poll interval; True when it is time to stop."""
        if self._backlog:
            # Runs wait for a worker thread: the next look when one is free.
            self._freed.wait(interval)
            self._freed.clear()
            self._look = True
            return self.stop.is_set()
        if self._listen and self.standing.holds():
            try:
                if self._listener is None:
                    self._listener = _Listener()
                    self._look = True  # a notification may have gone before it listened
                if self._listener.wait(interval):
                    self._look = True
                return self.stop.is_set()
            except Exception as exc:
                logger.warning("LISTEN connection lost, polling instead: %s", exc)
                if self._listener is not None:
                    self._listener.close()
                self._listener = None
        return self.stop.wait(interval)

    def run(self) -> None:
        interval = conf.get("POLL_INTERVAL")
        failing = False
        while not self.wait(interval):
            db.close_old_connections()
            try:
                self.poll()
                failing = False
            except db.TRANSIENT as exc:
                db.close_broken()
                if not failing:  # once per outage; the lease loop reports it too
                    logger.warning("Cannot poll for admin requests, database unavailable: %s", exc)
                failing = True
            except Exception:
                logger.exception("Error while polling for admin requests")
        if self._listener is not None:
            self._listener.close()

    def poll(self) -> None:
        if not self.standing.holds():
            self._suspects = set()
            self._held = False
            return  # the active scheduler carries out admin requests
        took_over = not self._held
        now = time.monotonic()
        look = took_over or self._look or self._waiting or self._listener is None
        look = look or now - self._last_look >= LISTENING_POLL or self._due(timezone.now())
        pending = queued = False
        if look:
            with self._due_lock:
                # Each run reported so far was written before it was reported: this look
                # reads it. Those reported from now on wait for the next look.
                self._reported = None
            pending, queued, later = self.requests_pending(timezone.now())
            with self._due_lock:
                # When the next queued run not due yet is (a retry, mostly): look again then.
                self._due_at = later
        changed = self.apply_pause_changes() if pending else 0
        if took_over or queued or self.executor.counts_foreign() or self._sweep_due(now):
            self.watch_running()
        started = self.start_queued_runs() if queued else 0
        # Done (a database error above leaves these, and the next poll looks again).
        self._held = True
        if look:
            self._look, self._last_look = False, now
            # While requests are queued (one may wait for a slot that frees without a
            # notification), look every poll.
            self._waiting = queued
        # The active scheduler's next run times live in memory; write them back.
        self.store.flush()
        if self.detector is not None:
            # Its own errors are its own: logged, and the next poll tries again.
            try:
                self.detector.step()
            except db.TRANSIENT:
                raise
            except Exception:
                logger.exception("Error while looking for incidents")
        if changed or started:
            self.scheduler.wakeup()

    def queued(self, run: JobRun) -> None:
        """This process queued ``run`` (a next attempt, a fire time waiting its turn): look
        at the queue when it is due. Called from the thread that queued it."""
        with self._due_lock:
            if self._reported is None or run.scheduled_at < self._reported:
                self._reported = run.scheduled_at

    def _due(self, now: datetime) -> bool:
        """Whether a queued run known to this thread is due."""
        with self._due_lock:
            return any(at is not None and at <= now for at in (self._due_at, self._reported))

    def _sweep_due(self, now: float) -> bool:
        return now - self._last_sweep >= self._sweep_every

    @staticmethod
    def requests_pending(now: datetime) -> tuple[bool, bool, datetime | None]:
        """(a pause or resume to apply, a queued run due, when the next queued run not due
        yet is due), in one statement."""
        connection = connections[conf.database()]
        qn = connection.ops.quote_name
        job, run = qn(Job._meta.db_table), qn(JobRun._meta.db_table)
        status, at, executor = qn("status"), qn("scheduled_at"), qn("executor")
        # (A queued row with an executor waits for a Celery worker, not for us.)
        sql = (
            f"SELECT EXISTS(SELECT 1 FROM {job} WHERE {qn('pending_change')} = %s), "
            f"EXISTS(SELECT 1 FROM {run} WHERE {status} = %s AND {at} <= %s "
            f"AND {executor} = %s), "
            f"(SELECT MIN({at}) FROM {run} WHERE {status} = %s AND {at} > %s "
            f"AND {executor} = %s)"
        )
        queued = JobRun.Status.QUEUED
        stamp = connection.ops.adapt_datetimefield_value(now)
        with db.cursor() as cursor:
            cursor.execute(sql, [True, queued, stamp, "", queued, stamp, ""])
            pending, due, later = cursor.fetchone()
        return bool(pending), bool(due), _as_datetime(later)

    def start_queued_runs(self) -> int:
        """Claim and start the queued runs that are due, in the order they fell due: each
        once one of its job's ``max_instances`` slots is free (until then it stays
        queued: run-now waits its turn), and those that run here only as far as there
        are free worker threads (the rest stay queued in the table, where another
        scheduler finds them if this one dies, rather than in this process's memory).

        ``QUEUE_BATCH`` rows a statement, claimed with one conditional update: a
        thousand runs scheduled from code for the same moment start within a poll
        or two, not one a poll each.
        """
        self.executor.new_queue_round()
        paused = set(Job.objects.filter(paused=True).values_list("id", flat=True))
        started = 0
        after: tuple[datetime, int] | None = None
        self._backlog = False
        while not (self.stop.is_set() or self.executor.stopping.is_set()):
            batch = self._due_batch(after, paused)
            if not batch:
                break
            last = max(batch, key=lambda row: (row[4], row[0]))
            after = (last[4], last[0])
            started += self._start_batch(batch)
            if len(batch) < QUEUE_BATCH or self._backlog:
                break
        return started

    @staticmethod
    def _due_batch(
        after: tuple[datetime, int] | None, paused: set[str]
    ) -> list[tuple[int, str, str, str, datetime]]:
        """The next ``QUEUE_BATCH`` queued runs due now, after ``after`` (due time, id):
        (id, job id, owner, trigger, due time). Runs scheduled from code for a paused job
        wait for its resume; a queued row with an executor waits for a fleet's worker."""
        rows = JobRun.objects.filter(
            status=JobRun.Status.QUEUED, scheduled_at__lte=timezone.now(), executor=""
        )
        if after is not None:
            at, pk = after
            rows = rows.filter(Q(scheduled_at__gt=at) | Q(scheduled_at=at, id__gt=pk))
        if paused:
            rows = rows.exclude(trigger__in=WAIT_WHILE_PAUSED, job_id__in=paused)
        found = list(
            rows.order_by("scheduled_at", "id").values_list(
                "id", "job_id", "instance", "trigger", "scheduled_at", "result__priority"
            )[:QUEUE_BATCH]
        )
        # A task's priority orders the runs due together (a stable sort: due order
        # otherwise); the batch is read in due order, so a backlog is taken oldest first.
        if any(row[5] for row in found):
            found.sort(key=lambda row: -_priority(row[5]))
        return [row[:5] for row in found]

    def _start_batch(self, batch: list[tuple[int, str, str, str, datetime]]) -> int:
        runs = JobRun.objects
        free = self.executor.free_workers()
        claim: list[tuple[int, str]] = []
        for run_id, job_id, owner, trigger, at in batch:
            if self.stop.is_set() or self.executor.stopping.is_set():
                break
            spec = registry.get(job_id)
            here = self.executor.runs_for(job_id) is self.executor.runs
            if here and not owner and free <= 0:
                # No worker thread free: it waits in the table; a run ending wakes us.
                self._backlog = True
                continue
            if not self.executor.reserve(job_id, spec.max_instances if spec else 1):
                if spec is not None and spec.effective_overlap == "replace":
                    if trigger != JobRun.Trigger.RETRY:
                        # A newer run replaces the one going (a retry is older work: it waits).
                        self.runner.isolation.stop(job_id, replaced(trigger, at))
                continue
            if owner and not self._owner_alive(owner):
                self.executor.unreserve(job_id)
                self._orphaned_request(run_id, owner, trigger)
                continue
            if owner:
                # A ``runjob`` process asks for a slot and runs the job itself.
                granted = runs.filter(pk=run_id, status=JobRun.Status.QUEUED, instance=owner)
                if granted.update(status=JobRun.Status.RUNNING):
                    self.executor.hold_for_another(run_id, job_id)
                else:
                    self.executor.unreserve(job_id)
                continue
            if here:
                free -= 1
            claim.append((run_id, job_id))
        if not claim:
            return 0
        me = self.standing.instance_id
        ids = [run_id for run_id, _ in claim]
        # Claimed: ours alone now (conditional on queued: a run cancelled meanwhile stays
        # cancelled). started_at is set when a worker really starts it.
        runs.filter(pk__in=ids, status=JobRun.Status.QUEUED).update(
            status=JobRun.Status.RUNNING, hostname=conf.HOSTNAME, pid=os.getpid(), instance=me
        )
        claimed = {
            run.pk: run
            for run in runs.filter(pk__in=ids, status=JobRun.Status.RUNNING, instance=me)
        }
        self.runner.results.opened(list(claimed.values()))
        started = 0
        for run_id, job_id in claim:
            run = claimed.get(run_id)
            if run is None:
                self.executor.unreserve(job_id)
                continue
            logger.info("Running %r now: %s", run.job_id, _why_queued(run))
            try:
                future = self.executor.submit_manual(run)
            except BaseException:
                # This run and the rest of the batch go back to the queue (claimed, they
                # would stay running with nothing to run them).
                for rest_id, rest_job in claim[claim.index((run_id, job_id)) :]:
                    self.executor.unreserve(rest_job)
                    if rest_id in claimed:
                        self.runner.requeue(claimed[rest_id])
                if self.executor.stopping.is_set():
                    return started  # a stop came first: the next active scheduler runs them
                raise
            future.add_done_callback(_requeue_if_cancelled(self.runner, run))
            future.add_done_callback(self._worker_freed)
            started += 1
        return started

    def _worker_freed(self, future: Future[Any]) -> None:
        """A queued run ended: if runs wait for a worker thread, look again now."""
        if self._backlog:
            self._freed.set()

    @staticmethod
    def _skip_waiting(job_id: str) -> None:
        """A paused job's next attempts and waiting fire times do not run (a run requested
        by hand does: someone asked for it)."""
        skipped = JobRun.objects.filter(
            job_id=job_id,
            status=JobRun.Status.QUEUED,
            trigger__in=[JobRun.Trigger.RETRY, JobRun.Trigger.SCHEDULE],
        ).update(
            status=JobRun.Status.SKIPPED,
            finished_at=timezone.now(),
            exception="Skipped: the job was paused before it started.",
        )
        if skipped:
            logger.info("Skipped %d waiting run(s) of paused job %r.", skipped, job_id)

    @staticmethod
    def _owner_alive(owner: str) -> bool:
        """Whether the ``runjob`` process that queued a request still heartbeats."""
        # The database's clock, as the heartbeats and the sweep of dead instances use.
        stale = Now() - timedelta(seconds=float(conf.get("LEASE_SECONDS")))
        return SchedulerInstance.objects.filter(
            id=owner, heartbeat_at__gte=stale, stopped_at__isnull=True
        ).exists()

    @staticmethod
    def _orphaned_request(run_id: int, owner: str, trigger: str) -> None:
        """A ``runjob`` process queued this run and is gone (killed while it waited): its
        next attempt is the schedulers' now, a run it asked for is not run."""
        mine = JobRun.objects.filter(pk=run_id, status=JobRun.Status.QUEUED, instance=owner)
        if trigger == JobRun.Trigger.RETRY:
            mine.update(instance="", hostname="", pid=None)
            logger.info("Run #%s: its runjob process is gone; the scheduler runs it.", run_id)
            return
        mine.update(
            status=JobRun.Status.SKIPPED,
            finished_at=timezone.now(),
            exception="Skipped: the runjob process that asked for it is gone.",
        )

    def watch_running(self) -> None:
        """Count the runs of other processes against max_instances, and sweep our own
        ``running`` rows that nothing in this process will finish."""
        me = self.standing.instance_id
        rows = list(
            JobRun.objects.filter(status=JobRun.Status.RUNNING)
            .exclude(instance="")
            .values_list("id", "job_id", "instance")
        )
        self.executor.count_foreign({pk: job_id for pk, job_id, owner in rows if owner != me})
        now = time.monotonic()
        if not self._sweep_due(now):
            return
        self._last_sweep = now
        # The runs sent to a fleet that nobody follows any more (a take-over, a restart).
        fleet.settle_overdue()
        # Read after the rows: a run claimed since is open by now, and one closed
        # since is final in the database.
        live = self.runner.results.open_ids()
        suspects = {pk for pk, _, owner in rows if owner == me and pk not in live}
        # Twice in a row, a sweep apart: a claim is opened just after its INSERT returns.
        lost = sorted(suspects & self._suspects)
        self._suspects = suspects - set(lost)
        if lost:
            count = self.runner.interrupt(
                lost,
                "Interrupted: the scheduler that claimed it had no thread running it "
                "(found by its own sweep).",
                WITHDRAW_TIMEOUT,
            )
            logger.error("Marked %d run(s) of this scheduler with no thread as interrupted.", count)

    def apply_pause_changes(self) -> int:
        jobs = Job.objects
        applied: list[Job] = []
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
            if job.paused:
                self._skip_waiting(job.id)
            applied.append(job)
        if applied:
            # The flag clears once the change is in the job table too (the active
            # scheduler's next run times live in memory until a flush): whoever reads
            # "applied" then finds the table saying so.
            self.store.flush()
        for job in applied:
            # Clear the flag only if nobody flipped it again meanwhile.
            jobs.filter(pk=job.pk, paused=job.paused).update(pending_change=False)
        return len(applied)
