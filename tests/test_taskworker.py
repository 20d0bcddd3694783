"""Runs through Django's task framework (executor="tasks", scheduler/taskworker.py) with
django-tasks-db's real ``db_worker`` processes and real ``runapscheduler`` processes, on
Django 6's ``django.tasks`` or the ``django-tasks`` backport on Django 5.2."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from tests.proc.harness import SchedulerEnv, wait_for
from tests.proc.workers import start_db_worker
from tests.test_robustness import finished, request_runs, run_row

pytestmark = pytest.mark.integration

JOBS = "tests.proc.task_jobs"
FAST = {"POLL_INTERVAL": 0.2}


def starts(env: SchedulerEnv, job_id: str) -> Counter[str]:
    return Counter(line.split()[2] for line in env.marks() if line.startswith(f"start {job_id} "))


def test_runs_go_through_the_task_framework_and_come_back_to_their_rows(
    scheduler_env: SchedulerEnv,
) -> None:
    env = scheduler_env
    start_db_worker(env, "t1", JOBS)
    start_db_worker(env, "t2", JOBS)
    proc = env.start(JOBS, **FAST)
    wait_for(lambda: len(env.runs("tasks.tick", status="succeeded")) >= 5, 30, "five ticks")
    assert proc.stop() == 0
    time.sleep(1.5)
    ticks = [row for row in env.runs("tasks.tick") if row["status"] != "queued"]
    assert ticks and {row["status"] for row in ticks} == {"succeeded"}
    for row in ticks:
        assert row["executor"] == "tasks"
        assert row["output"] == f"tick {row['scheduled_at'].isoformat()}\n"
        assert row["pid"] != proc.pid
        assert (row["started_at"] - row["scheduled_at"]).total_seconds() < 1.0
    # Each ran once, whichever worker took it.
    assert set(starts(env, "tasks.tick").values()) == {1}
    workers = {row["instance"] for row in ticks}
    assert 1 <= len(workers) <= 2


def test_a_timeout_is_watched_in_the_worker(scheduler_env: SchedulerEnv) -> None:
    env = scheduler_env
    start_db_worker(env, "t1", JOBS)
    proc = env.start(JOBS, **FAST)
    (run_id,) = request_runs(env, ["tasks.sleeps"])
    row = finished(env, [run_id], timeout=20)[run_id]
    assert proc.stop() == 0
    assert row["status"] == "timed_out" and row["executor"] == "tasks"
    assert "time.sleep(0.01)" in row["traceback"]


def test_a_worker_killed_mid_run_leaves_its_run_interrupted(scheduler_env: SchedulerEnv) -> None:
    env = scheduler_env
    fast = {"LEASE_SECONDS": 4, "HEARTBEAT_INTERVAL": 1}
    worker = start_db_worker(env, "t1", JOBS, **fast)
    proc = env.start(JOBS, **FAST, **fast)
    (run_id,) = request_runs(env, ["tasks.long"])
    wait_for(lambda: run_row(env, run_id)["status"] == "running", 15, "the run to start")
    worker.kill_all()
    row = finished(env, [run_id], timeout=20)[run_id]
    assert proc.stop() == 0
    assert row["status"] == "interrupted"
    assert "stopped sending heartbeats" in row["exception"]
