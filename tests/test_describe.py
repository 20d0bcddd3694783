"""scheduler/describe.py: what the admin says about schedules, durations, times and states.

Every accepted declaration renders on the admin's pages (test_schedules_render.py);
here, the words themselves, for the shapes a schedule can take.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from django.utils import timezone, translation
from django.utils.html import format_html

from scheduler import describe
from scheduler.models import JobRun, RunStatus


def unsaved_run(**fields: Any) -> JobRun:
    """An unsaved run: describe reads its fields only."""
    return JobRun(job_id="t.job", **fields)


# -- schedules in words -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("crontab", "words"),
    [
        ("* * * * *", "Every minute"),
        ("0 */2 * * *", "Every 2 hours"),
        ("5-10 * * * *", "Minutes 5 through 10 past the hour"),
        ("0 0 1,15 * *", "At 00:00, on day 1 and 15 of the month"),
        (
            "0 9-17/2 * * mon-fri",
            "Every 2 hours, between 09:00 and 17:59, Monday through Friday",
        ),
        ("30 18 * * 0", "At 18:30, only on Sunday"),
        ("@hourly", "Every hour"),
        (" @DAILY ", "At 00:00"),
        ("@midnight", "At 00:00"),
        ("@monthly", "At 00:00, on day 1 of the month"),
        ("@yearly", "At 00:00, on day 1 of the month, only in January"),
        ("@annually", "At 00:00, on day 1 of the month, only in January"),
    ],
)
def test_a_crontab_in_words(crontab: str, words: str) -> None:
    assert describe.schedule_words("cron", {"crontab": crontab}, crontab) == words


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        (
            dict.fromkeys(["second", "minute", "hour", "day", "month", "day_of_week"], "*"),
            "Every second",
        ),
        ({"second": "*"}, "Every second"),
        # APScheduler: the fields below the least significant one given start at their
        # minimum, the ones above it are "*".
        ({"minute": "*"}, "Every minute"),
        ({"hour": "*"}, "Every hour"),
        ({"day": "*"}, "At 00:00"),
        ({"month": "*"}, "At 00:00, on day 1 of the month"),
        ({"month": "6"}, "At 00:00, on day 1 of the month, only in June"),
        ({"day_of_week": "*"}, "At 00:00"),
        ({"day_of_week": "mon"}, "At 00:00, only on Monday"),
        (
            {"month": "jan-mar", "day_of_week": "mon"},
            "At 00:00, only on Monday, January through March",
        ),
        ({"day_of_week": "mon-fri", "hour": "8"}, "At 08:00, Monday through Friday"),
        ({"minute": "0-30/10"}, "Every 10 minutes, minutes 0 through 30 past the hour"),
        ({"minute": "*/15", "hour": "9-17"}, "Every 15 minutes, between 09:00 and 17:59"),
        # APScheduler allows spaces around the commas of a list, and around a value.
        ({"hour": "1, 2 ,3"}, "At 01:00, 02:00 and 03:00"),
        ({"hour": " 8 ", "minute": "5"}, "At 08:05"),
    ],
    ids=repr,
)
def test_cron_fields_in_words(fields: dict[str, Any], words: str) -> None:
    assert describe.schedule_words("cron", fields, "raw text") == words


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        ("cron", {"crontab": "@reboot"}),
        ("cron", {"crontab": "not a crontab"}),
        ("cron", {}),
        ("cron", None),  # a catalog row written before the fields were kept
        # APScheduler's own forms, which cron words would say wrongly.
        ("cron", {"day": "last"}),
        ("cron", {"day": "2nd mon"}),
        ("cron", {"day_of_week": "0"}),  # Monday to APScheduler, Sunday to cron
        ("cron", {"week": "2"}),
        ("cron", {"year": "2030", "month": "1"}),
        ("cron", {"day": "13", "day_of_week": "fri"}),  # both, where cron says either
        ("interval", {"seconds": 0}),
        ("interval", {"hours": 1, "minutes": -30}),  # a negative part, a positive sum
        ("interval", {"seconds": True}),
    ],
    ids=repr,
)
def test_what_cannot_be_worded_shows_the_raw_text(kind: str, fields: Any) -> None:
    assert describe.schedule_words(kind, fields, "raw text") == "raw text"


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"seconds": 30}, "every 30 s"),
        ({"weeks": 1}, "every 7 days"),
        ({"hours": 24}, "every 1 day"),
        ({"minutes": 1.5}, "every 1 min 30 s"),
        ({"seconds": 90, "minutes": 0}, "every 1 min 30 s"),
        ({"days": 1, "hours": 1, "minutes": 1, "seconds": 1.5}, "every 1 day 1 h 1 min 1.5 s"),
        ({"seconds": 59.9999}, "every 1 min"),
        ({"days": 2, "seconds": 0.25}, "every 2 days 0.25 s"),
    ],
    ids=repr,
)
def test_an_interval_in_words(fields: dict[str, Any], words: str) -> None:
    assert describe.schedule_words("interval", fields, "raw text") == words


def test_schedules_are_worded_in_the_active_language() -> None:
    with translation.override("zh-hans"):
        assert describe.schedule_words("cron", {"crontab": "0 3 * * *"}, "raw") == "在 03:00"
        assert describe.schedule_words("interval", {"hours": 1, "seconds": 30}, "raw") == (
            "每 1 小时 30 秒"
        )
    # A language cron-descriptor does not know: its words in English.
    with translation.override("pt-br"):
        assert describe.schedule_words("cron", {"crontab": "0 3 * * *"}, "raw") == "At 03:00"


# -- durations ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (None, "—"),
        (0, "0 ms"),
        (0.25, "250 ms"),
        (1, "1 s"),
        (1.5, "1.5 s"),
        (65, "1 min 5 s"),
        (3600, "1 h"),
        (7385, "2 h 3 min"),  # seconds are left out once there are hours
        (86400, "1 day"),
        (2 * 86400 + 4 * 3600 + 59 * 60, "2 days 4 h"),  # minutes, once there are days
    ],
)
def test_a_run_duration_in_words(seconds: float | None, words: str) -> None:
    assert describe.duration_words(seconds) == words


def test_durations_in_the_active_language() -> None:
    with translation.override("zh-hans"):
        assert describe.duration_words(3723) == "1 小时 2 分钟"
        assert describe.duration_words(2 * 86400) == "2 天"


@pytest.mark.parametrize(
    ("fraction", "text"), [(None, "—"), (0, "0.0 %"), (0.1234, "12.3 %"), (1, "100.0 %")]
)
def test_a_percentage(fraction: float | None, text: str) -> None:
    assert describe.percent(fraction) == text


# -- times and time zones -----------------------------------------------------------------------

# The last second before DST begins in Paris, the first after, and the hour that repeats
# when it ends (once in summer time, once in winter time).
SPRING = datetime(2026, 3, 29, 0, 59, 59, tzinfo=UTC)
SPRING_AFTER = datetime(2026, 3, 29, 1, 0, 0, tzinfo=UTC)
AUTUMN_FIRST = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
AUTUMN_SECOND = datetime(2026, 10, 25, 1, 30, tzinfo=UTC)


def test_a_time_is_shown_in_the_active_time_zone_with_its_name() -> None:
    assert describe.when(None) == "—"
    assert describe.when(SPRING) == "2026-03-29 00:59:59 UTC"  # the settings' TIME_ZONE
    with timezone.override("Europe/Paris"):
        assert describe.when(SPRING) == "2026-03-29 01:59:59 CET"
        assert describe.when(SPRING_AFTER) == "2026-03-29 03:00:00 CEST"
        assert describe.when(AUTUMN_FIRST) == "2026-10-25 02:30:00 CEST"
        assert describe.when(AUTUMN_SECOND) == "2026-10-25 02:30:00 CET"


@pytest.mark.parametrize(
    ("zone", "first", "second"),
    [
        ("UTC", "2026-10-25 00:30:00 UTC", "2026-10-25 01:30:00 UTC"),
        ("Europe/Paris", "2026-10-25 02:30:00 CEST", "2026-10-25 02:30:00 CET"),
        ("Asia/Kolkata", "2026-10-25 06:00:00 IST", "2026-10-25 07:00:00 IST"),
        ("America/New_York", "2026-10-24 20:30:00 EDT", "2026-10-24 21:30:00 EDT"),
        ("Australia/Lord_Howe", "2026-10-25 11:30:00 +11", "2026-10-25 12:30:00 +11"),
    ],
)
def test_a_fire_time_is_shown_in_its_jobs_time_zone(zone: str, first: str, second: str) -> None:
    with timezone.override("Asia/Tokyo"):  # not the active one
        assert describe.when_in(AUTUMN_FIRST, zone) == first
        assert describe.when_in(AUTUMN_SECOND, zone) == second


# -- badges ---------------------------------------------------------------------------------------

STYLE = "padding:1px 8px;border-radius:9px;font-weight:600;white-space:nowrap"


@pytest.mark.parametrize(
    ("state", "label", "html"),
    [
        (
            "active",
            "active",
            '<span class="scheduler-badge scheduler-state-active" '
            f'style="color:#166534;background:#dcfce7;{STYLE}">active</span>',
        ),
        (
            "paused",
            format_html("{} ({})", "paused", "waiting for the scheduler"),
            '<span class="scheduler-badge scheduler-state-paused" '
            f'style="color:#92400e;background:#fef3c7;{STYLE}">'
            "paused (waiting for the scheduler)</span>",
        ),
        (
            "disabled",
            "disabled in code",
            '<span class="scheduler-badge scheduler-state-disabled" '
            f'style="color:#6b21a8;background:#f3e8ff;{STYLE}">disabled in code</span>',
        ),
        (
            "standby",
            "<b>standby</b>",
            '<span class="scheduler-badge scheduler-state-standby" '
            f'style="color:#475569;background:#e2e8f0;{STYLE}">&lt;b&gt;standby&lt;/b&gt;</span>',
        ),
        (
            'new" onclick="x',
            "new",
            '<span class="scheduler-badge scheduler-state-new&quot; onclick=&quot;x" '
            f'style="color:#111827;background:#f3f4f6;{STYLE}">new</span>',
        ),
    ],
    ids=["active", "paused-pending", "disabled", "label-escaped", "unknown-state"],
)
def test_a_state_badge_names_the_state_in_text(state: str, label: Any, html: str) -> None:
    assert describe.state_badge(state, label) == html


def test_a_status_badge_names_the_status_in_text() -> None:
    assert describe.status_badge(None) == describe.status_badge("") == "—"
    assert describe.status_badge("failed") == (
        '<span class="scheduler-badge scheduler-failed" '
        f'style="color:#991b1b;background:#fee2e2;{STYLE}">failed</span>'
    )
    with translation.override("zh-hans"):
        badge = describe.status_badge("succeeded", RunStatus.SUCCEEDED.label)
    assert badge == (
        '<span class="scheduler-badge scheduler-succeeded" '
        f'style="color:#166534;background:#dcfce7;{STYLE}">成功</span>'
    )


# -- the duration chart ---------------------------------------------------------------------------


def bars(svg: str) -> list[tuple[str, str, str]]:
    """(height, colour, tooltip) of each bar."""
    return re.findall(
        r'<rect x="[\d.]+" y="[\d.]+" width="[\d.]+" height="([\d.]+)" fill="(#\w+)">'
        r"<title>(.*?)</title></rect>",
        svg,
    )


def test_the_duration_chart_has_a_bar_per_run_with_its_words() -> None:
    at = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)
    runs = [
        {"scheduled_at": at, "status": "succeeded", "duration": 25},
        {"scheduled_at": at, "status": "failed", "duration": 125},
        {"scheduled_at": at, "status": "interrupted", "duration": None},
    ]
    svg = describe.duration_chart(runs)
    assert bars(svg) == [
        ("20.0", "#166534", "2030-05-01 12:00:00 UTC: succeeded, 25 s"),
        ("100.0", "#991b1b", "2030-05-01 12:00:00 UTC: failed, 2 min 5 s"),
        ("2.0", "#9a3412", "2030-05-01 12:00:00 UTC: interrupted, —"),
    ]
    assert '<title id="chart-title">Durations of the last 3 runs</title>' in svg
    assert '<desc id="chart-desc">Longest: 2 min 5 s. Bars are coloured by status.</desc>' in svg


def test_the_duration_chart_of_no_runs_or_of_instant_ones() -> None:
    assert describe.duration_chart([]) == "<p>No finished runs yet.</p>"
    at = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)
    svg = describe.duration_chart([{"scheduled_at": at, "status": "succeeded", "duration": 0}])
    assert bars(svg) == [("2.0", "#166534", "2030-05-01 12:00:00 UTC: succeeded, 0 ms")]


# -- a job's run options ------------------------------------------------------------------------


def option_values(declared: Any, max_instances: Any = 1) -> dict[str, str]:
    return {name: value for name, value, _source in describe.run_options(declared, max_instances)}


@pytest.mark.parametrize(
    ("backoff", "words"),
    [
        ({"base": 1, "cap": 600, "jitter": True}, "1 s, doubling up to 10 min, with jitter"),
        ({"base": 2, "cap": 30, "jitter": False}, "2 s, doubling up to 30 s, without jitter"),
        ({"base": 0.5, "cap": 3600, "jitter": False}, "0.5 s, doubling up to 1 h, without jitter"),
        # min(cap, base * 2 ** n): a cap at or below the base is the same wait every time.
        ({"base": 30, "cap": 10, "jitter": False}, "10 s each time"),
        ({"base": 5, "cap": 5, "jitter": True}, "a random time up to 5 s each time"),
        ({"base": 0, "cap": 60, "jitter": False}, "0 s each time"),
    ],
)
def test_a_retry_backoff_in_words(backoff: dict[str, Any], words: str) -> None:
    values = option_values({"retries": 2, "retry_backoff": backoff})
    assert values["wait before a retry"] == words


def test_the_sources_of_run_options(settings: Any) -> None:
    settings.SCHEDULER = {**settings.SCHEDULER, "RETRIES": 1}
    rows = describe.run_options({"timeout": 2, "overlap": "replace"}, 1)
    assert [(name, source) for name, _value, source in rows] == [
        ("timeout", "declared by the job"),
        ("isolation", "project default (SCHEDULER['ISOLATION'])"),
        ("retries", "project default (SCHEDULER['RETRIES'])"),
        ("wait before a retry", "default"),
        ("retry on", "default"),
        ("overlap", "declared by the job"),
        ("executor", "project default (SCHEDULER['EXECUTOR'])"),
    ]


@pytest.mark.parametrize(
    "declared",
    [
        None,
        [],
        "timeout=5",
        {"timeout": "soon", "isolation": 3, "retries": "many", "overlap": ["x"]},
        {"retries": 2, "retry_backoff": {"base": "1"}, "retry_on": "OSError"},
        {"retries": 2, "retry_backoff": 7, "retry_on": [1, 2]},
        {"timeout": float("inf"), "retry_backoff": {"base": 1, "cap": 1e300, "jitter": True}},
        {"executor": ["celery"], "queue": 5, "priority": "high", "expires": "soon"},
    ],
)
def test_run_options_written_by_other_code_are_shown_as_stored(declared: Any) -> None:
    # The job's page shows every catalog row; nothing here may raise.
    rows = describe.run_options(declared, "three")
    assert [name for name, _value, _source in rows][:3] == ["timeout", "isolation", "retries"]
    if isinstance(declared, dict) and "timeout" in declared:
        assert option_values(declared)["timeout"] == str(declared["timeout"])


def test_run_options_in_the_active_language() -> None:
    with translation.override("zh-hans"):
        values = option_values({"timeout": 90, "isolation": "process", "retries": 0})
    assert values == {
        "超时": "1 分钟 30 秒",
        "隔离方式": "子进程",
        "重试次数": "无",
        "重叠策略": "skip：运行期间到来的触发时间被跳过",
        "执行器": "本调度器",
    }


def test_a_pending_retry_s_badge_says_when_it_is_due() -> None:
    due = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)
    retry = unsaved_run(status="queued", trigger="retry", scheduled_at=due)
    html = describe.run_status(retry)
    assert html.startswith(describe.status_badge("queued", RunStatus.QUEUED.label))
    assert html.endswith('<span class="scheduler-due">retry due at 2030-05-01 12:00:00 UTC</span>')
    running = unsaved_run(status="running", trigger="retry", scheduled_at=due)
    assert describe.run_status(running) == describe.status_badge("running", "running")
