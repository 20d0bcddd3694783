"""The runner, the job store and the start-up sync, in process, on the test database.

Tests where worker threads touch the database use ``transactional_db``: each
thread has its own connection, as in the scheduler.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import sys
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from apscheduler.job import Job as APSJob
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_apscheduler.models import DjangoJob

import tests.jobs
from scheduler import claims, results, runner
from scheduler.crontab import CronTrigger
from scheduler.jobstore import JobStore
from scheduler.models import Job, JobRun
from scheduler.registry import JobSpec
from scheduler.sync import sync

T0 = datetime(2030, 5, 1, 12, 0, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)


class CustomError(Exception):
    pass


def row(run: JobRun) -> JobRun:
    return JobRun.objects.get(pk=run.pk)


def claimed(job_id: str = "t.job", at: datetime = T0) -> JobRun:
    run = runner.claim(job_id, "A job", at)
    assert run is not None
    return run


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
    assert runner.Executor._coalesced_times(job, run_times) == expected


def test_coalesced_times_match_what_apscheduler_folds_away() -> None:
    """APScheduler computes all due times and passes only the last when coalescing:
    the folded ones are exactly the others."""
    for trigger in (EVERY_SECOND, EVERY_FIVE):
        job = aps_job(trigger, T0)
        due = job._get_run_times(T0 + 42 * SECOND)
        assert len(due) > 2
        assert runner.Executor._coalesced_times(job, due[-1:]) == due[:-1]


def test_no_coalesced_times_without_coalesce() -> None:
    job = aps_job(EVERY_SECOND, T0, coalesce=False)
    due = job._get_run_times(T0 + 3 * SECOND)
    assert runner.Executor._coalesced_times(job, due) == []


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


# -- sync: code registry -> job store and catalog --------------------------------------------------


@pytest.fixture
def store() -> JobStore:
    scheduler = BackgroundScheduler(timezone="UTC")
    store = JobStore()
    store.start(scheduler, "default")
    store.test_scheduler = scheduler
    return store


def spec(job_id: str, **changes) -> JobSpec:
    base = JobSpec(
        id=job_id,
        name=f"Job {job_id}",
        func=tests.jobs.hourly,
        kind="cron",
        schedule={"second": "*/10"},
        timezone="UTC",
    )
    return replace(base, **changes)


def specs_of(*items: JobSpec) -> dict[str, JobSpec]:
    return {item.id: item for item in items}


def stored_next(job_id: str) -> datetime | None:
    return DjangoJob.objects.get(id=job_id).next_run_time


@pytest.mark.django_db
def test_sync_adds_new_jobs_to_store_and_catalog(store: JobStore) -> None:
    cron_spec = spec("t.cron")
    interval_spec = spec("t.interval", kind="interval", schedule={"minutes": 5})
    before = datetime.now(UTC)
    report = sync(store.test_scheduler, store, specs_of(cron_spec, interval_spec))

    assert sorted(report.added) == ["t.cron", "t.interval"]
    assert (report.updated, report.removed, report.unchanged) == ([], [], 0)
    assert store.stored_ids() == {"t.cron", "t.interval"}
    catalog = {row.id: row for row in Job.objects.all()}
    assert catalog["t.cron"].schedule == "second=*/10"
    assert catalog["t.cron"].fingerprint == cron_spec.fingerprint
    assert catalog["t.cron"].func == "tests.jobs:hourly"
    assert (catalog["t.cron"].paused, catalog["t.cron"].enabled) == (False, True)
    next_cron = stored_next("t.cron")
    assert before < next_cron <= before + 10 * SECOND and next_cron.second % 10 == 0
    assert before < stored_next("t.interval") <= datetime.now(UTC) + timedelta(minutes=5)
    # The stored job loads back as APScheduler's job for the same function.
    loaded = store.lookup_job("t.cron")
    assert loaded.func is tests.jobs.hourly and loaded.coalesce is True


@pytest.mark.django_db
def test_sync_again_keeps_unchanged_jobs_and_their_next_run_time(store: JobStore) -> None:
    specs = specs_of(spec("t.cron"), spec("t.interval", kind="interval", schedule={"hours": 1}))
    sync(store.test_scheduler, store, specs)
    # As if the scheduler had been running: the stored next run times moved on.
    moved = datetime(2029, 1, 1, 0, 0, 10, tzinfo=UTC)
    DjangoJob.objects.update(next_run_time=moved)
    states = dict(DjangoJob.objects.values_list("id", "job_state"))

    report = sync(store.test_scheduler, store, specs)
    assert (report.added, report.updated, report.removed) == ([], [], [])
    assert report.unchanged == 2
    assert {stored_next(job_id) for job_id in specs} == {moved}
    assert dict(DjangoJob.objects.values_list("id", "job_state")) == states


@pytest.mark.django_db
def test_sync_replaces_a_job_whose_schedule_changed(store: JobStore) -> None:
    sync(store.test_scheduler, store, specs_of(spec("t.cron"), spec("t.other")))
    moved = datetime(2029, 1, 1, 0, 0, 10, tzinfo=UTC)
    DjangoJob.objects.update(next_run_time=moved)

    changed = spec("t.cron", schedule={"second": "*/7"})
    report = sync(store.test_scheduler, store, specs_of(changed, spec("t.other")))
    assert report.updated == ["t.cron"] and report.unchanged == 1
    assert stored_next("t.other") == moved  # untouched
    new_next = stored_next("t.cron")
    assert new_next != moved and new_next.second % 7 == 0
    assert "second='*/7'" in str(store.lookup_job("t.cron").trigger)
    catalog = Job.objects.get(id="t.cron")
    assert (catalog.schedule, catalog.fingerprint) == ("second=*/7", changed.fingerprint)


@pytest.mark.django_db
def test_sync_keeps_a_paused_job_paused_when_it_is_replaced(store: JobStore) -> None:
    sync(store.test_scheduler, store, specs_of(spec("t.cron")))
    Job.objects.filter(id="t.cron").update(paused=True)
    report = sync(store.test_scheduler, store, specs_of(spec("t.cron", schedule={"second": "5"})))
    assert report.updated == ["t.cron"]
    assert stored_next("t.cron") is None
    assert Job.objects.get(id="t.cron").paused is True


@pytest.mark.django_db
def test_sync_removes_a_job_gone_from_code_but_keeps_its_history(store: JobStore) -> None:
    sync(store.test_scheduler, store, specs_of(spec("t.keep"), spec("t.gone")))
    JobRun.objects.create(job_id="t.gone", status="succeeded", trigger="schedule", scheduled_at=T0)

    report = sync(store.test_scheduler, store, specs_of(spec("t.keep")))
    assert report.removed == ["t.gone"] and report.unchanged == 1
    assert store.stored_ids() == {"t.keep"}
    assert list(Job.objects.values_list("id", flat=True)) == ["t.keep"]
    assert JobRun.objects.filter(job_id="t.gone").count() == 1


@pytest.mark.django_db
def test_sync_catalogs_a_disabled_job_without_scheduling_it(store: JobStore) -> None:
    sync(store.test_scheduler, store, specs_of(spec("t.cron")))
    report = sync(store.test_scheduler, store, specs_of(spec("t.cron", enabled=False)))
    assert report.updated == ["t.cron"]
    assert store.stored_ids() == set()
    assert Job.objects.get(id="t.cron").enabled is False
    # Enabled again: back in the store.
    sync(store.test_scheduler, store, specs_of(spec("t.cron")))
    assert store.stored_ids() == {"t.cron"}


# -- the job store: stored jobs that cannot be loaded -------------------------------------------


class _Planted:
    """A pickle that creates a file when it is unpickled: what a row written by someone with
    database access could hold."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.django_db
def test_stored_rows_are_never_unpickled_and_unknown_ids_are_removed(
    store: JobStore, caplog: pytest.LogCaptureFixture, tmp_path
) -> None:
    sync(store.test_scheduler, store, specs_of(spec("t.good")))
    past = datetime.now(UTC) - timedelta(minutes=1)
    DjangoJob.objects.update(next_run_time=past)
    planted = tmp_path / "planted"
    # A declared job's state replaced by a pickle that runs code, and rows of ids the
    # code does not declare (one of them a pickle of a function elsewhere).
    DjangoJob.objects.filter(id="t.good").update(job_state=pickle.dumps(_Planted(str(planted))))
    DjangoJob.objects.create(
        id="t.planted", next_run_time=past, job_state=pickle.dumps(_Planted(str(planted)))
    )
    DjangoJob.objects.create(id="t.garbage", next_run_time=past, job_state=b"not a pickle")

    with caplog.at_level(logging.ERROR, logger="scheduler.jobstore"):
        due = store.get_due_jobs(datetime.now(UTC))
    assert not planted.exists()
    # The declared job runs as the code declares it, at the stored next run time.
    assert [job.id for job in due] == ["t.good"]
    assert due[0].func is tests.jobs.hourly and due[0].next_run_time == past
    assert store.stored_ids() == {"t.good"}
    messages = [r.getMessage() for r in caplog.records if r.name == "scheduler.jobstore"]
    for job_id in ("t.planted", "t.garbage"):
        assert any(f"Stored job {job_id!r} is not declared" in m for m in messages), messages

    # lookup_job and get_all_jobs take the same care.
    DjangoJob.objects.create(id="t.planted", next_run_time=past, job_state=b"\x80garbage")
    assert store.lookup_job("t.planted") is None
    DjangoJob.objects.create(id="t.garbage2", next_run_time=None, job_state=b"garbage")
    assert [job.id for job in store.get_all_jobs()] == ["t.good"]
    assert store.stored_ids() == {"t.good"}
    store.activate()
    try:
        DjangoJob.objects.create(id="t.planted", next_run_time=past, job_state=b"x")
        store.activate()  # a new leader indexes what the table holds
        assert [job.id for job in store.get_due_jobs(datetime.now(UTC))] == ["t.good"]
        assert store.stored_ids() == {"t.good"}
    finally:
        store.deactivate()
    assert not planted.exists()
    # What the scheduler itself writes in the column is a note, not a pickle.
    state = DjangoJob.objects.get(id="t.good").job_state
    sync(store.test_scheduler, store, specs_of(spec("t.good", schedule={"second": "*/5"})))
    assert json.loads(bytes(DjangoJob.objects.get(id="t.good").job_state))["id"] == "t.good"
    assert bytes(state) != bytes(DjangoJob.objects.get(id="t.good").job_state)


@pytest.mark.django_db
def test_only_the_next_run_time_is_written_back(store: JobStore) -> None:
    sync(store.test_scheduler, store, specs_of(spec("t.a"), spec("t.b")))
    store.activate()
    states = dict(DjangoJob.objects.values_list("id", "job_state"))
    a, b = store.lookup_job("t.a"), store.lookup_job("t.b")
    first = a.next_run_time
    # What the main loop does after each run: only the next run time moves.
    a._modify(next_run_time=first + 10 * SECOND)
    store.update_job(a)
    # Anything else is the code's to say: not kept.
    b._modify(max_instances=3, next_run_time=b.next_run_time + 20 * SECOND)
    store.update_job(b)
    store.flush()
    assert stored_next("t.a") == first + 10 * SECOND
    assert dict(DjangoJob.objects.values_list("id", "job_state")) == states  # not rewritten
    store.deactivate()

    specs = specs_of(spec("t.a"), spec("t.b"))
    fresh = JobStore(specs)
    fresh.start(store.test_scheduler, "default")
    assert fresh.lookup_job("t.a").next_run_time == first + 10 * SECOND
    assert {j.id: j.next_run_time for j in fresh.get_all_jobs()}["t.a"] == first + 10 * SECOND
    due = fresh.get_due_jobs(first + 10 * SECOND)
    assert [j.id for j in due] == ["t.a"] and due[0].next_run_time == first + 10 * SECOND
    assert fresh.lookup_job("t.b").max_instances == 1
    fresh.activate()
    try:
        assert fresh.get_due_jobs(first + 9 * SECOND) == []
        (job,) = fresh.get_due_jobs(first + 10 * SECOND)
        assert (job.id, job.next_run_time) == ("t.a", first + 10 * SECOND)
        assert fresh.lookup_job("t.a").next_run_time.tzinfo is not None
    finally:
        fresh.deactivate()


# -- the main loop's claims ----------------------------------------------------------------------


def due_job(scheduler: BackgroundScheduler, job_id: str, at: datetime, **options) -> APSJob:
    return APSJob(
        scheduler,
        id=job_id,
        name=job_id,
        func=tests.jobs.nightly,
        args=(),
        kwargs={"scheduled_at": None},
        executor="default",
        misfire_grace_time=options.pop("misfire_grace_time", 60),
        coalesce=options.pop("coalesce", True),
        max_instances=options.pop("max_instances", 1),
        next_run_time=at,
        trigger=options.pop("trigger", CronTrigger(hour=3, timezone=UTC)),
    )


def started_executor(workers: int) -> tuple[BackgroundScheduler, runner.Executor]:
    """The scheduler's executor with ``workers`` threads, started as the scheduler does."""
    scheduler = BackgroundScheduler(timezone="UTC")
    executor = runner.Executor(workers)
    executor.start(scheduler, "default")
    return scheduler, executor


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
        with pytest.raises(runner.MaxInstancesReachedError):
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


@pytest.mark.django_db(transaction=True)
def test_results_written_by_the_writer_thread_are_all_there_after_it_stops() -> None:
    runs = [claimed(f"t.job{i}") for i in range(5)]
    results.start()
    try:
        assert results._thread is not None
        for run in runs:
            runner.execute(run, lambda: print("done"))
        first = row(runs[0])
    finally:
        results.stop()
    assert results._thread is None
    # Handed over, then written: a first result at once, the ones after it together.
    for run in runs:
        stored = row(run)
        assert (stored.status, stored.output) == ("succeeded", "done\n")
        assert stored.duration is not None and stored.finished_at >= stored.started_at
    assert first.status in ("running", "succeeded")
    # Without the writer thread a result is written before execute returns.
    late = claimed("t.late")
    runner.execute(late, lambda: None)
    assert row(late).status == "succeeded"


@pytest.mark.django_db
def test_the_active_store_reads_a_job_only_when_it_is_needed(store: JobStore) -> None:
    sync(store.test_scheduler, store, specs_of(spec("t.due"), spec("t.later"), spec("t.gone")))
    past = datetime.now(UTC) - timedelta(minutes=1)
    DjangoJob.objects.filter(id="t.due").update(next_run_time=past)
    store.activate()
    try:
        # Only ids and next run times are read at take-over; jobs are built when needed.
        assert set(store._view.index.jobs.values()) == {None}
        with CaptureQueriesContext(connection) as queries:
            due = store.get_due_jobs(datetime.now(UTC))
        assert [job.id for job in due] == ["t.due"] and len(queries) == 0
        assert store._view.index.jobs["t.later"] is None
        assert sorted(job.id for job in store.get_all_jobs()) == ["t.due", "t.gone", "t.later"]
    finally:
        store.deactivate()


def test_datetimes_are_written_as_django_writes_them() -> None:
    from zoneinfo import ZoneInfo

    from scheduler import bulk

    adapt = bulk.datetime_adapter(connection)
    paris = ZoneInfo("Europe/Paris")
    values = [
        None,
        datetime(2026, 3, 29, 0, 59, 59, 999999, tzinfo=UTC),  # the hour before DST begins
        datetime(2026, 3, 29, 3, 0, 1, tzinfo=paris),
        datetime(2026, 10, 25, 2, 30, tzinfo=paris, fold=1),
        datetime(2026, 1, 1, 12, 0),  # naive: left to Django
    ]
    for value in values:
        assert adapt(value) == connection.ops.adapt_datetimefield_value(value), value


# -- sync at scale: many distinct schedules, rows written without the ORM ------------------


def distinct_specs(count: int) -> dict[str, JobSpec]:
    """``count`` jobs, every one with a schedule of its own, in every form a declaration
    takes: cron fields (some with weekdays, some in a zone with daylight saving),
    crontab strings, intervals, a paused-looking mix of options."""
    specs = {}
    for i in range(count):
        form = i % 5
        if form == 0:
            schedule = {"second": str(i % 60), "minute": str(i // 60 % 60), "hour": str(i % 24)}
            extra: dict = {}
        elif form == 1:
            schedule = {"minute": str(i % 60), "hour": str(i % 24), "day_of_week": "mon-fri"}
            extra = {"timezone": "Europe/Berlin"}
        elif form == 2:
            schedule = {"crontab": f"{i % 60} {i % 24} * * {i % 7}"}
            extra = {"timezone": "America/New_York"}
        elif form == 3:
            schedule = {"seconds": 60 + i}
            extra = {"kind": "interval"}
        else:
            schedule = {"second": str(i % 60), "minute": "*/7", "day": str(1 + i % 28)}
            extra = {"max_instances": 2, "coalesce": False, "func": tests.jobs.nightly}
        job_id = f"t.many.{i:05d}"
        specs[job_id] = spec(job_id, schedule=schedule, **extra)
    return specs


@pytest.mark.django_db
def test_a_store_of_many_distinct_schedules_restarts_with_identical_next_run_times(
    store: JobStore,
) -> None:
    specs = distinct_specs(1500)
    before = datetime.now(UTC)
    report = sync(store.test_scheduler, store, specs)
    assert len(report.added) == 1500
    first = dict(DjangoJob.objects.values_list("id", "next_run_time"))
    catalog = {row.id: row for row in Job.objects.all()}
    # Each first next run time is the trigger's own first fire time (APScheduler's
    # search, for the cron triggers the quick one stood in for).
    for job_id, job_spec in specs.items():
        trigger = job_spec.make_trigger()
        assert first[job_id] == trigger.get_next_fire_time(None, before) or (
            first[job_id] == trigger.get_next_fire_time(None, first[job_id] - SECOND)
        ), job_id
        assert catalog[job_id].fingerprint == job_spec.fingerprint

    # A restart: a new store, the same declarations (new objects), nothing rewritten.
    again = {job_id: replace(job_spec) for job_id, job_spec in specs.items()}
    restarted = JobStore(again)
    restarted.start(store.test_scheduler, "default")
    with CaptureQueriesContext(connection) as queries:
        report = sync(store.test_scheduler, restarted, again)
    assert (report.added, report.updated, report.removed, report.unchanged) == ([], [], [], 1500)
    assert not [q["sql"] for q in queries.captured_queries if q["sql"].startswith("INSERT")]
    assert dict(DjangoJob.objects.values_list("id", "next_run_time")) == first
    assert {row.id: row.synced_at for row in Job.objects.all()} == {
        job_id: row.synced_at for job_id, row in catalog.items()
    }
    restarted.activate()
    try:
        for job_id in list(specs)[::97]:
            assert restarted.lookup_job(job_id).next_run_time == first[job_id]
        assert len(restarted.get_all_jobs()) == 1500
    finally:
        restarted.deactivate()


@pytest.mark.django_db
def test_catalog_rows_hold_what_the_orm_would_write(store: JobStore) -> None:
    from scheduler.sync import catalog_values

    specs = distinct_specs(10)
    sync(store.test_scheduler, store, specs)
    for job_id, job_spec in specs.items():
        row = Job.objects.get(id=job_id)
        expected = catalog_values(job_spec, job_spec.fingerprint)
        assert {key: getattr(row, key) for key in expected} == expected
        assert (row.paused, row.pending_change) == (False, False)
    if connection.vendor == "sqlite":
        # The stored JSON text itself, as Django's JSONField writes it.
        with connection.cursor() as c:
            c.execute("SELECT id, schedule_fields, options FROM scheduler_job")
            for job_id, schedule_text, options_text in c.fetchall():
                ops = connection.ops
                assert schedule_text == ops.adapt_json_value(specs[job_id].schedule, None)
                assert options_text == ops.adapt_json_value(specs[job_id].options, None)


@pytest.mark.django_db
def test_the_job_state_note_is_json(store: JobStore) -> None:
    from scheduler.jobstore import job_state

    for job_id in ("t.plain", 'quote"and\\back', "ünïcode.☃", "{braces}"):
        note = {"scheduler": 1, "id": job_id, "note": "rebuilt from the code's @cron/@interval"}
        assert job_state(job_id) == json.dumps(note).encode()


@pytest.mark.django_db
def test_the_index_reads_the_timestamps_the_orm_reads(store: JobStore) -> None:
    """The active store's index is loaded with plain SQL: the same instants, to the
    bit, as the ORM's datetimes give."""
    sync(store.test_scheduler, store, distinct_specs(20))
    DjangoJob.objects.filter(id="t.many.00003").update(next_run_time=None)
    odd = datetime(2031, 7, 1, 12, 0, 0, 123457, tzinfo=UTC)
    DjangoJob.objects.filter(id="t.many.00004").update(next_run_time=odd)
    expected = sorted(
        (job_id, None if at is None else at.timestamp())
        for job_id, at in DjangoJob.objects.values_list("id", "next_run_time")
    )
    assert sorted(store.stored_timestamps()) == expected
    store.activate()
    try:
        assert store.lookup_job("t.many.00004").next_run_time == odd
        assert store.lookup_job("t.many.00003").next_run_time is None
    finally:
        store.deactivate()


@pytest.mark.django_db
def test_many_jobs_are_removed_in_batches(store: JobStore) -> None:
    store.put_times([(f"t.gone.{i:04d}", T0) for i in range(1200)])
    assert len(store.stored_ids()) == 1200
    report = sync(store.test_scheduler, store, specs_of(spec("t.kept")))
    assert len(report.removed) == 1200
    assert store.stored_ids() == {"t.kept"}
