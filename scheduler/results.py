"""The run history's writes after a claim: outcomes, and rows for fire times that did not run.

Under load a run's result was the only write of its worker, and a write after
the process sat idle for a few milliseconds cost as much CPU as plain
APScheduler's whole run (cold caches, a transaction of its own, a connection
per worker thread). In ``runapscheduler`` finished runs are handed to one
writer thread instead, which writes what has gathered in one transaction:
``GATHER`` after a quiet spell, and at most every ``INTERVAL`` while runs keep
finishing. Rows for fire times that did not run (``missed``, ``skipped``) go
the same way, so that neither the main loop nor a worker waits on a database
that is away.

Nothing handed to the writer is dropped:

* while the database is away, writes are retried, and after
  ``DB_RETRY_TIMEOUT`` they wait for the next round instead of being given up;
* a group that the database refuses for another reason (a value it cannot
  store, say) is written again row by row, and a row still refused is
  finished as ``failed`` with the reason, so one bad value never costs
  another run its result;
* a stop writes everything before the process exits (bounded by the shutdown
  deadline); a process killed before that leaves ``running`` rows, which the
  next start marks interrupted.

Every run this process claimed is *open* here until its final row is
written; the active scheduler sweeps its own ``running`` rows that are not
open (``control.Control.watch_running``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable

from django.db import transaction
from django.utils import timezone

from scheduler import bulk, conf, db, signals
from scheduler.models import JobRun
from scheduler.text import describe_exception, storable

logger = logging.getLogger(__name__)

INTERVAL = 0.1  # seconds between two writes while results keep coming
# Seconds a first result after a quiet spell waits for others: twenty jobs due together
# are handed to workers over a few milliseconds, and a write started after the first of
# them finished took the GIL from the main loop handing out the rest (the first fire
# times of a 20-job second started up to 8 ms late instead of 2), and was followed by a
# second write for the rest.
GATHER = 0.02
# Seconds between rounds of a write that outlasted DB_RETRY_TIMEOUT.
RETRY_PAUSE = 5.0

FIELDS = ("status", "started_at", "finished_at", "duration", "exception", "traceback", "output")
# A row another scheduler marked interrupted (it could not see our heartbeat,
# say while the database was away) still gets the outcome the run really had.
FINISHABLE = (JobRun.Status.RUNNING, JobRun.Status.INTERRUPTED)


class ResultWriter:
    """The history's writes after a claim, for one process (see the module docstring).

    Owned by the service (``runapscheduler``), which starts its thread; a writer
    never started (``runjob``, a test) writes each row at once, in the caller's
    thread.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._pending: list[JobRun] = []  # outcomes to write (UPDATE)
        # Rows of fire times that did not run (INSERT, the first row of a fire time wins).
        self._inserts: list[JobRun] = []
        self._stop = False
        self._deadline: float | None = None  # monotonic: give up after this, once stopping
        self._thread: threading.Thread | None = None
        # Rows of fire times that did not run: how many were handed over, and how many of
        # those are written (see ``wait_not_run``).
        self._handed = 0
        self._inserted = 0
        self._open: set[int] = set()  # runs claimed by this process without a final row
        self._open_lock = threading.Lock()
        # Claimed runs handed to workers and not started yet: writes wait for them.
        self.starts = _Starts()

    # -- the runs this process owes a final row ------------------------------------

    def opened(self, runs: Iterable[JobRun]) -> None:
        """These claimed runs are this process's to finish."""
        with self._open_lock:
            self._open.update(run.pk for run in runs)

    def closed(self, run_ids: Iterable[int]) -> None:
        with self._open_lock:
            self._open.difference_update(run_ids)

    def open_ids(self) -> set[int]:
        with self._open_lock:
            return set(self._open)

    # -- the writer thread -----------------------------------------------------------

    def start(self) -> None:
        """Write results from a thread of their own from now on (see ``record``)."""
        with self._changed:
            if self._thread is not None:
                return
            self._stop, self._deadline = False, None
            self._thread = threading.Thread(
                target=self._loop, name="scheduler-results", daemon=True
            )
            self._thread.start()

    def stop(self, deadline: float | None = None) -> int:
        """Write everything handed over so far (until the monotonic ``deadline``), then end
        the writer thread. Returns how many rows could not be written."""
        with self._changed:
            thread, self._stop, self._deadline = self._thread, True, deadline
            self._changed.notify_all()
        if thread is not None:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic()) + 1.0
            thread.join(wait)
        with self._changed:
            self._thread = None
            left = len(self._pending) + len(self._inserts)
        if left:
            logger.error(
                "Could not write %d history row(s) before exiting (database unavailable); "
                "the next start marks the runs among them interrupted.",
                left,
            )
        return left

    def record(self, run: JobRun) -> None:
        """Write ``run``'s outcome: soon, by the writer thread, if it runs; else now."""
        if self._hand_over(self._pending, [run]):
            return
        self.write([run])

    def abandon(self, run: JobRun, status: str, reason: str) -> None:
        """Finish a claimed run that was never started (soon, by the writer)."""
        run.status, run.exception = status, reason
        # A claim's start time was the planned one: it did not start.
        run.started_at, run.duration = None, None
        run.finished_at = timezone.now()
        self.record(run)

    def record_not_run(self, rows: list[JobRun]) -> None:
        """Insert rows of fire times that did not run; a fire time that has a row keeps it."""
        if not rows or self._hand_over(self._inserts, rows):
            return
        self.insert(rows)

    def wait_not_run(self, timeout: float) -> bool:
        """Wait until the rows of fire times that did not run, handed over so far, are
        written.

        The job store writes a job's next run time only after this: once it moves past
        fire times that did not run, their rows must not be lost with the process.
        """
        with self._changed:
            target = self._handed
            return self._changed.wait_for(
                lambda: self._inserted >= target or self._thread is None, timeout
            )

    def _hand_over(self, queue: list[JobRun], rows: list[JobRun]) -> bool:
        with self._changed:
            if self._thread is None or self._stop:
                return False
            queue.extend(rows)
            if queue is self._inserts:
                self._handed += len(rows)
            # The writer waits for a first row only.
            if len(self._pending) + len(self._inserts) == len(rows):
                self._changed.notify_all()
            return True

    # -- writing ------------------------------------------------------------------------

    def write(
        self,
        runs: list[JobRun],
        timeout: float | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        """Write the outcomes of ``runs`` (one transaction), retrying through outages.

        Raises a transient database error only if the database stayed away for
        ``timeout``; anything else the database refuses is written row by row, and
        a row still refused is finished as failed with the reason.
        """

        def update(group: list[JobRun]) -> None:
            # One row: the statement is its own transaction, one round trip less.
            many = len(group) > 1
            atomic = transaction.atomic(using=conf.database()) if many else contextlib.nullcontext()
            with db.writing(), atomic:
                bulk.update_many(JobRun, group, FIELDS, where_in={"status": FINISHABLE})

        what = f"record the result of {runs[0].job_id!r}"
        if len(runs) > 1:
            what = f"record the results of {len(runs)} runs"
        try:
            db.retrying(lambda: update(runs), what, timeout, should_stop)
        except Exception as exc:
            if db.is_transient(exc):
                raise
            if len(runs) > 1:
                for run in runs:
                    self.write([run], timeout, should_stop)
                return
            self._write_refused(runs[0], exc, lambda: update(runs), timeout, should_stop)
            return
        self.closed(run.pk for run in runs)
        signals.written(type(self), runs)

    def _write_refused(
        self,
        run: JobRun,
        exc: Exception,
        update: Callable[[], None],
        timeout: float | None,
        should_stop: Callable[[], bool] | None,
    ) -> None:
        """The database refused this run's outcome: keep what matters, say why."""
        logger.error(
            "Run %s of %r: its result cannot be stored as it is: %s", run.pk, run.job_id, exc
        )
        outcome = run.status
        run.status = JobRun.Status.FAILED
        run.exception = (
            "The scheduler could not store this run's result "
            f"({storable(describe_exception(exc), 2000, 'head')}); the run itself ended "
            f"{outcome}."
        )
        run.traceback = run.output = ""
        try:
            db.retrying(update, f"record the result of {run.job_id!r}", timeout, should_stop)
        except Exception as again:
            if db.is_transient(again):
                raise
            # Left running and closed: the active scheduler's sweep marks it interrupted.
            logger.error("Run %s of %r could not be finished at all: %s", run.pk, run.job_id, again)
            self.closed([run.pk])
            return
        self.closed([run.pk])
        signals.written(type(self), [run])

    @staticmethod
    def insert(rows: list[JobRun], timeout: float | None = None) -> None:
        """Insert rows of fire times that did not run; a conflict means the fire time has a
        row."""

        def create(group: list[JobRun]) -> None:
            with db.writing():
                JobRun.objects.bulk_create(group, batch_size=500, ignore_conflicts=True)

        what = f"record {len(rows)} fire time(s) of {rows[0].job_id!r} that did not run"
        try:
            db.retrying(lambda: create(rows), what, timeout)
        except Exception as exc:
            if db.is_transient(exc):
                raise
            if len(rows) > 1:
                for row in rows:
                    ResultWriter.insert([row], timeout)
                return
            logger.error("Could not record a %s run of %r: %s", rows[0].status, rows[0].job_id, exc)
            return
        signals.written(ResultWriter, rows)

    def _count_inserted(self, count: int) -> None:
        with self._changed:
            self._inserted += count
            self._changed.notify_all()

    def _stopping_past_deadline(self) -> bool:
        return self._stop and self._deadline is not None and time.monotonic() >= self._deadline

    def _loop(self) -> None:
        last = float("-inf")
        failing_since: float | None = None
        changed = self._changed
        while True:
            with changed:
                changed.wait_for(lambda: self._pending or self._inserts or self._stop)
                if not (self._pending or self._inserts) or self._stopping_past_deadline():
                    return
                # Let more results gather: GATHER after a quiet spell, up to INTERVAL after
                # the last write while they keep coming.
                pause = max(last + INTERVAL - time.monotonic(), GATHER)
                if failing_since is not None:
                    pause = last + RETRY_PAUSE - time.monotonic()
                if pause > 0 and not self._stop:
                    changed.wait_for(lambda: self._stop, pause)
            if not self._stop:
                self.starts.wait()
            with changed:
                group, rows = list(self._pending), list(self._inserts)
                self._pending.clear()
                self._inserts.clear()
                stopping, deadline = self._stop, self._deadline
            last = time.monotonic()
            timeout = None  # DB_RETRY_TIMEOUT
            if stopping and deadline is not None:
                timeout = max(0.0, deadline - last)
            try:
                if rows:
                    self.insert(rows, timeout)
                    self._count_inserted(len(rows))
                    rows = []
                if group:
                    self.write(group, timeout, self._stopping_past_deadline)
                failing_since = None
            except Exception as exc:
                # The database is away (and stayed away for DB_RETRY_TIMEOUT): keep the
                # rows, first in line, and try again; nothing is given up while we live.
                with changed:
                    self._inserts[:0] = rows
                    self._pending[:0] = group
                if failing_since is None:
                    failing_since = last
                    logger.error(
                        "Could not record %d run result(s) yet; will keep trying: %s",
                        len(group) + len(rows),
                        exc,
                    )
            finally:
                db.close_old_connections()


class _Starts:
    """Claimed runs handed to workers and not yet started.

    With the GIL, writing results competes with the workers starting their
    runs: twenty jobs due together started one after another, each behind a
    result. Results wait (briefly) until the burst has started.
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
