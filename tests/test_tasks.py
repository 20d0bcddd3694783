"""scheduler/tasks.py: Django's task framework (``django.tasks`` on Django 6, the
``django-tasks`` backport on 5.2) with this scheduler as its backend, end to end: tasks
enqueued from ``manage.py shell`` (a process with the settings and no scheduler), run by
a real ``runapscheduler``, their results read back through ``get_result``; the
framework's documented behaviour for results, statuses, errors and ``takes_context``."""

from __future__ import annotations

import json
import textwrap
import time
from datetime import datetime
from typing import Any

import pytest

from tests.proc.harness import SchedulerEnv, wait_for

pytestmark = pytest.mark.integration

TASKS = "tests.proc.scheduler_tasks"
FAST = {"POLL_INTERVAL": 0.2}
PRELUDE = """
import asyncio, json
from datetime import timedelta
from django.utils import timezone
try:
    from django.tasks import task_backends
    from django.tasks.exceptions import TaskResultDoesNotExist, TaskResultMismatch
except ImportError:
    from django_tasks import task_backends
    from django_tasks.exceptions import TaskResultDoesNotExist, TaskResultMismatch
from tests.proc import scheduler_tasks as t
backend = task_backends["scheduler"]

def describe(result):
    out = {
        "id": result.id, "status": str(result.status), "args": result.args,
        "kwargs": result.kwargs, "attempts": result.attempts,
        "worker_ids": result.worker_ids, "task": result.task.module_path,
        "errors": [[e.exception_class_path, e.traceback] for e in result.errors],
        "enqueued_at": result.enqueued_at and result.enqueued_at.isoformat(),
        "started_at": result.started_at and result.started_at.isoformat(),
        "finished_at": result.finished_at and result.finished_at.isoformat(),
        "finished": result.is_finished,
    }
    if str(result.status) == "SUCCESSFUL":
        out["return_value"] = result.return_value
    if result.errors:
        out["exception_class"] = result.errors[0].exception_class.__name__
    return out
"""


def shell(env: SchedulerEnv, code: str) -> Any:
    """Run ``code`` (after PRELUDE) in ``manage.py shell``; the JSON it prints last."""
    source = PRELUDE + textwrap.dedent(code)
    result = env.manage("shell", "-c", source, modules=TASKS, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def results(env: SchedulerEnv, ids: dict[str, str], timeout: float = 30) -> dict[str, Any]:
    """The results of ``ids`` once every one is finished."""
    code = f"print(json.dumps({{k: describe(backend.get_result(v)) for k, v in {ids!r}.items()}}))"

    def done() -> dict[str, Any] | None:
        found = shell(env, code)
        return found if all(r["finished"] for r in found.values()) else None

    return wait_for(done, timeout, f"results of {sorted(ids)}", interval=0.5)


def at(text: str | None) -> datetime:
    assert text is not None
    return datetime.fromisoformat(text)


def test_enqueued_tasks_run_in_the_scheduler_and_their_results_come_back(
    scheduler_env: SchedulerEnv,
) -> None:
    env = scheduler_env
    proc = env.start(TASKS, **FAST)
    enqueued = shell(
        env,
        """
        results = {
            "add": t.add.enqueue(2, b=3),
            "add_later": asyncio.run(t.add_later.aenqueue(4, 5)),
            "noop": t.noop.enqueue(1, two=3),
            "fails": t.fails.enqueue(),
            "exits": t.exits.enqueue(),
            "complex": t.complex_return.enqueue(),
            "whoami": t.whoami.enqueue("x"),
        }
        print(json.dumps({k: describe(r) for k, r in results.items()}))
        """,
    )
    for name, result in enqueued.items():
        assert result["status"] == "READY", (name, result)
        assert result["finished"] is False and result["attempts"] == 0
        assert result["enqueued_at"] is not None and result["started_at"] is None
    assert enqueued["noop"]["args"] == [1] and enqueued["noop"]["kwargs"] == {"two": 3}

    found = results(env, {name: r["id"] for name, r in enqueued.items()})
    assert proc.stop() == 0

    assert found["add"]["status"] == "SUCCESSFUL" and found["add"]["return_value"] == 5
    assert found["add_later"]["return_value"] == 9  # an async task
    assert found["noop"]["return_value"] is None
    for name in ("add", "add_later", "noop", "whoami"):
        result = found[name]
        assert result["attempts"] == 1 and len(result["worker_ids"]) == 1
        assert at(result["enqueued_at"]) <= at(result["started_at"])
        assert at(result["started_at"]) <= at(result["finished_at"])
        assert result["task"] == f"{TASKS}.{name}"
    # takes_context: the context is the run's own result.
    assert found["whoami"]["return_value"] == {
        "id": enqueued["whoami"]["id"],
        "attempt": 1,
        "tag": "x",
    }
    # Failures: the exception's class and the traceback ending with its message.
    fails = found["fails"]
    assert fails["status"] == "FAILED" and fails["exception_class"] == "ValueError"
    ((path, traceback),) = fails["errors"]
    assert path == "builtins.ValueError"
    assert traceback.endswith("ValueError: This Task failed due to ValueError\n")
    assert found["exits"]["exception_class"] == "SystemExit"
    # A return value that is not JSON fails the task, as the framework has it.
    complex_ = found["complex"]
    assert complex_["status"] == "FAILED" and complex_["exception_class"] == "TypeError"
    assert "Unsupported type" in complex_["errors"][0][1]
    # Each ran once; each run is a row of the history, trigger "task".
    assert sum(mark == "start add 2 3" for mark in env.marks()) == 1
    rows = env.runs(f"{TASKS}.add")
    assert [(row["trigger"], row["status"]) for row in rows] == [("task", "succeeded")]
    # The framework's signals: sent where each step happened.
    marks = env.marks()
    add_id = enqueued["add"]["id"]
    assert f"signal enqueued {add_id} READY" in " ".join(marks)
    started = [m for m in marks if m.startswith(f"signal started {add_id} RUNNING")]
    finished = [m for m in marks if m.startswith(f"signal finished {add_id} SUCCESSFUL")]
    assert len(started) == len(finished) == 1
    assert started[0].split("pid=")[1] == str(proc.pid)


def test_run_after_and_priorities_decide_when_and_in_which_order(
    scheduler_env: SchedulerEnv,
) -> None:
    env = scheduler_env
    # One worker thread: the runs due together start one after the other.
    proc = env.start(TASKS, THREADS=1, **FAST)
    enqueued = shell(
        env,
        """
        when = timezone.now() + timedelta(seconds=2)
        ids = {}
        for tag, priority in (("low", -10), ("mid", 0), ("high", 50)):
            ids[tag] = t.ordered.using(run_after=when, priority=priority).enqueue(tag).id
        ids["when"] = when.isoformat()
        print(json.dumps(ids))
        """,
    )
    when = at(enqueued.pop("when"))
    found = results(env, enqueued)
    assert proc.stop() == 0
    order = [m.split()[2] for m in env.marks() if m.startswith("start ordered")]
    assert order == ["high", "mid", "low"]
    for result in found.values():
        assert at(result["started_at"]) >= when


def test_bad_requests_are_refused_at_enqueue_and_unknown_results_say_so(
    scheduler_env: SchedulerEnv,
) -> None:
    env = scheduler_env
    answers = shell(
        env,
        """
        out = {}
        for name, call in [
            ("object", lambda: t.add.enqueue(object(), 1)),
            ("nul", lambda: t.add.enqueue("a\\x00b", 1)),
            ("missing", lambda: t.add.enqueue(1)),
            ("naive", lambda: t.add.using(run_after=timezone.now().replace(tzinfo=None))),
            ("unknown", lambda: backend.get_result("999999")),
            ("junk", lambda: backend.get_result("not-an-id")),
            ("mismatch", lambda: t.noop.get_result(t.add.enqueue(1, 2).id)),
        ]:
            try:
                call()
                out[name] = "no error"
            except Exception as exc:
                out[name] = f"{type(exc).__name__}: {exc}"
        print(json.dumps(out))
        """,
    )
    assert answers["object"].startswith("TypeError: Unsupported type")
    assert "NUL character" in answers["nul"]
    assert answers["missing"].startswith("ArgumentError: ")
    assert "missing a required argument: 'b'" in answers["missing"]
    assert answers["naive"].startswith("InvalidTask") and "aware" in answers["naive"]
    assert answers["unknown"].startswith("TaskResultDoesNotExist")
    assert answers["junk"].startswith("TaskResultDoesNotExist")
    assert answers["mismatch"].startswith("TaskResultMismatch")


def test_a_task_with_a_schedule_runs_as_a_job_and_keeps_its_return_value(
    scheduler_env: SchedulerEnv,
) -> None:
    env = scheduler_env
    proc = env.start(TASKS, **FAST)
    shell(env, "import scheduler; print(json.dumps(scheduler.run_now(t.nightly.module_path).pk))")
    job_id = f"{TASKS}.nightly"
    row = wait_for(
        lambda: next((r for r in env.runs(job_id) if r["status"] == "succeeded"), None),
        20,
        "the scheduled task's run",
    )
    time.sleep(0.5)
    assert proc.stop() == 0
    assert row["trigger"] == "manual"
    assert json.loads(row["result"]) == {"return_value": "done"}
    assert env.catalog()[job_id]["kind"] == "cron"


def test_a_retried_task_is_one_result_with_its_attempts(scheduler_env: SchedulerEnv) -> None:
    env = scheduler_env
    proc = env.start(TASKS, RETRIES=1, **FAST)
    enqueued = shell(env, 'print(json.dumps({"flaky": t.flaky.enqueue(4).id}))')
    found = results(env, enqueued)
    assert proc.stop() == 0
    flaky = found["flaky"]
    assert flaky["status"] == "SUCCESSFUL" and flaky["return_value"] == 40
    assert flaky["attempts"] == 2 and len(flaky["worker_ids"]) == 2
    ((path, traceback),) = flaky["errors"]
    assert path == "builtins.ConnectionError"
    assert "ConnectionError: the partner API blinked" in traceback
