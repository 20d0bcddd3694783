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


# -- thousands of schedules: shared fields, the quick first fire time ---------------------

APS_FIELDS = ("year", "month", "day", "week", "day_of_week", "hour", "minute", "second")
FIELD_SAMPLES = {
    "year": "2030",
    "month": "3",
    "day": "5",
    "week": "10",
    "day_of_week": "mon",
    "hour": "4",
    "minute": "5",
    "second": "6",
}


@pytest.mark.parametrize("mask", range(256))
def test_shared_fields_make_the_trigger_apscheduler_makes(mask):
    """Given any set of fields, the same fields (class, expressions, defaults) as
    APScheduler's own CronTrigger, which fills the ones not given."""
    from apscheduler.triggers.cron import CronTrigger as APSCronTrigger

    from scheduler.crontab import CronTrigger

    given = {name: FIELD_SAMPLES[name] for i, name in enumerate(APS_FIELDS) if mask >> i & 1}
    ours = CronTrigger(timezone=UTC, **given)
    theirs = APSCronTrigger(timezone=UTC, **given)

    def shape(trigger):
        return [(type(f), f.name, str(f), f.is_default) for f in trigger.fields]

    assert shape(ours) == shape(theirs)
    assert str(ours) == str(theirs)
    assert CronTrigger(timezone=UTC, **given).fields[0] is ours.fields[0]  # shared


def _reference_first_fire_time(trigger, now):
    """The first fire time by APScheduler's own search (and the fall-back rule)."""
    from apscheduler.triggers.cron import CronTrigger as APSCronTrigger
    from apscheduler.util import datetime_utc_add

    fire_time = APSCronTrigger.get_next_fire_time(trigger, None, now)
    while fire_time is not None and trigger._is_repeated_wall_time(fire_time):
        after = datetime_utc_add(fire_time, timedelta(microseconds=1))
        fire_time = APSCronTrigger.get_next_fire_time(trigger, after, after)
    return fire_time


def _random_field(rng, low, high):
    r = rng.random()
    if r < 0.3:
        return "*"
    if r < 0.45:
        return f"*/{rng.randint(1, max(1, (high - low) // 2))}"
    if r < 0.8:
        return str(rng.randint(low, high))
    a = rng.randint(low, high)
    b = rng.randint(a, high)
    return f"{a}-{b}" if rng.random() < 0.5 else f"{a},{b}"


ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Sydney",
    "Australia/Lord_Howe",  # a half-hour shift
    "Asia/Kolkata",
    "America/St_Johns",
    "Pacific/Chatham",
]
# Instants near the 2026 transitions of those zones, and one far from any.
NEAR = [
    datetime(2026, 3, 8, 6, tzinfo=UTC),
    datetime(2026, 3, 29, 0, 30, tzinfo=UTC),
    datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
    datetime(2026, 11, 1, 5, tzinfo=UTC),
    datetime(2026, 4, 4, 15, tzinfo=UTC),
    datetime(2026, 10, 3, 15, tzinfo=UTC),
    datetime(2026, 6, 1, tzinfo=UTC),
]


@pytest.mark.parametrize("seed", range(8))
def test_the_quick_first_fire_time_is_apscheduler_s(seed):
    """For random schedules, zones and instants (many around daylight-saving changes), the
    first fire time found without APScheduler's search is the one its search finds, to the
    zone and the fold; where the quick search declines, the trigger asks APScheduler."""
    import random

    from scheduler.crontab import CronTrigger

    rng = random.Random(seed)
    quick = 0
    for _ in range(400):
        zone = ZoneInfo(rng.choice(ZONES))
        fields = {
            "second": _random_field(rng, 0, 59) if rng.random() < 0.9 else "0",
            "minute": _random_field(rng, 0, 59),
            "hour": _random_field(rng, 0, 23),
        }
        if rng.random() < 0.3:
            fields["day_of_week"] = rng.choice(["mon-fri", "sat,sun", "tue", "*/2"])
        if rng.random() < 0.1:
            # (Not with a weekday: "2nd fri" on Tuesdays never comes, and APScheduler's
            # search for it runs to the year 9999.)
            fields.pop("day_of_week", None)
            fields["day"] = rng.choice(["1", "15", "last", "*/3", "2nd fri", "31"])
        if rng.random() < 0.05:
            fields["month"] = rng.choice(["3", "10-11", "*/4"])
        now = rng.choice(NEAR) + timedelta(seconds=rng.uniform(-3 * 86400, 3 * 86400))
        if rng.random() < 0.5:
            now = now.replace(microsecond=0)
        if rng.random() < 0.5:
            now = now.astimezone(zone)
        trigger = CronTrigger(timezone=zone, **fields)
        expected = _reference_first_fire_time(trigger, now)
        found = trigger._quick_first_fire_time(now)
        if found is not None:
            quick += 1
            assert (found, found.utcoffset(), found.tzinfo, found.fold) == (
                expected,
                expected.utcoffset(),
                expected.tzinfo,
                expected.fold,
            ), (fields, zone, now)
        assert CronTrigger(timezone=zone, **fields).get_next_fire_time(None, now) == expected
    assert quick > 300  # the quick search answers most of them


def test_the_quick_first_fire_time_declines_what_it_does_not_cover():
    from scheduler.crontab import CronTrigger

    now = datetime(2026, 6, 1, 12, tzinfo=UTC)
    assert CronTrigger(hour="3", timezone=UTC)._quick_first_fire_time(now) is not None
    assert CronTrigger(hour="3", jitter=5, timezone=UTC)._quick_first_fire_time(now) is None
    start = datetime(2026, 7, 1, tzinfo=UTC)
    assert CronTrigger(hour="3", start_date=start, timezone=UTC)._quick_first_fire_time(now) is None
    end = datetime(2027, 7, 1, tzinfo=UTC)
    assert CronTrigger(hour="3", end_date=end, timezone=UTC)._quick_first_fire_time(now) is None
    # Nothing within a week: APScheduler's search.
    assert CronTrigger(month="1", day="1", timezone=UTC)._quick_first_fire_time(now) is None
    # The hour after Berlin's clocks go forward: the change is APScheduler's to handle.
    before = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)
    assert (
        CronTrigger(
            hour="2", minute="30", timezone=ZoneInfo("Europe/Berlin")
        )._quick_first_fire_time(before)
        is None
    )
