"""Shared fixtures of the test suite."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apscheduler.schedulers.background import BackgroundScheduler

from scheduler.jobstore import JobStore
from tests.proc.harness import SchedulerEnv
from tests.servers import http  # noqa: F401 - the recording HTTP server, a fixture


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated once by a real ``manage.py migrate``; tests get copies."""
    directory = tmp_path_factory.mktemp("migrated")
    env = SchedulerEnv(directory)
    result = env.manage("migrate", "--no-input", "-v", "0", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    # Fold the WAL into the main file so that a plain copy holds everything.
    connection = env.connect()
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    return env.db_path


@pytest.fixture
def scheduler_env(tmp_path: Path, migrated_db: Path) -> Iterator[SchedulerEnv]:
    """A fresh migrated SQLite file in a temp dir; every process started on it is killed after."""
    env = SchedulerEnv(tmp_path)
    shutil.copyfile(migrated_db, env.db_path)
    try:
        yield env
    finally:
        env.cleanup()


@pytest.fixture
def store() -> JobStore:
    """A job store started on a scheduler of its own (``store.test_scheduler``), not active."""
    scheduler = BackgroundScheduler(timezone="UTC")
    store = JobStore()
    store.start(scheduler, "default")
    store.test_scheduler = scheduler
    return store


# Words of the skip reasons that mean "a tool CI is supposed to install is missing".
_MISSING = ("PostgreSQL", "Chromium", "playwright", "npm", "axe-core", "Redis", "Prometheus")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    """On failure, attach the scheduler logs and the run history; in CI, fail missing tools."""
    report = yield
    if report.skipped and os.environ.get("CI") == "true":
        # CI installs PostgreSQL, Chromium, Playwright and npm: a test skipped for want of
        # one of them means .ci/run is broken, and must not pass quietly.
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""
        if any(word in reason for word in _MISSING):
            report.outcome = "failed"
            report.longrepr = f"skipped in CI, where it must run: {reason}"
    if report.when == "call" and report.failed:
        funcargs = getattr(item, "funcargs", {})
        env = funcargs.get("scheduler_env") or funcargs.get("pg_env")
        if isinstance(env, SchedulerEnv):
            for name, text in env.logs():
                report.sections.append((f"log {name}", text[-20000:]))
            report.sections.append(("run history", env.dump()))
    return report
