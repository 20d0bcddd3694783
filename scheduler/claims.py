"""Claims of scheduled runs, written in groups.

Every scheduled run is claimed by inserting its ``running`` row before the job
is called (the fence: a unique (job id, fire time) lets one claim win). When
twenty jobs fall due in the same second, twenty single-row INSERTs queue for
the database one after another (SQLite has one writer), and the twentieth job
starts late. Here the threads that want a claim at the same time share one
multi-row ``INSERT ... ON CONFLICT DO NOTHING RETURNING``: the first thread
writes what has gathered, and hands the next group to the first thread that
arrived meanwhile.

The active scheduler's main loop claims the runs it is about to hand to free
workers itself, all in one statement (``claim_many``), so that twenty jobs
due together start without waiting on the database twenty times.
"""

from __future__ import annotations

import functools
import threading
from datetime import UTC, datetime

from django.db import connections

from scheduler import db, results
from scheduler.models import JobRun


class _Claim:
    __slots__ = ("run", "won", "error", "done", "lead", "ready")

    def __init__(self, run: JobRun) -> None:
        self.run = run
        self.won = False
        self.error: BaseException | None = None
        self.done = False
        self.lead = False
        self.ready = threading.Event()


_lock = threading.Lock()
_pending: list[_Claim] = []
_writing = False


def claim(run: JobRun, timeout: float | None = None) -> bool:
    """Insert ``run``'s row; False if that (job, fire time) is someone else's already.

    Retries through outages for up to ``timeout`` seconds (``DB_RETRY_TIMEOUT``), then
    raises the database error.
    """
    global _writing
    mine = _Claim(run)
    with _lock:
        _pending.append(mine)
        if not _writing:
            _writing = mine.lead = True
    while not mine.done:
        if not mine.lead:
            mine.ready.wait()
            mine.ready.clear()
        if mine.lead and not mine.done:
            _write_group(timeout)
    if mine.error is not None:
        raise mine.error
    return mine.won


def claim_many(runs: list[JobRun]) -> list[JobRun]:
    """Insert the rows in one statement, in this thread, without retrying; the runs that won."""
    won = _insert(runs)
    return [run for run in runs if id(run) in won]


def _write_group(timeout: float | None) -> None:
    global _writing
    with _lock:
        group = list(_pending)
        _pending.clear()
    try:
        runs = [entry.run for entry in group]
        won = db.retrying(lambda: _insert(runs), "record the start of runs", timeout)
        for entry in group:
            entry.won = id(entry.run) in won
    except BaseException as exc:  # every waiting thread must learn of it, whatever it is
        for entry in group:
            entry.error = exc
    with _lock:
        for entry in group:
            entry.done = True
            entry.lead = False
        if _pending:
            _pending[0].lead = True
            _pending[0].ready.set()
        else:
            _writing = False
    for entry in group:
        entry.ready.set()


# The columns a claim writes; the other text columns are empty and the rest NULL.
_COLUMNS = ("job_id", "job_name", "status", "trigger", "scheduled_at", "started_at")
_COLUMNS += ("hostname", "pid", "instance")
_EMPTY = ("requested_by", "exception", "traceback", "output")


@functools.lru_cache(maxsize=64)
def _sql(vendor: str, count: int) -> str:
    # Built once per number of rows (on PostgreSQL once: the rows come as arrays):
    # composing SQL through the ORM for every claim cost more than running it.
    connection = connections[db.alias()]
    qn = connection.ops.quote_name
    columns = ", ".join(qn(column) for column in _COLUMNS + _EMPTY)
    if vendor == "postgresql":
        fields = [JobRun._meta.get_field(column) for column in _COLUMNS]
        values = ", ".join([f"u.c{i}" for i in range(len(fields))] + ["''"] * len(_EMPTY))
        rows = f"SELECT {values} FROM {db.unnest(fields, connection)}"
    else:
        marks = ["%s"] * len(_COLUMNS) + ["''"] * len(_EMPTY)
        row = f"({', '.join(marks)})"
        rows = f"VALUES {', '.join([row] * count)}"
    return (
        f"INSERT INTO {qn(JobRun._meta.db_table)} ({columns}) {rows} ON CONFLICT DO NOTHING "
        f"RETURNING {qn('id')}, {qn('job_id')}, {qn('scheduled_at')}"
    )


def _insert(runs: list[JobRun]) -> set[int]:
    """One INSERT for the runs; the ids (of the Python objects) of the runs that won."""
    connection = connections[db.alias()]
    when = db.datetime_adapter(connection)
    params, keys = [], {}
    for run in runs:
        scheduled_at = when(run.scheduled_at)
        params += (run.job_id, run.job_name, run.status, run.trigger, scheduled_at)
        params += (when(run.started_at), run.hostname, run.pid, run.instance)
        keys[(run.job_id, _key(scheduled_at))] = run
    if connection.vendor == "postgresql":  # one array per column
        width = len(_COLUMNS)
        params = [params[i::width] for i in range(width)]
    with db.writing(), db.cursor() as cursor:
        cursor.execute(_sql(connection.vendor, len(runs)), params)
        returned = cursor.fetchall()
    won = set()
    for pk, job_id, scheduled_at in returned:
        run = keys.get((job_id, _key(scheduled_at)))
        if run is not None:
            run.pk = pk
            run._state.adding = False
            run._state.db = db.alias()
            won.add(id(run))
    results.opened(run for run in runs if id(run) in won)
    return won


def _key(value: datetime | str) -> float:
    """A fire time as sent or returned: UTC text or naive datetime on SQLite, aware elsewhere."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()
