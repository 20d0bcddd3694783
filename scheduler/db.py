"""Database access for the scheduler: its alias, and retrying while the database is away."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from django.db import InterfaceError, OperationalError, connections

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
