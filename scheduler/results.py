"""The run history's writes after a claim: outcomes, and rows for fire times that did not run.

Under load a run's result was the only write of its worker, and a write after
the process sat idle for a few milliseconds cost as much CPU as plain
APScheduler's whole run (cold caches, a transaction of its own, a connection
per worker thread). In ``runapscheduler`` finished runs are handed to one
writer thread instead, which writes what has gathered in one transaction: at
once after a quiet spell, and at most every ``INTERVAL`` while runs keep
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

from scheduler import bulk, conf, db
from scheduler.models import JobRun
from scheduler.text import describe_exception, storable

logger = logging.getLogger(__name__)

INTERVAL = 0.1  # seconds between two writes while results keep coming
# Seconds between rounds of a write that outlasted DB_RETRY_TIMEOUT.
RETRY_PAUSE = 5.0

FIELDS = ("status", "started_at", "finished_at", "duration", "exception", "traceback", "output")
# A row another scheduler marked interrupted (it could not see our heartbeat,
# say while the database was away) still gets the outcome the run really had.
FINISHABLE = (JobRun.Status.RUNNING, JobRun.Status.INTERRUPTED)

_changed = threading.Condition()
_pending: list[JobRun] = []  # outcomes to write (UPDATE)
_inserts: list[JobRun] = []  # rows of fire times that did not run (INSERT, first one wins)
_stop = False
_deadline: float | None = None  # monotonic: give up writing after this, once stopping
_thread: threading.Thread | None = None
# Rows of fire times that did not run: how many were handed to the writer, and how many
# of those are written (see ``wait_not_run``).
_handed = 0
_inserted = 0
_open: set[int] = set()  # ids of runs claimed by this process without a final row yet
_open_lock = threading.Lock()


# -- the runs this process owes a final row ----------------------------------------


def opened(runs: Iterable[JobRun]) -> None:
    """These claimed runs are this process's to finish."""
    with _open_lock:
        _open.update(run.pk for run in runs)


def closed(run_ids: Iterable[int]) -> None:
    with _open_lock:
        _open.difference_update(run_ids)


def open_ids() -> set[int]:
    with _open_lock:
        return set(_open)


# -- the writer thread ----------------------------------------------------------------


def start() -> None:
    """Write results from a thread of their own from now on (see ``record``)."""
    global _thread, _stop, _deadline
    with _changed:
        if _thread is not None:
            return
        _stop, _deadline = False, None
        _thread = threading.Thread(target=_loop, name="scheduler-results", daemon=True)
        _thread.start()


def stop(deadline: float | None = None) -> int:
    """Write everything handed over so far (until the monotonic ``deadline``), then end the
    writer thread. Returns how many rows could not be written."""
    global _thread, _stop, _deadline
    with _changed:
        thread, _stop, _deadline = _thread, True, deadline
        _changed.notify_all()
    if thread is not None:
        thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()) + 1.0)
    with _changed:
        _thread = None
        left = len(_pending) + len(_inserts)
    if left:
        logger.error(
            "Could not write %d history row(s) before exiting (database unavailable); the "
            "next start marks the runs among them interrupted.",
            left,
        )
    return left


def record(run: JobRun) -> None:
    """Write ``run``'s outcome: soon, by the writer thread, if it runs; else now."""
    if _hand_over(_pending, [run]):
        return
    write([run])


def abandon(run: JobRun, status: str, reason: str) -> None:
    """Finish a claimed run that was never started (soon, by the writer)."""
    run.status, run.exception = status, reason
    # A claim's start time was the planned one: it did not start.
    run.started_at, run.duration = None, None
    run.finished_at = timezone.now()
    record(run)


def record_not_run(rows: list[JobRun]) -> None:
    """Insert rows of fire times that did not run; a fire time that has a row keeps it."""
    if not rows or _hand_over(_inserts, rows):
        return
    insert(rows)


def wait_not_run(timeout: float) -> bool:
    """Wait until the rows of fire times that did not run, handed over so far, are written.

    The job store writes a job's next run time only after this: once it moves past
    fire times that did not run, their rows must not be lost with the process.
    """
    with _changed:
        target = _handed
        return _changed.wait_for(lambda: _inserted >= target or _thread is None, timeout)


def _hand_over(queue: list[JobRun], rows: list[JobRun]) -> bool:
    global _handed
    with _changed:
        if _thread is None or _stop:
            return False
        queue.extend(rows)
        if queue is _inserts:
            _handed += len(rows)
        if len(_pending) + len(_inserts) == len(rows):  # the writer waits for a first row only
            _changed.notify_all()
        return True


# -- writing ----------------------------------------------------------------------------


def write(
    runs: list[JobRun], timeout: float | None = None, should_stop: Callable[[], bool] | None = None
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
                write([run], timeout, should_stop)
            return
        _write_refused(runs[0], exc, lambda: update(runs), timeout, should_stop)
        return
    closed(run.pk for run in runs)


def _write_refused(
    run: JobRun,
    exc: Exception,
    update: Callable[[], None],
    timeout: float | None,
    should_stop: Callable[[], bool] | None,
) -> None:
    """The database refused this run's outcome: keep what matters, say why."""
    logger.error("Run %s of %r: its result cannot be stored as it is: %s", run.pk, run.job_id, exc)
    outcome = run.status
    run.status = JobRun.Status.FAILED
    run.exception = (
        "The scheduler could not store this run's result "
        f"({storable(describe_exception(exc), 2000, 'head')}); the run itself ended {outcome}."
    )
    run.traceback = run.output = ""
    try:
        db.retrying(update, f"record the result of {run.job_id!r}", timeout, should_stop)
    except Exception as again:
        if db.is_transient(again):
            raise
        # Left running and closed: the active scheduler's sweep marks it interrupted.
        logger.error("Run %s of %r could not be finished at all: %s", run.pk, run.job_id, again)
    closed([run.pk])


def insert(rows: list[JobRun], timeout: float | None = None) -> None:
    """Insert rows of fire times that did not run; a conflict means the fire time has a row."""

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
                insert([row], timeout)
            return
        logger.error("Could not record a %s run of %r: %s", rows[0].status, rows[0].job_id, exc)


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


starts = _Starts()


def _count_inserted(count: int) -> None:
    global _inserted
    with _changed:
        _inserted += count
        _changed.notify_all()


def _stopping_past_deadline() -> bool:
    return _stop and _deadline is not None and time.monotonic() >= _deadline


def _loop() -> None:
    last = float("-inf")
    failing_since: float | None = None
    while True:
        with _changed:
            _changed.wait_for(lambda: _pending or _inserts or _stop)
            if not (_pending or _inserts) or _stopping_past_deadline():
                return
            # Let more results gather, unless the last write was a while ago.
            pause = last + INTERVAL - time.monotonic()
            if failing_since is not None:
                pause = last + RETRY_PAUSE - time.monotonic()
            if pause > 0 and not _stop:
                _changed.wait_for(lambda: _stop, pause)
        if not _stop:
            starts.wait()
        with _changed:
            group, rows = list(_pending), list(_inserts)
            _pending.clear()
            _inserts.clear()
            stopping, deadline = _stop, _deadline
        last = time.monotonic()
        timeout = None  # DB_RETRY_TIMEOUT
        if stopping and deadline is not None:
            timeout = max(0.0, deadline - last)
        try:
            if rows:
                insert(rows, timeout)
                _count_inserted(len(rows))
                rows = []
            if group:
                write(group, timeout, _stopping_past_deadline)
            failing_since = None
        except Exception as exc:
            # The database is away (and stayed away for DB_RETRY_TIMEOUT): keep the
            # rows, first in line, and try again; nothing is given up while we live.
            with _changed:
                _inserts[:0] = rows
                _pending[:0] = group
            if failing_since is None:
                failing_since = last
                logger.error(
                    "Could not record %d run result(s) yet; will keep trying: %s",
                    len(group) + len(rows),
                    exc,
                )
        finally:
            db.close_old_connections()
