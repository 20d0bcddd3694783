"""Runs sent to a worker fleet: the scheduler's side of ``executor="celery"`` and
``executor="tasks"`` (Django's task framework).

The scheduler keeps what makes a run happen once: it claims each fire time in
the history table (the fence between schedulers), keeps the job's
``max_instances`` slots and its retries. Only the body goes to the fleet: the
claimed row is marked as waiting for a worker (``queued``, its executor set)
and sent with its id: to Celery by name, to the task ``scheduler.run``
(``scheduler.worker``; Celery task id ``scheduler-run-<id>``), or enqueued on
a ``django.tasks`` backend as ``scheduler.taskworker.run_task``. A worker
takes the row with a conditional update (``queued`` to ``running``, so a
message delivered twice runs once), runs the job registered under that id in
its own code, and records the outcome in the same row through the same
recorder as a run here (``scheduler.remote``).

This executor's thread sends what the main loop and the control thread hand
it (they never wait on the broker: while it is away, sending is tried again
every second, within the job's ``misfire_grace_time``), and follows the rows
of the runs in flight:

* a run a worker has started holds its job's slot as a run of another
  process from then on (``Executor.hand_over``), until its row is final;
* a submission of several fire times (``coalesce=False``) sends the next one
  only once the one before it ended: they never run side by side;
* a run a worker did not take within its ``expires`` (Celery drops the
  message) is recorded missed, and one still ``running`` well past its
  ``timeout`` (Celery's hard time limit killed it and its worker did not say
  so) timed out. A worker that dies stops heartbeating, and the active
  scheduler marks its runs interrupted (``lease.recover_orphans``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from django.utils import timezone

from scheduler import conf, db
from scheduler.execution import RunExecutor, RunOrder
from scheduler.isolation import KILL_AFTER
from scheduler.models import JobRun
from scheduler.remote import CELERY, TASKS
from scheduler.text import describe_exception

if TYPE_CHECKING:
    from scheduler.registry import JobSpec
    from scheduler.runner import Runner

logger = logging.getLogger(__name__)

Status = JobRun.Status
# The name of the Celery task the workers run (scheduler.worker.run).
CELERY_TASK = "scheduler.run"
# Submissions taken, marked for a worker in one statement, and sent, at a time.
TAKE_AT_ONCE = 500
# Seconds between two looks at the rows of the runs in flight: how soon a run that
# started on a worker hands its slot over, and a run that ended lets the next start.
LOOK_EVERY = 0.2
# Seconds between tries to send while the broker is away.
SEND_AGAIN = 1.0
# Seconds past a run's timeout and Celery's kill (KILL_AFTER) before a run still
# ``running`` on a worker is recorded timed out without word from its worker.
REPORT_GRACE = 30.0


def task_id(run_id: int) -> str:
    """The Celery task id of a run: its row's id, recognisable in Flower and the logs."""
    return f"scheduler-run-{run_id}"


def send_options(spec: JobSpec | None) -> dict[str, Any]:
    """The routing and time limits of a run sent to Celery: the job's queue, priority and
    expiry; its timeout as Celery's soft time limit (raised in the job as an exception,
    recorded timed out), and KILL_AFTER later its hard one (the worker's child killed)."""
    if spec is None:
        return {}
    options: dict[str, Any] = {}
    if spec.queue is not None:
        options["queue"] = spec.queue
    if spec.priority is not None:
        options["priority"] = spec.priority
    if spec.expires is not None:
        options["expires"] = spec.expires
    timeout = spec.effective_timeout
    if timeout is not None:
        options["soft_time_limit"] = timeout
        options["time_limit"] = timeout + KILL_AFTER
    return options


class Sender(Protocol):
    """How runs reach one kind of fleet."""

    name: str  # the executor, as the rows record it
    # Errors of a send that trying again will not cure (the run is recorded failed).
    refused: tuple[type[BaseException], ...]

    def send(self, run: JobRun, spec: JobSpec | None) -> None:
        """Hand the run to the fleet (raises if it could not)."""


class CelerySender:
    def __init__(self) -> None:
        self.name = CELERY
        self.refused: tuple[type[BaseException], ...] = (TypeError, ValueError)
        self.app = conf.celery_app()

    def send(self, run: JobRun, spec: JobSpec | None) -> None:
        self.app.send_task(
            CELERY_TASK, args=[run.pk, run.job_id], task_id=task_id(run.pk), **send_options(spec)
        )


class TasksSender:
    """Enqueues on the ``django.tasks`` backend ``SCHEDULER['TASK_BACKEND']``: its worker
    (``db_worker`` of django-tasks-db, say) runs ``scheduler.taskworker.run_task``."""

    def __init__(self) -> None:
        from scheduler.taskworker import InvalidTask, run_task

        self.name = TASKS
        self.task = run_task.using(backend=conf.get("TASK_BACKEND"))
        self.refused: tuple[type[BaseException], ...] = (TypeError, ValueError, InvalidTask)

    def send(self, run: JobRun, spec: JobSpec | None) -> None:
        task = self.task
        if spec is not None and (spec.queue is not None or spec.priority is not None):
            options: dict[str, Any] = {}
            if spec.queue is not None:
                options["queue_name"] = spec.queue
            if spec.priority is not None:
                options["priority"] = spec.priority
            task = task.using(**options)
        task.enqueue(run.pk, run.job_id)


def make_sender(executor: str) -> Sender:
    if executor == CELERY:
        return CelerySender()
    return TasksSender()


@dataclass
class _Flight:
    """One submission: its orders, carried out one after the other."""

    orders: list[RunOrder]
    future: Future[Any]
    next: int = 0
    run: JobRun | None = None  # the run of the order in flight
    spec: JobSpec | None = None
    sent: bool = False
    tried_since: float = 0.0  # monotonic: when sending it was first tried
    last_try: float = 0.0  # monotonic: the last try
    said: bool = False  # the broker being away was logged


@dataclass
class _Watched:
    """A run sent to a worker, followed until its row is final."""

    job_id: str
    timeout: float | None
    expires: float | None
    sent_at: float = field(default_factory=time.monotonic)


class FleetRunExecutor(RunExecutor):
    """Sends runs to a fleet through ``sender`` (see the module docstring). ``taken`` is
    told of each run a worker started (``Executor.hand_over``), ``ended`` of each such run
    whose row it then found final (``Executor.release``)."""

    def __init__(
        self,
        runner: Runner,
        taken: Callable[[int, str], None],
        executor: str,
        ended: Callable[[int], None] | None = None,
    ) -> None:
        self.runner = runner
        self.taken = taken
        self.ended = ended
        self.executor = executor
        self._sender: Sender | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._new: deque[_Flight] = deque()
        self._flights: list[_Flight] = []
        self._watched: dict[int, _Watched] = {}
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._sender = make_sender(self.executor)
        self._thread = threading.Thread(target=self._loop, name="scheduler-fleet", daemon=True)
        self._thread.start()

    def submit(self, orders: Sequence[RunOrder]) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            if self._stop.is_set():
                raise RuntimeError("cannot send runs after shutdown")
            self._new.append(_Flight(list(orders), future))
        self._wake.set()
        return future

    def free(self) -> int:
        # The fleet's size is the broker's business: sending is never the bottleneck.
        return 10_000

    def cancel_waiting(self) -> None:
        with self._lock:
            new, self._new = self._new, deque()
        for flight in new:
            flight.future.cancel()  # none of its orders was looked at: recorded by the caller

    def shutdown(self, wait: bool = True) -> None:
        self._stop.set()
        self._wake.set()
        if wait and self._thread is not None:
            self._thread.join()

    # -- the executor's thread --------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._take_new()
                self._send_waiting()
                if self._flights or self._watched:
                    self._look()
            except Exception as exc:
                if not db.is_transient(exc):
                    logger.exception("Error while sending runs to %s", self.executor)
                db.close_broken()
            finally:
                db.close_old_connections()
            with self._lock:
                more = bool(self._new)  # a burst beyond TAKE_AT_ONCE: on at once
            if not more:
                self._wake.wait(LOOK_EVERY)
            self._wake.clear()

    def _take_new(self) -> None:
        """Take the submissions there now, up to ``TAKE_AT_ONCE``: admit each one's first
        order, mark all their runs as waiting for a worker in one statement, and send
        them. (One UPDATE a run, each its own commit, was two thirds of this thread's
        time at 100 runs/s on PostgreSQL, and capped dispatch below 300 runs/s: bench
        scenario 7b.) Those not taken yet stay in ``_new``, where ``cancel_waiting``
        finds them at a stop; a batch taken is sent whole (its rows are marked)."""
        with self._lock:
            count = min(len(self._new), TAKE_AT_ONCE)
        taken: list[_Flight] = []
        for _ in range(count):
            with self._lock:
                if not self._new:
                    break
                flight = self._new.popleft()
            if not flight.future.set_running_or_notify_cancel():
                continue
            if any(order.run is not None and not order.manual for order in flight.orders):
                self.runner.results.starts.started()  # see ResultWriter.starts
            self._flights.append(flight)
            taken.append(flight)
        ready = []
        for flight in taken:
            try:
                if self._admit_next(flight):
                    ready.append(flight)
            except Exception as exc:
                self._fail(flight, exc)
        self._mark_and_send(ready)

    def _mark_and_send(self, flights: list[_Flight]) -> None:
        """Mark the flights' admitted runs for a worker (one statement), then send each;
        a flight whose run is not ours any more goes on with its next order."""
        if not flights:
            return
        try:
            marked = self._for_workers([flight.run for flight in flights if flight.run])
        except Exception as exc:
            for flight in flights:
                self._fail(flight, exc)
            return
        for flight in flights:
            assert flight.run is not None
            if flight.run.pk in marked:
                flight.sent, flight.tried_since, flight.said = False, time.monotonic(), False
                self._send(flight)
            else:
                self._advance_or_fail(flight)

    def _fail(self, flight: _Flight, exc: Exception) -> None:
        """The submission fails (the database stayed away past DB_RETRY_TIMEOUT), and the
        executor's callback records its claimed runs, as for any executor that failed
        (see scheduler.execution); the other flights go on."""
        if flight in self._flights:
            self._flights.remove(flight)
        if not flight.future.done():
            flight.future.set_exception(exc)
        logger.error("Could not send the runs of %r: %s", flight.orders[0].job_id, exc)

    def _advance_or_fail(self, flight: _Flight) -> None:
        """The flight's next order, admitted, marked for a worker and sent; when none is
        left, the submission is done."""
        try:
            ready = self._admit_next(flight)
        except Exception as exc:
            self._fail(flight, exc)
            return
        if ready:
            self._mark_and_send([flight])

    def _admit_next(self, flight: _Flight) -> bool:
        """Admit the flight's next order that may start (``flight.run``); False when none
        is left, and then the submission is done."""
        while flight.next < len(flight.orders):
            order = flight.orders[flight.next]
            flight.next += 1
            admitted = self.runner.admit(order)
            if admitted is None:
                continue  # recorded why not (missed, failed, or queued again)
            flight.run, flight.spec = admitted
            return True
        flight.run = None
        self._flights.remove(flight)
        flight.future.set_result(None)
        return False

    def _for_workers(self, runs: list[JobRun]) -> set[int]:
        """Mark claimed runs as waiting for a worker, before they are sent (a worker takes
        only such a row); the ids of those marked (one marked interrupted meanwhile is not
        ours any more)."""
        ids = [run.pk for run in runs]
        what = f"send the run of {runs[0].job_id!r} to {self.executor}"
        if len(runs) > 1:
            what = f"send {len(runs)} runs to {self.executor}"

        def mark() -> set[int]:
            count = JobRun.objects.filter(pk__in=ids, status=Status.RUNNING).update(
                status=Status.QUEUED,
                executor=self.executor,
                started_at=None,
                hostname="",
                pid=None,
                instance="",
            )
            if count == len(ids):
                return set(ids)
            # Some were not ours any more: which are, now waiting for a worker?
            return set(
                JobRun.objects.filter(
                    pk__in=ids, status=Status.QUEUED, executor=self.executor
                ).values_list("id", flat=True)
            )

        marked = db.retrying(mark, what)
        # The workers finish them now: not this process's to settle any more.
        self.runner.results.closed(ids)
        for run in runs:
            run.status, run.executor, run.started_at = Status.QUEUED, self.executor, None
        return marked

    def _send_waiting(self) -> None:
        for flight in list(self._flights):
            if flight.run is not None and not flight.sent and not self._send(flight):
                return  # the broker is away: the others wait for the next try too

    def _send(self, flight: _Flight) -> bool:
        """Send the flight's run; False if the broker did not take it (tried again later)."""
        run, spec = flight.run, flight.spec
        assert run is not None
        now = time.monotonic()
        if flight.said and now - flight.last_try < SEND_AGAIN:
            return False
        flight.last_try = now
        waited = now - flight.tried_since
        sender = self._sender
        assert sender is not None, "started"
        try:
            sender.send(run, spec)
        except sender.refused as exc:
            self._settle(
                run.pk,
                Status.FAILED,
                f"The run could not be sent to {self.executor}: {describe_exception(exc)}",
                Status.QUEUED,
            )
            self._advance_or_fail(flight)
            return True
        except Exception as exc:  # the broker is away: try again, within grace
            grace = spec.effective_grace_time if spec is not None else None
            if grace is not None and waited > grace:
                self._settle(
                    run.pk,
                    Status.MISSED,
                    f"Missed: it could not be sent to {self.executor} for {waited:.0f} s, beyond "
                    f"misfire_grace_time ({grace} s): {exc}",
                    Status.QUEUED,
                )
                self._advance_or_fail(flight)
                return True
            if not flight.said:
                logger.warning(
                    "Could not send the run of %r to %s (will try again): %s",
                    run.job_id,
                    self.executor,
                    exc,
                )
            flight.said = True
            return False
        if flight.said:
            logger.info("Sent the run of %r to %s after %.1f s.", run.job_id, self.executor, waited)
        flight.sent = True
        timeout = spec.effective_timeout if spec is not None else None
        self._watched[run.pk] = _Watched(
            run.job_id, timeout, spec.expires if spec is not None else None
        )
        return True

    def _look(self) -> None:
        """Follow the rows of the runs in flight (see the module docstring)."""
        ids = list(self._watched)
        rows = {
            pk: (status, started)
            for pk, status, started in JobRun.objects.filter(pk__in=ids).values_list(
                "id", "status", "started_at"
            )
        }
        flying = {flight.run.pk: flight for flight in self._flights if flight.run and flight.sent}
        now = timezone.now()
        for pk in ids:
            watched = self._watched[pk]
            status, started = rows.get(pk, (None, None))
            if status == Status.QUEUED:
                waited = time.monotonic() - watched.sent_at
                if watched.expires is not None and waited > watched.expires + REPORT_GRACE:
                    self._settle(
                        pk,
                        Status.MISSED,
                        f"Missed: no worker took it within its expires ({watched.expires:g} s).",
                        Status.QUEUED,
                    )
                continue
            if status == Status.RUNNING:
                self.taken(pk, watched.job_id)
                flight = flying.get(pk)
                if flight is not None and flight.next >= len(flight.orders):
                    # Its last order started: the slot is the worker's run's from now on.
                    flight.run = None
                    self._flights.remove(flight)
                    flight.future.set_result(None)
                limit = watched.timeout
                if limit is not None and started is not None:
                    overdue = now - started - timedelta(seconds=limit + KILL_AFTER + REPORT_GRACE)
                    if overdue.total_seconds() > 0:
                        self._settle(
                            pk,
                            Status.TIMED_OUT,
                            f"Timed out: still running {limit:g} s after it started (timeout), "
                            "and its worker did not report (a hard time limit stopped it, or "
                            "its worker was lost).",
                        )
                continue
            # Final (or gone): its job's slot is free now (not at the control thread's next
            # poll, up to POLL_INTERVAL later: a job every second on the fleet had its next
            # fire time skipped a few times a minute, bench 7); the flight goes on.
            del self._watched[pk]
            if self.ended is not None:
                self.ended(pk)
            flight = flying.get(pk)
            if flight is not None:
                self._advance_or_fail(flight)

    def _settle(self, pk: int, status: str, reason: str, was: str = Status.RUNNING) -> None:
        settled = JobRun.objects.filter(pk=pk, status=was).update(
            status=status, finished_at=timezone.now(), exception=reason
        )
        if settled:
            logger.error("Run #%s: %s", pk, reason)


def settle_overdue(now: datetime | None = None) -> int:
    """The active scheduler's sweep of the runs sent to a fleet, whoever sent them (the
    sender follows its own; after a take-over or a restart nobody else does): a run no
    worker took within its ``expires``, or else its job's ``misfire_grace_time``
    (its message was lost, say with a broker that restarted without persistence, or
    no worker listens on its queue), is recorded ``missed``; one still ``running`` past
    its ``timeout`` and the hard limit's grace, ``timed_out``. Conditional on the row
    as read: a worker that takes the run meanwhile wins. Returns how many it settled."""
    from scheduler.registry import registry

    now = now or timezone.now()
    rows = list(
        JobRun.objects.filter(status__in=(Status.QUEUED, Status.RUNNING))
        .exclude(executor="")
        .values_list("id", "job_id", "status", "scheduled_at", "started_at")
    )
    settled = 0
    for pk, job_id, status, due, started in rows:
        spec = registry.get(job_id)
        if spec is None:
            continue  # not in this code: its own scheduler's business
        if status == Status.QUEUED:
            limit = spec.expires if spec.expires is not None else spec.effective_grace_time
            if limit is None or (now - due).total_seconds() <= limit + REPORT_GRACE:
                continue
            what = "its expires" if spec.expires is not None else "misfire_grace_time"
            reason = (
                f"Missed: no worker took it within {what} ({limit:g} s after it was due): "
                "its message was lost (a broker restarted without saving it, say), or no "
                "worker listens on its queue."
            )
            new_status = Status.MISSED
        else:
            timeout = spec.effective_timeout
            if timeout is None or started is None:
                continue
            if (now - started).total_seconds() <= timeout + KILL_AFTER + REPORT_GRACE:
                continue
            reason = (
                f"Timed out: still running {timeout:g} s after it started (timeout), and its "
                "worker did not report (a hard time limit stopped it, or its worker was lost)."
            )
            new_status = Status.TIMED_OUT
        done = JobRun.objects.filter(pk=pk, status=status).update(
            status=new_status, finished_at=now, exception=reason
        )
        if done:
            logger.error("Run #%s of %r: %s", pk, job_id, reason)
            settled += done
    return settled
