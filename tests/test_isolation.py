"""scheduler/isolation.py: runs in a child process, with a real ``runapscheduler``.

What a thread cannot survive or stop: a job blocked in C past its timeout, one that
ignores SIGTERM, a segfault, ``os._exit``; and that the child's output, exception and
traceback come back to the run's row as in thread mode.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

import pytest

from tests.proc.harness import SchedulerEnv, wait_for
from tests.test_robustness import finished, request_runs

pytestmark = pytest.mark.integration

ISOLATED = "tests.proc.isolated"


def child_pids(env: SchedulerEnv, job_id: str) -> list[int]:
    return [
        int(mark.rsplit("pid=", 1)[1])
        for mark in env.marks()
        if mark.startswith(f"start {job_id} ")
    ]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_run_in_a_child_comes_back_to_its_row_as_in_a_thread(
    scheduler_env: SchedulerEnv,
) -> None:
    env = scheduler_env
    proc = env.start(ISOLATED)
    fine, fails, chatty = request_runs(env, ["iso.fine", "iso.fails", "iso.chatty"])
    rows = finished(env, [fine, fails, chatty])
    assert proc.stop() == 0

    assert rows[fine]["status"] == "succeeded"
    assert rows[fine]["output"] == "hello from a child\n"
    (pid,) = child_pids(env, "iso.fine")
    assert pid != proc.pid  # it ran elsewhere

    assert rows[fails]["status"] == "failed"
    assert rows[fails]["exception"] == "ValueError: the partner API blinked"
    assert 'raise ValueError("the partner API blinked")' in rows[fails]["traceback"]
    assert rows[fails]["output"] == "about to fail\n"

    output = rows[chatty]["output"]
    assert output.endswith("the end of the output\n")
    assert len(output) <= 65536 + 200  # capped as in a thread (MAX_OUTPUT), the tail kept


def test_a_job_blocked_in_c_is_stopped_by_its_timeout_and_the_schedule_goes_on(
    scheduler_env: SchedulerEnv,
) -> None:
    """time.sleep(3600) with timeout=1: SIGTERM interrupts it, and the run is recorded
    timed out with the output so far and where it was; every-second jobs keep running."""
    env = scheduler_env
    proc = env.start(f"{ISOLATED},tests.proc.jobs")
    started = time.monotonic()
    (run_id,) = request_runs(env, ["iso.sleeps"])
    row = finished(env, [run_id], timeout=20)[run_id]
    took = time.monotonic() - started
    ticks = [r for r in env.runs("proc.tick") if r["status"] == "succeeded"]
    assert proc.stop() == 0

    assert row["status"] == "timed_out"
    assert row["exception"].startswith("Timed out")
    assert "time.sleep(3600)" in row["traceback"]  # where it hung
    assert row["output"] == "going to sleep\n"
    assert 1 <= row["duration"] < 3
    assert took < 10
    (pid,) = child_pids(env, "iso.sleeps")
    assert not alive(pid)
    assert ticks, "the every-second job stopped running"


def test_a_child_that_ignores_sigterm_is_killed(scheduler_env: SchedulerEnv) -> None:
    env = scheduler_env
    proc = env.start(ISOLATED)
    (run_id,) = request_runs(env, ["iso.deaf"])
    row = finished(env, [run_id], timeout=30)[run_id]
    assert proc.stop() == 0
    assert row["status"] == "timed_out"
    assert "was killed" in row["exception"]
    (pid,) = child_pids(env, "iso.deaf")
    assert not alive(pid)


@pytest.mark.parametrize(
    ("job_id", "words"),
    [("iso.segfault", "died of SIGSEGV"), ("iso.exits", "exit code 3")],
    ids=["segfault", "os._exit"],
)
def test_a_child_that_dies_is_recorded_failed_and_the_scheduler_lives(
    scheduler_env: SchedulerEnv, job_id: str, words: str
) -> None:
    env = scheduler_env
    proc = env.start(ISOLATED)
    (run_id,) = request_runs(env, [job_id])
    row = finished(env, [run_id])[run_id]
    assert row["status"] == "failed"
    assert words in row["exception"]
    # Still alive and running the next request.
    (again,) = request_runs(env, ["iso.fine"])
    assert finished(env, [again])[again]["status"] == "succeeded"
    assert proc.stop() == 0


def test_a_stop_kills_a_child_still_running_past_the_grace(scheduler_env: SchedulerEnv) -> None:
    env = scheduler_env
    proc = env.start(ISOLATED, SHUTDOWN_GRACE=1)
    (run_id,) = request_runs(env, ["iso.deaf"])
    wait_for(lambda: child_pids(env, "iso.deaf"), 10, "the child started")
    (pid,) = child_pids(env, "iso.deaf")
    proc.signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    wait_for(lambda: not alive(pid), 5, "the child gone with the scheduler")
    (row,) = env.runs("iso.deaf", id=run_id)
    assert row["status"] == "interrupted"


# -- timeouts in a thread -------------------------------------------------------------------


def test_a_thread_running_python_past_its_timeout_is_stopped(scheduler_env: SchedulerEnv) -> None:
    env = scheduler_env
    proc = env.start(ISOLATED)
    (run_id,) = request_runs(env, ["thr.loops"])
    row = finished(env, [run_id], timeout=20)[run_id]
    assert row["status"] == "timed_out"
    assert "TimedOut was raised in it" in row["exception"]
    assert "time.sleep(0.05)" in row["traceback"]  # the stack it was in
    assert row["output"] == "looping\n"
    assert 1 <= row["duration"] < 2
    # Its thread stopped: the slot is free, and the job runs again at the next request.
    (again,) = request_runs(env, ["thr.loops"])
    assert finished(env, [again], timeout=20)[again]["status"] == "timed_out"
    assert proc.stop() == 0
    assert "Traceback" not in proc.log().replace("Traceback (most recent call last)", "")


def test_a_thread_blocked_in_c_is_recorded_timed_out_and_keeps_its_slot(
    scheduler_env: SchedulerEnv,
) -> None:
    """Thread mode cannot stop a call blocked in C: the run is recorded timed out at the
    limit, and its max_instances slot stays taken until the call returns; what the job
    did after the limit is not recorded (its end never comes: TimedOut ends it then)."""
    env = scheduler_env
    proc = env.start(ISOLATED)
    started = time.monotonic()
    (first,) = request_runs(env, ["thr.blocked"])
    row = finished(env, [first], timeout=20)[first]
    recorded_after = time.monotonic() - started
    assert row["status"] == "timed_out" and recorded_after < 3.5
    assert "time.sleep(4)" in row["traceback"]
    (second,) = request_runs(env, ["thr.blocked"])
    # The second waits for the slot: it starts only once the first call returned.
    second_row = finished(env, [second], timeout=30)[second]
    assert second_row["started_at"] >= row["started_at"] + timedelta(seconds=3.9)
    assert proc.stop() == 0
    assert not [m for m in env.marks() if m.startswith("end thr.blocked")]


def test_runjob_stops_a_job_at_its_timeout_and_says_so(scheduler_env: SchedulerEnv) -> None:
    """runjob runs the job as the scheduler would: in a child, stopped at its timeout."""
    env = scheduler_env
    started = time.monotonic()
    result = env.manage("runjob", "iso.sleeps", modules=ISOLATED, timeout=60)
    assert time.monotonic() - started < 20
    assert result.returncode == 1
    assert "Job 'iso.sleeps' timed out after" in result.stderr
    (row,) = env.runs("iso.sleeps")
    assert row["status"] == "timed_out" and row["trigger"] == "manual"
    assert "time.sleep(3600)" in row["traceback"]
    (pid,) = child_pids(env, "iso.sleeps")
    assert not alive(pid)
