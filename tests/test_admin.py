"""The admin: the job catalog, run history, run now / pause / resume, permissions, escaping."""

from __future__ import annotations

import html as html_lib
import logging
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from django.contrib.admin.utils import quote
from django.contrib.auth.models import Permission, User
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.utils import load_backend
from django.template.loader import render_to_string
from django.test import Client
from django.test.utils import CaptureQueriesContext, override_settings
from django.utils import timezone
from django.utils.html import strip_tags
from django_apscheduler.models import DjangoJob

from scheduler import conf as scheduler_conf
from scheduler import paginator as scheduler_paginator
from scheduler import stats
from scheduler.models import Job, JobRun, Lease, SchedulerInstance
from scheduler.registry import autodiscover
from scheduler.service import make_scheduler
from scheduler.sync import sync
from tests import jobs
from tests.proc.pg import free_port

pytestmark = pytest.mark.django_db

JOBS_URL = "/admin/scheduler/job/"
RUNS_URL = "/admin/scheduler/jobrun/"
TEST_JOBS = ("tests.hourly", "tests.nightly", "tests.failing")
XSS = "<script>alert(1)</script>"
XSS_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
REFRESH = '<meta http-equiv="refresh"'
NIGHTLY_NEXT_RUN = datetime(2030, 1, 2, 3, 0, tzinfo=UTC)
T0 = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


# Fixtures and helpers ---------------------------------------------------------


@pytest.fixture
def catalog() -> dict[str, Job]:
    """The test jobs synced into the catalog and the job store, as a scheduler start does."""
    specs = autodiscover()
    scheduler = make_scheduler()
    sync(scheduler, scheduler._jobstores["default"], {i: specs[i] for i in TEST_JOBS})
    # A known next run time for the nightly job, to check how it is displayed.
    DjangoJob.objects.filter(id="tests.nightly").update(next_run_time=NIGHTLY_NEXT_RUN)
    return {job.id: job for job in Job.objects.all()}


@pytest.fixture
def calls() -> Iterator[list]:
    """The calls the test jobs record when they really run."""
    jobs.CALLS.clear()
    yield jobs.CALLS
    jobs.CALLS.clear()


@pytest.fixture
def staff_client() -> Callable[..., Client]:
    """A client logged in as a staff user holding exactly the given permissions."""
    counter = iter(range(1000))

    def make(*perms: str) -> Client:
        user = User.objects.create_user(f"staff{next(counter)}", password="x", is_staff=True)
        for perm in perms:
            app_label, codename = perm.split(".")
            user.user_permissions.add(
                Permission.objects.get(content_type__app_label=app_label, codename=codename)
            )
        client = Client()
        client.force_login(user)
        client.user = user
        return client

    return make


VIEW = ("scheduler.view_job", "scheduler.view_jobrun")


def make_run(**fields) -> JobRun:
    values = {
        "job_id": "tests.nightly",
        "job_name": "nightly",
        "status": JobRun.Status.SUCCEEDED,
        "trigger": JobRun.Trigger.SCHEDULE,
        "scheduled_at": T0,
    }
    values.update(fields)
    return JobRun.objects.create(**values)


def extra_job(job_id: str, n: int, now: datetime) -> Job:
    """An (unsaved) catalog row of a job besides the test jobs."""
    return Job(
        id=job_id,
        name=f"extra {n}",
        func="tests.jobs:hourly",
        kind="cron",
        schedule="0 3 * * *",
        timezone="UTC",
        fingerprint="x",
        synced_at=now,
    )


def text(response) -> str:
    return response.content.decode()


def listed_runs(response) -> list[int]:
    """Ids of the runs on a run list page, in display order."""
    assert response.status_code == 200
    return [
        int(i)
        for i in re.findall(r'<th class="field-id"><a href="[^"]*/(\d+)/change/', text(response))
    ]


def job_rows(response) -> dict[str, dict[str, str]]:
    """The job list as {job id: {column: cell HTML}}."""
    assert response.status_code == 200
    rows = {}
    for row in re.findall(r"<tr>(.*?)</tr>", text(response), re.S):
        cells = dict(re.findall(r'<t[dh] class="field-(\w+)">(.*?)</t[dh]>', row, re.S))
        if "id" in cells:
            rows[strip_tags(cells["id"])] = cells
    return rows


def hierarchy(response) -> list[tuple[str, str]]:
    """The date hierarchy's links as (title, href), the back link included."""
    match = re.search(r'<nav class="toplinks"[^>]*>(.*?)</nav>', text(response), re.S)
    assert match, "no date hierarchy on the page"
    links = re.findall(r'<a href="([^"]*)"[^>]*>(.*?)</a>', match.group(1), re.S)
    return [(html_lib.unescape(title).strip(), html_lib.unescape(href)) for href, title in links]


def hierarchy_link(response, title: str) -> str:
    links = dict(hierarchy(response))
    assert title in links, f"{title!r} not among {list(links)}"
    return RUNS_URL + links[title]


def capture():
    return CaptureQueriesContext(connections[scheduler_conf.database()])


def sqls(ctx) -> list[str]:
    return [q["sql"] for q in ctx.captured_queries]


def post_action(client: Client, action: str, ids: list[str]):
    return client.post(
        JOBS_URL, {"action": action, "_selected_action": ids, "index": "0"}, follow=True
    )


# Job list -----------------------------------------------------------------------


def test_job_list_shows_schedule_next_run_and_last_run(admin_client, catalog):
    make_run(job_id="tests.failing", status="succeeded", scheduled_at=T0, duration=70)
    make_run(
        job_id="tests.failing",
        status="failed",
        scheduled_at=T0 + timedelta(minutes=5),
        duration=1.5,
    )
    # A queued run is not a result yet: the last run stays the failed one.
    make_run(
        job_id="tests.failing",
        status="queued",
        trigger="manual",
        scheduled_at=T0 + timedelta(minutes=6),
    )

    rows = job_rows(admin_client.get(JOBS_URL))

    assert set(rows) == set(TEST_JOBS)
    nightly, hourly, failing = rows["tests.nightly"], rows["tests.hourly"], rows["tests.failing"]
    assert strip_tags(nightly["name"]) == "nightly"
    assert nightly["schedule_in_words"] == "At 03:00"
    assert nightly["raw_schedule"] == "<code>0 3 * * *</code> (UTC)"
    assert nightly["next_run"] == "2030-01-02 03:00:00 UTC"
    assert nightly["last_run"] == "—"
    assert nightly["last_duration"] == "—"

    assert hourly["schedule_in_words"] == "every 1 h"
    assert hourly["raw_schedule"] == "<code>hours=1</code> (UTC)"
    stored = DjangoJob.objects.get(id="tests.hourly").next_run_time
    assert hourly["next_run"] == f"{stored.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"

    assert failing["schedule_in_words"] == "Every 5 minutes"
    assert "scheduler-failed" in failing["last_run"]
    assert strip_tags(failing["last_run"]) == "failed"
    assert failing["last_duration"] == "1.5 s"
    assert strip_tags(failing["state"]) == "active"


def test_job_list_shows_paused_and_disabled_jobs(admin_client, catalog):
    Job.objects.filter(id="tests.nightly").update(paused=True, pending_change=True)
    Job.objects.filter(id="tests.failing").update(enabled=False)

    rows = job_rows(admin_client.get(JOBS_URL))

    assert rows["tests.nightly"]["next_run"] == "paused"
    assert strip_tags(rows["tests.nightly"]["state"]) == "paused (waiting for the scheduler)"
    assert rows["tests.failing"]["next_run"] == "disabled"
    assert strip_tags(rows["tests.failing"]["state"]) == "disabled in code"
    assert strip_tags(rows["tests.hourly"]["state"]) == "active"


def test_job_list_queries_do_not_grow_with_the_number_of_jobs(admin_client, catalog):
    for job_id in TEST_JOBS:
        make_run(job_id=job_id, status="failed", duration=2)
    with capture() as few:
        assert len(job_rows(admin_client.get(JOBS_URL))) == 3

    now = timezone.now()
    for n in range(20):
        extra_job(f"extra.job{n}", n, now).save()
        make_run(job_id=f"extra.job{n}", status="succeeded", duration=1)
    with capture() as many:
        assert len(job_rows(admin_client.get(JOBS_URL))) == 23

    assert len(many.captured_queries) == len(few.captured_queries)


# Run list: filters, search, date hierarchy, pagination, bounded queries --------------


def test_run_list_filters_narrow_the_rows(admin_client, catalog):
    ok = make_run(job_id="tests.nightly", status="succeeded", scheduled_at=T0)
    failed = make_run(job_id="tests.failing", status="failed", scheduled_at=T0)
    manual = make_run(
        job_id="tests.nightly", status="failed", trigger="manual", scheduled_at=T0 + timedelta(1)
    )
    hourly = make_run(job_id="tests.hourly", status="missed", scheduled_at=T0 + timedelta(2))

    response = admin_client.get(RUNS_URL)
    assert sorted(listed_runs(response)) == sorted([ok.pk, failed.pk, manual.pk, hourly.pk])
    # The job filter offers the jobs of the catalog.
    for job_id in TEST_JOBS:
        assert f'href="?job_id__exact={job_id}"' in text(response)

    def ids(query: str) -> set[int]:
        return set(listed_runs(admin_client.get(RUNS_URL + query)))

    assert ids("?status__exact=failed") == {failed.pk, manual.pk}
    assert ids("?status__exact=missed") == {hourly.pk}
    assert ids("?job_id__exact=tests.nightly") == {ok.pk, manual.pk}
    assert ids("?job_id__exact=tests.hourly") == {hourly.pk}
    assert ids("?trigger__exact=manual") == {manual.pk}
    assert ids("?trigger__exact=schedule") == {ok.pk, failed.pk, hourly.pk}
    assert ids("?status__exact=failed&job_id__exact=tests.nightly") == {manual.pk}
    assert ids("?status__exact=queued") == set()


def test_run_list_search_by_exact_job_id_and_by_exception_text(admin_client, catalog):
    nightly = make_run(job_id="tests.nightly", status="succeeded")
    hourly = make_run(
        job_id="tests.hourly",
        status="failed",
        exception="ZeroDivisionError: division by zero",
    )
    failing = make_run(
        job_id="tests.failing", status="failed", exception="RuntimeError: boom <b>bold</b>"
    )

    def ids(q: str) -> set[int]:
        return set(listed_runs(admin_client.get(RUNS_URL, {"q": q})))

    assert ids("tests.nightly") == {nightly.pk}
    assert ids("tests.hourly") == {hourly.pk}
    assert ids("tests.night") == set()  # the job id must match exactly
    assert ids("ZeroDivisionError") == {hourly.pk}
    assert ids("division by") == {hourly.pk}
    assert ids("<b>bold</b>") == {failing.pk}
    assert ids("no such text") == set()


def test_date_hierarchy_drills_down_to_year_month_and_day(admin_client, catalog):
    y2023 = make_run(scheduled_at=datetime(2023, 12, 31, 23, 30, tzinfo=UTC))
    may6 = make_run(scheduled_at=datetime(2024, 5, 6, 10, tzinfo=UTC))
    may7 = make_run(scheduled_at=datetime(2024, 5, 7, 10, tzinfo=UTC))
    june = make_run(scheduled_at=datetime(2024, 6, 1, 0, 0, tzinfo=UTC))

    def get(url):
        with capture() as ctx:
            response = admin_client.get(url)
        assert not [sql for sql in sqls(ctx) if "DISTINCT" in sql.upper()]
        return response

    top = get(RUNS_URL)
    assert [title for title, _ in hierarchy(top)] == ["2023", "2024"]

    year = get(hierarchy_link(top, "2024"))
    assert set(listed_runs(year)) == {may6.pk, may7.pk, june.pk}
    assert [title for title, _ in hierarchy(year)] == ["‹ All dates", "May 2024", "June 2024"]

    month = get(hierarchy_link(year, "May 2024"))
    assert set(listed_runs(month)) == {may6.pk, may7.pk}
    assert [title for title, _ in hierarchy(month)] == ["‹ 2024", "May 6", "May 7"]

    day = get(hierarchy_link(month, "May 6"))
    assert listed_runs(day) == [may6.pk]
    assert [title for title, _ in hierarchy(day)] == ["‹ May 2024"]

    assert listed_runs(get(hierarchy_link(top, "2023"))) == [y2023.pk]
    # Back links lead up again.
    assert set(listed_runs(get(hierarchy_link(day, "‹ May 2024")))) == {may6.pk, may7.pk}


def test_date_hierarchy_only_offers_periods_with_matching_runs(admin_client, catalog):
    make_run(status="succeeded", scheduled_at=datetime(2023, 3, 1, tzinfo=UTC))
    failed = make_run(status="failed", scheduled_at=datetime(2024, 2, 10, tzinfo=UTC))
    make_run(status="succeeded", scheduled_at=datetime(2024, 7, 1, tzinfo=UTC))

    response = admin_client.get(RUNS_URL, {"status__exact": "failed"})
    # One failed run: the hierarchy opens at its month, and its links keep the filter.
    assert hierarchy(response) == [
        ("‹ 2024", "?scheduled_at__year=2024&status__exact=failed"),
        (
            "February 10",
            "?scheduled_at__day=10&scheduled_at__month=2&scheduled_at__year=2024"
            "&status__exact=failed",
        ),
    ]
    year = admin_client.get(hierarchy_link(response, "‹ 2024"))
    assert [title for title, _ in hierarchy(year)] == ["‹ All dates", "February 2024"]
    assert listed_runs(year) == [failed.pk]


def test_date_hierarchy_follows_the_active_time_zone(admin_client, catalog):
    # 2024-12-31 20:00 UTC is 2025-01-01 04:00 in Shanghai.
    new_year = make_run(scheduled_at=datetime(2024, 12, 31, 20, tzinfo=UTC))
    june = make_run(scheduled_at=datetime(2024, 6, 1, tzinfo=UTC))

    with override_settings(TIME_ZONE="Asia/Shanghai"):
        top = admin_client.get(RUNS_URL)
        assert [title for title, _ in hierarchy(top)] == ["2024", "2025"]
        year = admin_client.get(hierarchy_link(top, "2025"))
        assert listed_runs(year) == [new_year.pk]
        assert [title for title, _ in hierarchy(year)] == ["‹ All dates", "January 2025"]
        month = admin_client.get(hierarchy_link(year, "January 2025"))
        assert [title for title, _ in hierarchy(month)] == ["‹ 2025", "January 1"]
        day = admin_client.get(hierarchy_link(month, "January 1"))
        assert listed_runs(day) == [new_year.pk]
        assert "2025-01-01 04:00:00 CST" in text(day)
        assert listed_runs(admin_client.get(hierarchy_link(top, "2024"))) == [june.pk]

    # In UTC the same run belongs to 2024.
    top = admin_client.get(RUNS_URL)
    assert [title for title, _ in hierarchy(top)] == ["‹ All dates", "June 2024", "December 2024"]


HIERARCHY_RUNS = [
    datetime(2020, 6, 1, tzinfo=UTC),
    datetime(2022, 1, 1, 0, 30, tzinfo=UTC),
    datetime(2024, 1, 15, tzinfo=UTC),
    datetime(2024, 3, 31, 23, tzinfo=UTC),  # April 1 in Shanghai
    datetime(2024, 5, 2, tzinfo=UTC),
    datetime(2024, 5, 9, tzinfo=UTC),
    datetime(2024, 5, 10, tzinfo=UTC),
    datetime(2024, 5, 31, 23, tzinfo=UTC),  # June 1 in Shanghai
    datetime(2024, 7, 1, tzinfo=UTC),
    datetime(2024, 12, 31, 23, 59, tzinfo=UTC),  # 2025 in Shanghai
]


def hierarchy_titles(response) -> list[str]:
    return [title for title, _ in hierarchy(response)]


def test_date_hierarchy_finds_the_periods_between_the_first_and_the_last_run(admin_client, catalog):
    # Periods with runs and without, between the first run and the last, at every level.
    for at in HIERARCHY_RUNS:
        make_run(scheduled_at=at, status="failed" if at.month == 5 else "succeeded")

    with capture() as ctx:
        top = admin_client.get(RUNS_URL)
    assert hierarchy_titles(top) == ["2020", "2022", "2024"]
    assert len(sqls(ctx)) <= len(LIST_QUERIES)

    with capture() as ctx:
        year = admin_client.get(hierarchy_link(top, "2024"))
    assert hierarchy_titles(year) == [
        "‹ All dates",
        "January 2024",
        "March 2024",
        "May 2024",
        "July 2024",
        "December 2024",
    ]
    assert len(sqls(ctx)) <= len(LIST_QUERIES)

    with capture() as ctx:
        month = admin_client.get(hierarchy_link(year, "May 2024"))
    assert hierarchy_titles(month) == ["‹ 2024", "May 2", "May 9", "May 10", "May 31"]
    assert len(listed_runs(month)) == 4
    assert len(sqls(ctx)) <= len(LIST_QUERIES)

    # Filtered: only the periods with matching runs.
    failed = admin_client.get(RUNS_URL, {"status__exact": "failed", "scheduled_at__year": 2024})
    assert hierarchy_titles(failed) == ["‹ All dates", "May 2024"]
    failed = admin_client.get(hierarchy_link(failed, "May 2024"))
    assert hierarchy_titles(failed) == ["‹ 2024", "May 2", "May 9", "May 10", "May 31"]
    succeeded = admin_client.get(RUNS_URL, {"status__exact": "succeeded"})
    assert hierarchy_titles(succeeded) == ["2020", "2022", "2024"]
    succeeded = admin_client.get(hierarchy_link(succeeded, "2024"))
    assert hierarchy_titles(succeeded) == [
        "‹ All dates",
        "January 2024",
        "March 2024",
        "July 2024",
        "December 2024",
    ]


def test_date_hierarchy_finds_the_periods_in_between_in_the_active_time_zone(admin_client, catalog):
    for at in HIERARCHY_RUNS:
        make_run(scheduled_at=at)

    with override_settings(TIME_ZONE="Asia/Shanghai"):
        top = admin_client.get(RUNS_URL)
        assert hierarchy_titles(top) == ["2020", "2022", "2024", "2025"]
        year = admin_client.get(hierarchy_link(top, "2024"))
        assert hierarchy_titles(year) == [
            "‹ All dates",
            "January 2024",
            "April 2024",
            "May 2024",
            "June 2024",
            "July 2024",
        ]
        may = admin_client.get(hierarchy_link(year, "May 2024"))
        assert hierarchy_titles(may) == ["‹ 2024", "May 2", "May 9", "May 10"]
        april = admin_client.get(hierarchy_link(year, "April 2024"))
        assert hierarchy_titles(april) == ["‹ 2024", "April 1"]


def _many_runs(count: int, **fields) -> list[JobRun]:
    base = datetime(2024, 5, 1, tzinfo=UTC)
    JobRun.objects.bulk_create(
        JobRun(
            job_id=fields.get("job_id", "tests.failing"),
            job_name="Always fails.",
            status=JobRun.Status.FAILED if n % 2 else JobRun.Status.SUCCEEDED,
            trigger=JobRun.Trigger.SCHEDULE,
            scheduled_at=base + timedelta(minutes=5 * n),
        )
        for n in range(count)
    )
    return list(JobRun.objects.order_by("-scheduled_at", "-id"))


def test_run_list_pagination(admin_client, catalog):
    runs = _many_runs(120)

    first = admin_client.get(RUNS_URL)
    assert first.context["cl"].result_count == 120
    assert "120 runs" in text(first)
    assert 'href="?p=3"' in text(first)
    assert 'href="?p=4"' not in text(first)

    pages = [listed_runs(first)] + [
        listed_runs(admin_client.get(RUNS_URL, {"p": p})) for p in (2, 3)
    ]
    assert [len(page) for page in pages] == [50, 50, 20]
    # Newest first, every run exactly once.
    assert [pk for page in pages for pk in page] == [run.pk for run in runs]


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?p=2",
        "?status__exact=failed",
        "?job_id__exact=tests.failing",
        "?trigger__exact=schedule",
        "?q=tests.failing",
        "?q=boom",
        "?scheduled_at__year=2024",
        "?scheduled_at__year=2024&scheduled_at__month=5",
        "?scheduled_at__year=2024&scheduled_at__month=5&scheduled_at__day=1",
    ],
)
def test_run_list_queries_are_bounded(admin_client, catalog, query):
    _many_runs(120)

    with capture() as ctx:
        response = admin_client.get(RUNS_URL + query)
    assert response.status_code == 200

    statements = sqls(ctx)
    counts = [sql for sql in statements if "COUNT(" in sql.upper() and "scheduler_jobrun" in sql]
    assert counts, "the page counts its rows"
    for sql in counts:
        assert "LIMIT 10001" in sql, f"unbounded count: {sql}"
    assert not [sql for sql in statements if "DISTINCT" in sql.upper()]
    # Nothing grows with the number of runs (see LIST_QUERIES).
    assert len(statements) <= len(LIST_QUERIES)


def test_run_list_count_stops_at_the_limit(admin_client, catalog, monkeypatch):
    monkeypatch.setattr(scheduler_paginator, "COUNT_LIMIT", 60)
    _many_runs(120)

    response = admin_client.get(RUNS_URL)

    assert response.context["cl"].result_count == 61
    paginator = re.search(r'<p class="paginator">(.*?)</p>', text(response), re.S).group(1)
    assert "more than 60 runs" in paginator
    assert "61" not in paginator
    assert len(listed_runs(response)) == 50
    assert 'href="?p=2"' in text(response)


def test_runs_past_the_count_limit_can_be_paged_to(admin_client, catalog, monkeypatch):
    monkeypatch.setattr(scheduler_paginator, "COUNT_LIMIT", 60)
    runs = _many_runs(120)

    page2 = listed_runs(admin_client.get(RUNS_URL, {"p": 2}))
    assert page2 == [run.pk for run in runs[50:100]]
    page3 = admin_client.get(RUNS_URL, {"p": 3})
    assert listed_runs(page3) == [run.pk for run in runs[100:]]


def test_run_list_states_no_count_it_did_not_make(admin_client, catalog, monkeypatch):
    monkeypatch.setattr(scheduler_paginator, "COUNT_LIMIT", 60)
    _many_runs(120)

    page = text(admin_client.get(RUNS_URL))

    assert "61" not in strip_tags(page)


def test_run_list_offers_no_unbounded_facet_counts(admin_client, catalog):
    _many_runs(60)

    response = admin_client.get(RUNS_URL)
    with capture() as ctx:
        admin_client.get(RUNS_URL, {"_facets": "True"})

    unbounded = [
        sql
        for sql in sqls(ctx)
        if "COUNT(" in sql.upper() and "scheduler_jobrun" in sql and "LIMIT" not in sql
    ]
    assert not unbounded
    assert "_facets" not in text(response)


# Queries per page, with a realistic history -------------------------------------------
# Each page's queries, named: one that came back per row, per job or per period (an N+1)
# would fail these tests.

LIST_QUERIES = [
    "session",
    "user",
    "the job filter's choices: the catalog's ids",
    "the count, stopped at COUNT_LIMIT + 1",
    "the page's rows",
    "health banner: the lease",
    "health banner: its holder while it holds, else the last scheduler seen",
    "date hierarchy: the first and the last run listed",
    "date hierarchy: the periods between them, when there are any",
]
DASHBOARD_QUERIES = [
    "session",
    "user",
    "health: the lease (and its holder while it holds: none in these tests)",
    "health: the standbys",
    "health: the last scheduler seen",
    "runs in the last 24 hours by status",
    "failing jobs",
    "coming up: the job store's next run times",
    "coming up: the jobs' names",
    "slowest jobs of the last 24 hours",
    "slowest jobs: their names",
    "queued runs by trigger",
    "the next runs scheduled from code",
    "open incidents",
]
EXTRA_JOBS = 40


def _history(runs: int = 30, days: int = 120) -> None:
    """The test jobs and EXTRA_JOBS more, each with ``runs`` runs over the last ``days``
    days (the last one within the hour): every final status, some manual, a few failing."""
    now = timezone.now()
    Job.objects.bulk_create(extra_job(f"extra.job{n:02d}", n, now) for n in range(EXTRA_JOBS))
    statuses = [JobRun.Status.SUCCEEDED] * 6 + [
        JobRun.Status.FAILED,
        JobRun.Status.MISSED,
        JobRun.Status.SKIPPED,
        JobRun.Status.INTERRUPTED,
    ]
    job_ids = [*TEST_JOBS, *(f"extra.job{n:02d}" for n in range(EXTRA_JOBS))]
    JobRun.objects.bulk_create(
        JobRun(
            job_id=job_id,
            job_name=job_id,
            status=statuses[(i + n) % len(statuses)],
            trigger=JobRun.Trigger.MANUAL if n % 10 == 9 else JobRun.Trigger.SCHEDULE,
            scheduled_at=now - timedelta(days=days * n / runs, minutes=i + 1),
            duration=None if (i + n) % len(statuses) in (7, 8) else 0.1 * (i + 1),
            exception="RuntimeError: boom" if (i + n) % len(statuses) == 6 else "",
        )
        for i, job_id in enumerate(job_ids)
        for n in range(runs)
    )


def _alive_scheduler(heartbeat_age: float = 0, lease_left: float = 10) -> None:
    """An active scheduler's instance row and its lease, as scheduler.lease writes them."""
    now = timezone.now()
    SchedulerInstance.objects.create(
        id="b" * 32,
        hostname="sched1",
        pid=99,
        version="0.1.0",
        role=SchedulerInstance.Role.ACTIVE,
        started_at=now - timedelta(hours=1),
        heartbeat_at=now - timedelta(seconds=heartbeat_age),
    )
    Lease.objects.create(
        name="scheduler",
        holder="b" * 32,
        acquired_at=now - timedelta(hours=1),
        expires_at=now + timedelta(seconds=lease_left),
    )


@pytest.mark.parametrize(
    ("query", "total"),
    [
        ("", 1290),
        ("?status__exact=failed", 129),
        ("?job_id__exact=extra.job07", 30),
        ("?trigger__exact=manual", 129),
        ("?p=3", 1290),
        ("?o=-5", 1290),  # by duration
    ],
)
def test_run_list_pages_make_a_few_queries_whatever_the_history(
    admin_client, catalog, query, total, django_assert_max_num_queries
):
    _history()

    with django_assert_max_num_queries(len(LIST_QUERIES)):
        response = admin_client.get(RUNS_URL + query)

    assert len(listed_runs(response)) == min(total, 50)
    # What the page shows: the count, every job in the filter, the date hierarchy.
    paginator = re.search(r'<p class="paginator">(.*?)</p>', text(response), re.S).group(1)
    assert f"{total} runs" in paginator
    filter_links = re.findall(r'href="[^"]*job_id__exact=([\w.]+)', text(response))
    assert set(filter_links) == {*TEST_JOBS, *(f"extra.job{n:02d}" for n in range(EXTRA_JOBS))}
    assert hierarchy(response)


def test_run_list_queries_do_not_grow_with_the_history(admin_client, catalog):
    make_run(scheduled_at=timezone.now() - timedelta(days=100))
    make_run(scheduled_at=timezone.now())
    with capture() as few:
        admin_client.get(RUNS_URL)
    _history()
    with capture() as many:
        admin_client.get(RUNS_URL)

    assert len(many.captured_queries) == len(few.captured_queries)


def test_run_list_with_a_scheduler_alive_makes_as_few_queries(
    admin_client, catalog, django_assert_max_num_queries
):
    _history()
    _alive_scheduler()

    with django_assert_max_num_queries(len(LIST_QUERIES)):
        response = admin_client.get(RUNS_URL)

    assert len(listed_runs(response)) == 50
    assert "scheduler-health" not in text(response)


def test_dashboard_makes_a_few_queries_whatever_the_history(
    admin_client, catalog, django_assert_max_num_queries
):
    _history()

    with django_assert_max_num_queries(len(DASHBOARD_QUERIES)):
        response = admin_client.get(DASHBOARD_URL)

    assert response.status_code == 200
    context = response.context
    assert context["total_day"] == len(TEST_JOBS) + EXTRA_JOBS
    assert len(context["slowest"]) == 10
    assert context["failing"]
    assert context["upcoming"]


def test_dashboard_figures(admin_client, catalog):
    now = timezone.now()
    hour = timedelta(hours=1)
    make_run(job_id="tests.nightly", scheduled_at=now - hour, duration=10)
    make_run(job_id="tests.nightly", scheduled_at=now - 2 * hour, duration=20)
    # Failed, and still failing: a run that has not finished does not hide it.
    make_run(
        job_id="tests.hourly",
        status="failed",
        scheduled_at=now - hour,
        finished_at=now - hour,
        duration=1,
        exception="RuntimeError: boom",
    )
    make_run(job_id="tests.hourly", status="running", scheduled_at=now - timedelta(minutes=1))
    # Failed, then succeeded: not failing now.
    make_run(job_id="tests.failing", status="failed", scheduled_at=now - 3 * hour, duration=2)
    make_run(job_id="tests.failing", scheduled_at=now - 2 * hour, duration=4)
    make_run(job_id="tests.failing", status="missed", scheduled_at=now - hour)
    # A job no longer in the catalog: its history outlives it.
    make_run(job_id="gone.job", scheduled_at=now - hour, duration=5)
    # Older than 24 hours: in no figure of the day.
    make_run(job_id="tests.failing", scheduled_at=now - 25 * hour, duration=3600)
    make_run(job_id="tests.nightly", status="failed", scheduled_at=now - 30 * hour)

    response = admin_client.get(DASHBOARD_URL)

    context = response.context
    counts = {status: count for status, _label, count in context["by_status"]}
    assert counts == {
        "queued": 0,
        "running": 1,
        "succeeded": 4,
        "failed": 2,
        "missed": 1,
        "skipped": 0,
        "interrupted": 0,
        "timed_out": 0,
    }
    assert context["total_day"] == 8
    assert [job.id for job in context["failing"]] == ["tests.hourly"]
    assert [
        (row["job_id"], row["avg"], row["longest"], row["runs"]) for row in context["slowest"]
    ] == [
        ("tests.nightly", 15, 20, 2),
        ("gone.job", 5, 5, 1),
        ("tests.failing", 3, 4, 2),
        ("tests.hourly", 1, 1, 1),
    ]
    names = {row["job_id"]: row["name"] for row in context["slowest"]}
    assert names["gone.job"] == "gone.job"
    assert names["tests.nightly"] == Job.objects.get(id="tests.nightly").name
    page = html_lib.unescape(strip_tags(text(response)))
    assert "8 runs" in page
    assert "RuntimeError: boom" in page


@pytest.mark.skipif(
    connections[DEFAULT_DB_ALIAS].vendor != "sqlite", reason="the query plans of SQLite"
)
def test_figures_of_the_day_read_the_day_s_runs_only():
    # SQLite without ANALYZE (Django never runs one) plans these by its rules alone, the
    # same at ten rows as at a million: each must read the last day's range of an index,
    # not walk a whole index of the history to group it (as it did, 70 and 110 ms at
    # 1,000,000 runs).
    now = timezone.now()
    with capture() as ctx:
        stats.last_day_by_status(now)
        stats.slowest_jobs(now)

    statements = [sql for sql in sqls(ctx) if '"scheduler_jobrun"' in sql]
    assert len(statements) == 2
    connection = connections[scheduler_conf.database()]
    for sql in statements:
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN QUERY PLAN {sql}")
            plan = [row[-1] for row in cursor.fetchall()]
        reads = [step for step in plan if "scheduler_jobrun" in step]
        assert len(reads) == 1, plan
        assert reads[0].startswith("SEARCH"), plan
        assert "scheduled_at>?" in reads[0], plan


def test_health_banner_is_quiet_while_a_scheduler_is_alive(admin_client, catalog):
    _alive_scheduler()

    with capture() as ctx:
        page = text(admin_client.get(RUNS_URL))

    assert "scheduler-health" not in page
    # The lease, then its holder's heartbeat: no count of standbys, no last seen.
    liveness = [
        sql for sql in sqls(ctx) if re.search(r'FROM "scheduler_(lease|schedulerinst)', sql)
    ]
    assert len(liveness) == 2
    dashboard = html_lib.unescape(strip_tags(text(admin_client.get(DASHBOARD_URL))))
    assert "active on sched1:99" in dashboard


@pytest.mark.parametrize(
    "stale", [{"heartbeat_age": 60}, {"lease_left": -1}], ids=["heartbeat", "lease"]
)
def test_health_banner_warns_when_the_active_scheduler_is_gone(admin_client, catalog, stale):
    _alive_scheduler(**stale)

    page = " ".join(html_lib.unescape(strip_tags(text(admin_client.get(RUNS_URL)))).split())

    assert "No scheduler is running: the last heartbeat came" in page
    assert "from sched1:99" in page


# Escaping ------------------------------------------------------------------------


def test_run_page_shows_exception_traceback_and_output_escaped(admin_client, catalog):
    run = make_run(
        status="failed",
        exception=f"RuntimeError: {XSS}",
        traceback=f'Traceback (most recent call last):\n  File "x.py"\nRuntimeError: {XSS}',
        output=f"printed {XSS}\nsecond line",
    )

    page = text(admin_client.get(f"{RUNS_URL}{run.pk}/change/"))

    assert XSS not in page
    pres = re.findall(r"<pre[^>]*>(.*?)</pre>", page, re.S)
    assert f"RuntimeError: {XSS_ESCAPED}" in pres
    assert any(pre.startswith("Traceback") and pre.endswith(XSS_ESCAPED) for pre in pres)
    assert f"printed {XSS_ESCAPED}\nsecond line" in pres


def test_lists_show_run_text_escaped(admin_client, catalog):
    run = make_run(status="failed", hostname=XSS, exception=f"RuntimeError: {XSS}")

    run_list = admin_client.get(RUNS_URL)
    assert listed_runs(run_list) == [run.pk]
    assert XSS not in text(run_list)
    assert XSS_ESCAPED in text(run_list)

    # Found by its exception text, and the search term is echoed escaped.
    search = admin_client.get(RUNS_URL, {"q": XSS})
    assert listed_runs(search) == [run.pk]
    assert XSS not in text(search)

    job_page = text(admin_client.get(f"{JOBS_URL}tests.nightly/change/"))
    assert XSS not in job_page
    assert f"RuntimeError: {XSS_ESCAPED}" in job_page


# Run now ------------------------------------------------------------------------------


def test_run_now_button_queues_a_manual_run_and_does_not_run_the_job(
    admin_client, admin_user, catalog, calls
):
    response = admin_client.post(f"{JOBS_URL}tests.nightly/run/")

    run = JobRun.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"{RUNS_URL}{run.pk}/change/"
    assert run.job_id == "tests.nightly"
    assert run.job_name == "nightly"
    assert run.status == JobRun.Status.QUEUED
    assert run.trigger == JobRun.Trigger.MANUAL
    assert run.requested_by == admin_user.username
    assert run.started_at is None
    assert abs(run.scheduled_at - timezone.now()) < timedelta(minutes=1)
    assert calls == []

    page = admin_client.get(response["Location"])
    assert page.status_code == 200
    assert "Queued a run of tests.nightly" in text(page)
    assert REFRESH in text(page)
    assert calls == []


def test_run_now_button_rejects_get(admin_client, catalog, calls):
    assert admin_client.get(f"{JOBS_URL}tests.nightly/run/").status_code == 405
    assert not JobRun.objects.exists()


def test_run_now_button_needs_the_run_permission(staff_client, catalog, calls):
    viewer = staff_client(*VIEW, "scheduler.pause_job")
    assert viewer.post(f"{JOBS_URL}tests.nightly/run/").status_code == 403
    assert not JobRun.objects.exists()

    runner = staff_client(*VIEW, "scheduler.run_job")
    response = runner.post(f"{JOBS_URL}tests.nightly/run/")
    assert response.status_code == 302
    assert JobRun.objects.get().requested_by == runner.user.username
    assert calls == []


def test_run_now_of_an_unknown_job_is_404(admin_client, catalog):
    assert admin_client.post(f"{JOBS_URL}no.such.job/run/").status_code == 404
    assert not JobRun.objects.exists()


def test_run_now_button_needs_the_csrf_token(admin_user, catalog):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)

    assert client.post(f"{JOBS_URL}tests.nightly/run/").status_code == 403
    assert not JobRun.objects.exists()

    page = text(client.get(f"{JOBS_URL}tests.nightly/change/"))
    form = re.search(r'<form method="post" action="([^"]*/run/)".*?</form>', page, re.S)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.group(0)).group(1)
    response = client.post(form.group(1), {"csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert JobRun.objects.count() == 1


def test_run_now_action_queues_one_run_per_selected_job(admin_client, admin_user, catalog, calls):
    response = post_action(admin_client, "run_now", ["tests.nightly", "tests.hourly"])

    assert response.status_code == 200
    assert "Queued 2 runs" in text(response)
    runs = JobRun.objects.order_by("job_id")
    assert [(r.job_id, r.status, r.trigger, r.requested_by) for r in runs] == [
        ("tests.hourly", "queued", "manual", admin_user.username),
        ("tests.nightly", "queued", "manual", admin_user.username),
    ]
    assert calls == []


def test_run_now_action_is_not_offered_without_the_run_permission(staff_client, catalog, calls):
    viewer = staff_client(*VIEW, "scheduler.pause_job")
    page = text(viewer.get(JOBS_URL))
    assert 'value="run_now"' not in page
    assert 'value="pause"' in page

    post_action(viewer, "run_now", ["tests.nightly"])
    assert not JobRun.objects.exists()

    runner = staff_client(*VIEW, "scheduler.run_job")
    assert 'value="run_now"' in text(runner.get(JOBS_URL))
    post_action(runner, "run_now", ["tests.nightly"])
    assert JobRun.objects.get().requested_by == runner.user.username
    assert calls == []


# Pause and resume --------------------------------------------------------------------


def test_pause_and_resume_buttons(admin_client, catalog):
    job_page = f"{JOBS_URL}tests.nightly/change/"
    before = text(admin_client.get(job_page))
    assert "/tests.nightly/pause/" in before
    assert "/tests.nightly/resume/" not in before

    response = admin_client.post(f"{JOBS_URL}tests.nightly/pause/")
    assert response.status_code == 302
    assert response["Location"] == job_page
    job = Job.objects.get(id="tests.nightly")
    assert (job.paused, job.pending_change) == (True, True)
    assert not Job.objects.exclude(id="tests.nightly").filter(paused=True).exists()

    after = text(admin_client.get(job_page))
    assert "Paused tests.nightly." in after
    assert "/tests.nightly/resume/" in after
    assert "/tests.nightly/pause/" not in after

    Job.objects.filter(id="tests.nightly").update(pending_change=False)  # the scheduler applied it
    response = admin_client.post(f"{JOBS_URL}tests.nightly/resume/")
    assert response.status_code == 302
    job.refresh_from_db()
    assert (job.paused, job.pending_change) == (False, True)
    assert "Resumed tests.nightly." in text(admin_client.get(job_page))


def test_pausing_a_paused_job_changes_nothing(admin_client, catalog):
    Job.objects.filter(id="tests.nightly").update(paused=True)
    response = admin_client.post(f"{JOBS_URL}tests.nightly/pause/", follow=True)
    assert "Nothing to change." in text(response)
    assert Job.objects.get(id="tests.nightly").pending_change is False


def test_disabled_job_cannot_be_paused(admin_client, catalog):
    Job.objects.filter(id="tests.failing").update(enabled=False)
    page = text(admin_client.get(f"{JOBS_URL}tests.failing/change/"))
    assert "/pause/" not in page
    assert "/resume/" not in page

    admin_client.post(f"{JOBS_URL}tests.failing/pause/")
    job = Job.objects.get(id="tests.failing")
    assert (job.paused, job.pending_change) == (False, False)


@pytest.mark.parametrize("button", ["pause", "resume"])
def test_pause_buttons_reject_get(admin_client, catalog, button):
    Job.objects.filter(id="tests.nightly").update(paused=button == "resume")
    assert admin_client.get(f"{JOBS_URL}tests.nightly/{button}/").status_code == 405
    assert Job.objects.get(id="tests.nightly").paused is (button == "resume")


@pytest.mark.parametrize("button", ["pause", "resume"])
def test_pause_buttons_need_the_pause_permission(staff_client, catalog, button):
    paused = button == "resume"
    Job.objects.filter(id="tests.nightly").update(paused=paused)

    runner = staff_client(*VIEW, "scheduler.run_job")
    assert runner.post(f"{JOBS_URL}tests.nightly/{button}/").status_code == 403
    job = Job.objects.get(id="tests.nightly")
    assert (job.paused, job.pending_change) == (paused, False)

    pauser = staff_client(*VIEW, "scheduler.pause_job")
    assert pauser.post(f"{JOBS_URL}tests.nightly/{button}/").status_code == 302
    job.refresh_from_db()
    assert (job.paused, job.pending_change) == (not paused, True)


def test_pause_and_resume_actions(admin_client, catalog):
    response = post_action(admin_client, "pause", ["tests.nightly", "tests.hourly"])
    assert "Paused 2 jobs." in text(response)
    states = dict(Job.objects.values_list("id", "paused"))
    assert states == {"tests.nightly": True, "tests.hourly": True, "tests.failing": False}
    assert set(Job.objects.filter(pending_change=True).values_list("id", flat=True)) == {
        "tests.nightly",
        "tests.hourly",
    }

    Job.objects.update(pending_change=False)
    response = post_action(admin_client, "resume", ["tests.nightly"])
    assert "Resumed 1 job." in text(response)
    nightly = Job.objects.get(id="tests.nightly")
    assert (nightly.paused, nightly.pending_change) == (False, True)
    assert Job.objects.get(id="tests.hourly").paused is True


def test_pause_actions_are_not_offered_without_the_pause_permission(staff_client, catalog):
    runner = staff_client(*VIEW, "scheduler.run_job")
    page = text(runner.get(JOBS_URL))
    assert 'value="pause"' not in page
    assert 'value="resume"' not in page

    post_action(runner, "pause", ["tests.nightly"])
    assert not Job.objects.filter(paused=True).exists()


# Permissions -----------------------------------------------------------------------


def test_view_only_staff_sees_the_lists_but_no_buttons(staff_client, catalog):
    run = make_run(status="failed")
    viewer = staff_client(*VIEW)

    assert set(job_rows(viewer.get(JOBS_URL))) == set(TEST_JOBS)
    assert listed_runs(viewer.get(RUNS_URL)) == [run.pk]
    assert viewer.get(f"{RUNS_URL}{run.pk}/change/").status_code == 200

    job_list = text(viewer.get(JOBS_URL))
    for action in ("run_now", "pause", "resume"):
        assert f'value="{action}"' not in job_list

    response = viewer.get(f"{JOBS_URL}tests.nightly/change/")
    assert response.status_code == 200
    page = text(response)
    assert "Recent runs" in page
    assert f"{RUNS_URL}{run.pk}/change/" in page
    for button in ("run", "pause", "resume"):
        assert f"/tests.nightly/{button}/" not in page
        assert f"scheduler-{button}" not in page


def test_buttons_follow_each_permission(staff_client, catalog):
    runner = text(staff_client(*VIEW, "scheduler.run_job").get(f"{JOBS_URL}tests.nightly/change/"))
    assert "/tests.nightly/run/" in runner
    assert "/tests.nightly/pause/" not in runner

    pauser = text(
        staff_client(*VIEW, "scheduler.pause_job").get(f"{JOBS_URL}tests.nightly/change/")
    )
    assert "/tests.nightly/run/" not in pauser
    assert "/tests.nightly/pause/" in pauser


def test_staff_without_view_permissions_cannot_see_the_lists(staff_client, catalog):
    nobody = staff_client("scheduler.run_job")
    assert nobody.get(JOBS_URL).status_code == 403
    assert nobody.get(RUNS_URL).status_code == 403


# Job page ----------------------------------------------------------------------------


def test_job_page_shows_the_recent_runs_of_that_job_only(admin_client, catalog):
    nightly = [
        make_run(job_id="tests.nightly", scheduled_at=T0 + timedelta(days=n)) for n in range(25)
    ]
    hourly = make_run(job_id="tests.hourly", scheduled_at=T0 + timedelta(days=30))

    page = text(admin_client.get(f"{JOBS_URL}tests.nightly/change/"))
    table = re.search(r'<table class="scheduler-recent-runs".*?</table>', page, re.S).group(0)
    shown = [int(pk) for pk in re.findall(rf'href="{RUNS_URL}(\d+)/change/"', table)]
    # The 20 newest, newest first.
    assert shown == [run.pk for run in reversed(nightly)][:20]
    assert hourly.pk not in shown

    hourly_page = text(admin_client.get(f"{JOBS_URL}tests.hourly/change/"))
    table = re.search(r'<table class="scheduler-recent-runs".*?</table>', hourly_page, re.S)
    assert re.findall(rf'href="{RUNS_URL}(\d+)/change/"', table.group(0)) == [str(hourly.pk)]

    empty = text(admin_client.get(f"{JOBS_URL}tests.failing/change/"))
    assert "This job has not run yet." in empty
    assert "scheduler-recent-runs" not in empty


# Run page --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, refreshes",
    [
        ("queued", True),
        ("running", True),
        ("succeeded", False),
        ("failed", False),
        ("missed", False),
        ("skipped", False),
        ("interrupted", False),
    ],
)
def test_run_page_refreshes_while_the_run_is_not_finished(admin_client, status, refreshes):
    run = make_run(status=status)
    response = admin_client.get(f"{RUNS_URL}{run.pk}/change/")
    assert response.status_code == 200
    assert (REFRESH in text(response)) is refreshes


# django-apscheduler's pages ---------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "/admin/django_apscheduler/djangojob/",
        "/admin/django_apscheduler/djangojobexecution/",
        "/admin/django_apscheduler/",
    ],
)
def test_django_apscheduler_admin_pages_are_gone(admin_client, url):
    assert admin_client.get(url).status_code == 404


def test_admin_index_lists_the_scheduler_but_not_django_apscheduler(admin_client):
    page = text(admin_client.get("/admin/"))
    assert JOBS_URL in page
    assert RUNS_URL in page
    assert "django_apscheduler" not in page


# Time zones ------------------------------------------------------------------------


def _timed_run() -> JobRun:
    return make_run(
        status="succeeded",
        scheduled_at=T0,
        started_at=T0 + timedelta(seconds=2),
        finished_at=T0 + timedelta(seconds=65),
        duration=63,
    )


def test_times_are_shown_with_the_time_zone_name(admin_client, catalog):
    run = _timed_run()

    run_list = text(admin_client.get(RUNS_URL))
    assert '<td class="field-scheduled">2024-05-06 07:08:09 UTC</td>' in run_list
    assert '<td class="field-started">2024-05-06 07:08:11 UTC</td>' in run_list
    assert '<td class="field-duration_text">1 min 3 s</td>' in run_list

    page = text(admin_client.get(f"{RUNS_URL}{run.pk}/change/"))
    for value in ("2024-05-06 07:08:09 UTC", "2024-05-06 07:08:11 UTC", "2024-05-06 07:09:14 UTC"):
        assert f'<div class="readonly">{value}</div>' in page
    assert '<div class="readonly">2 s</div>' in page  # lateness

    job_page = text(admin_client.get(f"{JOBS_URL}tests.nightly/change/"))
    assert "<td>2024-05-06 07:08:09 UTC</td>" in job_page
    assert '<div class="readonly">2030-01-02 03:00:00 UTC</div>' in job_page


def test_times_are_shown_in_the_configured_time_zone(admin_client, catalog):
    run = _timed_run()

    with override_settings(TIME_ZONE="Asia/Shanghai"):
        run_list = text(admin_client.get(RUNS_URL))
        page = text(admin_client.get(f"{RUNS_URL}{run.pk}/change/"))
        job_page = text(admin_client.get(f"{JOBS_URL}tests.nightly/change/"))
        job_list = job_rows(admin_client.get(JOBS_URL))

    assert '<td class="field-scheduled">2024-05-06 15:08:09 CST</td>' in run_list
    assert '<td class="field-started">2024-05-06 15:08:11 CST</td>' in run_list
    for value in ("2024-05-06 15:08:09 CST", "2024-05-06 15:08:11 CST", "2024-05-06 15:09:14 CST"):
        assert f'<div class="readonly">{value}</div>' in page
    assert "UTC</div>" not in page
    assert "<td>2024-05-06 15:08:09 CST</td>" in job_page
    assert job_list["tests.nightly"]["next_run"] == "2030-01-02 11:00:00 CST"


# Bugs --------------------------------------------------------------------------------


def _job_with_underscore() -> str:
    job_id = "tests.send_emails"  # the default id of a function send_emails in tests.py
    Job.objects.create(
        id=job_id,
        name="Send e-mails",
        func="tests.jobs:hourly",
        kind="cron",
        schedule="0 3 * * *",
        timezone="UTC",
        fingerprint="x",
        synced_at=timezone.now(),
    )
    return job_id


def _job_page_url(client: Client, job_id: str) -> str:
    """The job's page, found the way a user finds it: through its link on the job list."""
    links = re.findall(r'href="(/admin/scheduler/job/[^"]+/change/)"', text(client.get(JOBS_URL)))
    assert links == [f"{JOBS_URL}{quote(job_id)}/change/"]
    return links[0]


def test_job_page_shows_recent_runs_of_a_job_id_with_underscore(admin_client):
    job_id = _job_with_underscore()
    run = make_run(job_id=job_id, status="failed")

    page = text(admin_client.get(_job_page_url(admin_client, job_id)))

    assert f"{RUNS_URL}{run.pk}/change/" in page


def test_buttons_work_for_a_job_id_with_underscore(admin_client, calls):
    job_id = _job_with_underscore()
    page = text(admin_client.get(_job_page_url(admin_client, job_id)))
    run_url = re.search(r'action="([^"]*/run/)"', page).group(1)
    pause_url = re.search(r'action="([^"]*/pause/)"', page).group(1)

    assert admin_client.post(run_url).status_code == 302
    assert JobRun.objects.get().job_id == job_id
    assert admin_client.post(pause_url).status_code == 302
    assert Job.objects.get(id=job_id).paused is True


def test_run_page_with_a_malformed_id_redirects(admin_client):
    response = admin_client.get(f"{RUNS_URL}abc/change/")
    assert response.status_code == 302


# Permissions are checked before any work -----------------------------------------------

INSTANCES_URL = "/admin/scheduler/schedulerinstance/"
DASHBOARD_URL = "/admin/scheduler/dashboard/"
JOB_URL = f"{JOBS_URL}tests.nightly/"

# Every view of the scheduler's admin, as (method, URL); {run} and {instance} are filled in.
EVERY_VIEW = [
    ("get", JOBS_URL),
    ("post", JOBS_URL),  # a bulk action: run now
    ("get", f"{JOBS_URL}add/"),
    ("get", f"{JOB_URL}change/"),
    ("post", f"{JOB_URL}change/"),
    ("get", f"{JOB_URL}history/"),
    ("get", f"{JOB_URL}delete/"),
    ("post", f"{JOB_URL}delete/"),
    ("get", f"{JOB_URL}run/"),
    ("post", f"{JOB_URL}run/"),
    ("get", f"{JOB_URL}pause/"),
    ("post", f"{JOB_URL}pause/"),
    ("get", f"{JOB_URL}resume/"),
    ("post", f"{JOB_URL}resume/"),
    ("get", RUNS_URL),
    ("post", RUNS_URL),  # a bulk action: cancel
    ("get", f"{RUNS_URL}add/"),
    ("get", RUNS_URL + "{run}/change/"),
    ("post", RUNS_URL + "{run}/change/"),
    ("get", RUNS_URL + "{run}/history/"),
    ("get", RUNS_URL + "{run}/delete/"),
    ("post", RUNS_URL + "{run}/delete/"),
    ("get", RUNS_URL + "{run}/cancel/"),
    ("post", RUNS_URL + "{run}/cancel/"),
    ("get", INSTANCES_URL),
    ("get", f"{INSTANCES_URL}add/"),
    ("get", INSTANCES_URL + "{instance}/change/"),
    ("get", INSTANCES_URL + "{instance}/history/"),
    ("get", INSTANCES_URL + "{instance}/delete/"),
    ("post", INSTANCES_URL + "{instance}/delete/"),
    ("get", DASHBOARD_URL),
]
ALL_PERMISSIONS = (
    *VIEW,
    "scheduler.run_job",
    "scheduler.pause_job",
    "scheduler.view_schedulerinstance",
    "scheduler.delete_schedulerinstance",
    "scheduler.delete_jobrun",
    "scheduler.change_job",
)


@pytest.fixture
def objects(catalog) -> dict[str, str]:
    """One run and one scheduler instance to aim the views at; the catalog's jobs."""
    now = timezone.now()
    instance = SchedulerInstance.objects.create(
        id="a" * 32,
        hostname="web1",
        pid=4242,
        version="0.1.0",
        role=SchedulerInstance.Role.ACTIVE,
        started_at=now,
        heartbeat_at=now,
    )
    # Queued: a cancel that slipped past a permission check would show.
    run = make_run(status="queued", trigger="manual")
    return {"run": str(run.pk), "instance": instance.pk}


def scheduler_queries(ctx) -> list[str]:
    """Statements on the scheduler's tables or django-apscheduler's (not sessions or users)."""
    return [sql for sql in sqls(ctx) if '"scheduler_' in sql or '"django_apscheduler_' in sql]


def request(client: Client, method: str, url: str, objects: dict[str, str]):
    url = url.format(**objects)
    data = {}
    if method == "post" and url == JOBS_URL:
        data = {"action": "run_now", "_selected_action": ["tests.nightly"], "index": "0"}
    if method == "post" and url == RUNS_URL:
        data = {"action": "cancel", "_selected_action": [objects["run"]], "index": "0"}
    with capture() as ctx:
        response = getattr(client, method)(url, data)
    return response, scheduler_queries(ctx)


def nothing_changed(objects: dict[str, str]) -> None:
    assert list(JobRun.objects.values_list("pk", "status")) == [(int(objects["run"]), "queued")]
    assert not Job.objects.filter(paused=True).exists()
    assert set(Job.objects.values_list("id", flat=True)) == set(TEST_JOBS)
    assert SchedulerInstance.objects.filter(pk=objects["instance"]).exists()


@pytest.mark.parametrize("method, url", EVERY_VIEW)
def test_staff_without_permissions_get_403_before_any_work(staff_client, objects, method, url):
    nobody = staff_client()

    response, queries = request(nobody, method, url, objects)

    assert response.status_code == 403
    assert queries == []
    nothing_changed(objects)


@pytest.mark.parametrize("method, url", EVERY_VIEW)
def test_non_staff_users_are_sent_to_the_login_page(objects, method, url):
    user = User.objects.create_user("outsider", password="x", is_staff=False)
    for perm in ALL_PERMISSIONS:
        app_label, codename = perm.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    client = Client()
    client.force_login(user)

    response, queries = request(client, method, url, objects)

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=")
    assert queries == []
    nothing_changed(objects)


# What a user who may look at everything may still not do: each button, form and delete.
WRITES = [
    ("post", f"{JOB_URL}change/"),
    ("get", f"{JOB_URL}delete/"),
    ("post", f"{JOB_URL}delete/"),
    ("get", f"{JOB_URL}run/"),
    ("post", f"{JOB_URL}run/"),
    ("get", f"{JOB_URL}pause/"),
    ("post", f"{JOB_URL}pause/"),
    ("get", f"{JOB_URL}resume/"),
    ("post", f"{JOB_URL}resume/"),
    ("post", RUNS_URL + "{run}/change/"),
    ("get", RUNS_URL + "{run}/delete/"),
    ("post", RUNS_URL + "{run}/delete/"),
    ("get", RUNS_URL + "{run}/cancel/"),
    ("post", RUNS_URL + "{run}/cancel/"),
    ("get", INSTANCES_URL + "{instance}/delete/"),
    ("post", INSTANCES_URL + "{instance}/delete/"),
]


@pytest.mark.parametrize("method, url", WRITES)
def test_viewers_get_403_before_any_work(staff_client, objects, method, url):
    viewer = staff_client(*VIEW, "scheduler.view_schedulerinstance")

    response, queries = request(viewer, method, url, objects)

    assert response.status_code == 403
    assert queries == []
    nothing_changed(objects)


@pytest.mark.parametrize(
    "perms, url",
    [
        (("scheduler.pause_job",), f"{JOB_URL}run/"),
        (("scheduler.run_job",), f"{JOB_URL}pause/"),
        (("scheduler.run_job",), f"{JOB_URL}resume/"),
        (("scheduler.pause_job",), RUNS_URL + "{run}/cancel/"),
    ],
)
@pytest.mark.parametrize("method", ["get", "post"])
def test_each_button_needs_its_own_permission_whatever_the_method(
    staff_client, objects, perms, url, method
):
    client = staff_client(*VIEW, *perms)

    response, queries = request(client, method, url, objects)

    assert response.status_code == 403
    assert queries == []
    nothing_changed(objects)


@pytest.mark.parametrize(
    "url", [f"{JOB_URL}run/", f"{JOB_URL}pause/", f"{JOB_URL}resume/", RUNS_URL + "{run}/cancel/"]
)
def test_a_permitted_get_on_a_button_is_405_before_any_work(staff_client, objects, url):
    client = staff_client(*VIEW, "scheduler.run_job", "scheduler.pause_job")

    response, queries = request(client, "get", url, objects)

    assert response.status_code == 405
    assert queries == []
    nothing_changed(objects)


def test_job_page_computes_nothing_without_the_view_permission(staff_client, objects):
    # Every permission but the one the page needs: its figures cost a dozen queries.
    client = staff_client("scheduler.view_jobrun", "scheduler.run_job", "scheduler.pause_job")

    response, queries = request(client, "get", f"{JOB_URL}change/", objects)

    assert response.status_code == 403
    assert queries == []


def test_dashboard_needs_the_view_permission_of_runs(staff_client, objects):
    response, queries = request(staff_client(*VIEW[:1]), "get", DASHBOARD_URL, objects)
    assert response.status_code == 403
    assert queries == []

    response, _ = request(staff_client("scheduler.view_jobrun"), "get", DASHBOARD_URL, objects)
    assert response.status_code == 200


def test_actions_a_user_may_not_take_are_not_taken(staff_client, objects):
    viewer = staff_client(*VIEW)
    posts = [
        *((JOBS_URL, action, "tests.nightly") for action in ("run_now", "pause", "resume")),
        (RUNS_URL, "cancel", objects["run"]),
    ]
    for url, action, selected in posts:
        with capture() as ctx:
            response = viewer.post(
                url, {"action": action, "_selected_action": [selected], "index": "0"}, follow=True
            )
        assert response.status_code == 200
        writes = [sql for sql in sqls(ctx) if sql.lstrip().upper().startswith(("INSERT", "UPDATE"))]
        assert not [sql for sql in writes if '"scheduler_' in sql]
    nothing_changed(objects)


# Scheduler instances ------------------------------------------------------------------


def test_scheduler_instances_cannot_be_deleted(admin_client, objects):
    instance = objects["instance"]

    assert admin_client.get(f"{INSTANCES_URL}{instance}/delete/").status_code == 403
    response = admin_client.post(f"{INSTANCES_URL}{instance}/delete/", {"post": "yes"})
    assert response.status_code == 403

    page = admin_client.get(INSTANCES_URL)
    assert page.status_code == 200
    assert "web1:4242" in text(page)
    assert "action-checkbox" not in text(page)
    assert 'name="action"' not in text(page)
    assert "delete_selected" not in text(page)
    admin_client.post(
        INSTANCES_URL, {"action": "delete_selected", "_selected_action": [instance], "post": "yes"}
    )
    assert "Delete" not in strip_tags(text(admin_client.get(f"{INSTANCES_URL}{instance}/change/")))
    assert SchedulerInstance.objects.filter(pk=instance).exists()


def test_page_of_a_missing_job_redirects(admin_client, catalog):
    response = admin_client.get(f"{JOBS_URL}no.such.job/change/", follow=True)
    assert response.redirect_chain == [("/admin/", 302)]
    assert "doesn’t exist" in text(response)


# When the scheduler's database cannot be read ---------------------------------------------

PLAIN = "The scheduler's database cannot be read; details are in the server log."


@contextmanager
def scheduler_database(config: dict) -> Iterator[str]:
    """``SCHEDULER["DATABASE"]`` pointed at a second alias, as in a project with a jobs database.

    Django's connection handler read DATABASES at start, so the alias's
    connection is handed to it here; the test framework allows such
    dynamically created connections (it refuses aliases it knew at start).
    """
    alias = "jobs"
    databases = {**settings.DATABASES, alias: config}
    override = override_settings(
        DATABASES=databases, SCHEDULER={**settings.SCHEDULER, "DATABASE": alias}
    )
    with warnings.catch_warnings():
        # "Overriding setting DATABASES can lead to unexpected behavior": handled below.
        warnings.simplefilter("ignore", UserWarning)
        override.enable()
    filled = connections.configure_settings(
        {DEFAULT_DB_ALIAS: settings.DATABASES[DEFAULT_DB_ALIAS], alias: dict(config)}
    )[alias]
    connection = load_backend(filled["ENGINE"]).DatabaseWrapper(filled, alias)
    setattr(connections._connections, alias, connection)
    try:
        yield alias
    finally:
        connection.close()
        delattr(connections._connections, alias)
        override.disable()


def unreachable_postgres(port: int) -> dict:
    """A PostgreSQL database on a port where nothing listens: connecting is refused."""
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "jobs",
        "USER": "jobs_owner",
        "PASSWORD": "pw-not-for-staff",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "OPTIONS": {"connect_timeout": 5},
    }


def logged_database_errors(caplog) -> list[str]:
    return [
        str(record.exc_info[1])
        for record in caplog.records
        if record.levelno == logging.ERROR and record.exc_info
    ]


def test_dashboard_says_plainly_that_the_database_cannot_be_reached(admin_client, caplog):
    port = free_port()
    with scheduler_database(unreachable_postgres(port)), caplog.at_level(logging.ERROR):
        response = admin_client.get(DASHBOARD_URL)

    assert response.status_code == 200
    page = html_lib.unescape(text(response))
    assert PLAIN in page
    assert "The other figures come from the same database" in page
    for leak in (str(port), "Connection refused", "connection failed", "jobs_owner"):
        assert leak not in page
    # The operator finds the real error in the server log.
    assert any(f"port {port} failed" in error for error in logged_database_errors(caplog))


def test_health_banner_says_plainly_that_the_database_cannot_be_reached(caplog):
    port = free_port()
    with scheduler_database(unreachable_postgres(port)), caplog.at_level(logging.ERROR):
        banner = html_lib.unescape(render_to_string("admin/scheduler/health_banner.html"))

    assert f"Cannot tell whether a scheduler is running: {PLAIN}" in " ".join(banner.split())
    assert str(port) not in banner
    assert "Connection refused" not in banner
    assert any(f"port {port} failed" in error for error in logged_database_errors(caplog))


def test_health_banner_on_a_page_hides_the_database_error(admin_client, catalog, caplog):
    # The rest of the page can be read; the liveness cannot (its table is missing).
    with connections[scheduler_conf.database()].cursor() as cursor:
        cursor.execute("DROP TABLE scheduler_lease")

    with caplog.at_level(logging.ERROR):
        response = admin_client.get(JOBS_URL)

    assert set(job_rows(response)) == set(TEST_JOBS)
    page = html_lib.unescape(text(response))
    assert f"Cannot tell whether a scheduler is running: {PLAIN}" in " ".join(page.split())
    assert "scheduler_lease" not in page
    assert any("no such table: scheduler_lease" in e for e in logged_database_errors(caplog))


def test_health_banner_without_a_scheduler(admin_client, catalog):
    page = html_lib.unescape(text(admin_client.get(JOBS_URL)))
    assert "No scheduler has ever run on this database." in page
    assert PLAIN not in page


# Attempts and pending retries ----------------------------------------------------------


def retry_chain() -> tuple[JobRun, JobRun, JobRun]:
    """A first attempt that failed, a second that timed out, and a third still due."""
    first = make_run(status="failed", scheduled_at=T0, exception="ConnectionError: down")
    second = make_run(
        status="timed_out",
        trigger="retry",
        attempt=2,
        retry_of=first.pk,
        scheduled_at=T0 + timedelta(seconds=2),
    )
    third = make_run(
        status="queued",
        trigger="retry",
        attempt=3,
        retry_of=first.pk,
        scheduled_at=timezone.now() + timedelta(hours=1),
    )
    return first, second, third


def run_page(client: Client, run: JobRun) -> str:
    response = client.get(f"{RUNS_URL}{run.pk}/change/")
    assert response.status_code == 200
    return text(response)


def readonly(page: str, field: str) -> str:
    """The shown value of a read-only field of a change page."""
    match = re.search(
        rf'<div class="[^"]*field-{field}[^"]*">.*?<div class="readonly">(.*?)</div>', page, re.S
    )
    assert match, f"no field {field} on the page"
    return match.group(1)


def attempts_table(page: str) -> list[list[str]]:
    """The attempts table of a run page: each row's cells, as HTML."""
    match = re.search(r'<table class="scheduler-attempts".*?<tbody>(.*?)</tbody>', page, re.S)
    assert match, "no attempts table on the page"
    rows = re.findall(r"<tr>(.*?)</tr>", match.group(1), re.S)
    return [[cell.strip() for cell in re.findall(r"<td>(.*?)</td>", row, re.S)] for row in rows]


def words(html: str) -> str:
    return " ".join(html_lib.unescape(strip_tags(html)).split())


def test_run_list_shows_the_attempt_and_links_the_first(admin_client, catalog):
    first, second, third = retry_chain()

    rows = job_rows(admin_client.get(RUNS_URL))

    assert rows[str(first.pk)]["attempt_text"] == "-"  # the admin's empty value
    first_link = f'<a href="{RUNS_URL}{first.pk}/change/">#{first.pk}</a>'
    assert rows[str(second.pk)]["attempt_text"] == f"attempt 2 ({first_link})"
    assert rows[str(third.pk)]["attempt_text"] == f"attempt 3 ({first_link})"
    assert words(rows[str(second.pk)]["status_badge"]) == "timed out"


def test_a_pending_retry_says_when_it_is_due_in_the_active_time_zone(admin_client, catalog):
    due = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)
    retry = make_run(status="queued", trigger="retry", attempt=2, retry_of=1, scheduled_at=due)
    request = make_run(status="queued", trigger="manual", scheduled_at=due)

    rows = job_rows(admin_client.get(RUNS_URL))
    due_words = "queued retry due at 2030-05-01 12:00:00 UTC"
    assert words(rows[str(retry.pk)]["status_badge"]) == due_words
    # A run-now request is not a retry: it has no due time of its own.
    assert words(rows[str(request.pk)]["status_badge"]) == "queued"

    with override_settings(TIME_ZONE="Asia/Shanghai"):
        page = run_page(admin_client, retry)
    assert words(readonly(page, "status_badge")) == "queued retry due at 2030-05-01 20:00:00 CST"


def test_run_page_shows_the_attempt_and_every_attempt_of_the_first_run(admin_client, catalog):
    first, second, third = retry_chain()
    # Another chain: not listed.
    other = make_run(status="failed", scheduled_at=T0 + timedelta(minutes=1))
    make_run(status="succeeded", trigger="retry", attempt=2, retry_of=other.pk)

    page = run_page(admin_client, second)

    assert readonly(page, "attempt") == "2"
    first_link = f'<a href="{RUNS_URL}{first.pk}/change/">#{first.pk}</a>'
    assert readonly(page, "retry_of_link") == first_link
    table = attempts_table(page)
    assert [row[0] for row in table] == ["1", "2", "3"]
    assert table[0][1] == first_link
    assert words(table[1][1]) == f"#{second.pk} (this run)"
    assert table[2][1] == f'<a href="{RUNS_URL}{third.pk}/change/">#{third.pk}</a>'
    assert [words(row[2]) for row in table] == [
        "failed",
        "timed out",
        f"queued retry due at {describe_when(third.scheduled_at)}",
    ]

    # From the first attempt, the same list.
    first_page = run_page(admin_client, first)
    assert readonly(first_page, "attempt") == "1"
    assert readonly(first_page, "retry_of_link") == "—"
    table = attempts_table(first_page)
    assert [words(row[1]) for row in table] == [
        f"#{first.pk} (this run)",
        f"#{second.pk}",
        f"#{third.pk}",
    ]


def describe_when(value: datetime) -> str:
    return f"{timezone.localtime(value):%Y-%m-%d %H:%M:%S %Z}"


def test_a_run_without_retries_has_no_attempts_table(admin_client, catalog):
    page = run_page(admin_client, make_run(status="failed"))
    assert readonly(page, "attempt") == "1"
    assert "scheduler-attempts" not in page


def test_a_retry_whose_first_attempt_was_pruned_lists_the_attempts_left(admin_client, catalog):
    first, second, third = retry_chain()
    first.delete()

    table = attempts_table(run_page(admin_client, third))

    assert [row[0] for row in table] == ["2", "3"]


def test_run_page_reloads_as_often_as_the_run_can_change(admin_client, catalog):
    soon = make_run(status="queued", trigger="manual", scheduled_at=timezone.now())
    later = make_run(
        status="queued",
        trigger="retry",
        attempt=2,
        retry_of=soon.pk,
        scheduled_at=timezone.now() + timedelta(hours=1),
    )
    running = make_run(status="running", scheduled_at=T0 + timedelta(minutes=1))

    assert f'{REFRESH} content="1">' in run_page(admin_client, soon)
    assert f'{REFRESH} content="1">' in run_page(admin_client, running)
    # A retry due in an hour: not a reload every second until then.
    assert f'{REFRESH} content="30">' in run_page(admin_client, later)


# Cancelling queued runs ------------------------------------------------------------------


def cancel_action(client: Client, runs: list[JobRun], **extra: str):
    data = {"action": "cancel", "_selected_action": [run.pk for run in runs], "index": "0"}
    return client.post(RUNS_URL, {**data, **extra}, follow=True)


def page_messages(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def test_cancel_action_cancels_the_queued_runs_only(admin_client, admin_user, catalog):
    now = timezone.now()
    retry = make_run(status="queued", trigger="retry", attempt=2, retry_of=1, scheduled_at=now)
    request = make_run(status="queued", trigger="manual", scheduled_at=now)
    fire_time = make_run(status="queued", trigger="schedule", scheduled_at=now)
    running = make_run(status="running", scheduled_at=now - timedelta(minutes=1))
    done = make_run(status="succeeded", scheduled_at=now - timedelta(minutes=2))
    untouched = make_run(status="queued", trigger="manual", scheduled_at=now)

    response = cancel_action(admin_client, [retry, request, fire_time, running, done])

    assert page_messages(response) == [
        "Cancelled 3 queued runs.",
        "2 selected runs were not queued (they had started or ended): left as they are.",
    ]
    reason = f"Skipped: cancelled from the admin by {admin_user.username}."
    for run in (retry, request, fire_time):
        run.refresh_from_db()
        assert (run.status, run.exception) == ("skipped", reason)
        assert abs(run.finished_at - timezone.now()) < timedelta(minutes=1)
    for run, status in ((running, "running"), (done, "succeeded"), (untouched, "queued")):
        run.refresh_from_db()
        assert (run.status, run.exception, run.finished_at) == (status, "", None)


def test_cancel_leaves_a_run_the_scheduler_started_meanwhile(admin_client, catalog):
    run = make_run(status="queued", trigger="manual", scheduled_at=timezone.now())
    page = run_page(admin_client, run)
    assert 'value="cancel"' in text(admin_client.get(RUNS_URL))
    assert f"{RUNS_URL}{run.pk}/cancel/" in page

    # The scheduler claims it between the page and the click.
    JobRun.objects.filter(pk=run.pk).update(status="running")
    by_action = cancel_action(admin_client, [run])
    by_button = admin_client.post(f"{RUNS_URL}{run.pk}/cancel/", follow=True)

    assert page_messages(by_action) == [
        "1 selected run was not queued (it had started or ended): left as it is."
    ]
    assert by_button.redirect_chain == [(f"{RUNS_URL}{run.pk}/change/", 302)]
    assert page_messages(by_button) == [
        f"Run #{run.pk} was not queued any more (it had started or ended): left as it is."
    ]
    run.refresh_from_db()
    assert (run.status, run.exception, run.finished_at) == ("running", "", None)


def test_cancel_button_cancels_once(admin_client, admin_user, catalog):
    run = make_run(status="queued", trigger="retry", attempt=2, retry_of=1, scheduled_at=T0)

    first = admin_client.post(f"{RUNS_URL}{run.pk}/cancel/", follow=True)
    run.refresh_from_db()
    finished = run.finished_at
    # A double click: the second finds it cancelled, and changes nothing.
    second = admin_client.post(f"{RUNS_URL}{run.pk}/cancel/", follow=True)

    assert page_messages(first) == [f"Cancelled run #{run.pk}."]
    assert "was not queued any more" in page_messages(second)[0]
    run.refresh_from_db()
    assert run.status == "skipped"
    assert run.finished_at == finished
    assert run.exception == f"Skipped: cancelled from the admin by {admin_user.username}."
    # Ended: no button, no reloading.
    page = run_page(admin_client, run)
    assert f"{RUNS_URL}{run.pk}/cancel/" not in page
    assert REFRESH not in page


def test_cancel_across_every_page_cancels_the_queued_runs_the_filters_match(admin_client, catalog):
    now = timezone.now()
    nightly = [make_run(status="queued", trigger="manual", scheduled_at=now) for _ in range(2)]
    hourly = make_run(job_id="tests.hourly", status="queued", trigger="manual", scheduled_at=now)
    make_run(status="succeeded", scheduled_at=now - timedelta(minutes=1))

    response = admin_client.post(
        f"{RUNS_URL}?job_id__exact=tests.nightly",
        {"action": "cancel", "select_across": "1", "_selected_action": [nightly[0].pk]},
        follow=True,
    )

    # Not "n were not queued": the runs that never were are not counted for it.
    assert page_messages(response) == ["Cancelled 2 queued runs."]
    assert sorted(JobRun.objects.values_list("job_id", "status")) == [
        ("tests.hourly", "queued"),
        ("tests.nightly", "skipped"),
        ("tests.nightly", "skipped"),
        ("tests.nightly", "succeeded"),
    ]
    assert JobRun.objects.get(pk=hourly.pk).status == "queued"


def test_cancel_needs_the_run_permission(staff_client, catalog):
    run = make_run(status="queued", trigger="manual", scheduled_at=timezone.now())
    viewer = staff_client(*VIEW, "scheduler.pause_job")

    assert 'value="cancel"' not in text(viewer.get(RUNS_URL))
    assert f"{RUNS_URL}{run.pk}/cancel/" not in run_page(viewer, run)
    cancel_action(viewer, [run])
    assert viewer.post(f"{RUNS_URL}{run.pk}/cancel/").status_code == 403
    assert JobRun.objects.get(pk=run.pk).status == "queued"

    runner = staff_client(*VIEW, "scheduler.run_job")
    assert 'value="cancel"' in text(runner.get(RUNS_URL))
    response = cancel_action(runner, [run])
    assert page_messages(response) == ["Cancelled 1 queued run."]
    run.refresh_from_db()
    assert run.exception == f"Skipped: cancelled from the admin by {runner.user.username}."


def test_cancel_button_needs_the_csrf_token(admin_user, catalog):
    run = make_run(status="queued", trigger="manual", scheduled_at=timezone.now())
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)

    assert client.post(f"{RUNS_URL}{run.pk}/cancel/").status_code == 403
    assert JobRun.objects.get(pk=run.pk).status == "queued"

    page = run_page(client, run)
    form = re.search(r'<form method="post" action="([^"]*/cancel/)".*?</form>', page, re.S)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.group(0)).group(1)
    assert client.post(form.group(1), {"csrfmiddlewaretoken": token}).status_code == 302
    assert JobRun.objects.get(pk=run.pk).status == "skipped"


def test_cancel_of_an_unknown_run_is_404(admin_client, catalog):
    assert admin_client.post(f"{RUNS_URL}999999/cancel/").status_code == 404
    assert admin_client.post(f"{RUNS_URL}abc/cancel/").status_code == 404


def test_the_selection_counter_states_no_count_it_did_not_make(admin_client, catalog, monkeypatch):
    monkeypatch.setattr(scheduler_paginator, "COUNT_LIMIT", 60)
    _many_runs(120)

    page = words(text(admin_client.get(RUNS_URL)))

    assert "Select all of more than 60 runs" in page
    assert "61" not in page


# The job's run options -------------------------------------------------------------------


def run_options(client: Client, job_id: str) -> dict[str, tuple[str, str]]:
    """The job page's run options: {option: (value, where it comes from)}."""
    page = text(client.get(f"{JOBS_URL}{job_id}/change/"))
    match = re.search(r'<table class="scheduler-options">.*?<tbody>(.*?)</tbody>', page, re.S)
    assert match, "no run options on the job page"
    rows = re.findall(
        r'<tr><th scope="row">(.*?)</th><td>(.*?)</td><td>(.*?)</td></tr>', match.group(1)
    )
    return {words(name): (words(value), words(source)) for name, value, source in rows}


def test_job_page_shows_the_project_defaults_of_a_job_that_declares_none(
    admin_client, catalog, settings
):
    assert Job.objects.get(id="tests.nightly").run_options == {}
    settings.SCHEDULER = {**settings.SCHEDULER, "TIMEOUT": 90, "RETRIES": 2}

    options = run_options(admin_client, "tests.nightly")

    assert options == {
        "timeout": ("1 min 30 s", "project default (SCHEDULER['TIMEOUT'])"),
        "isolation": ("thread", "project default (SCHEDULER['ISOLATION'])"),
        "retries": ("2", "project default (SCHEDULER['RETRIES'])"),
        "wait before a retry": ("1 s, doubling up to 10 min, with jitter", "default"),
        "retry on": ("any exception, and a crash of its child process", "default"),
        "overlap": ("skip: a fire time that comes while a run is going is skipped", "default"),
        "executor": ("this scheduler", "project default (SCHEDULER['EXECUTOR'])"),
    }


def test_job_page_without_retries_says_so_and_no_more(admin_client, catalog):
    options = run_options(admin_client, "tests.nightly")

    assert options["timeout"] == ("no limit", "project default (SCHEDULER['TIMEOUT'])")
    assert options["retries"] == ("none", "project default (SCHEDULER['RETRIES'])")
    assert list(options) == ["timeout", "isolation", "retries", "overlap", "executor"]


def test_job_page_shows_the_run_options_a_job_declares(admin_client, catalog, settings):
    settings.SCHEDULER = {**settings.SCHEDULER, "TIMEOUT": 90, "ISOLATION": "thread"}
    Job.objects.filter(id="tests.hourly").update(
        run_options={
            "timeout": 5.0,
            "isolation": "process",
            "retries": 3,
            "retry_backoff": {"base": 2, "cap": 30, "jitter": False},
            "retry_on": ["builtins.ConnectionError", "myapp.errors.Flaky"],
            "overlap": "queue",
            "executor": "celery",
            "queue": "reports",
            "priority": 7,
            "expires": 60.0,
        }
    )

    options = run_options(admin_client, "tests.hourly")

    declared = "declared by the job"
    assert options == {
        "timeout": ("5 s", declared),
        "isolation": ("child process", declared),
        "retries": ("3", declared),
        "wait before a retry": ("2 s, doubling up to 30 s, without jitter", declared),
        "retry on": ("ConnectionError, myapp.errors.Flaky", declared),
        "overlap": (
            "queue: a fire time that comes while a run is going waits for it to end",
            declared,
        ),
        "executor": ("a Celery worker fleet", declared),
        "queue": ("reports", declared),
        "priority": ("7", declared),
        "expires": ("1 min", declared),
    }


def test_job_page_overlap_default_follows_max_instances(admin_client, catalog):
    job = Job.objects.get(id="tests.hourly")
    Job.objects.filter(id=job.id).update(options={**job.options, "max_instances": 3})

    options = run_options(admin_client, "tests.hourly")

    assert options["overlap"] == ("allow: runs side by side, up to max_instances", "default")


def test_job_page_shows_run_options_in_chinese(admin_client, catalog):
    Job.objects.filter(id="tests.hourly").update(run_options={"retries": 1, "timeout": 5})

    admin_client.cookies["django_language"] = "zh-hans"
    options = run_options(admin_client, "tests.hourly")

    assert "超时" in options
    assert options["超时"][0] == "5 秒"
    assert all(re.search(r"[\u4e00-\u9fff]", source) for _value, source in options.values())


# The queue on the dashboard ---------------------------------------------------------------


def test_dashboard_counts_the_queue_by_trigger(admin_client, catalog):
    now = timezone.now()
    for n in range(2):
        make_run(status="queued", trigger="retry", attempt=2, retry_of=n + 1, scheduled_at=now)
    make_run(status="queued", trigger="manual", scheduled_at=now)
    make_run(status="skipped", trigger="retry", attempt=2, retry_of=9, scheduled_at=now)
    make_run(status="running", trigger="retry", attempt=2, retry_of=10, scheduled_at=now)
    # Sent to Celery, not taken by a worker yet: counted apart, whatever its trigger.
    make_run(status="queued", trigger="schedule", executor="celery", scheduled_at=now)

    response = admin_client.get(DASHBOARD_URL)

    counts = {kind: count.n for kind, count in response.context["queued"].items()}
    assert counts == {
        "schedule": 0,
        "manual": 1,
        "retry": 2,
        "code": 0,
        "task": 0,
        "worker": 1,
        "next_hour": 2,  # the two retries, due now
    }
    card = re.search(r'<ul class="scheduler-queued">(.*?)</ul>', text(response), re.S).group(1)
    assert words(card) == (
        "0 runs scheduled from code 0 enqueued tasks 2 pending retries 1 run-now request "
        "0 fire times waiting for a run to end 1 run waiting for a worker"
    )
    assert f"{RUNS_URL}?status__exact=queued&amp;trigger__exact=retry" in card
    waiting = admin_client.get(f"{RUNS_URL}?status__exact=queued&executor=celery")
    assert [run.executor for run in waiting.context["cl"].result_list] == ["celery"]


def test_run_page_says_where_a_run_ran(admin_client, catalog):
    here = make_run(hostname="web-1", scheduled_at=timezone.now())
    sent = make_run(
        status="succeeded", executor="celery", hostname="w1@box", scheduled_at=timezone.now()
    )
    waiting = make_run(status="queued", executor="celery", scheduled_at=timezone.now())

    def where(run: JobRun) -> str:
        page = text(admin_client.get(f"{RUNS_URL}{run.pk}/change/"))
        found = re.search(r"Ran on:?\s*</label>\s*<div class=\"readonly\">(.*?)</div>", page, re.S)
        assert found, page[:2000]
        return words(found.group(1))

    assert where(here) == "the scheduler"
    assert where(sent) == f"a Celery worker (task id scheduler-run-{sent.pk})"
    assert where(waiting) == f"waiting for a Celery worker (task id scheduler-run-{waiting.pk})"


def test_a_timed_out_run_counts_as_a_failure(admin_client, catalog):
    now = timezone.now()
    make_run(job_id="tests.hourly", scheduled_at=now - timedelta(hours=2), duration=1)
    make_run(
        job_id="tests.hourly",
        status="timed_out",
        scheduled_at=now - timedelta(hours=1),
        finished_at=now - timedelta(hours=1),
        duration=5,
        exception="Timed out after 5 s.",
    )

    dashboard = admin_client.get(DASHBOARD_URL)
    job_page = admin_client.get(f"{JOBS_URL}tests.hourly/change/")

    assert [job.id for job in dashboard.context["failing"]] == ["tests.hourly"]
    assert job_page.context["summary"]["success_rate"] == 0.5


@pytest.mark.skipif(
    connections[DEFAULT_DB_ALIAS].vendor != "sqlite", reason="the query plans of SQLite"
)
def test_the_queue_is_counted_from_the_queued_runs_only():
    # Each kind a bounded range of the partial index run_queued_kind (the queued rows
    # only): neither every run ever, nor every one of a million runs waiting.
    with capture() as ctx:
        stats.queued_by_trigger(timezone.now())

    (sql,) = [sql for sql in sqls(ctx) if '"scheduler_jobrun"' in sql]
    with connections[scheduler_conf.database()].cursor() as cursor:
        cursor.execute(f"EXPLAIN QUERY PLAN {sql}")
        plan = [row[-1] for row in cursor.fetchall()]
    reads = [step for step in plan if "scheduler_jobrun" in step]
    assert len(reads) == len(JobRun.Trigger.values) + 2 + 3, plan
    for read in reads:
        assert read.startswith("SEARCH"), plan
        assert "USING INDEX run_queued_kind (executor" in read, plan
    assert sql.count("LIMIT 10001") == len(reads)


# Incidents ---------------------------------------------------------------------------------


def test_the_dashboard_lists_open_incidents_and_an_incident_page_its_notifications(
    admin_client, catalog
):
    from scheduler.models import Incident, Notification

    now = timezone.now()
    open_one = Incident.objects.create(
        kind="failing",
        job_id="tests.hourly",
        title="Hourly (tests.hourly) failed once",
        detail="ValueError: <b>not html</b>",
        opened_at=now,
        last_seen_at=now,
    )
    Incident.objects.create(
        kind="missed",
        job_id="tests.nightly",
        title="Nightly missed a fire time",
        opened_at=now,
        last_seen_at=now,
        resolved_at=now,
    )
    Notification.objects.create(
        incident=open_one,
        state="opened",
        notifier="webhook:hooks.example.com",
        created_at=now,
        next_try_at=now,
        attempts=2,
        last_error="HTTP 500",
    )
    dashboard = text(admin_client.get(DASHBOARD_URL))
    card = re.search(r'aria-labelledby="incidents-heading">(.*?)</section>', dashboard, re.S)
    assert card is not None
    assert "Hourly (tests.hourly) failed once" in card.group(1)
    assert "Nightly missed a fire time" not in card.group(1)  # resolved
    page = text(admin_client.get(f"/admin/scheduler/incident/{open_one.pk}/change/"))
    assert "ValueError: &lt;b&gt;not html&lt;/b&gt;" in page
    assert "webhook:hooks.example.com" in page and "HTTP 500" in page
    listing = admin_client.get("/admin/scheduler/incident/?open=1")
    assert [i.pk for i in listing.context["cl"].result_list] == [open_one.pk]


def test_runs_scheduled_for_later_are_not_the_last_days_runs(admin_client, catalog):
    """A run scheduled from code for tomorrow is waiting, not a run of the last 24 hours."""
    later = timezone.now() + timedelta(hours=20)
    for n in range(3):
        make_run(status="queued", trigger="code", scheduled_at=later + timedelta(seconds=n))
    make_run(status="succeeded", duration=1.0, scheduled_at=timezone.now() - timedelta(hours=1))
    response = admin_client.get(DASHBOARD_URL)
    assert response.context["total_day"] == 1
    assert response.context["queued"]["code"].n == 3
