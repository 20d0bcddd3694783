"""Results of runs, written in groups by one thread.

Under load a run's result was the only write of its worker, and a write after
the process sat idle for a few milliseconds cost as much CPU as plain
APScheduler's whole run (cold caches, a transaction of its own, a connection
per worker thread). In ``runapscheduler`` finished runs are handed to one
writer thread instead, which writes what has gathered in one transaction: at
once after a quiet spell, and at most every ``INTERVAL`` while runs keep
finishing.

A result waits in memory for at most ``INTERVAL`` plus one write. A process
killed in that window leaves the row ``running``, and the next start marks it
interrupted; a stop by signal writes every result before the process exits.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from django.db import transaction

from scheduler import db
from scheduler.models import JobRun

logger = logging.getLogger(__name__)

INTERVAL = 0.1  # seconds between two writes while results keep coming

FIELDS = ("status", "started_at", "finished_at", "duration", "exception", "traceback", "output")
# A row another scheduler marked interrupted (it could not see our heartbeat,
# say while the database was away) still gets the outcome the run really had.
FINISHABLE = (JobRun.Status.RUNNING, JobRun.Status.INTERRUPTED)

_changed = threading.Condition()
_pending: list[JobRun] = []
_stop = False
_thread: threading.Thread | None = None


def start() -> None:
    """Write results from a thread of their own from now on (see ``record``)."""
    global _thread, _stop
    with _changed:
        if _thread is not None:
            return
        _stop = False
        _thread = threading.Thread(target=_loop, name="scheduler-results", daemon=True)
        _thread.start()


def stop(timeout: float | None = None) -> None:
    """Write every result handed over so far, then end the writer thread."""
    global _thread, _stop
    with _changed:
        thread, _stop = _thread, True
        _changed.notify_all()
    if thread is not None:
        thread.join(timeout)
    with _changed:
        _thread = None


def record(run: JobRun) -> None:
    """Write ``run``'s result: soon, by the writer thread, if it runs; else now."""
    with _changed:
        if _thread is not None and not _stop:
            _pending.append(run)
            if len(_pending) == 1:  # the writer waits for a first result, not for each
                _changed.notify_all()
            return
    write([run])


def write(runs: list[JobRun], timeout: float | None = None) -> None:
    """Write the results of ``runs`` (one transaction), retrying through outages."""

    def update() -> None:
        # One row: the statement is its own transaction, one round trip less.
        atomic = transaction.atomic(using=db.alias()) if len(runs) > 1 else contextlib.nullcontext()
        with db.writing(), atomic:
            db.update_many(JobRun, runs, FIELDS, where_in={"status": FINISHABLE})

    what = f"record the result of {runs[0].job_id!r}"
    if len(runs) > 1:
        what = f"record the results of {len(runs)} runs"
    db.retrying(update, what, timeout)


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


def _loop() -> None:
    last = float("-inf")
    while True:
        with _changed:
            _changed.wait_for(lambda: _pending or _stop)
            if not _pending:
                return
            # Let more results gather, unless the last write was a while ago.
            pause = last + INTERVAL - time.monotonic()
            if pause > 0 and not _stop:
                _changed.wait_for(lambda: _stop, pause)
        starts.wait()
        with _changed:
            group = list(_pending)
            _pending.clear()
        last = time.monotonic()
        try:
            write(group)
        except Exception:
            # The rows stay running; the next start marks them interrupted.
            logger.exception("Could not record the results of %d run(s).", len(group))
        finally:
            db.close_old_connections()
