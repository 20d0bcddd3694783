"""Claims of scheduled runs, written in groups.

Every scheduled run is claimed by inserting its ``running`` row before the job
is called (the fence: a unique (job id, fire time) lets one claim win). When
twenty jobs fall due in the same second, twenty single-row INSERTs queue for
the database one after another (SQLite has one writer), and the twentieth job
starts late. Here the threads that want a claim at the same time share one
multi-row ``INSERT ... ON CONFLICT DO NOTHING RETURNING``: the first thread
writes what has gathered, and hands the next group to the first thread that
arrived meanwhile.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from django.db import connections

from scheduler import db
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


def claim(run: JobRun) -> bool:
    """Insert ``run``'s row; False if that (job, fire time) is someone else's already."""
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
            _write_group()
    if mine.error is not None:
        raise mine.error
    return mine.won


def _write_group() -> None:
    global _writing
    with _lock:
        group = list(_pending)
        _pending.clear()
    try:
        won = db.retrying(lambda: _insert(group), "record the start of runs")
        for entry in group:
            entry.won = id(entry) in won
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


def _insert(group: list[_Claim]) -> set[int]:
    """One INSERT for the group; the ids (of the Python objects) of the claims that won."""
    connection = connections[db.alias()]
    meta = JobRun._meta
    qn = connection.ops.quote_name
    fields = [f for f in meta.concrete_fields if not f.primary_key]
    row = f"({', '.join(['%s'] * len(fields))})"
    sql = (
        f"INSERT INTO {qn(meta.db_table)} ({', '.join(qn(f.column) for f in fields)}) "
        f"VALUES {', '.join([row] * len(group))} ON CONFLICT DO NOTHING "
        f"RETURNING {qn(meta.pk.column)}, {qn('job_id')}, {qn('scheduled_at')}"
    )
    params, keys = [], {}
    for entry in group:
        values = [f.get_db_prep_save(getattr(entry.run, f.attname), connection) for f in fields]
        params.extend(values)
        keys[(entry.run.job_id, _key(values[fields.index(meta.get_field("scheduled_at"))]))] = entry
    with db.writing(), connection.cursor() as cursor:
        cursor.execute(sql, params)
        returned = cursor.fetchall()
    won = set()
    for pk, job_id, scheduled_at in returned:
        entry = keys.get((job_id, _key(scheduled_at)))
        if entry is not None:
            entry.run.pk = pk
            entry.run._state.adding = False
            entry.run._state.db = db.alias()
            won.add(id(entry))
    return won


def _key(value: datetime | str) -> float:
    """A fire time as sent or returned: UTC text or naive datetime on SQLite, aware elsewhere."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()
