"""Retries (scheduler/retries.py) with a real ``runapscheduler``: each attempt its own row,
linked to the first, its wait the job's backoff; a pending attempt lives in the database,
so it survives a kill -9 and runs once however many schedulers there are."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.proc.harness import STARTED_LINE, SchedulerEnv, wait_for
from tests.test_robustness import finished, request_runs

pytestmark = pytest.mark.integration

RETRYING = "tests.proc.retrying"
FAST = {"POLL_INTERVAL": 0.1}
FINAL = ("succeeded", "failed", "timed_out", "interrupted", "missed", "skipped")


def attempts(env: SchedulerEnv, job_id: str) -> list[dict[str, Any]]:
    return sorted(env.runs(job_id), key=lambda row: row["attempt"])


def all_final(env: SchedulerEnv, job_id: str, count: int, timeout: float = 30) -> list[dict]:
    def done() -> list[dict[str, Any]] | None:
        rows = attempts(env, job_id)
        if len(rows) == count and all(row["status"] in FINAL for row in rows):
            return rows
        return None

    return wait_for(done, timeout, f"{count} final attempts of {job_id}", interval=0.1)


def starts(env: SchedulerEnv, job_id: str) -> int:
    return sum(mark.startswith(f"start {job_id} ") for mark in env.marks())


def test_a_job_that_fails_twice_then_succeeds_leaves_three_linked_attempts(
    scheduler_env: SchedulerEnv,
) -> None:
    """retries=3, backoff 1 s doubling, no jitter: attempts 1 and 2 fail, 3 succeeds;
    the waits between them are 1 s and 2 s."""
    env = scheduler_env
    proc = env.start(RETRYING, **FAST)
    (first_id,) = request_runs(env, ["retry.flaky"])
    rows = all_final(env, "retry.flaky", 3)
    time.sleep(1.5)  # nothing more comes
    assert len(env.runs("retry.flaky")) == 3
    assert proc.stop() == 0

    assert [row["attempt"] for row in rows] == [1, 2, 3]
    assert [row["status"] for row in rows] == ["failed", "failed", "succeeded"]
    assert [row["id"] for row in rows][0] == first_id
    assert [row["retry_of"] for row in rows] == [None, first_id, first_id]
    assert [row["trigger"] for row in rows] == ["manual", "retry", "retry"]
    assert rows[0]["exception"].startswith("ConnectionError: the partner API blinked (1)")
    assert "Attempt 1 of 4: tried again at" in rows[0]["exception"]
    assert rows[2]["output"] == "attempt 3\n"
    for before, after, wait in ((rows[0], rows[1], 1.0), (rows[1], rows[2], 2.0)):
        gap = (after["started_at"] - before["finished_at"]).total_seconds()
        assert wait <= gap < wait + 0.8, (before["attempt"], gap)
        # Its row says when it was due: the failure plus the wait.
        due = (after["scheduled_at"] - before["finished_at"]).total_seconds()
        assert wait <= due < wait + 0.3
    assert starts(env, "retry.flaky") == 3


def test_retries_end_with_the_last_failure_and_retry_on_filters_exceptions(
    scheduler_env: SchedulerEnv,
) -> None:
    env = scheduler_env
    proc = env.start(RETRYING, **FAST)
    request_runs(env, ["retry.always", "retry.picky"])
    always = all_final(env, "retry.always", 3)
    picky = all_final(env, "retry.picky", 1)
    time.sleep(1)
    assert len(env.runs("retry.always")) == 3 and len(env.runs("retry.picky")) == 1
    assert proc.stop() == 0

    assert [row["status"] for row in always] == ["failed"] * 3
    assert "Attempt 2 of 3" in always[1]["exception"]
    assert always[2]["exception"] == "RuntimeError: still broken"  # no attempt after it
    (only,) = picky
    assert only["exception"] == "ValueError: a bug, not a blink"
    assert starts(env, "retry.picky") == 1


def test_a_timeout_counts_as_a_failure_for_retries(scheduler_env: SchedulerEnv) -> None:
    env = scheduler_env
    proc = env.start(RETRYING, **FAST)
    request_runs(env, ["retry.hangs_once"])
    rows = all_final(env, "retry.hangs_once", 2)
    assert proc.stop() == 0
    assert [row["status"] for row in rows] == ["timed_out", "succeeded"]
    assert rows[1]["retry_of"] == rows[0]["id"]


def test_a_pending_retry_survives_a_kill_9_and_runs_once_after_the_restart(
    scheduler_env: SchedulerEnv,
) -> None:
    env = scheduler_env
    first = env.start(RETRYING, **FAST)
    (first_id,) = request_runs(env, ["retry.slow"])
    pending = wait_for(
        lambda: env.runs("retry.slow", status="queued", trigger="retry"),
        10,
        "the retry to be filed",
    )
    assert finished(env, [first_id])[first_id]["status"] == "failed"
    first.kill()  # SIGKILL, 4 s before the retry is due
    (retry,) = pending
    assert retry["attempt"] == 2 and retry["trigger"] == "retry"

    second = env.start(RETRYING, **FAST)
    rows = all_final(env, "retry.slow", 2, timeout=30)
    time.sleep(1)
    assert second.stop() == 0
    assert [row["status"] for row in rows] == ["failed", "succeeded"]
    assert rows[1]["id"] == retry["id"] and rows[1]["retry_of"] == first_id
    # Not before it was due.
    assert rows[1]["started_at"] >= retry["scheduled_at"]
    assert starts(env, "retry.slow") == 2


def test_a_pending_retry_runs_once_with_two_schedulers(scheduler_env: SchedulerEnv) -> None:
    """Both schedulers see the queued attempt; only the active one claims it, once."""
    env = scheduler_env
    one = env.start(RETRYING, **FAST)
    two = env.start(RETRYING, wait=STARTED_LINE, **FAST)
    (first_id,) = request_runs(env, ["retry.slow"])
    wait_for(
        lambda: env.runs("retry.slow", status="queued", trigger="retry"),
        10,
        "the retry to be filed",
    )
    # The active one stops before the retry is due: the standby takes over and runs it.
    assert one.stop() == 0
    rows = all_final(env, "retry.slow", 2, timeout=40)
    time.sleep(1.5)
    assert two.stop() == 0
    assert [row["status"] for row in rows] == ["failed", "succeeded"]
    assert rows[1]["pid"] == two.pid
    assert len(env.runs("retry.slow")) == 2
    assert starts(env, "retry.slow") == 2


def test_runjob_retries_in_the_foreground_and_exits_with_the_last_outcome(
    scheduler_env: SchedulerEnv,
) -> None:
    env = scheduler_env
    result = env.manage("runjob", "retry.flaky", modules=RETRYING, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "attempt 2 at" in result.stderr and "attempt 3 at" in result.stderr
    rows = attempts(env, "retry.flaky")
    assert [(row["attempt"], row["status"]) for row in rows] == [
        (1, "failed"),
        (2, "failed"),
        (3, "succeeded"),
    ]
    assert {row["retry_of"] for row in rows[1:]} == {rows[0]["id"]}

    failing = env.manage("runjob", "retry.always", modules=RETRYING, timeout=60)
    assert failing.returncode == 1
    assert "failed after" in failing.stderr and "attempt 3" in failing.stderr
    assert [row["status"] for row in attempts(env, "retry.always")] == ["failed"] * 3
