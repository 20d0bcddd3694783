"""scheduler/sync.py: the code registry into the job store and the catalog, in process, on
the test database."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_apscheduler.models import DjangoJob

import tests.jobs
from scheduler.jobstore import JobStore
from scheduler.models import Job, JobRun
from scheduler.registry import JobSpec
from scheduler.sync import sync
from tests.helpers import SECOND, T0, spec, specs_of, stored_next


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
