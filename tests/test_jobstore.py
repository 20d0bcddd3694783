"""scheduler/jobstore.py: the job store, in process, on the test database."""

from __future__ import annotations

import json
import logging
import pickle
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_apscheduler.models import DjangoJob

import tests.jobs
from scheduler import claims
from scheduler.jobstore import JobStore
from scheduler.models import JobRun
from scheduler.service import make_parts
from scheduler.sync import sync
from tests.helpers import SECOND, spec, specs_of, stored_next

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


@pytest.mark.django_db(transaction=True)
def test_the_active_store_wakes_the_main_loop_early_to_claim_off_the_fire_times_path() -> None:
    parts = make_parts()
    store, executor, scheduler = parts.store, parts.executor, parts.scheduler
    store.specs = specs_of(spec("t.a"), spec("t.b"))
    store.start(scheduler, "default")
    executor.start(scheduler, "default")
    sync(scheduler, store, store.specs)
    # Not active (no lease): the table's next run time, no early wake.
    at = store._next_run_time()
    assert at is not None and store.get_next_run_time() == at
    store.activate()
    try:
        # Active: woken CLAIM_LEAD early, the next fire times are claimed in one statement
        # with nothing due yet; then the main loop sleeps until the fire time.
        assert store.get_next_run_time() == at - claims.CLAIM_LEAD
        with CaptureQueriesContext(connection) as queries:
            assert store.get_due_jobs(at - claims.CLAIM_LEAD) == []
        assert len(queries) == 1 and "INSERT" in queries[0]["sql"]
        assert store.get_next_run_time() == at
        claimed = JobRun.objects.filter(status="running", scheduled_at=at)
        assert sorted(claimed.values_list("job_id", flat=True)) == ["t.a", "t.b"]
        # At the fire time: handed over without a statement.
        with CaptureQueriesContext(connection) as queries:
            due = store.get_due_jobs(at)
        assert sorted(job.id for job in due) == ["t.a", "t.b"] and len(queries) == 0
        assert executor.book.get("t.a") is not None
        executor.book.release("test over")
    finally:
        store.deactivate()
        executor.shutdown(wait=True)
