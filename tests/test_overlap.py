"""overlap= with a real ``runapscheduler``: what a fire time does while the job's previous run
still goes. Each job fires every second (replace: every two) and runs longer than that."""

from __future__ import annotations

import os
import time
from datetime import datetime
from typing import Any

import pytest

from tests.proc.harness import SchedulerEnv, wait_for
from tests.test_robustness import request_runs, run_row

pytestmark = pytest.mark.integration

OVERLAPPING = "tests.proc.overlapping"
FAST = {"POLL_INTERVAL": 0.1}


def spans(env: SchedulerEnv, job_id: str) -> list[tuple[datetime, datetime]]:
    """(start, end) of each run of ``job_id`` that finished."""
    return [
        (row["started_at"], row["finished_at"])
        for row in env.runs(job_id)
        if row["started_at"] is not None
        and row["finished_at"] is not None
        and row["status"] in ("succeeded", "interrupted")
    ]


def most_at_once(periods: list[tuple[datetime, datetime]]) -> int:
    events = sorted([(start, 1) for start, _ in periods] + [(end, -1) for _, end in periods])
    going = most = 0
    for _, step in events:
        going += step
        most = max(most, going)
    return most


def run_for(env: SchedulerEnv, job_id: str, seconds: float) -> list[dict[str, Any]]:
    proc = env.start(OVERLAPPING, PROC_OVERLAP=job_id, **FAST)
    time.sleep(seconds)
    assert proc.stop(timeout=20) == 0
    return env.runs(job_id)


@pytest.mark.parametrize("job_id", ["overlap.skip"])
def test_skip_records_the_fire_times_during_a_run_skipped(
    scheduler_env: SchedulerEnv, job_id: str
) -> None:
    rows = run_for(scheduler_env, job_id, 7)
    statuses = [row["status"] for row in rows]
    assert statuses.count("succeeded") >= 2 and statuses.count("skipped") >= 2
    assert "queued" not in statuses
    assert most_at_once(spans(scheduler_env, job_id)) == 1
    # Each run started on its fire time (no waiting in line).
    for row in rows:
        if row["status"] == "succeeded":
            assert (row["started_at"] - row["scheduled_at"]).total_seconds() < 0.5


def test_queue_runs_the_fire_time_that_came_during_a_run_when_it_ends(
    scheduler_env: SchedulerEnv,
) -> None:
    """Runs of 2.5 s every second: one fire time waits its turn (at most one), the others
    are skipped; the waiting one starts as soon as the run before it ends."""
    env = scheduler_env
    rows = run_for(env, "overlap.queue", 9)
    done = [row for row in rows if row["status"] == "succeeded"]
    waited = [row for row in done if (row["started_at"] - row["scheduled_at"]).total_seconds() > 1]
    assert len(done) >= 3 and waited, [(r["status"], r["scheduled_at"]) for r in rows]
    assert any(row["status"] == "skipped" and "waits" in row["exception"] for row in rows)
    assert most_at_once(spans(env, "overlap.queue")) == 1
    # A waiting run starts within a poll of the end of the one before it.
    ends = sorted(end for _, end in spans(env, "overlap.queue"))
    for row in waited:
        before = max(end for end in ends if end <= row["started_at"])
        assert (row["started_at"] - before).total_seconds() < 0.6
    # At the stop, a fire time still waiting stays queued for the next scheduler: it was
    # never started, so nothing was lost; at most one.
    assert len([row for row in rows if row["status"] == "queued"]) <= 1
    assert {row["trigger"] for row in rows} == {"schedule"}


def test_allow_runs_up_to_max_instances_side_by_side(scheduler_env: SchedulerEnv) -> None:
    env = scheduler_env
    rows = run_for(env, "overlap.allow", 7)
    assert most_at_once(spans(env, "overlap.allow")) == 2
    assert any(row["status"] == "skipped" for row in rows)


def test_replace_stops_the_run_going_on_and_starts_the_new_one(
    scheduler_env: SchedulerEnv,
) -> None:
    """A run of an hour every two seconds, overlap="replace" in a child process: each fire
    time stops the run before it (recorded interrupted, saying why) and runs."""
    env = scheduler_env
    proc = env.start(OVERLAPPING, PROC_OVERLAP="overlap.replace", SHUTDOWN_GRACE=1, **FAST)
    wait_for(
        lambda: len([r for r in env.runs("overlap.replace") if r["status"] == "interrupted"]) >= 2,
        20,
        "two replaced runs",
    )
    # A run requested by hand replaces the one going too.
    (request,) = request_runs(env, ["overlap.replace"])
    wait_for(
        lambda: any(
            "a run requested by hand" in r["exception"] for r in env.runs("overlap.replace")
        ),
        10,
        "a run replaced by the request",
    )
    wait_for(lambda: run_row(env, request)["status"] != "queued", 10, "the request to start")
    assert proc.stop(timeout=30) == 0
    # It ran until the next fire time replaced it (or the stop ended it).
    assert run_row(env, request)["status"] == "interrupted"
    rows = env.runs("overlap.replace")
    replaced = [row for row in rows if "replaces it" in row["exception"]]
    assert len(replaced) >= 2
    for row in replaced:
        assert row["status"] == "interrupted"
        assert row["exception"].endswith("which replaces it (overlap='replace').")
        assert "time.sleep" in row["traceback"]  # where it was stopped
    # The replacing runs started soon after their fire times, not an hour later.
    # (The run the stop interrupted has no start time in its row: a run started from the
    # queue writes it with its result.)
    started = [row for row in rows if row["started_at"] is not None]
    assert len(started) >= 2
    for row in started[1:]:
        assert (row["started_at"] - row["scheduled_at"]).total_seconds() < 1.5
    assert most_at_once(spans(env, "overlap.replace")) == 1
    # No child outlives its run.
    for line in env.marks():
        pid = int(line.rsplit("pid=", 1)[1]) if "pid=" in line else None
        if pid is not None:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
