"""Declarations the registry accepts, odd ones included: each must work everywhere.

Used in process by tests/test_schedules_render.py (one at a time) and, all at
once, by the ``runapscheduler --list`` subprocess through tests.schedule_cases_jobs.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from scheduler import cron, interval

PREFIX = "cases."

# A crontab of 300-odd characters: every minute, hour and day listed one by one.
LONG_CRONTAB = (
    f"{','.join(map(str, range(60)))} {','.join(map(str, range(24)))} "
    f"{','.join(map(str, range(1, 32)))} * *"
)


def job(*args: Any, **kwargs: Any) -> None:
    """A job declared under many schedules."""


# (id suffix, decorator, the schedule in words on the jobs list: None for the raw text,
# "<start>..." for words that start so)
CASES: list[tuple[str, Callable[[str], Callable[[Any], Any]], str | None]] = [
    ("crontab.every5", lambda i: cron("*/5 * * * *", id=i), "Every 5 minutes"),
    (
        "crontab.weekdays",
        lambda i: cron("0 3 * * mon-fri", id=i),
        "At 03:00, Monday through Friday",
    ),
    ("crontab.macro", lambda i: cron("@weekly", id=i), "At 00:00, only on Sunday"),
    (
        "crontab.day.or.weekday",
        lambda i: cron("0 0 13 * fri", id=i),
        "At 00:00, on day 13 of the month, or on Friday",
    ),
    ("crontab.sunday.seven", lambda i: cron("0 0 * * 7", id=i), "At 00:00, only on Sunday"),
    ("crontab.long", lambda i: cron(LONG_CRONTAB, id=i), "At 0, 1, 2, 3, 4, 5, 6, ..."),
    (
        "crontab.new.york.dst",
        lambda i: cron("30 2 * * *", id=i, timezone="America/New_York"),
        "At 02:30",
    ),
    (
        "crontab.jitter.kolkata",
        lambda i: cron("0 9 * * 1-5", id=i, timezone="Asia/Kolkata", jitter=30),
        "At 09:00, Monday through Friday",
    ),
    (
        "crontab.dates",
        lambda i: cron(
            "0 12 * * *",
            id=i,
            start_date="2026-01-01T00:00:00",
            end_date=datetime(2099, 1, 1, tzinfo=UTC),
        ),
        "At 12:00",
    ),
    ("fields.seconds", lambda i: cron(second="*/10", id=i), "Every 10 seconds"),
    ("fields.ints", lambda i: cron(hour=3, minute=0, id=i), "At 03:00"),
    # Values with ", " in them: the text "minute=1, 2" cannot be split back into fields.
    (
        "fields.comma.space",
        lambda i: cron(minute="1, 2", id=i),
        "At 1 and 2 minutes past the hour",
    ),
    ("fields.last.friday", lambda i: cron(day="last fri", hour="6", id=i), None),
    ("fields.nth.weekday", lambda i: cron(day="1st mon, last fri", id=i), None),
    ("fields.last.day", lambda i: cron(day="last", id=i), None),
    (
        "fields.office.hours",
        lambda i: cron(day_of_week="mon-fri", hour="9-17", minute="*/15", id=i),
        "Every 15 minutes, between 09:00 and 17:59, Monday through Friday",
    ),
    ("fields.week", lambda i: cron(week="*/2", day_of_week="mon", id=i), None),
    # Friday the 13th only: APScheduler wants both fields to match, cron either one.
    ("fields.day.and.weekday", lambda i: cron(day="13", day_of_week="fri", id=i), None),
    ("interval.almost.two.minutes", lambda i: interval(seconds=119.9999, id=i), "every 2 min"),
    ("fields.year", lambda i: cron(year="2030-2040", month="jan", day="1", id=i), None),
    # APScheduler counts weekdays from Monday = 0: cron's words would name the wrong day.
    ("fields.weekday.number", lambda i: cron(day_of_week="0", hour="8", id=i), None),
    (
        "fields.leap.day",
        lambda i: cron(month="2", day="29", hour="12", timezone="Pacific/Kiritimati", id=i),
        "At 12:00, on day 29 of the month, only in February",
    ),
    ("interval.one.second", lambda i: interval(seconds=1, id=i), "every 1 s"),
    ("interval.float", lambda i: interval(seconds=1.5, id=i), "every 1.5 s"),
    ("interval.half.minute", lambda i: interval(minutes=0.5, id=i), "every 30 s"),
    ("interval.mixed", lambda i: interval(hours=1, seconds=30, id=i), "every 1 h 30 s"),
    ("interval.longest", lambda i: interval(days=3653, id=i), "every 3653 days"),
    ("interval.weeks.jitter", lambda i: interval(weeks=2, jitter=60, id=i), "every 14 days"),
    (
        "interval.dates",
        lambda i: interval(
            minutes=90,
            id=i,
            start_date="2026-03-01T00:00:00+01:00",
            end_date="2098-12-31T23:59:59",
        ),
        "every 1 h 30 min",
    ),
    # Its second fire time would be in the year 10000, past what a datetime can hold.
    (
        "interval.far.future",
        lambda i: interval(days=3653, id=i, start_date="9990-01-01T00:00:00+00:00"),
        "every 3653 days",
    ),
    (
        "crontab.last.days",
        lambda i: cron("0 3 * * *", id=i, start_date="9999-12-30T00:00:00"),
        "At 03:00",
    ),
    (
        "interval.lord.howe",
        lambda i: interval(hours=0.25, timezone="Australia/Lord_Howe", id=i),
        "every 15 min",
    ),
    (
        "options.all",
        lambda i: interval(
            minutes=5,
            id=i,
            name="N" * 300,
            max_instances=3,
            coalesce=False,
            misfire_grace_time=60,
            args=[1, "two"],
            kwargs={"three": [3], "four": {"x=y, z": None}},
        ),
        "every 5 min",
    ),
    ("options.disabled", lambda i: cron("0 4 * * *", id=i, enabled=False), "At 04:00"),
    # An id is any text up to 255 characters: in URLs, lists and links it must survive.
    ("odd id/with?chars&=, <b>x</b> _5F%", lambda i: interval(hours=2, id=i), "every 2 h"),
]

IDS = [PREFIX + suffix for suffix, _declare, _words in CASES]


def declare(suffix: str) -> str:
    """Declare one case on ``job``; returns its job id."""
    declaration = dict((s, d) for s, d, _words in CASES)[suffix]
    declaration(PREFIX + suffix)(job)
    return PREFIX + suffix


def declare_all() -> None:
    for suffix, _declare, _words in CASES:
        declare(suffix)
