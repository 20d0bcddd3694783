"""Tasks of Django's task framework run by this scheduler (TASKS alias "scheduler":
scheduler.tasks.SchedulerBackend), for tests/test_tasks.py.

Each marks its start in the ``PROC_MARKS`` file; the framework's signals, received in
the process that runs the task, are marked too ("signal <name> <id> <status>").
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

try:  # Django 6
    from django.tasks import task
    from django.tasks.signals import task_enqueued, task_finished, task_started
except ImportError:  # the backport on 5.2
    from django_tasks import task  # type: ignore[no-redef]
    from django_tasks.signals import (  # type: ignore[no-redef]
        task_enqueued,
        task_finished,
        task_started,
    )

from scheduler import cron
from tests.proc.marks import mark

BACKEND = "scheduler"


@task(backend=BACKEND)
def add(a: int, b: int) -> int:
    mark(f"start add {a} {b}")
    return a + b


@task(backend=BACKEND)
def noop(*args: Any, **kwargs: Any) -> None:
    mark("start noop")


@task(backend=BACKEND)
async def add_later(a: int, b: int) -> int:
    await asyncio.sleep(0.01)
    mark(f"start add_later {a} {b}")
    return a + b


@task(backend=BACKEND)
def fails() -> None:
    mark("start fails")
    raise ValueError("This Task failed due to ValueError")


@task(backend=BACKEND)
def exits() -> None:
    raise SystemExit("This Task failed due to SystemExit")


@task(backend=BACKEND)
def complex_return() -> Any:
    return {"when": object()}


@task(backend=BACKEND, takes_context=True)
def whoami(context: Any, tag: str) -> dict[str, Any]:
    mark(f"start whoami {tag}")
    return {"id": context.task_result.id, "attempt": context.attempt, "tag": tag}


@task(backend=BACKEND)
def ordered(tag: str) -> str:
    mark(f"start ordered {tag}")
    return tag


# A task with a schedule: @cron on the task (its runs keep their return value).
@cron("0 0 1 1 *", id="tests.proc.scheduler_tasks.nightly")
@task(backend=BACKEND)
def nightly() -> str:
    mark("start nightly")
    return "done"


def _signal(name: str) -> Any:
    def receiver(sender: Any, task_result: Any, **kwargs: Any) -> None:
        if task_result.task.backend == BACKEND:
            mark(f"signal {name} {task_result.id} {task_result.status} pid={os.getpid()}")

    return receiver


_receivers = [_signal("enqueued"), _signal("started"), _signal("finished")]
task_enqueued.connect(_receivers[0], weak=False)
task_started.connect(_receivers[1], weak=False)
task_finished.connect(_receivers[2], weak=False)


@task(backend=BACKEND)
def flaky(n: int) -> int:
    """Fails on its first attempt (SCHEDULER["RETRIES"] tries it again), then succeeds."""
    mark(f"start flaky {n}")
    with open(os.environ.get("PROC_MARKS", "")) as marks:
        if sum(line.startswith(f"start flaky {n}") for line in marks) < 2:
            raise ConnectionError("the partner API blinked")
    return n * 10
