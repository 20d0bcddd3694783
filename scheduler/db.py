"""Connection care: which errors are outages, retrying through them, SQLite's writer turn,
the migrations check, and closing stale connections around runs (many-row SQL: bulk.py)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar, cast

from django.db import InterfaceError, OperationalError, connections

from scheduler import conf

if TYPE_CHECKING:
    from django.db.backends.postgresql.base import DatabaseWrapper as PostgresWrapper

logger = logging.getLogger(__name__)

T = TypeVar("T")

TRANSIENT = (OperationalError, InterfaceError)


_sqlite_writer = threading.RLock()


@contextmanager
def writing() -> Iterator[None]:
    """Around a write: on SQLite, this process's threads take turns.

    SQLite has one writer at a time, and a connection that finds the database
    locked sleeps in its busy handler (1, 2, 5, 10, ... ms) before it looks
    again; taking turns on a lock wakes the next writer at once.
    """
    if connections[conf.database()].vendor != "sqlite":
        yield
        return
    with _sqlite_writer:
        yield


def close_broken() -> None:
    """Drop this thread's connection so the next query opens a fresh one."""
    connection = connections[conf.database()]
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


@contextmanager
def cursor() -> Iterator[Any]:
    """A cursor on the scheduler's database, through Django's wrappers.

    On PostgreSQL with psycopg 3 it binds parameters on the server: Django's
    default cursor quotes every parameter (every pickle) into the SQL text in
    Python, which cost more CPU than the statements; a server-binding cursor
    also pipelines ``executemany``. Query logging and execute wrappers see
    every statement, and errors are Django's, which the retries know.
    """
    connection = connections[conf.database()]
    if (
        connection.vendor != "postgresql"
        # (each backend's wrapper has its driver module, the base class has none)
        or cast("PostgresWrapper", connection).Database.__name__ != "psycopg"
    ):
        with connection.cursor() as c:  # (psycopg is imported only where PostgreSQL is used)
            yield c
        return
    import psycopg

    connection.close_if_health_check_failed()
    with connection.wrap_database_errors:
        connection.ensure_connection()
        # Django's private _prepare_cursor (a driver cursor wrapped as Django's) is
        # missing from django-stubs.
        prepare = connection._prepare_cursor  # type: ignore[attr-defined]
        with prepare(psycopg.Cursor(connection.connection)) as c:
            yield c


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

    using = conf.database()
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
            # (an attribute of Django's since 4.1 that django-stubs lacks)
            connection.health_check_done = True  # type: ignore[attr-defined]
