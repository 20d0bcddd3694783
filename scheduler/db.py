"""Database access for the scheduler: its alias, and retrying while the database is away."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from django.db import InterfaceError, OperationalError, connections
from django.db.models import Model

from scheduler import conf

logger = logging.getLogger(__name__)

T = TypeVar("T")

TRANSIENT = (OperationalError, InterfaceError)


def alias() -> str:
    return conf.database()


def close_broken() -> None:
    """Drop this thread's connection so the next query opens a fresh one."""
    connection = connections[alias()]
    if connection.in_atomic_block:
        return
    try:
        connection.close()
    except TRANSIENT:
        connection.connection = None


def retrying(
    fn: Callable[[], T],
    what: str,
    timeout: float | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> T:
    """Call ``fn`` until it gets through, for up to ``timeout`` seconds.

    Stale connections and a database that is restarting raise OperationalError
    or InterfaceError; each failure closes the connection and waits a little
    longer (0.1 s doubling up to 5 s) before the next try.
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
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def upsert(model: type[Model], objs: list[Model], update_fields: list[str]) -> None:
    """Insert or update many rows by primary key, in batches of one ``executemany``.

    Django's ``bulk_create(update_conflicts=True)`` compiles SQL for every
    batch and row; at start-up with thousands of jobs that was most of the
    time. SQLite and PostgreSQL share the ``ON CONFLICT`` syntax; other
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
    sql = (
        f"INSERT INTO {qn(meta.db_table)} ({', '.join(qn(f.column) for f in fields)}) "
        f"VALUES ({', '.join(['%s'] * len(fields))}) "
        f"ON CONFLICT ({qn(meta.pk.column)}) DO UPDATE SET {updates}"
    )
    rows = [
        [f.get_db_prep_save(getattr(obj, f.attname), connection) for f in fields] for obj in objs
    ]
    with connection.cursor() as cursor:
        for start in range(0, len(rows), 1000):
            cursor.executemany(sql, rows[start : start + 1000])
