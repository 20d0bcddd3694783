"""A job's body, run once in the current thread: the call, its captured output, its outcome.

The one place where a job's function is called, whichever process or thread
that is: a worker thread of the scheduler (``runner``), the child process of a
run in isolation (``isolation``), a worker of a fleet (``remote``). Its
outcome is plain values (``Outcome``), which the runner records.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from scheduler.arguments import merged, unpack
from scheduler.capture import capture
from scheduler.registry import JobSpec, is_async
from scheduler.text import describe_exception

if TYPE_CHECKING:
    from apscheduler.job import Job

# The statuses an outcome can have (JobRun.Status's values; this module loads no model).
SUCCEEDED, FAILED, TIMED_OUT, INTERRUPTED = "succeeded", "failed", "timed_out", "interrupted"


class TimedOut(BaseException):
    """Raised in a job when it is told to stop: its timeout (in a thread, or SIGTERM in a
    child process), or the scheduler stopping."""


@dataclass(frozen=True)
class Outcome:
    """What a child sends back: plain values, the same as a run in a thread produces."""

    status: str
    exception: str
    traceback: str
    output: str
    duration: float
    # Whether a failure may be retried (scheduler.retries.retry_wanted): True or False for
    # an exception (its job's retry_on) or a timeout (True); None for a death without one.
    retryable: bool | None = False
    # What the call returned: a task's return value, plain JSON (scheduler.tasks); None
    # for a job, whose return value is not kept.
    value: Any = None
    # The failure's exception class, ``module.QualName`` ("" when none was raised).
    exception_class: str = ""


class Watch(Protocol):
    """Watches a run's timeout from outside its thread (``runner._Watch``)."""

    def begin(self, output: Any) -> None: ...


def make_call(
    spec: JobSpec | None,
    job: Job | None,
    scheduled_at: datetime,
    arguments: Any = None,
    run_id: int | None = None,
) -> Callable[[], Any]:
    """The call that runs a job once, passing ``scheduled_at`` where the function asks for
    it, and a run's own ``arguments`` (a run scheduled from code: its row's) after the
    job's declared ones. A job's return value is not kept (the call returns None); a
    task's is (``scheduler.tasks.task_call``: its context, its signals, its value as
    plain JSON), for the run ``run_id``."""
    if spec is not None and spec.task is not None:
        from scheduler.tasks import task_call  # only where tasks are declared

        args, kwargs = merged(spec, *unpack(arguments))
        return task_call(spec, args, kwargs, run_id)
    if spec is not None:
        func = spec.func
        args, kwargs = merged(spec, *unpack(arguments))
        if spec.wants_scheduled_at:
            kwargs["scheduled_at"] = scheduled_at
    else:  # a job added to APScheduler directly, without a declaration in code
        assert job is not None, "a job or its declaration is needed"
        func, args, kwargs = job.func, list(job.args), dict(job.kwargs)
    if is_async(func):

        def run_coroutine() -> None:
            asyncio.run(func(*args, **kwargs))  # its own event loop in its worker thread

        return run_coroutine

    def run() -> None:
        func(*args, **kwargs)  # (what it returns is not kept, nor looked at)

    return run


def run_here(
    call: Callable[[], Any],
    limit: int,
    watch: Watch | None = None,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    stops: tuple[type[BaseException], ...] = (TimedOut,),
) -> Outcome:
    """Run ``call`` in this thread, its output captured (and its timeout watched): in a
    worker thread, in the child process of ``isolation``, or in a Celery worker. One of
    ``stops`` raised in it is its timeout (``TimedOut``; Celery's soft time limit). A
    failure is retryable when its exception is one of ``retry_on``; a timeout always is."""
    status, exception, tb, retryable = SUCCEEDED, "", "", False
    value: Any = None
    kind = ""
    start = time.perf_counter()
    with capture(limit) as output:
        try:
            if watch is not None:
                watch.begin(output)
            value = call()
        except stops as exc:
            status, tb, retryable = TIMED_OUT, format_traceback(exc), True
            exception = "Timed out: stopped where it was (its timeout, or the scheduler stopping)."
            kind = exception_path(type(exc))
        except BaseException as exc:  # noqa: BLE001 - a job's SystemExit fails it too
            status, exception, tb = FAILED, describe_exception(exc), format_traceback(exc)
            retryable = isinstance(exc, retry_on)
            kind = exception_path(type(exc))
    duration = time.perf_counter() - start
    return Outcome(status, exception, tb, output.getvalue(), duration, retryable, value, kind)


def exception_path(cls: type) -> str:
    """``module.QualName`` of an exception class, ``builtins.`` included (as
    ``django.tasks``' TaskError names it); never raises."""
    module = getattr(cls, "__module__", None)
    name = getattr(cls, "__qualname__", None) or getattr(cls, "__name__", None) or "?"
    return f"{module}.{name}" if isinstance(module, str) else str(name)


def format_traceback(exc: BaseException) -> str:
    try:
        return "".join(traceback.format_exception(exc))
    except Exception as error:  # noqa: BLE001 - a job's exception can break its own formatting
        return f"(the traceback could not be formatted: {describe_exception(error)})"
