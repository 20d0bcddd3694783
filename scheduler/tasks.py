"""Django's task framework, run by this scheduler: ``SchedulerBackend``.

``TASKS = {"default": {"BACKEND": "scheduler.tasks.SchedulerBackend"}}`` makes
every ``@task`` function of that backend enqueueable (``enqueue``,
``aenqueue``, ``using(run_after=..., priority=...)``, ``get_result``) and run
by ``runapscheduler``: each enqueued task is a run row (trigger ``task``) due
at its ``run_after``, claimed once by the active scheduler, run with the
scheduler's timeouts, retries and isolation (``SCHEDULER``'s defaults), and
shown in the admin like any run. Its ``TaskResult`` is read back from that row
(and its retries): statuses, errors, the workers that ran it, its return value.
On Django 6 against ``django.tasks``, on Django 5.2 against the ``django-tasks``
backport.

A task is found by its path among the tasks declared in the code, never
imported from the row: defining a task for this backend registers it in the
scheduler's registry (the backend's ``validate_task``, which the framework
calls for each task it defines), and the scheduler imports each installed
app's ``tasks`` module as it imports its ``jobs`` module.

Priorities order the runs that are due together (the control thread's batch of
due runs, up to 500): a higher priority starts first. A backlog of more due
runs than that is taken oldest first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError
from django.utils import timezone

from scheduler import arguments, conf, db
from scheduler.arguments import ArgumentError
from scheduler.models import JobRun
from scheduler.registry import register_task

try:  # Django 6
    from django.tasks import TaskContext, TaskResult, TaskResultStatus
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import TaskError
    from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued, task_finished, task_started
    from django.utils.json import normalize_json
except ImportError:  # Django 5.2 and the backport
    from django_tasks import (  # type: ignore[no-redef,assignment,unused-ignore]
        TaskContext,
        TaskResult,
        TaskResultStatus,
    )
    from django_tasks.backends.base import (  # type: ignore[no-redef,assignment,unused-ignore]
        BaseTaskBackend,
    )
    from django_tasks.base import (  # type: ignore[no-redef,assignment,unused-ignore]
        TaskError,
    )
    from django_tasks.exceptions import (  # type: ignore[no-redef,assignment,unused-ignore]
        InvalidTaskError as InvalidTask,
    )
    from django_tasks.exceptions import (  # type: ignore[no-redef,assignment,unused-ignore]
        TaskResultDoesNotExist,
    )
    from django_tasks.signals import (  # type: ignore[no-redef,assignment,unused-ignore]
        task_enqueued,
        task_finished,
        task_started,
    )
    from django_tasks.utils import (  # type: ignore[no-redef,assignment,unused-ignore]
        normalize_json,
    )

if TYPE_CHECKING:
    from scheduler.body import Outcome
    from scheduler.registry import JobSpec

logger = logging.getLogger(__name__)

Status = JobRun.Status
# A task and its result, of whichever framework is installed (Django 6's and the
# backport's are generic in different ways; this module uses what both have).
AnyTask = Any
AnyResult = Any

# The TaskResult status of each run status. A run that did not end well, whatever the
# reason (an exception, its timeout, its process killed, missed, cancelled), is FAILED.
STATUSES = {
    Status.QUEUED: TaskResultStatus.READY,
    Status.RUNNING: TaskResultStatus.RUNNING,
    Status.SUCCEEDED: TaskResultStatus.SUCCESSFUL,
    Status.FAILED: TaskResultStatus.FAILED,
    Status.TIMED_OUT: TaskResultStatus.FAILED,
    Status.INTERRUPTED: TaskResultStatus.FAILED,
    Status.MISSED: TaskResultStatus.FAILED,
    Status.SKIPPED: TaskResultStatus.FAILED,
}


class RunNotCompleted(Exception):  # noqa: N818 - the name says what a TaskError carries
    """What a task's error names when its run ended without an exception of its own:
    interrupted (its process died), missed, cancelled; its row says why."""


NOT_COMPLETED = f"{__name__}.{RunNotCompleted.__qualname__}"


class SchedulerBackend(BaseTaskBackend):
    """A ``django.tasks`` backend whose tasks are run by ``runapscheduler``."""

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def validate_task(self, task: AnyTask) -> None:
        super().validate_task(task)
        # Called by the framework for each task defined for this backend: the task is
        # known to the scheduler from then on, by its path.
        register_task(task)

    def enqueue(self, task: AnyTask, args: Any, kwargs: Any) -> AnyResult:
        self.validate_task(task)
        spec = register_task(task)
        try:
            args, kwargs = normalize_json(list(args)), normalize_json(dict(kwargs))
        except RecursionError:
            raise ArgumentError(
                f"Task {task.module_path!r}: the arguments nest too deep."
            ) from None
        if task.takes_context:
            # The framework gives the context; the caller gives the rest.
            spec_args = ["context", *args]
        else:
            spec_args = list(args)
        stored = arguments.check(spec, spec_args, kwargs)
        stored.pop("args", None)
        if args:
            stored["args"] = list(args)
        now = timezone.now()
        run = JobRun.objects.scheduled_row(
            spec.id,
            spec.name,
            task.run_after or now,
            stored,
            trigger=JobRun.Trigger.TASK,
        )
        run.result = {
            "backend": self.alias,
            "queue_name": task.queue_name,
            "priority": task.priority,
            "enqueued_at": now.isoformat(),
        }
        run.save(using=conf.database(), force_insert=True)
        from scheduler.requests import notify

        notify()
        result = self._result(task, [run])
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> AnyResult:
        try:
            first = int(result_id)
        except (TypeError, ValueError):
            raise TaskResultDoesNotExist(result_id) from None
        rows = _attempts(first)
        if not rows or rows[0].pk != first or rows[0].trigger != JobRun.Trigger.TASK:
            raise TaskResultDoesNotExist(result_id)
        task = _task_of(rows[0].job_id)
        return self._result(task, rows)

    def _result(self, task: AnyTask, rows: Sequence[JobRun]) -> AnyResult:
        return task_result(task, rows, self.alias)


def task_result(task: AnyTask, rows: Sequence[JobRun], backend: str) -> AnyResult:
    """The TaskResult of a task's run ``rows``: its first attempt, then its retries."""
    first, last = rows[0], rows[-1]
    info = first.result if isinstance(first.result, dict) else {}
    enqueued = info.get("enqueued_at")
    args, kwargs = arguments.unpack(first.arguments)
    started = [row for row in rows if row.started_at is not None]
    errors = [
        TaskError(
            exception_class_path=_error_class(row),
            traceback=row.traceback or row.exception,
        )
        for row in rows
        if row.status in JobRun.FINAL and row.status != Status.SUCCEEDED
    ]
    result: AnyResult = TaskResult(
        task=task,
        id=str(first.pk),
        status=STATUSES[Status(last.status)],
        enqueued_at=datetime.fromisoformat(enqueued) if enqueued else first.scheduled_at,
        started_at=started[0].started_at if started else None,
        finished_at=last.finished_at if last.status in JobRun.FINAL else None,
        last_attempted_at=started[-1].started_at if started else None,
        args=args,
        kwargs=kwargs,
        backend=backend,
        errors=errors,
        worker_ids=[row.hostname or "?" for row in started],
    )
    last_info = last.result if isinstance(last.result, dict) else {}
    if last.status == Status.SUCCEEDED:
        object.__setattr__(result, "_return_value", last_info.get("return_value"))
    return result


def _error_class(row: JobRun) -> str:
    info = row.result if isinstance(row.result, dict) else {}
    path = info.get("exception_class")
    return path if isinstance(path, str) and path else NOT_COMPLETED


def _task_of(job_id: str) -> AnyTask:
    """The task declared as ``job_id`` in this process's code (its modules imported as
    the scheduler imports them); never imported from the row."""
    from scheduler.registry import autodiscover

    spec = autodiscover().get(job_id)
    if spec is None or spec.task is None:
        raise InvalidTask(
            f"Task {job_id!r} is not declared in this process's code (tasks are found in "
            "each installed app's tasks.py and jobs.py, and SCHEDULER['JOB_MODULES'])."
        )
    return spec.task


# -- running a task (in the scheduler, a child process, or a fleet's worker) ------------


def task_call(
    spec: JobSpec, args: list[Any], kwargs: dict[str, Any], run_id: int | None
) -> Callable[[], Any]:
    """The call of one run of a task: its context first where it takes one, the
    framework's ``task_started`` and ``task_finished`` around it, and its return value
    as plain JSON (a value that is not makes the run fail, as the framework has it)."""
    task: AnyTask = spec.task

    def call() -> Any:
        rows = _rows(run_id)
        if rows and rows[-1].started_at is None:
            # This attempt has started (its row says so with its outcome): it counts.
            rows[-1].started_at = timezone.now()
            rows[-1].hostname = rows[-1].hostname or conf.HOSTNAME
        result: AnyResult = task_result(task, rows, task.backend) if rows else None
        if result is not None:
            object.__setattr__(result, "status", TaskResultStatus.RUNNING)
            task_started.send(type(task.get_backend()), task_result=result)
        given = [TaskContext(task_result=result), *args] if task.takes_context else args
        try:
            value = task.func(*given, **kwargs)
            if asyncio.iscoroutine(value):
                value = asyncio.run(value)
            value = normalize_json(value)
        except BaseException:
            if result is not None:
                object.__setattr__(result, "status", TaskResultStatus.FAILED)
                object.__setattr__(result, "finished_at", timezone.now())
                task_finished.send(type(task.get_backend()), task_result=result)
            raise
        if result is not None:
            object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
            object.__setattr__(result, "finished_at", timezone.now())
            object.__setattr__(result, "_return_value", value)
            task_finished.send(type(task.get_backend()), task_result=result)
        return value

    return call


def _rows(run_id: int | None) -> list[JobRun]:
    """A run's first attempt and its attempts up to it (for its TaskResult)."""
    if run_id is None:
        return []
    run = JobRun.objects.filter(pk=run_id).first()
    if run is None:
        return []
    if run.retry_of is None:
        return [run]
    return _attempts(run.retry_of, run.attempt)


def _attempts(first: int, up_to: int | None = None) -> list[JobRun]:
    """The run ``first`` and its next attempts (up to attempt ``up_to``), in order."""
    retries = JobRun.objects.filter(retry_of=first, trigger=JobRun.Trigger.RETRY)
    if up_to is not None:
        retries = retries.filter(attempt__lte=up_to)
    rows = list(JobRun.objects.filter(pk=first) | retries)
    return sorted(rows, key=lambda row: row.attempt)


def store_result(run: JobRun, outcome: Outcome) -> None:
    """Keep a task run's return value (or its exception's class) in its row, before its
    outcome is recorded: a ``get_result`` that reads the run finished finds it. A value
    the database refuses fails the run, saying why."""
    info = dict(run.result) if isinstance(run.result, dict) else {}
    if outcome.status == Status.SUCCEEDED:
        info["return_value"] = outcome.value
    else:
        info["exception_class"] = outcome.exception_class or NOT_COMPLETED
    try:
        db.retrying(
            lambda: JobRun.objects.filter(pk=run.pk).update(result=info),
            "store a task's result",
        )
        run.result = info
    except DatabaseError as exc:
        run.status = Status.FAILED
        run.exception = f"The task's return value could not be stored: {exc}"
        info.pop("return_value", None)
        info["exception_class"] = f"{type(exc).__module__}.{type(exc).__qualname__}"
        JobRun.objects.filter(pk=run.pk).update(result=info)
        run.result = info
