"""The one-off runs scenario's jobs (``SCHEDULER["JOB_MODULES"]`` of bench/oneoff_settings.py).

The same trivial body three ways: a ``@job`` without a schedule (run when code schedules
it), a task of this scheduler's task backend, and a task of django-tasks-db's. Each run
appends its number to ``BENCH_OBS``, one O_APPEND line: the harness counts the lines
and the distinct numbers, so a run lost or run twice shows.
"""

from __future__ import annotations

import os
import threading

from scheduler import job

try:  # Django 6
    from django.tasks import task
except ImportError:  # Django 5.2: the django-tasks backport
    from django_tasks import task  # type: ignore[no-redef,unused-ignore]

_fd: int | None = None
_fd_lock = threading.Lock()


def _record(n: int) -> None:
    global _fd
    if _fd is None:
        with _fd_lock:
            if _fd is None:
                path = os.environ.get("BENCH_OBS") or os.devnull
                _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    # One small O_APPEND write per run: lines of concurrent runs never interleave.
    os.write(_fd, f"{n}\n".encode())


@job
def work(n: int) -> None:
    """One-off run (bench)"""
    _record(n)


@task(backend="scheduler")
def work_task(n: int) -> None:
    _record(n)


@task(backend="default")
def dtdb_task(n: int) -> None:
    _record(n)
