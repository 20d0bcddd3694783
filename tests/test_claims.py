"""scheduler/claims.py: the fence of a fire time, and the main loop's claims (claim-ahead
included), in process, on the test database.

Tests where worker threads touch the database use ``transactional_db``: each
thread has its own connection, as in the scheduler.
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime, timedelta

import pytest
from apscheduler.executors.base import MaxInstancesReachedError
from apscheduler.job import Job as APSJob
from apscheduler.triggers.interval import IntervalTrigger
from django.db import connection
from django.test.utils import CaptureQueriesContext

import tests.jobs
from scheduler import claims
from scheduler.models import JobRun
from tests.helpers import SECOND, T0, due_job, row, runner, started_executor

# -- claim: the fence -------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_claim_inserts_a_running_row_and_fences_the_fire_time() -> None:
    run = runner.claim("t.job", "A job", T0)
    assert run is not None
    stored = row(run)
    assert (stored.status, stored.trigger) == ("running", "schedule")
    assert (stored.job_id, stored.job_name, stored.scheduled_at) == ("t.job", "A job", T0)
    assert stored.started_at is not None and stored.pid == os.getpid() and stored.hostname

    assert runner.claim("t.job", "A job", T0) is None
    assert JobRun.objects.filter(job_id="t.job", scheduled_at=T0).count() == 1
    # Another fire time, another job, or a manual run at the same time are not fenced.
    assert runner.claim("t.job", "A job", T0 + SECOND) is not None
    assert runner.claim("t.other", "Other", T0) is not None
    JobRun.objects.create(
        job_id="t.job", status="queued", trigger="manual", scheduled_at=T0, requested_by="me"
    )
    assert JobRun.objects.filter(job_id="t.job", scheduled_at=T0).count() == 2


@pytest.mark.django_db(transaction=True)
def test_claim_from_many_threads_at_once_has_one_winner() -> None:
    barrier = threading.Barrier(8)
    results: list[JobRun | None] = []
    lock = threading.Lock()

    def contender() -> None:
        try:
            barrier.wait()
            result = runner.claim("t.race", "Race", T0)
            with lock:
                results.append(result)
        finally:
            connection.close()

    threads = [threading.Thread(target=contender) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 8
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert list(JobRun.objects.filter(job_id="t.race").values_list("pk", flat=True)) == [
        winners[0].pk
    ]


# -- the main loop's claims ----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_every_due_run_is_claimed_in_one_statement_before_any_worker_starts() -> None:
    """Whatever the free workers: a fire time that only a worker claimed could be lost
    with the process once the store had moved its job on."""
    tests.jobs.CALLS.clear()
    scheduler, executor = started_executor(2)
    now = datetime.now(UTC)
    at = now.replace(microsecond=0)
    jobs = [due_job(scheduler, f"t.due{i}", at) for i in range(3)]
    late = due_job(scheduler, "t.late", at - timedelta(minutes=5))
    try:
        with CaptureQueriesContext(connection) as queries:
            executor.book.claim_due([*jobs, late], now)
        assert len(queries) == 1
        claimed_ids = set(JobRun.objects.filter(status="running").values_list("job_id", flat=True))
        assert claimed_ids == {"t.due0", "t.due1", "t.due2"}

        for job in [*jobs, late]:
            executor.submit_job(job, [job.next_run_time])
        executor.shutdown(wait=True)
    finally:
        executor.shutdown(wait=False)

    runs = {r.job_id: r for r in JobRun.objects.all()}
    assert set(runs) == {"t.due0", "t.due1", "t.due2", "t.late"}
    for job_id in ("t.due0", "t.due1", "t.due2"):
        assert runs[job_id].status == "succeeded", runs[job_id].exception
        assert runs[job_id].scheduled_at == at
        # started_at is the real start, not the claim: never before the claim, never after the end.
        assert runs[job_id].started_at <= runs[job_id].finished_at
    # Late beyond the grace time: not claimed, recorded missed as it is submitted.
    assert runs["t.late"].status == "missed"
    assert len(tests.jobs.CALLS) == 3  # each due job ran once


@pytest.mark.django_db(transaction=True)
def test_a_backlog_without_coalesce_is_claimed_whole_before_it_runs() -> None:
    """coalesce=False after downtime: every fire time of the backlog has its row before
    the first one runs, so that a kill -9 during the backlog leaves rows, not gaps."""
    tests.jobs.CALLS.clear()
    scheduler, executor = started_executor(2)
    now = datetime.now(UTC)
    first = now.replace(microsecond=0) - 3 * SECOND
    every = IntervalTrigger(seconds=1, start_date=first, timezone=UTC)
    backlog = due_job(scheduler, "t.backlog", first, coalesce=False, trigger=every)
    try:
        executor.book.claim_due([backlog], now)
        times = backlog._get_run_times(now)
        assert len(times) >= 4
        claimed_rows = JobRun.objects.filter(job_id="t.backlog", status="running")
        assert sorted(claimed_rows.values_list("scheduled_at", flat=True)) == times
        executor.submit_job(backlog, times)
        executor.shutdown(wait=True)
    finally:
        executor.shutdown(wait=False)
    rows = JobRun.objects.filter(job_id="t.backlog").order_by("scheduled_at")
    assert [(r.scheduled_at, r.status) for r in rows] == [(at, "succeeded") for at in times]
    assert len(tests.jobs.CALLS) == len(times)


@pytest.mark.django_db(transaction=True)
def test_a_claimed_run_that_cannot_start_ends_in_a_final_status() -> None:
    scheduler, executor = started_executor(2)
    now = datetime.now(UTC)
    at = now.replace(microsecond=0)
    full = due_job(scheduler, "t.full", at)
    left = due_job(scheduler, "t.left", at)
    try:
        executor.book.claim_due([full, left], now)
        # t.full reaches max_instances after its claim (a run started meanwhile).
        executor._instances["t.full"] = 1
        with pytest.raises(MaxInstancesReachedError):
            executor.submit_job(full, [at])
        # t.left is never submitted: the next pass finds its claim and closes it.
        executor.book.claim_due([], now + SECOND)
    finally:
        executor.shutdown(wait=True)

    runs = {r.job_id: r for r in JobRun.objects.all()}
    assert runs["t.full"].status == "skipped"
    assert "max_instances" in runs["t.full"].exception
    assert runs["t.left"].status == "missed"
    assert "did not start it" in runs["t.left"].exception
    assert not JobRun.objects.filter(status="running").exists()


@pytest.mark.django_db(transaction=True)
def test_the_fire_times_of_the_next_moment_are_claimed_with_the_due_ones() -> None:
    tests.jobs.CALLS.clear()
    scheduler, executor = started_executor(4)
    now = datetime.now(UTC)
    due = due_job(scheduler, "t.now", now - timedelta(milliseconds=5))
    soon = [
        due_job(scheduler, f"t.soon{i}", now + timedelta(milliseconds=20 * (i + 1)))
        for i in range(4)
    ]
    later = due_job(scheduler, "t.later", now + claims.CLAIM_AHEAD + SECOND)
    asked = []

    def upcoming(after: datetime, until: datetime) -> list[APSJob]:
        asked.append((after, until))
        return [job for job in [*soon, later] if after < job.next_run_time <= until]

    try:
        with CaptureQueriesContext(connection) as queries:
            executor.book.claim_due([due], now, upcoming)
        assert asked == [(now, now + claims.CLAIM_AHEAD)]
        # One statement for the due run and the next ones, up to the 4 free workers.
        assert len(queries) == 1
        claimed_now = JobRun.objects.filter(status="running")
        assert set(claimed_now.values_list("job_id", flat=True)) == {
            "t.now",
            "t.soon0",
            "t.soon1",
            "t.soon2",
        }
        # Claimed ahead: the planned start stands in for the real one until it is known.
        ahead = JobRun.objects.get(job_id="t.soon0")
        assert ahead.started_at == ahead.scheduled_at == soon[0].next_run_time

        # Their turn: no statement at all for claims already made.
        executor.submit_job(due, [due.next_run_time])
        with CaptureQueriesContext(connection) as queries:
            executor.book.claim_due(soon[:3], soon[2].next_run_time, upcoming)
        assert len(queries) == 0
        for job in soon[:3]:
            executor.submit_job(job, [job.next_run_time])
        executor.shutdown(wait=True)
    finally:
        executor.shutdown(wait=False)

    runs = {r.job_id: r for r in JobRun.objects.all()}
    assert set(runs) == {"t.now", "t.soon0", "t.soon1", "t.soon2"}
    for run in runs.values():
        assert run.status == "succeeded", run.exception
        # The real start (here before the fire time: the test submits early), not the plan.
        assert run.started_at != run.scheduled_at and run.started_at <= run.finished_at
    assert len(tests.jobs.CALLS) == 4


@pytest.mark.django_db(transaction=True)
def test_a_fire_time_claimed_ahead_that_does_not_come_is_given_back() -> None:
    scheduler, executor = started_executor(8)
    now = datetime.now(UTC)
    ms = timedelta(milliseconds=1)
    due = due_job(scheduler, "t.now", now)
    paused = due_job(scheduler, "t.paused", now + 10 * ms)
    earlier = due_job(scheduler, "t.earlier", now + 40 * ms)
    kept = due_job(scheduler, "t.kept", now + 30 * ms)
    future = due_job(scheduler, "t.future", now + 80 * ms)
    try:
        executor.book.claim_due([due], now, lambda after, until: [paused, earlier, kept, future])
        executor.submit_job(due, [due.next_run_time])
        # (t.now's worker may have finished it already: only the claims ahead are sure
        # to be running.)
        assert JobRun.objects.count() == 5
        ahead = JobRun.objects.exclude(job_id="t.now")
        assert set(ahead.values_list("status", flat=True)) == {"running"}

        # Meanwhile t.paused was paused (it is no longer due at its time), and
        # t.earlier was rescheduled to an earlier time, due now.
        earlier.next_run_time = now + 20 * ms
        executor.book.claim_due([earlier], now + 20 * ms)
        # Their claims are given back: the fire times they were made for never came.
        # t.earlier's new time is claimed in their stead.
        assert sorted(JobRun.objects.values_list("job_id", "scheduled_at")) == sorted(
            [
                ("t.now", due.next_run_time),
                ("t.earlier", now + 20 * ms),
                ("t.kept", kept.next_run_time),
                ("t.future", future.next_run_time),
            ]
        )
        executor.submit_job(earlier, [earlier.next_run_time])
        executor.book.claim_due([kept], now + 30 * ms)
        executor.submit_job(kept, [kept.next_run_time])
        # The scheduler stops before t.future's time: it did not run, and was not due.
        executor.shutdown(wait=True)
    finally:
        executor.shutdown(wait=False)

    runs = {r.job_id: r for r in JobRun.objects.all()}
    assert set(runs) == {"t.now", "t.earlier", "t.kept"}
    assert {r.status for r in runs.values()} == {"succeeded"}


# -- waking early to claim (CLAIM_LEAD) -------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_main_loop_wakes_early_to_claim_so_the_fire_time_writes_nothing() -> None:
    tests.jobs.CALLS.clear()
    scheduler, executor = started_executor(4)
    book = executor.book
    now = datetime.now(UTC)
    ms = timedelta(milliseconds=1)
    first = due_job(scheduler, "t.first", now + 30 * ms)
    second = due_job(scheduler, "t.second", now + 60 * ms)
    far = due_job(scheduler, "t.far", now + claims.CLAIM_AHEAD + 40 * ms)
    at = first.next_run_time

    def upcoming(after: datetime, until: datetime) -> list[APSJob]:
        return [job for job in [first, second, far] if after < job.next_run_time <= until]

    try:
        # Nothing claimed yet: wake CLAIM_LEAD before the fire time.
        assert book.wake_time(at) == at - claims.CLAIM_LEAD
        # Woken then, nothing due: one statement claims what falls due within CLAIM_AHEAD.
        woke = at - claims.CLAIM_LEAD
        with CaptureQueriesContext(connection) as queries:
            book.claim_soon(at, woke, upcoming)
        assert len(queries) == 1
        assert set(JobRun.objects.values_list("job_id", flat=True)) == {"t.first", "t.second"}
        # Then sleep until the fire time itself, and claim nothing more on the way there
        # (the loop wakes a little early when its previous round took time).
        assert book.wake_time(at) == at
        assert book.wake_time(second.next_run_time) == second.next_run_time
        with CaptureQueriesContext(connection) as queries:
            book.claim_soon(at, at - ms, upcoming)
            book.claim_due([first], at, upcoming)
        assert len(queries) == 0
        executor.submit_job(first, [at])
        executor.shutdown(wait=True)
    finally:
        executor.shutdown(wait=False)
    assert row(JobRun.objects.get(job_id="t.first")).status == "succeeded"
    assert len(tests.jobs.CALLS) == 1


@pytest.mark.django_db(transaction=True)
def test_an_early_wake_that_can_claim_nothing_is_not_repeated() -> None:
    scheduler, executor = started_executor(2)
    book = executor.book
    now = datetime.now(UTC)
    job = due_job(scheduler, "t.busy", now + timedelta(milliseconds=30))
    at = job.next_run_time
    executor._instances["t.busy"] = 1  # max_instances reached: no claim ahead for it
    try:
        with CaptureQueriesContext(connection) as queries:
            book.claim_soon(at, at - claims.CLAIM_LEAD, lambda after, until: [job])
        assert len(queries) == 0
        # The next wake is the fire time itself, not the same early moment again and again.
        assert book.wake_time(at) == at
        # Woken for something else, long before the next fire time: nothing is claimed,
        # and the early wake for the next one still comes.
        later = at + SECOND
        job.next_run_time = later
        book.claim_soon(later, now, lambda after, until: [job])
        assert book.wake_time(later) == later - claims.CLAIM_LEAD
    finally:
        executor.shutdown(wait=True)
    assert not JobRun.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_claimed_fire_time_of_a_busy_job_with_overlap_queue_waits_in_the_queue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The claim made ahead turns ``queued`` (kept as the fire time's one row), and the
    fire time after it, while one waits already, is skipped."""
    from scheduler.registry import registry
    from tests.helpers import spec

    monkeypatch.setitem(registry, "t.queue", spec("t.queue", overlap="queue"))
    scheduler, executor = started_executor(2)
    now = datetime.now(UTC)
    at = now.replace(microsecond=0)
    try:
        job = due_job(scheduler, "t.queue", at)
        executor.book.claim_due([job], now)
        (claim,) = JobRun.objects.filter(job_id="t.queue")
        assert claim.status == "running"
        assert executor.reserve("t.queue", 1)  # a run of the job is going

        executor.submit_job(job, [at])  # no MaxInstancesReachedError: it waits

        claim.refresh_from_db()
        assert (claim.status, claim.instance, claim.started_at) == ("queued", "", None)
        assert executor.book.get("t.queue") is None  # the book holds nothing of it
        later = due_job(scheduler, "t.queue", at + SECOND)
        with pytest.raises(MaxInstancesReachedError):
            executor.submit_job(later, [at + SECOND])
    finally:
        executor.shutdown(wait=False)
    executor.runner.results.stop()
    rows = {row.scheduled_at: row for row in JobRun.objects.filter(job_id="t.queue")}
    assert rows[at].status == "queued"
    assert rows[at + SECOND].status == "skipped"
    assert "waits for its next free slot already" in rows[at + SECOND].exception
