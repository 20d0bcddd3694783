"""The three systems under test and how each is started."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import PYTHON, Proc, child_env
from bench.databases import Database, project_env

SYSTEMS = ("floor", "dja", "ours")
LABELS = {
    "floor": "APScheduler (memory)",
    "dja": "django-apscheduler",
    "ours": "this project",
    # Scenario 7 (bench/fleet.py starts it): Celery Beat sending to Celery workers.
    "beat": "Celery Beat",
    # Scenario 8 (bench/scenarios/oneoff.py); started there.
    "ours_tasks": "this project, Django tasks API",
    "dtdb": "django-tasks-db db_worker",
}
ARGV = {
    "floor": [PYTHON, "-m", "bench.floor"],
    "dja": [PYTHON, "-m", "bench.dja_project", "runapscheduler"],
    "ours": [PYTHON, "manage.py", "runapscheduler"],
}
# The line each prints once it runs jobs: for this project, once it holds the
# lease and has synced the job store; for the others, once ``start()`` has added
# every job (EVENT_SCHEDULER_STARTED).
READY = {"floor": "BENCH READY", "dja": "BENCH READY", "ours": "Active scheduler now"}
# This project also says when the process is up (imports, settings, job registry),
# before it takes the lease and syncs the store.
UP = {"ours": "Scheduler started"}


def env_for(system: str, database: Database | None, **extra: Any) -> dict[str, str]:
    if system == "floor":
        return child_env(**extra)
    assert database is not None
    return project_env(system, database.url, **extra)


def start(system: str, database: Database | None, log_path: Path, **extra: Any) -> Proc:
    return Proc(system, ARGV[system], env_for(system, database, **extra), log_path)
