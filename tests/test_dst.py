"""Daylight saving time, proven by moving the clock with time-machine.

Transitions used (all 2026):

* America/New_York: spring forward 03-08 02:00→03:00, fall back 11-01 02:00→01:00
* Europe/Berlin: spring forward 03-29 02:00→03:00, fall back 10-25 03:00→02:00
* Australia/Sydney: fall back 04-05 03:00→02:00, spring forward 10-04 02:00→03:00
"""

from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
import time_machine

from scheduler import cron
from scheduler import registry as registry_module
from scheduler.crontab import from_crontab

NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
SYDNEY = ZoneInfo("Australia/Sydney")


def nightly_job():
    """A module-level job for registry tests."""


@pytest.fixture(autouse=True)
def clean_registry():
    saved = dict(registry_module.registry)
    yield
    registry_module.registry.clear()
    registry_module.registry.update(saved)


def local(dt, tz):
    """The real wall-clock time of ``dt`` in ``tz`` (normalised through UTC)."""
    return dt.astimezone(UTC).astimezone(tz)


def run_clock(trigger, tz, day):
    """Fire times from the day before ``day`` to the day after, as a scheduler sees them.

    The clock is moved to each fire time in turn and the next one is computed from the
    previous fire time and ``datetime.now``, like APScheduler's main loop does.
    Returns the fire times as real local times.
    """
    start = datetime.combine(day - timedelta(days=1), time(), tzinfo=tz)
    end = datetime.combine(day + timedelta(days=2), time(), tzinfo=tz).astimezone(UTC)
    fired = []
    with time_machine.travel(start, tick=False) as traveller:
        previous = None
        while True:
            fire_time = trigger.get_next_fire_time(previous, datetime.now(tz))
            if fire_time is None or fire_time.astimezone(UTC) >= end:
                break
            assert fire_time.astimezone(UTC) > datetime.now(UTC) or previous is None
            traveller.move_to(fire_time)
            fired.append(local(fire_time, tz))
            previous = fire_time
    assert len(fired) < 500, "runaway trigger"
    return fired


def on(day, fired):
    return [t for t in fired if t.date() == day]


def per_day(fired):
    return Counter(t.date() for t in fired)


def next_at(expr, tz, now_utc):
    """The next fire time of ``expr`` when the clock says ``now_utc``, in UTC."""
    with time_machine.travel(now_utc, tick=False):
        fire_time = from_crontab(expr, tz).get_next_fire_time(None, datetime.now(tz))
    return fire_time.astimezone(UTC)


# --- spring forward: a wall time that does not exist -------------------------------------


@pytest.mark.parametrize(
    ("tz", "day", "expected_utc"),
    [
        (NEW_YORK, date(2026, 3, 8), datetime(2026, 3, 8, 7, 30, tzinfo=UTC)),  # 03:30 EDT
        (BERLIN, date(2026, 3, 29), datetime(2026, 3, 29, 1, 30, tzinfo=UTC)),  # 03:30 CEST
        (SYDNEY, date(2026, 10, 4), datetime(2026, 10, 3, 16, 30, tzinfo=UTC)),  # 03:30 AEDT
    ],
)
def test_skipped_wall_time_fires_once_at_half_past_three(tz, day, expected_utc):
    fired = run_clock(from_crontab("30 2 * * *", tz), tz, day)
    assert on(day, fired) == [expected_utc.astimezone(tz)]
    assert local(expected_utc, tz).time() == time(3, 30)
    # The days around it are ordinary.
    assert per_day(fired) == {day - timedelta(days=1): 1, day: 1, day + timedelta(days=1): 1}
    assert all(t.time() == time(2, 30) for t in fired if t.date() != day)


def test_spring_forward_day_has_23_hourly_runs_and_none_in_the_missing_hour():
    day = date(2026, 3, 8)
    hourly = on(day, run_clock(from_crontab("0 * * * *", NEW_YORK), NEW_YORK, day))
    assert len(hourly) == 23
    half_hourly = on(day, run_clock(from_crontab("*/30 * * * *", NEW_YORK), NEW_YORK, day))
    assert len(half_hourly) == 46
    assert not [t for t in half_hourly if t.hour == 2]
    assert len({t.astimezone(UTC) for t in half_hourly}) == 46


def test_skipped_wall_time_when_the_scheduler_is_running_just_before_the_jump():
    # 01:59 EST, one minute before the jump: the 02:30 job is due at 03:30 EDT.
    assert next_at("30 2 * * *", NEW_YORK, datetime(2026, 3, 8, 6, 59, tzinfo=UTC)) == datetime(
        2026, 3, 8, 7, 30, tzinfo=UTC
    )


# --- fall back: a wall time that happens twice --------------------------------------------


@pytest.mark.parametrize(
    ("expr", "tz", "day", "expected_utc"),
    [
        # 01:30 EDT, the first of the two 01:30s
        ("30 1 * * *", NEW_YORK, date(2026, 11, 1), datetime(2026, 11, 1, 5, 30, tzinfo=UTC)),
        ("0 1 * * *", NEW_YORK, date(2026, 11, 1), datetime(2026, 11, 1, 5, 0, tzinfo=UTC)),
        # 02:30 CEST
        ("30 2 * * *", BERLIN, date(2026, 10, 25), datetime(2026, 10, 25, 0, 30, tzinfo=UTC)),
        # 02:30 AEDT (UTC+11), the day before in UTC
        ("30 2 * * *", SYDNEY, date(2026, 4, 5), datetime(2026, 4, 4, 15, 30, tzinfo=UTC)),
    ],
)
def test_fixed_hour_job_fires_once_on_fall_back_day(expr, tz, day, expected_utc):
    fired = run_clock(from_crontab(expr, tz), tz, day)
    assert on(day, fired) == [expected_utc.astimezone(tz)]
    assert per_day(fired) == {day - timedelta(days=1): 1, day: 1, day + timedelta(days=1): 1}


def test_either_day_job_fires_once_on_fall_back_day():
    # 1 November 2026 is both a Sunday and the 1st: each half of the trigger matches.
    day = date(2026, 11, 1)
    fired = run_clock(from_crontab("30 1 1 * sun", NEW_YORK), NEW_YORK, day)
    assert fired == [datetime(2026, 11, 1, 5, 30, tzinfo=UTC).astimezone(NEW_YORK)]


def test_every_30_minutes_runs_in_both_repeated_hours():
    day = date(2026, 11, 1)
    fired = on(day, run_clock(from_crontab("*/30 * * * *", NEW_YORK), NEW_YORK, day))
    assert len(fired) == 50  # 25 hours
    repeated_hour = [t for t in fired if t.hour == 1]
    assert [t.astimezone(UTC) for t in repeated_hour] == [
        datetime(2026, 11, 1, 5, 0, tzinfo=UTC),  # 01:00 EDT
        datetime(2026, 11, 1, 5, 30, tzinfo=UTC),  # 01:30 EDT
        datetime(2026, 11, 1, 6, 0, tzinfo=UTC),  # 01:00 EST
        datetime(2026, 11, 1, 6, 30, tzinfo=UTC),  # 01:30 EST
    ]
    assert [t.strftime("%H:%M %Z") for t in repeated_hour] == [
        "01:00 EDT",
        "01:30 EDT",
        "01:00 EST",
        "01:30 EST",
    ]
    assert len({t.astimezone(UTC) for t in fired}) == 50


def test_hourly_job_runs_25_times_on_fall_back_day():
    day = date(2026, 11, 1)
    fired = run_clock(from_crontab("0 * * * *", NEW_YORK), NEW_YORK, day)
    assert per_day(fired)[day] == 25
    assert per_day(fired)[day - timedelta(days=1)] == 24


def test_every_30_minutes_in_sydney_runs_in_both_repeated_hours():
    day = date(2026, 4, 5)
    fired = on(day, run_clock(from_crontab("*/30 * * * *", SYDNEY), SYDNEY, day))
    assert len(fired) == 50
    assert [t.strftime("%H:%M%z") for t in fired if t.hour == 2] == [
        "02:00+1100",
        "02:30+1100",
        "02:00+1000",
        "02:30+1000",
    ]


@pytest.mark.parametrize(
    ("expr", "now_utc", "expected_utc"),
    [
        # Before the repeated hour: the first 01:30 is next.
        ("30 1 * * *", datetime(2026, 11, 1, 4, 50), datetime(2026, 11, 1, 5, 30)),
        # Between the two 01:30s: it has run today, so tomorrow.
        ("30 1 * * *", datetime(2026, 11, 1, 5, 45), datetime(2026, 11, 2, 6, 30)),
        # Started inside the second 1 o'clock hour: still not again today.
        ("30 1 * * *", datetime(2026, 11, 1, 6, 10), datetime(2026, 11, 2, 6, 30)),
        # An every-30-minutes job goes on into the second 1 o'clock hour...
        ("*/30 * * * *", datetime(2026, 11, 1, 5, 45), datetime(2026, 11, 1, 6, 0)),
        # ...and runs at its second 01:30 too.
        ("*/30 * * * *", datetime(2026, 11, 1, 6, 10), datetime(2026, 11, 1, 6, 30)),
    ],
)
def test_next_run_computed_from_now_around_fall_back(expr, now_utc, expected_utc):
    now_utc, expected_utc = now_utc.replace(tzinfo=UTC), expected_utc.replace(tzinfo=UTC)
    assert next_at(expr, NEW_YORK, now_utc) == expected_utc


@pytest.mark.parametrize(
    ("now_utc", "expected_utc"),
    [
        (datetime(2026, 4, 4, 15, 10, tzinfo=UTC), datetime(2026, 4, 4, 15, 30, tzinfo=UTC)),
        # 02:10 AEST, the second 2 o'clock hour: the 02:30 job has run; next is tomorrow.
        (datetime(2026, 4, 4, 16, 10, tzinfo=UTC), datetime(2026, 4, 5, 16, 30, tzinfo=UTC)),
    ],
)
def test_next_run_computed_from_now_around_fall_back_in_sydney(now_utc, expected_utc):
    assert next_at("30 2 * * *", SYDNEY, now_utc) == expected_utc


# --- through the registry ------------------------------------------------------------------


def test_job_declared_in_sydney_gets_a_sydney_trigger():
    cron("30 2 * * *", id="dst.sydney", timezone="Australia/Sydney")(nightly_job)
    spec = registry_module.registry["dst.sydney"]
    trigger = spec.make_trigger()
    assert trigger.timezone == SYDNEY
    day = date(2026, 4, 5)
    fired = run_clock(trigger, SYDNEY, day)
    assert on(day, fired) == [datetime(2026, 4, 4, 15, 30, tzinfo=UTC).astimezone(SYDNEY)]
    assert set(per_day(fired).values()) == {1}
    # An ordinary day: 02:30 Sydney time, not UTC or the project's zone.
    assert local(fired[0], UTC) == datetime(2026, 4, 3, 15, 30, tzinfo=UTC)


def test_job_without_timezone_uses_time_zone_setting(settings):
    settings.TIME_ZONE = "America/New_York"
    cron("30 1 * * *", id="dst.default_zone")(nightly_job)
    trigger = registry_module.registry["dst.default_zone"].make_trigger()
    assert trigger.timezone == NEW_YORK
    day = date(2026, 11, 1)
    assert on(day, run_clock(trigger, NEW_YORK, day)) == [
        datetime(2026, 11, 1, 5, 30, tzinfo=UTC).astimezone(NEW_YORK)
    ]


@pytest.mark.parametrize(
    ("fields", "runs_on_fall_back_day"),
    [
        ({"hour": "1", "minute": "30"}, 1),  # fixed hour: once
        ({"minute": "*/30"}, 50),  # every hour: both repeated hours
    ],
)
def test_cron_fields_get_the_same_dst_handling(fields, runs_on_fall_back_day):
    cron(id="dst.fields", timezone="America/New_York", **fields)(nightly_job)
    trigger = registry_module.registry["dst.fields"].make_trigger()
    day = date(2026, 11, 1)
    assert per_day(run_clock(trigger, NEW_YORK, day))[day] == runs_on_fall_back_day


def test_registration_while_the_clock_is_in_the_repeated_hour():
    # Registration itself looks at "now"; a fixed-hour job declared at 01:10 EST is valid.
    with time_machine.travel(datetime(2026, 11, 1, 6, 10, tzinfo=UTC), tick=False):
        cron("30 1 * * *", id="dst.now", timezone="America/New_York")(nightly_job)
        trigger = registry_module.registry["dst.now"].make_trigger()
        fire_time = trigger.get_next_fire_time(None, datetime.now(NEW_YORK))
    assert fire_time.astimezone(UTC) == datetime(2026, 11, 2, 6, 30, tzinfo=UTC)
