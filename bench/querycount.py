"""Counts the SQL statements a process sends through Django, for the load scenario.

Installed from a bench settings module when BENCH_QUERY_COUNT names a file: every
database connection gets an execute wrapper that adds one per statement, and a
daemon thread writes the running total to that file ten times a second, where
the harness reads it at the start and at the end of its window.
"""

from __future__ import annotations

import os
import threading

_total = 0
_lock = threading.Lock()


def _count(execute, sql, params, many, context):
    global _total
    with _lock:
        _total += 1
    return execute(sql, params, many, context)


def _on_connection(sender, connection, **kwargs) -> None:
    if not getattr(connection, "_bench_counted", False):
        connection.execute_wrappers.append(_count)
        connection._bench_counted = True


def _writer(path: str) -> None:
    tmp = f"{path}.tmp"
    while True:
        with open(tmp, "w") as f:
            f.write(str(_total))
        os.replace(tmp, path)
        threading.Event().wait(0.1)


def install(path: str) -> None:
    from django.db.backends.signals import connection_created

    connection_created.connect(_on_connection, weak=False)
    threading.Thread(target=_writer, args=(path,), name="bench-querycount", daemon=True).start()


def read(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return None
