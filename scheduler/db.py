"""Database access for the scheduler: its alias, and retrying while the database is away."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

from django.conf import settings
from django.db import InterfaceError, OperationalError, connections, models
from django.db.models import Model

from scheduler import conf

logger = logging.getLogger(__name__)

T = TypeVar("T")

TRANSIENT = (OperationalError, InterfaceError)


def alias() -> str:
    return conf.database()


_sqlite_writer = threading.RLock()


@contextmanager
def writing() -> Iterator[None]:
    """Around a write: on SQLite, this process's threads take turns.

    SQLite has one writer at a time, and a connection that finds the database
    locked sleeps in its busy handler (1, 2, 5, 10, ... ms) before it looks
    again; taking turns on a lock wakes the next writer at once.
    """
    if connections[alias()].vendor != "sqlite":
        yield
        return
    with _sqlite_writer:
        yield


def close_broken() -> None:
    """Drop this thread's connection so the next query opens a fresh one."""
    connection = connections[alias()]
    if connection.in_atomic_block:
        return
    try:
        connection.close()
    except TRANSIENT:
        connection.connection = None


# SQLite reports a missing table as an OperationalError, like a locked database;
# it is a project that was not migrated, not an outage to wait out.
_NOT_TRANSIENT = ("no such table", "no such column", "has no column named")


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` may go away by itself: a lost connection, a locked database, a
    server restarting (not a missing table, a refused value or a bug)."""
    if not isinstance(exc, TRANSIENT):
        return False
    message = str(exc)
    return not any(text in message for text in _NOT_TRANSIENT)


def retrying(
    fn: Callable[[], T],
    what: str,
    timeout: float | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> T:
    """Call ``fn`` until it gets through, for up to ``timeout`` seconds.

    Stale connections and a database that is restarting raise OperationalError
    or InterfaceError; each failure closes the connection and waits a little
    longer (0.1 s doubling up to 5 s) before the next try. Other errors, and
    the last transient one, are raised; so is the transient one at hand as
    soon as ``should_stop()`` says so (checked while waiting, too).
    """
    if timeout is None:
        timeout = conf.get("DB_RETRY_TIMEOUT")
    deadline = time.monotonic() + timeout
    delay = 0.1
    attempt = 0
    while True:
        try:
            return fn()
        except TRANSIENT as exc:
            if not is_transient(exc):
                raise
            attempt += 1
            close_broken()
            if time.monotonic() + delay > deadline or (should_stop and should_stop()):
                logger.error("Database unavailable while trying to %s; giving up: %s", what, exc)
                raise
            if attempt == 1 or attempt % 10 == 0:
                logger.warning(
                    "Database unavailable while trying to %s (attempt %d), retrying: %s",
                    what,
                    attempt,
                    exc,
                )
            if _sleep(delay, should_stop):
                logger.error("Stopped while trying to %s: %s", what, exc)
                raise
            delay = min(delay * 2, 5.0)


def _sleep(seconds: float, should_stop: Callable[[], bool] | None) -> bool:
    """Sleep, looking at ``should_stop`` every 0.1 s; True if it said stop."""
    end = time.monotonic() + seconds
    while True:
        if should_stop is not None and should_stop():
            return True
        left = end - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(left, 0.1) if should_stop is not None else left)


_PLAIN = (models.CharField, models.TextField, models.FloatField, models.IntegerField)


def datetime_adapter(connection: Any) -> Callable[[Any], Any]:
    """``connection.ops.adapt_datetimefield_value``, for many values.

    On SQLite, Django's looks up ``USE_TZ`` and the connection's zone for every
    value; the claims and results of a run write five datetimes, and that
    was a tenth of their cost. The same text, with the lookups done once.
    """
    adapt = connection.ops.adapt_datetimefield_value
    if connection.vendor != "sqlite" or not settings.USE_TZ:
        return adapt
    zone = connection.timezone

    def to_text(value: Any) -> Any:
        if isinstance(value, datetime) and value.tzinfo is not None:
            return str(value.astimezone(zone).replace(tzinfo=None))
        return adapt(value)

    return to_text


def _prep(field: models.Field, value: Any, connection: Any, adapt: Callable | None = None) -> Any:
    """``field.get_db_prep_save``, without its layers for the plain types the scheduler writes."""
    if value is None or isinstance(field, _PLAIN):
        return value
    if isinstance(field, models.DateTimeField):
        return (adapt or connection.ops.adapt_datetimefield_value)(value)
    return field.get_db_prep_save(value, connection)


def upsert(model: type[Model], objs: list[Model], update_fields: list[str]) -> None:
    """Insert or update many rows by primary key; call inside a transaction.

    Django's ``bulk_create(update_conflicts=True)`` compiles SQL for every
    batch and row; at start-up with thousands of jobs that was most of the
    time. SQLite gets multi-row statements, PostgreSQL a COPY; other
    databases go through ``bulk_create``.
    """
    if not objs:
        return
    using = alias()
    connection = connections[using]
    meta = model._meta
    if connection.vendor not in ("sqlite", "postgresql"):
        model._default_manager.using(using).bulk_create(
            objs,
            batch_size=500,
            update_conflicts=True,
            unique_fields=[meta.pk.name],
            update_fields=update_fields,
        )
        return
    qn = connection.ops.quote_name
    fields = meta.concrete_fields
    updates = ", ".join(
        f"{qn(f.column)} = EXCLUDED.{qn(f.column)}" for f in fields if f.name in update_fields
    )
    columns = ", ".join(qn(f.column) for f in fields)
    rows = [[_prep(f, getattr(obj, f.attname), connection) for f in fields] for obj in objs]
    conflict = f"ON CONFLICT ({qn(meta.pk.column)}) DO UPDATE SET {updates}"
    if connection.vendor == "postgresql":
        _copy_upsert(qn(meta.db_table), columns, conflict, rows)
        return
    # Many rows per statement: SQLite runs each statement in a fraction of the time
    # Django's bulk_create spends compiling it.
    row_marks = f"({', '.join(['%s'] * len(fields))})"
    batch = max(1, 4000 // len(fields))
    statements = []
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        values = ", ".join([row_marks] * len(chunk))
        sql = f"INSERT INTO {qn(meta.db_table)} ({columns}) VALUES {values} {conflict}"
        statements.append((sql, [value for row in chunk for value in row]))
    execute_all(statements)


def _copy_upsert(table: str, columns: str, conflict: str, rows: list[list]) -> None:
    """PostgreSQL: COPY the rows into a temporary table, then one INSERT ... SELECT."""
    with cursor() as c:
        c.execute(f"CREATE TEMP TABLE scheduler_upsert (LIKE {table}) ON COMMIT DROP")
        with c.copy(f"COPY scheduler_upsert ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        c.execute(
            f"INSERT INTO {table} ({columns}) SELECT {columns} FROM scheduler_upsert {conflict}"
        )
        c.execute("DROP TABLE scheduler_upsert")


def unnest(fields: list[models.Field], connection: Any) -> str:
    """PostgreSQL: ``unnest(%s::type[], ...) AS u(c0, c1, ...)``, one array per field.

    Many rows then travel as a few arrays in one statement whose text does not
    depend on how many rows there are: psycopg parses it once (it re-parsed
    statements of more than 50 parameters at every call) and handles one result
    instead of one per row.
    """
    arrays = ", ".join(f"%s::{field.db_type(connection)}[]" for field in fields)
    return f"unnest({arrays}) AS u({', '.join(f'c{i}' for i in range(len(fields)))})"


@functools.lru_cache(maxsize=32)
def _update_sql(model: type[Model], fields: tuple[str, ...], where_in: tuple, arrays: bool) -> str:
    # Built once per shape: the ORM's per-call query compilation cost more than
    # the statement itself (the same for claims: scheduler/claims.py). With
    # ``arrays``, the rows come as one array per column (see ``unnest``).
    connection = connections[alias()]
    qn = connection.ops.quote_name
    meta = model._meta
    table = qn(meta.db_table)
    columns = [meta.get_field(name) for name in fields]
    values, source = ["%s"] * (len(columns) + 1), ""
    if arrays:
        values = [f"u.c{i}" for i in range(len(columns) + 1)]
        source = f" FROM {unnest([*columns, meta.pk], connection)}"
    assignments = ", ".join(f"{qn(f.column)} = {v}" for f, v in zip(columns, values, strict=False))
    conditions = [f"{table}.{qn(meta.pk.column)} = {values[-1]}"]
    for name, count in where_in:
        column = qn(meta.get_field(name).column)
        conditions.append(f"{table}.{column} IN ({', '.join(['%s'] * count)})")
    return f"UPDATE {table} SET {assignments}{source} WHERE {' AND '.join(conditions)}"


def update_many(
    model: type[Model],
    objs: list[Model],
    fields: list[str] | tuple[str, ...],
    where_in: dict[str, tuple | list] | None = None,
) -> None:
    """``UPDATE ... WHERE pk = %s`` for many rows: one ``executemany``, or on
    PostgreSQL one statement over arrays (see ``unnest``).

    ``bulk_update`` builds a CASE WHEN per row and field; on the scheduler's
    main loop that cost more than the statement. With ``where_in`` ({field:
    values}), a row is updated only if its field holds one of the values.
    """
    if not objs:
        return
    connection = connections[alias()]
    meta = model._meta
    where_in = where_in or {}
    columns = [meta.get_field(name) for name in fields]
    extra = [value for allowed in where_in.values() for value in allowed]
    shape = tuple((k, len(v)) for k, v in where_in.items())
    if connection.vendor == "postgresql":
        # One row per key, the last one given: what one UPDATE per row would leave.
        objs = list({obj.pk: obj for obj in objs}.values())
        arrays = [[_prep(f, getattr(obj, f.attname), connection) for obj in objs] for f in columns]
        arrays.append([_prep(meta.pk, obj.pk, connection) for obj in objs])
        with cursor() as c:
            c.execute(_update_sql(model, tuple(fields), shape, True), [*arrays, *extra])
        return
    sql = _update_sql(model, tuple(fields), shape, False)
    adapt = datetime_adapter(connection)
    rows = [
        [_prep(f, getattr(obj, f.attname), connection, adapt) for f in columns]
        + [_prep(meta.pk, obj.pk, connection), *extra]
        for obj in objs
    ]
    executemany(sql, rows)


@contextmanager
def cursor() -> Iterator[Any]:
    """A cursor on the scheduler's database, through Django's wrappers.

    On PostgreSQL with psycopg 3 it binds parameters on the server: Django's
    default cursor quotes every parameter (every pickle) into the SQL text in
    Python, which cost more CPU than the statements; a server-binding cursor
    also pipelines ``executemany``. Query logging and execute wrappers see
    every statement, and errors are Django's, which the retries know.
    """
    connection = connections[alias()]
    if connection.vendor != "postgresql" or connection.Database.__name__ != "psycopg":
        with connection.cursor() as c:  # (psycopg is imported only where PostgreSQL is used)
            yield c
        return
    import psycopg

    connection.close_if_health_check_failed()
    with connection.wrap_database_errors:
        connection.ensure_connection()
        with connection._prepare_cursor(psycopg.Cursor(connection.connection)) as c:
            yield c


def executemany(sql: str, rows: list[list]) -> None:
    with cursor() as c:
        c.executemany(sql, rows)


def execute_all(statements: list[tuple[str, list]]) -> None:
    with cursor() as c:
        for sql, params in statements:
            c.execute(sql, params)


class NotMigrated(Exception):
    """The scheduler's database lacks its tables (or some of its migrations)."""


def check_migrated() -> None:
    """Raise ``NotMigrated``, naming what is missing, unless the scheduler's database has
    every migration of the scheduler and of django-apscheduler (its job table).

    A missing table is not an outage to wait out: without this, the first query
    failed with "no such table" (SQLite: an OperationalError, like a locked
    database) and was retried for ``DB_RETRY_TIMEOUT``.
    """
    from django.db.migrations.executor import MigrationExecutor

    using = alias()
    executor = MigrationExecutor(connections[using])
    targets = [key for key in executor.loader.graph.leaf_nodes() if key[0] in _APPS]
    missing = [
        f"{migration.app_label}.{migration.name}"
        for migration, backwards in executor.migration_plan(targets)
        if not backwards
    ]
    if missing:
        shown = ", ".join(missing[:3] + (["…"] if len(missing) > 4 else []) + missing[3:][-1:])
        command = "python manage.py migrate"
        if using != "default":
            command += f" --database {using}"
        raise NotMigrated(
            f"The database {using!r} lacks {len(missing)} migration(s) of the scheduler "
            f"({shown}); run: {command}"
        )


_APPS = ("scheduler", "django_apscheduler")


def close_old_connections() -> None:
    """Django's clean-up around a request, done around each run.

    Closes connections that broke or outlived ``CONN_MAX_AGE``, like
    ``django.db.close_old_connections``, but does not re-arm the
    ``CONN_HEALTH_CHECKS`` ping for the next query: that would be one more
    round trip per run, and the scheduler's writes retry on a dead
    connection anyway.
    """
    for connection in connections.all(initialized_only=True):
        connection.close_if_unusable_or_obsolete()
        if connection.connection is not None:
            connection.health_check_done = True
