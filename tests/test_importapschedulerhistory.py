"""``manage.py importapschedulerhistory``: django-apscheduler's history copied into ours.

Each test runs the real command as a subprocess on a migrated SQLite file,
with django-apscheduler's rows written as django-apscheduler writes them.
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from tests.proc.harness import SchedulerEnv, db_text

pytestmark = pytest.mark.integration

T0 = datetime(2024, 3, 1, 3, 0, tzinfo=UTC)
EXECUTIONS = "django_apscheduler_djangojobexecution"


def add_job(env: SchedulerEnv, job_id: str) -> None:
    env.execute(
        "INSERT INTO django_apscheduler_djangojob (id, next_run_time, job_state) VALUES (?, ?, ?)",
        (job_id, None, b""),
    )


def add_execution(
    env: SchedulerEnv,
    job_id: str,
    status: str,
    run_time: datetime,
    duration: float | None = None,
    exception: str | None = None,
    traceback: str | None = None,
) -> None:
    finished = None if duration is None else run_time.timestamp() + duration
    env.execute(
        f"INSERT INTO {EXECUTIONS} (job_id, status, run_time, duration, finished, exception, "
        "traceback) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (job_id, status, db_text(run_time), duration, finished, exception, traceback),
    )


def run_import(env: SchedulerEnv, *args: str) -> subprocess.CompletedProcess:
    return env.manage("importapschedulerhistory", *args, timeout=60)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The command failed with exactly one line on stderr and nothing on stdout."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def runs(env: SchedulerEnv) -> list[dict]:
    return [
        {key: row[key] for key in ("job_id", "status", "trigger", "scheduled_at", "exception")}
        for row in env.runs()
    ]


def test_imports_each_status_and_is_safe_to_run_twice(scheduler_env):
    add_job(scheduler_env, "app.report")
    add_execution(scheduler_env, "app.report", "Executed", T0, duration=1.5)
    add_execution(
        scheduler_env,
        "app.report",
        "Error!",
        T0 + timedelta(days=1),
        duration=0.25,
        exception="ValueError: bad row",
        traceback="Traceback (most recent call last):\nValueError: bad row",
    )
    add_execution(scheduler_env, "app.report", "Missed!", T0 + timedelta(days=2))
    add_execution(scheduler_env, "app.report", "Max instances!", T0 + timedelta(days=3))
    add_execution(scheduler_env, "app.report", "Started execution", T0 + timedelta(days=4))

    first = run_import(scheduler_env, "--batch-size", "2")

    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == (
        "Imported 5 of 5 django-apscheduler executions (0 were already imported)."
    )
    assert runs(scheduler_env) == [
        {
            "job_id": "app.report",
            "status": status,
            "trigger": "schedule",
            "scheduled_at": T0 + timedelta(days=day),
            "exception": exception,
        }
        for day, status, exception in [
            (0, "succeeded", ""),
            (1, "failed", "ValueError: bad row"),
            (2, "missed", ""),
            (3, "skipped", ""),
            (4, "interrupted", "Interrupted: imported from django-apscheduler without a result."),
        ]
    ]
    assert scheduler_env.runs(status="succeeded")[0]["duration"] == 1.5

    again = run_import(scheduler_env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == (
        "Imported 0 of 5 django-apscheduler executions (5 were already imported)."
    )
    assert len(scheduler_env.runs()) == 5


def test_a_status_without_equivalent_is_kept_in_the_exception(scheduler_env):
    add_job(scheduler_env, "app.sync")
    add_execution(scheduler_env, "app.sync", "Executed", T0, duration=1)
    add_execution(scheduler_env, "app.sync", "Removed?", T0 + timedelta(hours=1))
    add_execution(
        scheduler_env,
        "app.sync",
        "Paused",
        T0 + timedelta(hours=2),
        exception="KeyError: 'token'",
    )
    add_execution(scheduler_env, "app.sync", "Removed?", T0 + timedelta(hours=3))

    result = run_import(scheduler_env)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == [
        "Imported 4 of 4 django-apscheduler executions (0 were already imported).",
        "3 had a status scheduler has no equivalent for: 'Removed?' (2), 'Paused' (1). "
        "They are recorded as interrupted, with the original status in their exception.",
    ]
    imported = runs(scheduler_env)
    assert [(row["status"], row["exception"]) for row in imported] == [
        ("succeeded", ""),
        (
            "interrupted",
            "Imported from django-apscheduler with status 'Removed?', which scheduler has no "
            "equivalent for.",
        ),
        (
            "interrupted",
            "Imported from django-apscheduler with status 'Paused', which scheduler has no "
            "equivalent for.\nKeyError: 'token'",
        ),
        (
            "interrupted",
            "Imported from django-apscheduler with status 'Removed?', which scheduler has no "
            "equivalent for.",
        ),
    ]


def test_a_missing_history_table_is_named_in_one_line(scheduler_env):
    scheduler_env.execute(f"DROP TABLE {EXECUTIONS}")

    line = one_line_error(run_import(scheduler_env))

    assert line == (
        f"CommandError: The database 'default' has no table {EXECUTIONS} (django-apscheduler's "
        "run history): if that history is in this database, run django_apscheduler's "
        "migrations first (python manage.py migrate django_apscheduler); if it never had any, "
        "there is nothing to import."
    )
    assert scheduler_env.runs() == []


def test_a_missing_run_table_is_named_in_one_line(scheduler_env):
    add_job(scheduler_env, "app.report")
    add_execution(scheduler_env, "app.report", "Executed", T0, duration=1)
    scheduler_env.execute("DROP TABLE scheduler_jobrun")

    line = one_line_error(run_import(scheduler_env))

    assert line == (
        "CommandError: The database 'default' has no table scheduler_jobrun (scheduler's run "
        "history): run python manage.py migrate scheduler first."
    )


@pytest.mark.parametrize("size", ["0", "-5"])
def test_a_batch_size_below_one_is_refused_in_one_line(scheduler_env, size):
    add_job(scheduler_env, "app.report")
    add_execution(scheduler_env, "app.report", "Executed", T0, duration=1)

    line = one_line_error(run_import(scheduler_env, "--batch-size", size))

    assert line == f"CommandError: --batch-size must be a positive number of rows, not {size}."
    assert scheduler_env.runs() == []
