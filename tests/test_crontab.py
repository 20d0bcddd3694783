"""Crontab strings get cron's own semantics, not APScheduler 3's."""

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from scheduler.crontab import from_crontab

START = datetime(2026, 1, 1, tzinfo=UTC)  # a Thursday


def fire_times(trigger, start, *, until=None, limit=1000):
    """Fire times of ``trigger`` from ``start``, each computed from the one before."""
    times = []
    previous, now = None, start
    while len(times) < limit:
        fire_time = trigger.get_next_fire_time(previous, now)
        if fire_time is None or (until is not None and fire_time >= until):
            break
        times.append(fire_time)
        previous = now = fire_time
    return times


def weekdays_of(expr, *, weeks=4):
    """Python weekdays (Monday=0 … Sunday=6) of every fire time over ``weeks`` whole weeks."""
    times = fire_times(from_crontab(expr, UTC), START, until=START + timedelta(weeks=weeks))
    return times, {t.weekday() for t in times}


MON, TUE, WED, THU, FRI, SAT, SUN = range(7)


@pytest.mark.parametrize(
    ("weekday_field", "expected"),
    [
        ("0", {SUN}),
        ("7", {SUN}),
        ("1", {MON}),
        ("6", {SAT}),
        ("1-5", {MON, TUE, WED, THU, FRI}),
        ("mon-fri", {MON, TUE, WED, THU, FRI}),
        ("MON-FRI", {MON, TUE, WED, THU, FRI}),
        ("*/2", {SUN, TUE, THU, SAT}),
        ("1-5/2", {MON, WED, FRI}),
        ("sat-sun", {SAT, SUN}),
        ("5-7", {FRI, SAT, SUN}),
        ("6-7", {SAT, SUN}),
        ("7-7", {SUN}),
        ("0-7", {MON, TUE, WED, THU, FRI, SAT, SUN}),
        ("fri-mon", {FRI, SAT, SUN, MON}),
        ("mon,wed,fri", {MON, WED, FRI}),
        ("0,6", {SAT, SUN}),
        ("sun,3", {SUN, WED}),
    ],
)
def test_weekday_field_uses_cron_numbering(weekday_field, expected):
    times, weekdays = weekdays_of(f"0 9 * * {weekday_field}")
    assert weekdays == expected
    assert len(times) == 4 * len(expected)  # once a matching day, every week
    assert all((t.hour, t.minute) == (9, 0) for t in times)


def test_sunday_job_fires_on_sunday_not_monday():
    """The classic APScheduler 3 pitfall: '0' there means Monday."""
    first = from_crontab("0 9 * * 0", UTC).get_next_fire_time(None, START)
    assert first == datetime(2026, 1, 4, 9, 0, tzinfo=UTC)
    assert first.strftime("%A") == "Sunday"


@pytest.mark.parametrize("weekday_field", ["8", "-1", "funday", "1-8", "*/0", "1/x", "1-2-3"])
def test_invalid_weekday_field_is_rejected(weekday_field):
    with pytest.raises(ValueError, match="weekday|step"):
        from_crontab(f"0 9 * * {weekday_field}", UTC)


def every_day_of_2026():
    day = date(2026, 1, 1)
    while day.year == 2026:
        yield day
        day += timedelta(days=1)


@pytest.mark.parametrize(
    ("expr", "matches"),
    [
        # Both day fields restricted: either one matching is enough.
        ("0 0 13 * 5", lambda d: d.day == 13 or d.weekday() == FRI),
        ("0 0 1-7 * mon", lambda d: d.day <= 7 or d.weekday() == MON),
        ("0 0 1,15 * sat-sun", lambda d: d.day in (1, 15) or d.weekday() in (SAT, SUN)),
        # Only one restricted: that one alone decides.
        ("0 0 13 * *", lambda d: d.day == 13),
        ("0 0 * * 5", lambda d: d.weekday() == FRI),
    ],
)
def test_day_of_month_and_day_of_week(expr, matches):
    times = fire_times(from_crontab(expr, UTC), START, until=datetime(2027, 1, 1, tzinfo=UTC))
    fired = [t.date() for t in times]
    assert len(fired) == len(set(fired)), "a day matching both fields must fire only once"
    assert set(fired) == {d for d in every_day_of_2026() if matches(d)}
    assert all(t.time() == datetime.min.time() for t in times)


def test_friday_the_13th_fires_once():
    times = fire_times(
        from_crontab("0 0 13 * 5", UTC),
        datetime(2026, 2, 12, tzinfo=UTC),
        until=datetime(2026, 2, 15, tzinfo=UTC),
    )
    assert times == [datetime(2026, 2, 13, tzinfo=UTC)]  # a Friday and the 13th


@pytest.mark.parametrize(
    ("macro", "expected"),
    [
        ("@hourly", [datetime(2026, 1, 1, h, tzinfo=UTC) for h in (1, 2, 3)]),
        ("@daily", [datetime(2026, 1, d, tzinfo=UTC) for d in (2, 3, 4)]),
        ("@midnight", [datetime(2026, 1, d, tzinfo=UTC) for d in (2, 3, 4)]),
        ("@weekly", [datetime(2026, 1, d, tzinfo=UTC) for d in (4, 11, 18)]),  # Sundays
        ("@monthly", [datetime(2026, m, 1, tzinfo=UTC) for m in (2, 3, 4)]),
        ("@yearly", [datetime(y, 1, 1, tzinfo=UTC) for y in (2027, 2028, 2029)]),
        ("@annually", [datetime(y, 1, 1, tzinfo=UTC) for y in (2027, 2028, 2029)]),
        ("@DAILY", [datetime(2026, 1, d, tzinfo=UTC) for d in (2, 3, 4)]),
        (" @daily ", [datetime(2026, 1, d, tzinfo=UTC) for d in (2, 3, 4)]),
    ],
)
def test_macros(macro, expected):
    trigger = from_crontab(macro, UTC)
    assert fire_times(trigger, START + timedelta(minutes=30), limit=3) == expected


def test_weekly_macro_fires_on_sundays():
    times = fire_times(from_crontab("@weekly", UTC), START, limit=5)
    assert {t.weekday() for t in times} == {SUN}


@pytest.mark.parametrize(
    ("expr", "count"),
    [("", 0), ("* * * *", 4), ("0 * * * * *", 6), ("@reboot", 1), ("@every_minute", 1)],
)
def test_wrong_number_of_fields(expr, count):
    with pytest.raises(ValueError, match=f"needs 5 fields .*got {count}$"):
        from_crontab(expr, UTC)


@pytest.mark.parametrize(
    "expr", ["60 * * * *", "0 24 * * *", "0 0 32 * *", "0 0 0 * *", "0 0 1 13 *", "0 0 1 foo *"]
)
def test_out_of_range_fields_are_rejected(expr):
    with pytest.raises(ValueError):
        from_crontab(expr, UTC)


def test_month_names_and_steps():
    times = fire_times(from_crontab("*/20 6 1 jan,jul *", UTC), START, limit=6)
    assert times == [
        datetime(2026, 1, 1, 6, 0, tzinfo=UTC),
        datetime(2026, 1, 1, 6, 20, tzinfo=UTC),
        datetime(2026, 1, 1, 6, 40, tzinfo=UTC),
        datetime(2026, 7, 1, 6, 0, tzinfo=UTC),
        datetime(2026, 7, 1, 6, 20, tzinfo=UTC),
        datetime(2026, 7, 1, 6, 40, tzinfo=UTC),
    ]


def test_fields_are_read_in_the_trigger_timezone():
    berlin = ZoneInfo("Europe/Berlin")
    trigger = from_crontab("0 9 * * *", berlin)
    winter = trigger.get_next_fire_time(None, START)
    summer = trigger.get_next_fire_time(None, datetime(2026, 7, 1, tzinfo=UTC))
    assert winter.astimezone(UTC) == datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
    assert summer.astimezone(UTC) == datetime(2026, 7, 1, 7, 0, tzinfo=UTC)


@pytest.mark.parametrize("expr", ["0 0 * * *", "0 0 13 * 5"])  # plain and either-day trigger
def test_start_and_end_date_are_honoured(expr):
    trigger = from_crontab(
        expr,
        UTC,
        start_date=datetime(2026, 3, 1, tzinfo=UTC),
        end_date=datetime(2026, 3, 31, 12, tzinfo=UTC),
    )
    times = fire_times(trigger, START)
    assert times, "fires between start and end date"
    assert min(times) >= datetime(2026, 3, 1, tzinfo=UTC)
    assert max(times) <= datetime(2026, 3, 31, 12, tzinfo=UTC)
    assert trigger.get_next_fire_time(None, datetime(2026, 4, 1, tzinfo=UTC)) is None


@pytest.mark.parametrize("expr", ["0 0 * * *", "0 0 13 * 5"])
def test_jitter_is_applied(expr):
    trigger = from_crontab(expr, UTC, jitter=30)
    exact = from_crontab(expr, UTC).get_next_fire_time(None, START)
    jittered = {trigger.get_next_fire_time(None, START) for _ in range(50)}
    assert all(exact <= t <= exact + timedelta(seconds=30) for t in jittered)
    assert len(jittered) > 1
