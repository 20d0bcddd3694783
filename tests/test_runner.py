"""scheduler/runner.py: the runner and the executor, in process, on the test database.

Tests where worker threads touch the database use ``transactional_db``: each
thread has its own connection, as in the scheduler.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from datetime import UTC, datetime, timedelta

import pytest
from apscheduler.job import Job as APSJob
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from django.db import connection

import tests.jobs
from scheduler.crontab import CronTrigger
from scheduler.models import JobRun
from scheduler.runner import Executor
from tests.helpers import SECOND, T0, claimed, row, runner


class CustomError(Exception):
    pass


# -- execute: outcome and output ----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_execute_records_success_with_printed_and_logged_output() -> None:
    run = claimed()

    def job() -> None:
        print("hello from the job")
        logging.getLogger("myapp.jobs").warning("careful: %d", 42)
        logging.getLogger("myapp.jobs").debug("below the root level: not kept")

    result = runner.execute(run, job)
    stored = row(run)
    assert stored.status == result.status == "succeeded"
    assert stored.output.startswith("hello from the job\n")
    assert "WARNING myapp.jobs: careful: 42\n" in stored.output
    assert "below the root level" not in stored.output
    assert stored.exception == stored.traceback == ""
    assert 0 <= stored.duration < 5
    assert stored.finished_at == stored.started_at + timedelta(seconds=stored.duration)
    assert runner.active_runs() == {}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ValueError("bad value"), "ValueError: bad value"),
        (CustomError("custom"), "tests.test_runner.CustomError: custom"),
        (SystemExit(3), "SystemExit: 3"),
    ],
    ids=["builtin", "custom", "SystemExit"],
)
def test_execute_records_failure_with_exception_and_traceback(
    error: BaseException, expected: str
) -> None:
    run = claimed()

    def job() -> None:
        print("partial work")
        raise error

    runner.execute(run, job)
    stored = row(run)
    assert stored.status == "failed"
    assert stored.exception == expected
    assert stored.traceback.startswith("Traceback (most recent call last):")
    assert "raise error" in stored.traceback
    assert stored.traceback.rstrip().endswith(expected)
    # What the job printed is kept; the scheduler's own log line about it is not.
    assert stored.output == "partial work\n"
    assert stored.duration is not None and stored.finished_at is not None


@pytest.mark.django_db(transaction=True)
def test_execute_records_the_real_outcome_of_a_run_marked_interrupted_meanwhile() -> None:
    """Another scheduler may take a live run for an orphan (it could not see this one's
    heartbeat); the run still gets the outcome it really had."""
    run = claimed()

    def job() -> None:
        runner.interrupt([run.pk], "Interrupted: the scheduler instance stopped heartbeating.")
        print("finished anyway")

    runner.execute(run, job)
    stored = row(run)
    assert (stored.status, stored.exception) == ("succeeded", "")
    assert stored.output == "finished anyway\n"


@pytest.mark.django_db(transaction=True)
def test_output_is_captured_per_thread() -> None:
    """Two jobs running at once, and the main thread printing meanwhile: each run
    keeps what its own thread printed and logged, nothing else."""
    runs = {name: claimed(f"t.{name}") for name in ("left", "right")}
    barrier = threading.Barrier(3)

    def job(name: str) -> None:
        barrier.wait()
        for i in range(50):
            print(f"{name} {i}")
            logging.getLogger("myapp").warning("%s logged %d", name, i)
            if i % 10 == 0:
                threading.Event().wait(0.001)  # let the other thread interleave

    def worker(name: str) -> None:
        try:
            runner.execute(runs[name], lambda: job(name))
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(name,)) for name in runs]
    for thread in threads:
        thread.start()
    barrier.wait()
    for i in range(50):
        print(f"main {i}")
        logging.getLogger("myapp").warning("main logged %d", i)
    for thread in threads:
        thread.join(30)

    for name, run in runs.items():
        output = row(run).output
        lines = output.splitlines()
        assert [line for line in lines if " logged " not in line] == [
            f"{name} {i}" for i in range(50)
        ]
        assert len([line for line in lines if f"WARNING myapp: {name} logged" in line]) == 50
        assert "main" not in output
        other = "right" if name == "left" else "left"
        assert other not in output


@pytest.mark.django_db(transaction=True)
def test_output_beyond_max_output_keeps_the_tail(settings) -> None:
    settings.SCHEDULER = {**settings.SCHEDULER, "MAX_OUTPUT": 100}
    text = "".join(f"line {i:04d}\n" for i in range(1000))  # 10,000 characters

    def chatty() -> None:
        for line in text.splitlines(keepends=True):
            sys.stdout.write(line)

    run = claimed()
    runner.execute(run, chatty)
    assert row(run).output == f"[… {len(text) - 100} earlier characters not kept …]\n" + text[-100:]

    # Output within the limit is kept whole, without the marker.
    run = claimed(at=T0 + SECOND)
    runner.execute(run, lambda: sys.stdout.write("x" * 100))
    assert row(run).output == "x" * 100


@pytest.mark.django_db(transaction=True)
def test_logging_of_a_project_logger_named_like_scheduler_is_captured() -> None:
    run = claimed()
    runner.execute(run, lambda: logging.getLogger("schedulerapp.reports").warning("sent"))
    assert "WARNING schedulerapp.reports: sent" in row(run).output


# -- record: missed and skipped fire times ------------------------------------------------------


@pytest.mark.django_db
def test_record_writes_one_row_per_fire_time_and_ignores_conflicts() -> None:
    times = [T0, T0 + SECOND, T0 + 2 * SECOND]
    taken = claimed(at=times[1])
    runner.did_not_run("t.job", "A job", "missed", times, "Missed: the scheduler was down.")

    rows = {r.scheduled_at: r for r in JobRun.objects.filter(job_id="t.job")}
    assert sorted(rows) == times
    assert rows[times[1]].pk == taken.pk and rows[times[1]].status == "running"
    for at in (times[0], times[2]):
        missed = rows[at]
        assert (missed.status, missed.trigger) == ("missed", "schedule")
        assert missed.exception == "Missed: the scheduler was down."
        assert missed.started_at is None and missed.finished_at is not None
        assert missed.job_name == "A job" and missed.pid == os.getpid()

    # Recording the same fire times again changes nothing and does not raise.
    runner.did_not_run("t.job", "A job", "skipped", times, "Skipped.")
    assert JobRun.objects.filter(job_id="t.job").count() == 3
    assert not JobRun.objects.filter(status="skipped").exists()


@pytest.mark.django_db
def test_record_keeps_only_the_latest_max_missed_rows(settings) -> None:
    settings.SCHEDULER = {**settings.SCHEDULER, "MAX_MISSED_ROWS": 2}
    times = [T0 + i * SECOND for i in range(5)]
    runner.did_not_run("t.job", "A job", "missed", times, "Missed: down.")
    rows = list(JobRun.objects.filter(job_id="t.job").order_by("scheduled_at"))
    assert [r.scheduled_at for r in rows] == times[-2:]
    assert rows[0].exception == (
        "Missed: down. (3 earlier fire times were missed too, not recorded one by one)"
    )


# -- coalescing ---------------------------------------------------------------------------------


def aps_job(trigger, next_run_time: datetime, coalesce: bool = True) -> APSJob:
    return APSJob(
        BackgroundScheduler(timezone="UTC"),
        id="t.coalesce",
        name="Coalesce",
        func=tests.jobs.hourly,
        args=(),
        kwargs={},
        trigger=trigger,
        executor="default",
        misfire_grace_time=3600,
        coalesce=coalesce,
        max_instances=1,
        next_run_time=next_run_time,
    )


EVERY_SECOND = CronTrigger(second="*", timezone=UTC)
EVERY_FIVE = IntervalTrigger(seconds=5, start_date=T0, timezone=UTC)


@pytest.mark.parametrize(
    ("trigger", "run_times", "expected"),
    [
        (EVERY_SECOND, [T0 + 3 * SECOND], [T0, T0 + SECOND, T0 + 2 * SECOND]),
        (EVERY_FIVE, [T0 + 15 * SECOND], [T0, T0 + 5 * SECOND, T0 + 10 * SECOND]),
        (EVERY_SECOND, [T0], []),  # on time: nothing folded
        (EVERY_SECOND, [], []),
    ],
    ids=["cron", "interval", "on-time", "nothing-due"],
)
def test_coalesced_times_are_the_fire_times_folded_into_the_run(
    trigger, run_times: list[datetime], expected: list[datetime]
) -> None:
    job = aps_job(trigger, T0)
    assert Executor._coalesced_times(job, run_times) == expected


def test_coalesced_times_match_what_apscheduler_folds_away() -> None:
    """APScheduler computes all due times and passes only the last when coalescing:
    the folded ones are exactly the others."""
    for trigger in (EVERY_SECOND, EVERY_FIVE):
        job = aps_job(trigger, T0)
        due = job._get_run_times(T0 + 42 * SECOND)
        assert len(due) > 2
        assert Executor._coalesced_times(job, due[-1:]) == due[:-1]


def test_no_coalesced_times_without_coalesce() -> None:
    job = aps_job(EVERY_SECOND, T0, coalesce=False)
    due = job._get_run_times(T0 + 3 * SECOND)
    assert Executor._coalesced_times(job, due) == []


# -- run_scheduled and run_manual ------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_run_scheduled_runs_a_fire_time_once_and_records_late_ones_missed() -> None:
    tests.jobs.CALLS.clear()
    now = datetime.now(UTC).replace(microsecond=0)
    job = APSJob(
        BackgroundScheduler(timezone="UTC"),
        id="tests.nightly",
        name="nightly",
        func=tests.jobs.nightly,
        args=(),
        kwargs={"scheduled_at": None},
        executor="default",
        misfire_grace_time=60,
        coalesce=False,
        max_instances=1,
        next_run_time=now,
    )
    too_late = now - timedelta(minutes=5)
    runner.run_scheduled(job, [too_late, now])
    runner.run_scheduled(job, [now])  # a second scheduler on the same fire time

    runs = {r.scheduled_at: r for r in JobRun.objects.filter(job_id="tests.nightly")}
    assert runs[too_late].status == "missed"
    assert "beyond misfire_grace_time (60 s)" in runs[too_late].exception
    assert runs[now].status == "succeeded"
    assert runs[now].output == "nightly ran\n"
    # The function ran once, and got the fire time it serves.
    assert tests.jobs.CALLS == [("nightly", now)]


@pytest.mark.django_db(transaction=True)
def test_run_manual_runs_a_registered_job_and_fails_an_unknown_one() -> None:
    tests.jobs.CALLS.clear()
    at = datetime.now(UTC)
    known = JobRun.objects.create(
        job_id="tests.nightly", status="running", trigger="manual", scheduled_at=at
    )
    runner.run_manual(known)
    known = row(known)
    assert known.status == "succeeded" and known.output == "nightly ran\n"
    assert tests.jobs.CALLS == [("nightly", at)]

    unknown = JobRun.objects.create(
        job_id="t.gone", status="running", trigger="manual", scheduled_at=at
    )
    runner.run_manual(unknown)
    unknown = row(unknown)
    assert unknown.status == "failed"
    assert unknown.exception == "Job 't.gone' is not registered in this scheduler's code."
    assert unknown.finished_at is not None


@pytest.mark.django_db(transaction=True)
def test_a_fire_time_that_waited_its_turn_beyond_the_grace_time_is_missed() -> None:
    """A fire time queued by overlap="queue" is still a fire time: past the job's
    misfire_grace_time (3600 s) when its turn comes, it is recorded missed, not run."""
    tests.jobs.CALLS.clear()
    now = datetime.now(UTC)
    stale, fresh = (
        JobRun.objects.create(
            job_id="tests.nightly", status="running", trigger="schedule", scheduled_at=at
        )
        for at in (now - timedelta(hours=2), now - timedelta(minutes=5))
    )
    runner.run_manual(stale)
    runner.run_manual(fresh)
    stale, fresh = row(stale), row(fresh)
    assert stale.status == "missed" and "beyond misfire_grace_time (3600 s)" in stale.exception
    assert fresh.status == "succeeded"
    assert tests.jobs.CALLS == [("nightly", fresh.scheduled_at)]


@pytest.mark.django_db(transaction=True)
def test_a_failure_the_job_retries_files_its_next_attempt_first(monkeypatch) -> None:
    from dataclasses import replace

    from scheduler.registry import registry
    from scheduler.retries import Backoff
    from scheduler.runner import Runner

    monkeypatch.setitem(
        registry,
        "tests.failing",
        replace(registry["tests.failing"], retries=1, retry_backoff=Backoff(5, jitter=False)),
    )
    told: list[JobRun] = []
    worker = Runner()
    worker.queued = told.append
    first = JobRun.objects.create(
        job_id="tests.failing", status="running", trigger="manual", scheduled_at=datetime.now(UTC)
    )
    worker.run_manual(first)
    first = row(first)
    assert first.status == "failed"
    assert "(Attempt 1 of 2: tried again at" in first.exception
    (retry,) = told
    retry = row(retry)
    assert (retry.status, retry.trigger, retry.attempt, retry.retry_of) == (
        "queued",
        "retry",
        2,
        first.pk,
    )
    waited = (retry.scheduled_at - first.finished_at).total_seconds()
    assert 5 <= waited < 5.5
    # The last attempt files none.
    JobRun.objects.filter(pk=retry.pk).update(status="running")
    worker.run_manual(retry)
    assert row(retry).status == "failed" and len(told) == 1
    assert row(retry).exception == "RuntimeError: boom <b>bold</b>"
