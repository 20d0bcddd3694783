"""System checks: ``manage.py check`` reports settings and declarations that cannot work."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from django.core import checks
from django.test.utils import override_settings

from scheduler import registry as registry_module
from scheduler.checks import check_jobs, check_settings
from tests.proc.harness import SchedulerEnv

TWO_SCHEDULES = (
    "Scheduled job 'tests.declared.two_schedules.report': tests.declared.two_schedules:report "
    "has two schedules under this one id (interval 'minutes=5' and cron '0 3 * * *'); the "
    "second would replace the first. Pass a distinct id=... to each decorator."
)


@pytest.fixture
def fresh_discovery(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Job discovery as in a new process; the registry is restored afterwards."""
    saved = dict(registry_module.registry)
    monkeypatch.setattr(registry_module, "_discovered", False)
    yield
    registry_module.registry.clear()
    registry_module.registry.update(saved)


def scheduler_errors() -> list[checks.CheckMessage]:
    """What ``manage.py check`` reports through the checks this app registers."""
    return checks.run_checks(tags=["scheduler"])


# In process --------------------------------------------------------------------------


def test_settings_problems_are_errors_with_an_id_per_kind():
    bad = {
        "THREADS": "4",
        "JOB_MODULES": "myapp.jobs",
        "LEASE_SECONDS": 4,
        "HEARTBEAT_INTERVAL": 1,
        "DB_RETRY_TIMEOUT": 2,
    }
    with override_settings(SCHEDULER=bad):
        found = scheduler_errors()
        assert check_settings() == found
    assert [error.id for error in found] == ["scheduler.E003", "scheduler.E005", "scheduler.E013"]
    assert all(error.level == checks.ERROR for error in found)
    assert found[1].msg == "SCHEDULER['THREADS'] is '4' (str); expected an integer >= 1."
    assert found[0].msg.startswith("SCHEDULER['JOB_MODULES'] is 'myapp.jobs' (str)")
    assert "failover" in found[2].hint


@pytest.mark.parametrize(
    ("scheduler", "error_id"),
    [
        ("THREADS=4", "scheduler.E001"),
        ({"THREAD": 4}, "scheduler.E002"),
        ({"DATABASE": "jobs"}, "scheduler.E004"),
        ({"MISFIRE_GRACE_TIME": 0.5}, "scheduler.E006"),
        ({"SHUTDOWN_GRACE": True}, "scheduler.E007"),
        ({"POLL_INTERVAL": float("nan")}, "scheduler.E008"),
        ({"HISTORY_DAYS": 0}, "scheduler.E009"),
        ({"MAX_OUTPUT": "64k"}, "scheduler.E010"),
        ({"LEASE_SECONDS": float("inf")}, "scheduler.E011"),
        ({"HEARTBEAT_INTERVAL": 8}, "scheduler.E012"),
        ({"MAX_MISSED_ROWS": 0}, "scheduler.E014"),
        ({"TIMEOUT": -1}, "scheduler.E015"),
        ({"ISOLATION": "fork"}, "scheduler.E016"),
        ({"RETRIES": 1.5}, "scheduler.E017"),
        ({"EXECUTOR": "rq"}, "scheduler.E018"),
        ({"CELERY_APP": "myproject.celery.app"}, "scheduler.E019"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_each_kind_of_settings_problem_has_its_id(scheduler, error_id, fresh_discovery):
    with override_settings(SCHEDULER=scheduler):
        found = scheduler_errors()
    # The declarations are not checked against a broken setting, and nothing crashes.
    assert [error.id for error in found] == [error_id]


def test_valid_settings_and_declarations_pass(fresh_discovery):
    with override_settings(SCHEDULER={"JOB_MODULES": ["tests.jobs"]}):
        assert scheduler_errors() == []
    assert "tests.nightly" in registry_module.registry


def test_a_bad_declaration_is_an_error_naming_the_job_every_time_it_is_checked(fresh_discovery):
    with override_settings(
        SCHEDULER={"JOB_MODULES": ["tests.jobs", "tests.declared.two_schedules"]}
    ):
        first = check_jobs()
        # Discovery did not mark itself done: checking again imports the module again.
        assert check_jobs() == first
        assert scheduler_errors() == first
    assert first == [checks.Error(TWO_SCHEDULES, id="scheduler.E020")]


def test_a_job_module_that_cannot_be_imported_is_an_error(fresh_discovery):
    with override_settings(SCHEDULER={"JOB_MODULES": ["tests.declared.absent"]}):
        found = check_jobs()
    assert [error.id for error in found] == ["scheduler.E021"]
    assert "'tests.declared.absent', which cannot be imported" in found[0].msg


def test_overlap_replace_of_a_run_in_a_thread_is_an_error(fresh_discovery):
    with override_settings(SCHEDULER={"JOB_MODULES": ["tests.declared.replace_in_thread"]}):
        found = check_jobs()
        assert [error.id for error in found] == ["scheduler.E022"]
        assert "'declared.replace'" in found[0].msg and "isolation='process'" in found[0].hint
    # A project that runs every job in a child process may leave isolation out.
    with override_settings(
        SCHEDULER={"JOB_MODULES": ["tests.declared.replace_in_thread"], "ISOLATION": "process"}
    ):
        assert check_jobs() == []


def test_jobs_on_celery_without_an_app_to_send_them_is_an_error(fresh_discovery):
    modules = ["tests.declared.celery_job"]
    with override_settings(SCHEDULER={"JOB_MODULES": modules, "CELERY_APP": "tests.nope:app"}):
        found = check_jobs()
        assert [error.id for error in found] == ["scheduler.E023"]
        assert "'declared.on_celery'" in found[0].msg and "No module named" in found[0].msg
    with override_settings(
        SCHEDULER={"JOB_MODULES": modules, "CELERY_APP": "tests.proc.celery_app:nothing"}
    ):
        found = check_jobs()
        assert [error.id for error in found] == ["scheduler.E023"]
        assert "names no Celery app" in found[0].msg
    with override_settings(
        SCHEDULER={"JOB_MODULES": modules, "CELERY_APP": "tests.proc.celery_app:app"}
    ):
        assert check_jobs() == []


def test_jobs_on_the_task_framework_without_a_backend_is_an_error(fresh_discovery):
    modules = ["tests.declared.tasks_job"]
    with override_settings(SCHEDULER={"JOB_MODULES": modules, "TASK_BACKEND": "fleet"}):
        found = check_jobs()
        assert [error.id for error in found] == ["scheduler.E023"]
        assert "'declared.on_tasks'" in found[0].msg and "'fleet'" in found[0].msg
    with override_settings(
        SCHEDULER={"JOB_MODULES": modules},
        TASKS={"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}},
    ):
        assert check_jobs() == []


# Real processes ------------------------------------------------------------------------


def test_manage_py_check_reports_bad_settings(scheduler_env: SchedulerEnv):
    result = scheduler_env.manage(
        "check", THREADS='"4"', LEASE_SECONDS="15", HEARTBEAT_INTERVAL="10", MAX_OUTPUT="true"
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "?: (scheduler.E005) SCHEDULER['THREADS'] is '4' (str); expected an integer >= 1." in (
        result.stderr
    )
    assert (
        "?: (scheduler.E010) SCHEDULER['MAX_OUTPUT'] is True (bool); "
        "expected an integer >= 1 (characters)." in result.stderr
    )
    assert "(scheduler.E012) SCHEDULER['HEARTBEAT_INTERVAL'] is 10, more than half" in (
        result.stderr
    )
    assert "HINT: A lease must survive one late renewal" in result.stderr
    assert "System check identified 3 issues" in result.stderr
    assert "Traceback" not in result.stderr


def test_manage_py_check_reports_a_bad_declaration(scheduler_env: SchedulerEnv):
    result = scheduler_env.manage("check", modules="tests.proc.jobs,tests.declared.two_schedules")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"?: (scheduler.E020) {TWO_SCHEDULES}" in result.stderr
    assert "Traceback" not in result.stderr


def test_manage_py_check_passes_with_good_settings(scheduler_env: SchedulerEnv):
    result = scheduler_env.manage("check", SHUTDOWN_GRACE="0", POLL_INTERVAL="0.2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (
            {"THREADS": '"4"'},
            "?: (scheduler.E005) SCHEDULER['THREADS'] is '4' (str); expected an integer >= 1.",
        ),
        (
            {"DATABASE": '"jobs"'},
            "?: (scheduler.E004) SCHEDULER['DATABASE'] is 'jobs', which is not a key of "
            "DATABASES ('default').",
        ),
        ({"modules": "tests.declared.two_schedules"}, f"?: (scheduler.E020) {TWO_SCHEDULES}"),
        (
            {"modules": "tests.declared.replace_in_thread"},
            "?: (scheduler.E022) Scheduled job 'declared.replace': overlap='replace' stops the "
            "run going on, which only a run in a child process can be; it runs in a thread.",
        ),
    ],
    ids=["threads", "database", "declaration", "replace-in-thread"],
)
def test_runapscheduler_stops_at_once_with_the_message(scheduler_env, overrides, line):
    started = time.monotonic()
    result = scheduler_env.manage("runapscheduler", timeout=60, **overrides)
    assert result.returncode != 0, result.stdout + result.stderr
    assert time.monotonic() - started < 30
    assert line in result.stderr.splitlines()
    assert "Traceback" not in result.stderr
    assert "Scheduler started" not in result.stdout
    assert scheduler_env.runs() == []
