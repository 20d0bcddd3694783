"""Every declaration the registry accepts renders everywhere: the catalog, the admin, --list.

The catalog keeps each schedule's fields as declared (``Job.schedule_fields``):
the admin words a schedule and rebuilds its trigger from them, never from the
display text, which cannot be split back into fields ("minute=1, 2").
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.contrib.admin.utils import quote
from django.db import connection
from django.test import Client
from django.utils.html import escape, strip_tags
from django_apscheduler.models import DjangoJob

from scheduler import describe
from scheduler import registry as registry_module
from scheduler.models import Job
from scheduler.registry import JobSpec, cron, interval
from scheduler.service import make_scheduler
from scheduler.sync import sync
from tests import schedule_cases
from tests.proc.harness import PRUNE, SchedulerEnv
from tests.proc.pg import PgSchedulerEnv, postgres_server

pytestmark = pytest.mark.django_db

JOBS_URL = "/admin/scheduler/job/"
DASHBOARD_URL = "/admin/scheduler/dashboard/"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def registry() -> Iterator[dict[str, JobSpec]]:
    """The global registry, restored after each test."""
    saved = dict(registry_module.registry)
    yield registry_module.registry
    registry_module.registry.clear()
    registry_module.registry.update(saved)


def sync_into_catalog(specs: dict[str, JobSpec]) -> None:
    """What a scheduler start does: the specs into the catalog and the job store."""
    scheduler = make_scheduler()
    sync(scheduler, scheduler._jobstores["default"], specs)


def job_rows(client: Client) -> dict[str, dict[str, str]]:
    """The job list as {job id: {column: cell HTML}}."""
    response = client.get(JOBS_URL)
    assert response.status_code == 200
    rows = {}
    for row in re.findall(r"<tr>(.*?)</tr>", response.content.decode(), re.S):
        cells = dict(re.findall(r'<t[dh] class="field-(\w+)">(.*?)</t[dh]>', row, re.S))
        if "id" in cells:
            rows[html.unescape(strip_tags(cells["id"]))] = cells
    return rows


def job_page(client: Client, job_id: str) -> str:
    response = client.get(f"{JOBS_URL}{quote(job_id)}/change/")
    assert response.status_code == 200
    return response.content.decode()


def fire_times_shown(page: str) -> list[str]:
    """The job page's next runs, in the job's own time zone."""
    table = re.search(r'<table class="scheduler-next-runs">(.*?)</table>', page, re.S)
    return re.findall(r"<tr><td>(.*?)</td>", table.group(1)) if table else []


def dashboard(client: Client) -> str:
    response = client.get(DASHBOARD_URL)
    assert response.status_code == 200
    return response.content.decode()


def expected_fire_times(spec: JobSpec, first: datetime | None, count: int = 5) -> list[str]:
    """From the stored next run time on, by the declaration's own trigger."""
    trigger = spec.make_trigger()
    times, at = [], first
    while at is not None and len(times) < count:
        times.append(describe.when_in(at, spec.timezone))
        try:
            at = trigger.get_next_fire_time(at, at)
        except (OverflowError, ValueError):  # past the year 9999
            break
    return times


CASES = [(suffix, words) for suffix, _declare, words in schedule_cases.CASES]


@pytest.mark.parametrize(("suffix", "words"), CASES, ids=[suffix for suffix, _ in CASES])
def test_an_accepted_declaration_renders_everywhere(admin_client, registry, suffix, words):
    job_id = schedule_cases.declare(suffix)
    spec = registry[job_id]
    sync_into_catalog({job_id: spec})

    job = Job.objects.get(id=job_id)
    assert job.schedule_fields == spec.schedule
    assert job.schedule == spec.schedule_text[:255] or (
        len(spec.schedule_text) > 255 and job.schedule == spec.schedule_text[:254] + "…"
    )

    row = job_rows(admin_client)[job_id]
    shown = row["schedule_in_words"]
    if words is None:
        assert shown == escape(job.schedule)  # the raw text, where there are no words
    elif words.endswith("..."):
        assert shown.startswith(words[:-3])
    else:
        assert shown == words
    assert row["raw_schedule"] == f"<code>{escape(job.schedule)}</code> ({job.timezone})"

    page = job_page(admin_client, job_id)
    stored = DjangoJob.objects.filter(id=job_id).values_list("next_run_time", flat=True).first()
    if not spec.enabled:
        assert fire_times_shown(page) == []
        assert "Disabled in code" in page
    elif spec.jitter:
        assert len(fire_times_shown(page)) == 5
    else:
        # Rebuilt from the catalog, the trigger agrees with the declaration's own.
        assert fire_times_shown(page) == expected_fire_times(spec, stored)
        assert len(fire_times_shown(page)) == 5 or stored.year >= 9990

    board = dashboard(admin_client)
    if spec.enabled:
        assert escape(spec.name) in board  # among the upcoming runs


def test_all_accepted_declarations_together(admin_client, registry):
    schedule_cases.declare_all()
    sync_into_catalog({job_id: registry[job_id] for job_id in schedule_cases.IDS})
    assert set(job_rows(admin_client)) == set(schedule_cases.IDS)
    dashboard(admin_client)


def test_runapscheduler_lists_every_accepted_declaration(scheduler_env: SchedulerEnv):
    result = scheduler_env.manage("runapscheduler", "--list", modules="tests.schedule_cases_jobs")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = {line.split("\t")[0]: line for line in result.stdout.splitlines()}
    assert set(lines) == {*schedule_cases.IDS, PRUNE}
    assert f"\tcron: {schedule_cases.LONG_CRONTAB} (UTC)\t" in lines["cases.crontab.long"]
    assert "\tcron: minute=1, 2 (UTC)\tnext: " in lines["cases.fields.comma.space"]
    assert lines["cases.options.disabled"].endswith("\tnext: disabled")
    assert "(not yet stored)" in lines["cases.interval.longest"]


@pytest.mark.postgres
@pytest.mark.integration
def test_a_scheduler_on_postgresql_writes_every_accepted_declaration_to_the_catalog(
    tmp_path: Path, registry
):
    """PostgreSQL enforces the column's length, where SQLite does not (the 300-odd
    characters of a long crontab), and keeps JSON as jsonb."""
    schedule_cases.declare_all()
    with postgres_server() as server:
        env = PgSchedulerEnv(tmp_path, server, "schedule_cases")
        env.migrate()
        try:
            process = env.start(modules="tests.schedule_cases_jobs")
            assert process.stop() == 0, process.log()
        finally:
            env.cleanup()
        rows = env.query("SELECT id, schedule, schedule_fields FROM scheduler_job")
    catalog = {row["id"]: row for row in rows}
    assert set(catalog) == {*schedule_cases.IDS, PRUNE}
    for job_id in schedule_cases.IDS:
        row = catalog[job_id]
        assert row["schedule_fields"] == registry[job_id].schedule
        assert len(row["schedule"]) <= 255
    assert catalog["cases.crontab.long"]["schedule"].endswith("…")


def test_one_function_with_two_schedules_runs_each(admin_client, registry):
    cron("0 3 * * *", id="two.nightly", timezone="UTC")(schedule_cases.job)
    interval(minutes=5, id="two.often")(schedule_cases.job)
    before = datetime.now(UTC)
    sync_into_catalog({i: registry[i] for i in ("two.nightly", "two.often")})

    catalog = {job.id: job for job in Job.objects.filter(id__startswith="two.")}
    assert {i: (j.kind, j.schedule_fields) for i, j in catalog.items()} == {
        "two.nightly": ("cron", {"crontab": "0 3 * * *"}),
        "two.often": ("interval", {"minutes": 5}),
    }
    stored = dict(DjangoJob.objects.values_list("id", "next_run_time"))
    assert (stored["two.nightly"].hour, stored["two.nightly"].minute) == (3, 0)
    # (Triggers are shared between declarations, so the phase is that of the first one.)
    assert 0 < (stored["two.often"] - before).total_seconds() <= 300
    rows = job_rows(admin_client)
    assert rows["two.nightly"]["schedule_in_words"] == "At 03:00"
    assert rows["two.often"]["schedule_in_words"] == "every 5 min"


def test_a_row_written_before_the_fields_were_kept_renders_and_is_refreshed(admin_client, registry):
    """Migration 0005 leaves the fields empty; the admin copes, the next sync fills them.

    Code that does not know the column (a scheduler of the previous release during a
    rolling deploy, the benchmarks' seeding) still writes rows: the database fills it in.
    """
    cron(minute="1, 2", id="legacy.job")(schedule_cases.job)
    spec = registry["legacy.job"]
    sync_into_catalog({"legacy.job": spec})
    Job.objects.filter(id="legacy.job").delete()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO scheduler_job (id, name, func, kind, schedule, timezone, options, "
            "enabled, paused, pending_change, fingerprint, synced_at) "
            "VALUES (%s, %s, %s, 'cron', 'minute=1, 2', 'UTC', '{}', %s, %s, %s, %s, %s)",
            ["legacy.job", spec.name, spec.func_ref, True, False, False, spec.fingerprint, T0],
        )
    assert Job.objects.get(id="legacy.job").schedule_fields == {}

    assert job_rows(admin_client)["legacy.job"]["schedule_in_words"] == "minute=1, 2"
    assert fire_times_shown(job_page(admin_client, "legacy.job")) == []
    dashboard(admin_client)

    sync_into_catalog({"legacy.job": spec})  # the declaration did not change
    assert Job.objects.get(id="legacy.job").schedule_fields == {"minute": "1, 2"}
    rows = job_rows(admin_client)
    assert rows["legacy.job"]["schedule_in_words"] == "At 1 and 2 minutes past the hour"
    assert len(fire_times_shown(job_page(admin_client, "legacy.job"))) == 5


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        ("interval", {"minutes": "5"}),
        ("interval", {"minutes": 10**400}),
        ("interval", {"fortnights": 1}),
        ("interval", {"seconds": float("nan")}),
        ("interval", []),
        ("cron", {"minute": 5}),
        ("cron", {"crontab": 5}),
        ("cron", {"minute": "*/5", "bogus": "1"}),
        ("other", {"minute": "*/5"}),
    ],
    ids=str,
)
def test_schedule_words_fall_back_to_the_raw_text_never_raising(kind, fields):
    assert describe.schedule_words(kind, fields, "raw text") == "raw text"
