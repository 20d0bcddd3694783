"""The runner: claims each run in the history table, runs the job, and records the outcome.

Every run that starts has a ``JobRun`` row first (status ``running``), and that
row ends in a final status. Fire times that are not run are recorded too:
``missed`` (too late, or folded into one catch-up run by ``coalesce``) and
``skipped`` (the previous run was still going, ``max_instances``).
"""

from __future__ import annotations

import ctypes
import logging
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from datetime import datetime, timedelta
from typing import Any

from apscheduler.executors.base import BaseExecutor, MaxInstancesReachedError
from apscheduler.job import Job
from django.db import IntegrityError, connections
from django.utils import timezone

from scheduler import conf, db, signals
from scheduler.body import Outcome, TimedOut, make_call, run_here
from scheduler.claims import (
    WITHDRAW_TIMEOUT,
    ClaimBook,
    Claimed,
    Claims,
    beyond_grace,
    too_late,
)
from scheduler.execution import RunExecutor, RunOrder, ThreadRunExecutor
from scheduler.isolation import Isolation
from scheduler.lease import Alone, Standing
from scheduler.models import JobRun
from scheduler.registry import JobSpec, registry
from scheduler.results import ResultWriter
from scheduler.retries import retry_wanted
from scheduler.text import describe_exception, storable

logger = logging.getLogger(__name__)

Status = JobRun.Status


class _Watch:
    """The timeout of a run in a thread. A thread cannot be stopped from outside: at the
    limit the run is recorded ``timed_out`` at once (with its output so far and the stack
    it was in), and ``TimedOut`` is raised in its thread, which stops Python code at its
    next instruction but not a call blocked in C. The job's ``max_instances`` slot stays
    taken until the thread really returns; what it does after that is not recorded."""

    def __init__(self, runner: Runner, run: JobRun, spec: JobSpec, timeout: float) -> None:
        self.runner, self.run, self.spec, self.timeout = runner, run, spec, timeout
        self.thread_id = threading.get_ident()
        self.lock = threading.Lock()
        self.fired = self.done = False
        self.output: Any = None
        self.timer = threading.Timer(timeout, self._fire)
        self.timer.daemon = True

    def begin(self, output: Any) -> None:
        self.output = output
        self.timer.start()

    def finish(self) -> bool:
        """The call returned: whether the watch recorded the run already."""
        self.timer.cancel()
        with self.lock:
            self.done = True
            if self.fired:
                # A TimedOut not delivered yet must not hit the code after the call.
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread_id), None)
            return self.fired

    def _fire(self) -> None:
        with self.lock:
            if self.done:
                return
            self.fired = True
            frame = sys._current_frames().get(self.thread_id)
            run, limit = self.run, conf.get("MAX_OUTPUT")
            run.status = Status.TIMED_OUT
            run.duration = self.timeout
            run.finished_at = (run.started_at or timezone.now()) + timedelta(seconds=self.timeout)
            run.exception = (
                f"Timed out: still running after {self.timeout:g} s (timeout). It ran in a "
                "thread, which cannot be stopped from outside: TimedOut was raised in it, "
                "which stops Python code but not a call blocked in C; its max_instances slot "
                "stays taken until the thread returns."
            )
            stack = "".join(traceback.format_stack(frame)) if frame is not None else ""
            run.traceback = storable(stack, limit, "tail")
            run.output = self.output.getvalue() if self.output is not None else ""
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(self.thread_id), ctypes.py_object(TimedOut)
            )
        logger.error("Job %r timed out after %g s (in a thread).", run.job_id, self.timeout)
        try:
            self.runner.finish(run, self.spec, True)
        finally:
            connections.close_all()  # this timer thread's, which ends here


# How long a worker that claims its own fire time waits for a database that is away
# before it records the fire time missed (it holds the job's max_instances slot).
CLAIM_RETRY_TIMEOUT = 5.0

LOST_LEASE = "Missed: this scheduler lost its lease before the run could start."
STOPPED = "Missed: the scheduler stopped before the run could start."
# Queued runs due at a given time, which the misfire rules hold to it: a fire time
# waiting its turn, and runs scheduled from code or enqueued as tasks.
DUE_AT_A_TIME = (JobRun.Trigger.SCHEDULE, JobRun.Trigger.CODE, JobRun.Trigger.TASK)


class Runner:
    """Runs claimed fire times and records them, for one process.

    It owns the runs in progress here (read at shutdown) and reaches the
    history through the process's one :class:`~scheduler.results.ResultWriter`
    and :class:`~scheduler.claims.Claims`; whether it may start a scheduled run
    at all, it asks the lease (its ``standing``). The service makes one; a
    process without a service (``runjob``, a test) makes its own, whose writer
    writes at once.
    """

    def __init__(
        self, standing: Standing | None = None, results: ResultWriter | None = None
    ) -> None:
        self.standing: Standing = standing if standing is not None else Alone()
        self.results = results if results is not None else ResultWriter()
        self.claims = Claims(self.standing, self.results)
        # Set by a stop signal: no run starts from then on.
        self.stopping = threading.Event()
        # Runs in progress in this process: id -> job id.
        self._active: dict[int, str] = {}
        # Child processes of the runs of jobs declared with isolation="process".
        self.isolation = Isolation()
        # Whose the next attempts of failed runs are: any active scheduler's (""), or a
        # ``runjob`` process's own (its instance id).
        self.retry_owner = ""
        # Told of each run this process queues, once it is written: a next attempt, a fire
        # time waiting its turn (overlap="queue"). The control thread looks at the queue
        # when it is due; runjob waits for its own next attempt.
        self.queued: Callable[[JobRun], None] | None = None
        self._active_lock = threading.Lock()

    def active_runs(self) -> dict[int, str]:
        with self._active_lock:
            return dict(self._active)

    def claim(self, job_id: str, job_name: str, scheduled_at: datetime) -> JobRun | None:
        """Insert the ``running`` row for a scheduled fire time; None if it must not run
        here.

        A fire time this process cannot run (it lost the lease, or the database
        stayed away) is recorded missed, unless another process has it already:
        every fire time handed to the executor ends with a row.
        """
        if not self.standing.holds():
            logger.warning("Not starting %r: this scheduler no longer holds the lease.", job_id)
            self.did_not_run(job_id, job_name, Status.MISSED, [scheduled_at], LOST_LEASE)
            return None
        run = self.claims.new_row(job_id, job_name, scheduled_at)
        try:
            won = self.claims.claim(run, CLAIM_RETRY_TIMEOUT)
        except Exception as exc:
            if not db.is_transient(exc):
                raise
            self.did_not_run(
                job_id,
                job_name,
                Status.MISSED,
                [scheduled_at],
                f"Missed: the database was unavailable when the run was due ({exc}).",
            )
            return None
        if not won:
            logger.info(
                "Run of %r at %s already claimed by another scheduler; skipping it.",
                job_id,
                scheduled_at.isoformat(),
            )
        return run if won else None

    def did_not_run(
        self, job_id: str, job_name: str, status: str, times: list[datetime], reason: str
    ) -> None:
        """Record fire times that did not run, one row each (soon, by the results writer).

        A fire time that has a row already (another scheduler ran or recorded it)
        keeps it: the first row wins.
        """
        if not times:
            return
        cap = max(1, conf.get("MAX_MISSED_ROWS"))
        if len(times) > cap:
            reason = (
                f"{reason} ({len(times) - cap} earlier fire times were missed too, "
                "not recorded one by one)"
            )
            times = times[-cap:]
        self.results.record_not_run(
            JobRun.objects.not_run_rows(
                job_id, storable(job_name, 255), status, times, reason, self.standing.instance_id
            )
        )

    def execute(self, run: JobRun, call: Callable[[], Any], spec: JobSpec | None = None) -> JobRun:
        """Run ``call`` for an already-recorded ``running`` row and finish the row: in this
        thread, or, for a job declared with ``isolation="process"``, in a child process
        (``spec``'s, looked up there by id; ``call`` is not used). A failure the job's
        ``retries`` cover files the next attempt (``finish``)."""
        with self._active_lock:
            self._active[run.pk] = run.job_id
        try:
            run.started_at = run.started_at or timezone.now()
            signals.started(type(self), run)
            limit = conf.get("MAX_OUTPUT")
            timeout = spec.effective_timeout if spec is not None else None
            retry_on = spec.retry_on if spec is not None else ()
            if spec is not None and spec.effective_isolation == "process":
                outcome = self.isolation.run(
                    spec.id, run.scheduled_at, timeout, limit, run.arguments, run.pk
                )
            elif spec is not None and timeout is not None:
                watch = _Watch(self, run, spec, timeout)
                outcome = run_here(call, limit, watch, retry_on)
                if watch.finish():
                    return run  # recorded timed out by the watch already
            else:
                outcome = run_here(call, limit, retry_on=retry_on)
            self.record_outcome(run, spec, outcome)
        finally:
            with self._active_lock:
                self._active.pop(run.pk, None)
        return run

    def record_outcome(self, run: JobRun, spec: JobSpec | None, outcome: Outcome) -> None:
        """Finish a run's row with what its body did (capped and made storable here), and
        file its next attempt if its job retries the failure."""
        limit = conf.get("MAX_OUTPUT")
        if outcome.status != Status.SUCCEEDED:
            logger.error(
                "Job %r %s: %s",
                run.job_id,
                "timed out" if outcome.status == Status.TIMED_OUT else outcome.status,
                storable(outcome.exception, 1000, "head"),
            )
        started = run.started_at or timezone.now()
        run.duration = outcome.duration
        run.finished_at = started + timedelta(seconds=run.duration)
        run.status = outcome.status
        # Capped and made storable here, once: one value the database cannot hold
        # would otherwise cost this run (and the runs written with it) their result.
        run.exception = storable(outcome.exception, limit, "head")
        run.traceback = storable(outcome.traceback, limit, "tail")
        run.output = outcome.output
        if spec is not None and spec.task is not None:
            from scheduler.tasks import store_result  # only where tasks are declared

            store_result(run, outcome)
        self.finish(run, spec, outcome.retryable)

    def finish(self, run: JobRun, spec: JobSpec | None, retryable: bool | None) -> None:
        """Record a run's outcome; first, if the job's ``retries`` cover its failure, file
        the next attempt (scheduler.retries): a process that dies between the two leaves
        the attempt filed and the run ``running``, to be marked interrupted, never a
        failure without its retry."""
        retry = self.next_attempt(run, spec, retryable)
        if retry is not None:
            logger.warning(
                "Job %r: attempt %d of %d failed; attempt %d is due at %s.",
                run.job_id,
                run.attempt,
                (spec.effective_retries if spec else 0) + 1,
                retry.attempt,
                retry.scheduled_at.isoformat(),
            )
            self.file_retry(retry)
        self.results.record(run)

    def next_attempt(
        self, run: JobRun, spec: JobSpec | None, retryable: bool | None
    ) -> JobRun | None:
        """The (unsaved) queued next attempt of ``run``, if its job retries this failure."""
        if spec is None or not retry_wanted(
            spec.effective_retries, run.attempt, run.status, retryable, spec.retries_any_failure
        ):
            return None
        due = timezone.now() + timedelta(seconds=spec.retry_backoff.delay(run.attempt))
        run.exception = storable(
            f"{run.exception}\n(Attempt {run.attempt} of {spec.effective_retries + 1}: "
            f"tried again at {due.isoformat(timespec='seconds')}.)",
            conf.get("MAX_OUTPUT"),
            "head",
        )
        return JobRun.objects.retry_row(run, due, self.retry_owner)

    def file_retry(self, retry: JobRun) -> None:
        """Store a queued next attempt, before the failed one's result (see ``finish``).
        Written here, at once, so that whoever is told (``queued``) finds it; a database
        away for ``CLAIM_RETRY_TIMEOUT`` leaves it to the results writer, which keeps it
        until it is written, and a later look at the queue finds it."""
        try:
            db.retrying(
                lambda: retry.save(using=conf.database(), force_insert=True),
                f"file attempt {retry.attempt} of {retry.job_id!r}",
                CLAIM_RETRY_TIMEOUT,
            )
        except Exception as exc:
            if not db.is_transient(exc):
                # Its values are the failed run's, which the database took: not expected,
                # and the failed run's own result still goes on.
                logger.exception("Could not file attempt %d of %r.", retry.attempt, retry.job_id)
                return
            self.results.record_not_run([retry])
        if self.queued is not None:
            self.queued(retry)

    def interrupt(self, run_ids: list[int], reason: str, timeout: float | None = None) -> int:
        """Mark runs that will never finish as interrupted."""
        now = timezone.now()
        count = db.retrying(
            lambda: JobRun.objects.filter(pk__in=run_ids, status=Status.RUNNING).update(
                status=Status.INTERRUPTED, finished_at=now, exception=reason
            ),
            "mark runs interrupted",
            timeout,
        )
        self.results.closed(run_ids)
        return count

    def requeue(self, run: JobRun) -> None:
        """Put a claimed manual run that did not start back in the queue, for the next
        active scheduler; if the database does not answer, it is finished as interrupted
        later."""
        try:
            db.retrying(
                lambda: JobRun.objects.filter(pk=run.pk, status=Status.RUNNING).update(
                    status=Status.QUEUED, hostname="", pid=None, instance=""
                ),
                f"queue the run of {run.job_id!r} again",
                WITHDRAW_TIMEOUT,
            )
        except Exception as exc:
            if not db.is_transient(exc):
                raise
            self.results.abandon(
                run, Status.INTERRUPTED, "Interrupted: the scheduler stopped before it started."
            )
            return
        self.results.closed([run.pk])

    # -- carrying out orders (the executors' side, see scheduler.execution) ------------

    def carry_out_in_order(self, orders: Sequence[RunOrder]) -> None:
        """Carry out ``orders`` one after the other, in this thread (a worker's body)."""
        if any(order.run is not None and not order.manual for order in orders):
            self.results.starts.started()  # handed over claimed: see ResultWriter.starts
        db.close_old_connections()
        try:
            for order in orders:
                self.carry_out(order)
        finally:
            db.close_old_connections()

    def carry_out(self, order: RunOrder) -> None:
        """Run one order's job, if it may still start, and record it: the one place where a
        run's body is called (see the contract in scheduler.execution)."""
        admitted = self.admit(order)
        if admitted is not None:
            run, spec = admitted
            call = make_call(spec, order.job, run.scheduled_at, run.arguments, run.pk)
            self.execute(run, call, spec)

    def admit(self, order: RunOrder) -> tuple[JobRun, JobSpec | None] | None:
        """The claimed row of an order that may start now, and its job's declaration (None
        for a job added to APScheduler without one); None when it must not start, and then
        it is recorded why (missed: a stop, the lease lost, too late; failed: a job not in
        this code) or, a manual run at a stop, queued again. Where the body then runs is
        the caller's business: here (``carry_out``) or on a worker fleet."""
        spec = registry.get(order.job_id)
        if order.manual:
            assert order.run is not None, "a manual order is a claimed run"
            return self._admit_manual(order.run, spec)
        job = order.job
        name = spec.name if spec else job.name if job else order.job_id
        grace = job.misfire_grace_time if job else spec.effective_grace_time if spec else None
        at = order.scheduled_at
        run = order.run
        if run is None:  # a fire time the main loop did not claim: claim it here
            reason = STOPPED if self.stopping.is_set() else beyond_grace(grace, at)
            if reason:
                self.did_not_run(order.job_id, name, Status.MISSED, [at], reason)
                return None
            run = self.claim(order.job_id, name, at)
            if run is None:
                return None
        else:
            if self.stopping.is_set():
                reason = STOPPED
            elif not self.standing.holds():
                reason = LOST_LEASE
            else:  # it may have waited for a worker that long
                reason = beyond_grace(grace, at)
            if reason:
                self.results.abandon(run, Status.MISSED, reason)
                return None
            run.started_at = timezone.now()
        if spec is None and job is None:
            self.results.abandon(
                run, Status.FAILED, f"Job {order.job_id!r} is not registered in this code."
            )
            return None
        return run, spec

    def _admit_manual(self, run: JobRun, spec: JobSpec | None) -> tuple[JobRun, JobSpec] | None:
        # After a stop signal it is not started but queued again, for the next active
        # scheduler.
        if self.stopping.is_set():
            self.requeue(run)
            return None
        if run.trigger in DUE_AT_A_TIME and spec is not None:
            # A fire time that waited its turn (overlap) is still a fire time: past its
            # misfire_grace_time it is missed, as it would be in the main loop. So is a
            # run scheduled from code for a time when no scheduler was there (a job
            # that must run however late declares a long misfire_grace_time).
            late = beyond_grace(spec.effective_grace_time, run.scheduled_at)
            if late:
                self.results.abandon(run, Status.MISSED, late)
                return None
        run.started_at = timezone.now()
        if spec is None:
            self.results.abandon(
                run,
                Status.FAILED,
                f"Job {run.job_id!r} is not registered in this scheduler's code.",
            )
            return None
        return run, spec

    def run_manual(self, run: JobRun) -> JobRun:
        """Run a claimed manual run (status ``running``) of a registered job, here."""
        self.carry_out_in_order([RunOrder(run.job_id, run.scheduled_at, run, manual=True)])
        return run

    def run_scheduled(
        self, job: Job, run_times: list[datetime], claimed: list[JobRun] | None = None
    ) -> None:
        """Run a scheduled job's claimed runs (``claimed``), then the fire times not claimed
        yet (``run_times``), here, one after the other."""
        self.carry_out_in_order(scheduled_orders(job, claimed or [], run_times))


def scheduled_orders(job: Job, claimed: list[JobRun], unclaimed: list[datetime]) -> list[RunOrder]:
    """The orders of one submission of a scheduled job: its claimed runs, then the fire
    times nobody claimed yet."""
    orders = [RunOrder(job.id, run.scheduled_at, run, job=job) for run in claimed]
    return orders + [RunOrder(job.id, at, job=job) for at in unclaimed]


class Executor(BaseExecutor):  # type: ignore[misc]  # APScheduler 3 is untyped
    """APScheduler's executor: the runtime's side of running a fire time, where APScheduler's
    main loop hands it over. Where the run's body then runs is the ``RunExecutor``'s
    business (``scheduler.execution``; by default this process's worker threads).

    The fire times it is handed were claimed by the main loop just before
    (``claims.ClaimBook``): it takes a job's claims from the book as it submits
    the job, and gives back what it does not submit. It keeps each job's
    ``max_instances`` slots, for scheduled and manual runs and for the runs of
    other processes alike. Every fire time submitted ends with a row: its run,
    or a ``missed`` or ``skipped`` row saying why not. After ``stop_starting``
    (a stop signal) no run starts any more.
    """

    def __init__(
        self,
        max_workers: int,
        runner: Runner | None = None,
        book: ClaimBook | None = None,
        runs: RunExecutor | None = None,
    ) -> None:
        super().__init__()
        self.runner = runner if runner is not None else Runner()
        # Where the bodies run: here, and, for jobs with executor="celery" or "tasks", on
        # a worker fleet (``add_fleet``: the service adds those the declared jobs use).
        self.runs = runs if runs is not None else ThreadRunExecutor(max_workers, self.runner)
        self.fleets: dict[str, RunExecutor] = {}
        # The claims the main loop made for the fire times it is about to submit.
        self.book = book if book is not None else ClaimBook(self.runner.claims)
        self.book.slots = self
        self.closed = False
        # Runs of other processes (``runjob``, a scheduler that is stopping) in progress,
        # counted against max_instances here: run id -> job id.
        self._foreign: dict[int, str] = {}
        # Jobs whose queued manual run waits for a slot.
        self._manual_waiting: set[str] = set()

    @property
    def stopping(self) -> threading.Event:
        """Set by a stop signal: no run starts from then on (the runner's flag)."""
        return self.runner.stopping

    def stop_starting(self) -> None:
        """Start no run from now on (called from the stop signal's handler)."""
        self.runner.stopping.set()

    # -- slots (what the claim book asks) ---------------------------------------------

    def free_workers(self) -> int:
        return self.runs.free()

    def slots_taken(self, job: Job) -> bool:
        """Whether a run of ``job`` may not start now (max_instances, or a run-now request
        waiting for the next free slot)."""
        taken = self._instances[job.id]
        if job.id in self._manual_waiting:
            taken += 1
        return bool(taken >= job.max_instances)

    # -- manual runs ------------------------------------------------------------------------

    def reserve(self, job_id: str, max_instances: int) -> bool:
        """Take one of the job's ``max_instances`` slots for a manual run, if one is free.

        If none is, the job's scheduled fire times leave the next free slot to the
        waiting request (they are recorded skipped meanwhile), so that a run
        asked for by hand is not kept waiting by the schedule for ever.
        """
        with self._lock:
            if self.closed or self._instances[job_id] >= max_instances:
                self._manual_waiting.add(job_id)
                return False
            self._manual_waiting.discard(job_id)
            self._instances[job_id] += 1
            return True

    def new_queue_round(self) -> None:
        """The queued requests are looked at again: forget which jobs they waited for."""
        with self._lock:
            self._manual_waiting.clear()

    def unreserve(self, job_id: str) -> None:
        self._run_job_success(job_id, [])

    def runs_for(self, job_id: str) -> RunExecutor:
        """Where the runs of ``job_id`` are carried out."""
        spec = registry.get(job_id)
        if spec is not None and spec.effective_executor in self.fleets:
            return self.fleets[spec.effective_executor]
        return self.runs

    def add_fleet(self, executor: str, runs: RunExecutor) -> None:
        """Carry out the runs of the jobs with ``executor=executor`` through ``runs``."""
        self.fleets[executor] = runs

    def hand_over(self, run_id: int, job_id: str) -> None:
        """A run sent to a worker started there: from now on it holds its job's slot as a
        run of another process (counted until it is no longer ``running``), and the
        submission that held it ends."""
        with self._lock:
            self._count_as_foreign(run_id, job_id)

    def submit_manual(self, run: JobRun) -> Future[Any]:
        """Start a claimed manual run on a worker (its slot taken with ``reserve``)."""
        runs = self.runs_for(run.job_id)
        future = runs.submit([RunOrder(run.job_id, run.scheduled_at, run, manual=True)])
        future.add_done_callback(lambda _: self.unreserve(run.job_id))
        return future

    def hold_for_another(self, run_id: int, job_id: str) -> None:
        """A slot taken with ``reserve`` now belongs to a run of another process."""
        with self._lock:
            self._foreign[run_id] = job_id

    def counts_foreign(self) -> bool:
        """Whether runs of other processes hold slots here (watched until they end)."""
        with self._lock:
            return bool(self._foreign)

    def count_foreign(self, runs: dict[int, str]) -> None:
        """Manual runs of other processes now running (run id -> job id): each holds one of
        its job's slots here until it is no longer listed."""
        with self._lock:
            for run_id in self._foreign.keys() - runs.keys():
                self._drop_foreign(run_id)
            for run_id in runs.keys() - self._foreign.keys():
                self._count_as_foreign(run_id, runs[run_id])

    def release(self, run_id: int) -> None:
        """A run of another process (a fleet's worker) ended: its job's slot is free."""
        with self._lock:
            self._drop_foreign(run_id)

    def _drop_foreign(self, run_id: int) -> None:
        """(Under the lock.) The run of another process no longer holds a slot."""
        job_id = self._foreign.pop(run_id, None)
        if job_id is not None:
            self._instances[job_id] -= 1
            if self._instances[job_id] <= 0:
                del self._instances[job_id]

    def _count_as_foreign(self, run_id: int, job_id: str) -> None:
        """(Under the lock.) The run of another process holds one of its job's slots."""
        if run_id not in self._foreign:
            self._foreign[run_id] = job_id
            self._instances[job_id] += 1

    # -- submissions ---------------------------------------------------------------------

    def submit_job(self, job: Job, run_times: list[datetime]) -> None:
        spec = registry.get(job.id)
        name = spec.name if spec else job.name
        runner = self.runner
        folded = self._coalesced_times(job, run_times)
        if folded:
            runner.did_not_run(
                job.id,
                name,
                Status.MISSED,
                folded,
                f"Coalesced: the scheduler caught up on {len(folded) + 1} fire times "
                f"with one run at {run_times[-1].isoformat()}.",
            )
        # Fire times too late to start are recorded here, before the main loop moves the
        # job on (claimed ones were not too late when claimed: their worker judges them).
        claimed = self.book.get(job.id)
        tried = set(claimed.tried) if claimed is not None else set()
        late = {at: why for at in run_times if at not in tried and (why := too_late(job, at))}
        if late:
            runner.did_not_run(job.id, name, Status.MISSED, list(late), list(late.values())[-1])
            run_times = [at for at in run_times if at not in late]
            if not run_times:
                return
        try:
            with self._lock:
                if self.slots_taken(job):
                    raise MaxInstancesReachedError(job)
                super().submit_job(job, run_times)
        except MaxInstancesReachedError:
            overlap = spec.effective_overlap if spec is not None else "skip"
            claimed = self.book.pop(job.id)
            reason = f"Skipped: {job.max_instances} run(s) of this job still going (max_instances)."
            if job.id in self._manual_waiting or (
                overlap in ("queue", "replace") and self._one_waits(job.id)
            ):
                reason = (
                    "Skipped: a run of this job waits for its next free slot already (a run "
                    "requested by hand, a retry, or a fire time queued by overlap="
                    f"'queue'; max_instances={job.max_instances})."
                )
            elif overlap in ("queue", "replace") and self._queue(job, name, run_times[-1], claimed):
                if overlap == "replace":
                    self.runner.isolation.stop(
                        job.id, replaced(JobRun.Trigger.SCHEDULE, run_times[-1])
                    )
                run_times = run_times[:-1]
                reason = "Skipped: a later fire time of this job waits for its turn."
            for run in claimed.runs if claimed is not None else []:
                runner.results.abandon(run, Status.SKIPPED, reason)
            rest = [at for at in run_times if claimed is None or at not in claimed.tried]
            runner.did_not_run(job.id, name, Status.SKIPPED, rest, reason)
            if not run_times:
                return  # its one fire time waits in the queue: nothing was skipped
            raise
        except BaseException as exc:
            # APScheduler logs it and moves the job on: the fire times would vanish.
            if not isinstance(exc, _Recorded):
                runner.did_not_run(
                    job.id,
                    name,
                    Status.MISSED,
                    run_times,
                    f"Missed: the scheduler could not start the run ({describe_exception(exc)}).",
                )
            raise

    @staticmethod
    def _one_waits(job_id: str) -> bool:
        """Whether a fire time of the job waits its turn already (at most one does). Asked of
        the database: the control thread forgets, each round, which jobs have a run
        waiting, until it looks at the queue again."""
        try:
            return JobRun.objects.filter(
                job_id=job_id, status=Status.QUEUED, trigger=JobRun.Trigger.SCHEDULE
            ).exists()
        except db.TRANSIENT:
            return False  # the queueing that follows fails too, and records it skipped

    def _queue(self, job: Job, name: str, at: datetime, claimed: Claimed | None) -> bool:
        """Make fire time ``at`` wait in the queue for the job's next free slot
        (overlap="queue" or "replace"): its claimed row, or a new one, turns ``queued``,
        and the control thread starts it once a slot is free. False if it could not be
        queued (the database is away: it is recorded skipped instead)."""
        run = next((r for r in claimed.runs if r.scheduled_at == at), None) if claimed else None
        runs = JobRun.objects
        try:
            if run is not None:
                # Ours no more: the claim book gives back the others, this one waits.
                assert claimed is not None
                claimed.runs.remove(run)
                pk = run.pk
                queued = db.retrying(
                    lambda: runs.filter(pk=pk, status=Status.RUNNING).update(
                        status=Status.QUEUED, instance="", hostname="", pid=None, started_at=None
                    ),
                    f"queue the run of {job.id!r}",
                    WITHDRAW_TIMEOUT,
                )
                self.runner.results.closed([pk])
                if not queued:
                    return False
                run.status = Status.QUEUED
            else:
                row = run = runs.claim_row(job.id, name, at, "")
                run.status, run.started_at, run.hostname, run.pid = Status.QUEUED, None, "", None
                db.retrying(
                    lambda: row.save(using=conf.database(), force_insert=True),
                    f"queue the run of {job.id!r}",
                    WITHDRAW_TIMEOUT,
                )
        except IntegrityError:
            return True  # another scheduler has this fire time
        except Exception as exc:
            if not db.is_transient(exc):
                raise
            return False
        with self._lock:
            self._manual_waiting.add(job.id)
        logger.info("Run of %r at %s waits for its turn (overlap).", job.id, at.isoformat())
        if self.runner.queued is not None:
            self.runner.queued(run)
        return True

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
        claimed = self.book.pop(job.id)
        if claimed is not None and not set(claimed.tried) <= set(run_times):
            # Not the fire times submitted: the worker claims the ones it is given.
            self.book.give_back(claimed, "Missed: the scheduler submitted other fire times.")
            claimed = None
        # The runs claimed for it, and the fire times nobody tried to claim yet (a fire
        # time tried and not won is another scheduler's).
        runs = claimed.runs if claimed is not None else []
        runner, results = self.runner, self.runner.results
        unclaimed = [at for at in run_times if claimed is None or at not in claimed.tried]

        def callback(future: Future[Any]) -> None:
            if future.cancelled():
                # The scheduler stopped before a worker was free to start it.
                self._run_job_success(job.id, [])
                if runs:
                    results.starts.started()
                for run in runs:
                    results.abandon(run, Status.MISSED, STOPPED)
                runner.did_not_run(job.id, job.name, Status.MISSED, unclaimed, STOPPED)
                return
            exc = future.exception()
            if exc:
                for run in runs:
                    if run.status == Status.RUNNING:
                        # It failed before the job was called: nothing else finishes its row.
                        results.abandon(
                            run,
                            Status.FAILED,
                            f"The scheduler could not start the run: {describe_exception(exc)}",
                        )
                self._run_job_error(job.id, exc, exc.__traceback__)
            else:
                self._run_job_success(job.id, [])

        if runs:
            results.starts.add()
        try:
            future = self.runs_for(job.id).submit(scheduled_orders(job, runs, unclaimed))
        except BaseException as exc:
            reason = f"Missed: the scheduler could not start the run ({describe_exception(exc)})."
            if runs:
                results.starts.started()
            for run in runs:
                results.abandon(run, Status.MISSED, reason)
            runner.did_not_run(job.id, job.name, Status.MISSED, unclaimed, reason)
            raise _Recorded(reason) from exc
        future.add_done_callback(callback)

    def cancel_waiting(self) -> None:
        """Cancel the submissions no worker picked up yet (their callbacks record them
        missed, or queue manual runs again)."""
        self.runs.cancel_waiting()
        for fleet in self.fleets.values():
            fleet.cancel_waiting()

    def close(self, reason: str, timeout: float | None = None) -> None:
        """Claim nothing more, and close the claims not submitted yet."""
        self.closed = True
        self.book.release(reason, timeout)

    def start(self, scheduler: Any, alias: str) -> None:
        super().start(scheduler, alias)
        self.runs.start()
        specs = registry.values()
        if any(
            s.effective_isolation == "process" and s.effective_executor == "local" for s in specs
        ):
            self.runner.isolation.start()
        for fleet in self.fleets.values():
            fleet.start()

    def shutdown(self, wait: bool = True) -> None:
        self.close(STOPPED)
        self.runs.shutdown(wait)
        for fleet in self.fleets.values():
            fleet.shutdown(wait=False)  # runs sent go on on their workers


def replaced(trigger: str, at: datetime) -> str:
    """Why a run was stopped by overlap="replace": for the run of ``trigger`` at ``at``."""
    what = (
        "a run requested by hand"
        if trigger == JobRun.Trigger.MANUAL
        else f"the run at {at.isoformat()}"
    )
    return f"Interrupted: stopped for {what}, which replaces it (overlap='replace')."


class _Recorded(Exception):
    """A submission failed and its fire times are recorded already."""
