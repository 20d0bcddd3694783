"""scheduler/sync.py: the code registry into the job store and the catalog, in process, on
the test database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django_apscheduler.models import DjangoJob

import tests.jobs
from scheduler.jobstore import JobStore
from scheduler.models import Job, JobRun
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
