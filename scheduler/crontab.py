"""Standard crontab strings turned into APScheduler triggers, with cron's own semantics.

APScheduler 3's ``CronTrigger.from_crontab`` differs from cron in three ways that
users trip over; this module fixes each:

* weekday numbers: cron counts 0 (and 7) as Sunday, APScheduler 3 as Monday;
* day-of-month and day-of-week both restricted: cron fires when *either* matches,
  APScheduler only when both do;
* daylight saving fall-back: a job at a fixed hour (``30 1 * * *``) ran twice in
  the repeated hour; like Vixie cron it now runs once (jobs whose hour field is
  ``*`` still run in both hours, since those are distinct real times).

A field that starts with ``*`` (``*/2``) counts as unrestricted for the last two
rules, as in Vixie cron.

Thousands of jobs each with a schedule of its own are cheap here: each cron field is
compiled once per expression and shared between triggers, and a trigger's first fire
time is found without APScheduler's field-by-field search where no change of UTC
offset is near (see ``CronTrigger``).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, TypeAlias
from zoneinfo import ZoneInfo

from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger as _APSCronTrigger
from apscheduler.triggers.cron.expressions import AllExpression
from apscheduler.triggers.cron.fields import DEFAULT_VALUES, MAX_VALUES, MIN_VALUES, BaseField
from apscheduler.util import astimezone, convert_to_datetime, datetime_utc_add
from tzlocal import get_localzone

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_DAY_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
_DAY_NUMBERS = {name: number for number, name in enumerate(_DAY_NAMES)}
# A memoized answer: ((previous fire time, now) as timestamps, the next fire time).
_Memo: TypeAlias = "tuple[tuple[float | None, float], datetime | None]"


# Compiled fields by (field name, expression text): a plain dict, not lru_cache, whose
# bookkeeping on every hit cost more than the lookup (8 a trigger).
_fields: dict[tuple[str, str], BaseField] = {}


def _field(name: str, exprs: str) -> BaseField:
    """A compiled cron field, shared by every trigger with this expression for it.

    APScheduler compiles all eight fields of each trigger (25 µs a trigger); with a
    schedule of its own per job (10,000 jobs "S M H * * *") that was most of the
    registry's time, and their expressions (8 objects a field) most of its memory. The
    expressions repeat (60 seconds, 60 minutes, 24 hours) and APScheduler only ever
    reads a compiled field, so one object per expression serves every trigger.
    """
    field = _fields.get((name, exprs))
    if field is None:
        # APScheduler compiles str(exprs).strip(): the same text, the same field.
        field = _APSCronTrigger.FIELDS_MAP[name](name, exprs, False)
        if len(_fields) >= 4096:
            _fields.clear()
        _fields[(name, exprs)] = field
    return field


# The fields a trigger is not given: "*" before the last one it is given, the
# field's minimum after it (APScheduler's rule), compiled once.
_STAR = {name: _APSCronTrigger.FIELDS_MAP[name](name, "*", True) for name in DEFAULT_VALUES}
_DEFAULT = {
    name: _APSCronTrigger.FIELDS_MAP[name](name, DEFAULT_VALUES[name], True)
    for name in DEFAULT_VALUES
}


# Cron fields that leave a schedule able to fire when all are "*" (with any step):
# the hours, minutes and weekdays it asks for then come round every week.
CALENDAR_FIELDS = ("year", "month", "day", "week")


def calendar_unrestricted(fields: list[BaseField]) -> bool:
    """Whether no calendar field (year, month, day, week) restricts these compiled fields:
    "*", with any step (its subclasses restrict the field)."""
    for field in fields:
        if field.name in CALENDAR_FIELDS:
            for expression in field.expressions:
                if type(expression) is not AllExpression:
                    return False
    return True


def fields_fire(fields: dict[str, Any]) -> bool:
    """Compile a trigger's given cron fields, raising what ``CronTrigger`` would raise for
    them, without making the trigger; True when they surely fire (no calendar field
    restricts them), False when only a fire time can tell.

    The fields a trigger is not given are "*" or their minimum, always valid; its time
    zone, dates and jitter are checked by the registry.
    """
    fires = True
    for name, value in fields.items():
        field = _field(name, str(value))
        if name in CALENDAR_FIELDS and fires:
            fires = all(type(expression) is AllExpression for expression in field.expressions)
    return fires


# What the quick first fire time needs to know of a field, by the field's id (the
# field is kept with it, so that the id is not reused): whether it allows every value,
# and the values it allows (hour, minute and second fields). Fields come from
# ``_field``: few.
_field_info: dict[int, tuple[BaseField, bool, tuple[int, ...]]] = {}
_field_info_lock = threading.Lock()
# Any date serves to list an hour, minute or second field's values (none of their
# expressions looks at the date).
_PROBE = datetime(2000, 1, 1)
_TIME_FIELDS = ("hour", "minute", "second")
# Days from ``now`` the quick first fire time looks at before leaving it to APScheduler.
_QUICK_DAYS = 8


def _info(field: BaseField) -> tuple[BaseField, bool, tuple[int, ...]]:
    """(field, allows every value, the values it allows if an hour, minute or second)."""
    info = _field_info.get(id(field))
    if info is not None and info[0] is field:
        return info
    star = all(type(e) is AllExpression and not e.step for e in field.expressions)
    values: list[int] = []
    value: int | None = MIN_VALUES[field.name] if field.name in _TIME_FIELDS else None
    while value is not None and value <= MAX_VALUES[field.name]:
        probe = _PROBE.replace(
            hour=value if field.name == "hour" else 0,
            minute=value if field.name == "minute" else 0,
            second=value if field.name == "second" else 0,
        )
        value = field.get_next_value(probe)
        if value is not None:
            values.append(value)
            value += 1
    info = (field, star, tuple(values))
    with _field_info_lock:
        if len(_field_info) >= 4096:
            _field_info.clear()
        _field_info[id(field)] = info
    return info


def _first_time_of_day(
    hours: tuple[int, ...],
    minutes: tuple[int, ...],
    seconds: tuple[int, ...],
    after: tuple[int, int, int] | None,
) -> tuple[int, int, int] | None:
    """The first (hour, minute, second) allowed at or after ``after`` (None: the day's first)."""
    if not (hours and minutes and seconds):
        return None
    if after is None:
        return hours[0], minutes[0], seconds[0]
    h0, m0, s0 = after
    for hour in hours[bisect_left(hours, h0) :]:
        if hour > h0:
            return hour, minutes[0], seconds[0]
        for minute in minutes[bisect_left(minutes, m0) :]:
            if minute > m0:
                return hour, minute, seconds[0]
            index = bisect_left(seconds, s0)
            if index < len(seconds):
                return hour, minute, seconds[index]
    return None


class CronTrigger(_APSCronTrigger):  # type: ignore[misc]  # APScheduler 3 is untyped
    """A cron trigger that runs a fixed-hour job once on the daylight-saving fall-back day.

    Cheap to make and to start in thousands: its fields are shared (``_field``), and
    its first fire time is found by a quick search where no change of UTC offset is
    near (``_quick_first_fire_time``); APScheduler's own search otherwise.
    """

    def __init__(
        self,
        year: int | str | None = None,
        month: int | str | None = None,
        day: int | str | None = None,
        week: int | str | None = None,
        day_of_week: int | str | None = None,
        hour: int | str | None = None,
        minute: int | str | None = None,
        second: int | str | None = None,
        start_date: datetime | str | None = None,
        end_date: datetime | str | None = None,
        timezone: tzinfo | str | None = None,
        jitter: int | None = None,
    ) -> None:
        # APScheduler's __init__ (3.11), but for the fields: taken from ``_field``.
        if type(timezone) is ZoneInfo:
            self.timezone = timezone  # what astimezone() returns for one
        elif timezone:
            self.timezone = astimezone(timezone)
        elif isinstance(start_date, datetime) and start_date.tzinfo:
            self.timezone = astimezone(start_date.tzinfo)
        elif isinstance(end_date, datetime) and end_date.tzinfo:
            self.timezone = astimezone(end_date.tzinfo)
        else:
            self.timezone = get_localzone()
        self.start_date = (
            None
            if start_date is None
            else convert_to_datetime(start_date, self.timezone, "start_date")
        )
        self.end_date = (
            None if end_date is None else convert_to_datetime(end_date, self.timezone, "end_date")
        )
        self.jitter = jitter
        given = (year, month, day, week, day_of_week, hour, minute, second)
        last = 8  # the index of the last field given (none given: every field is "*")
        for i in range(7, -1, -1):
            if given[i] is not None:
                last = i
                break
        self.fields = [
            _field(name, str(value))
            if value is not None
            else _STAR[name]
            if i < last
            else _DEFAULT[name]
            for i, (name, value) in enumerate(zip(self.FIELD_NAMES, given, strict=True))
        ]

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        # APScheduler's main loop asks the same question up to three times per due
        # job (the runner's claim, the run times, the next run time), and a cron
        # computation is the slowest part of a pass. Jitter makes answers differ.
        # Keyed by instants: datetimes of one zone compare by wall time, so the two
        # 01:00s of a fall-back night would be equal.
        key = (previous_fire_time and previous_fire_time.timestamp(), now.timestamp())
        memo: _Memo | None = getattr(self, "_memo", None)
        if memo is not None and memo[0] == key:
            return memo[1]
        fire_time: datetime | None = None
        if previous_fire_time is None:
            fire_time = self._quick_first_fire_time(now)
        if fire_time is None:
            fire_time = super().get_next_fire_time(previous_fire_time, now)
            while fire_time is not None and self._is_repeated_wall_time(fire_time):
                after = datetime_utc_add(fire_time, timedelta(microseconds=1))
                fire_time = super().get_next_fire_time(after, after)
        if not self.jitter:
            self._memo = (key, fire_time)  # one tuple: safe across threads
        return fire_time

    def _quick_first_fire_time(self, now: datetime) -> datetime | None:
        """The first fire time after ``now``, as APScheduler finds it; None: ask APScheduler.

        A first start computes one per job: 21 µs each by APScheduler's search, 2 s of
        100,000 jobs with schedules of their own; about 5 µs here. The earliest wall
        time at or after ``now`` (rounded up to the second) whose date the date fields
        allow, and whose time of day the hour, minute and second fields allow: what
        APScheduler's search finds as long as the UTC offset does not change between
        ``now`` and that time. Any change (a daylight-saving day), a start or end date,
        jitter, or no fire time within ``_QUICK_DAYS`` days: APScheduler's own search,
        which handles those (tests/test_crontab.py compares both).
        """
        if self.jitter or self.start_date is not None or self.end_date is not None:
            return None
        infos = [_info(field) for field in self.fields]
        hours, minutes, seconds = (info[2] for info in infos[5:])
        date_fields = [info[0] for info in infos[:5] if not info[1]]
        tz = self.timezone
        # Rounded up to the second in UTC, as APScheduler's datetime_ceil: the same instant.
        now = now.astimezone(UTC)
        if now.microsecond:
            now += timedelta(seconds=1, microseconds=-now.microsecond)
        start = now.astimezone(tz)
        offset = start.utcoffset()
        y, m, d = start.year, start.month, start.day
        # (The datetime constructor: datetime.replace costs a microsecond and more a call.)
        if (
            datetime(
                y, m, d, start.hour, start.minute, start.second, 0, tz, fold=1 - start.fold
            ).utcoffset()
            != offset
        ):
            return None  # in a repeated or skipped hour
        first: tuple[int, int, int] | None = (start.hour, start.minute, start.second)
        day = datetime(y, m, d)
        for _ in range(_QUICK_DAYS):
            if (
                first is None
                and datetime(day.year, day.month, day.day, tzinfo=tz).utcoffset() != offset
            ):
                return None
            if all(field.get_next_value(day) == field.get_value(day) for field in date_fields):
                time_of_day = _first_time_of_day(hours, minutes, seconds, first)
                if time_of_day is not None:
                    fire_time = datetime(day.year, day.month, day.day, *time_of_day, tzinfo=tz)
                    if (
                        fire_time.utcoffset() != offset
                        or datetime(
                            day.year, day.month, day.day, *time_of_day, tzinfo=tz, fold=1
                        ).utcoffset()
                        != offset
                    ):
                        return None
                    return fire_time
            first = None
            day += timedelta(days=1)
        return None

    def _is_repeated_wall_time(self, fire_time: datetime) -> bool:
        if fire_time.fold != 1 or self._every_hour():
            return False
        first = fire_time.replace(fold=0)
        return first.utcoffset() != fire_time.utcoffset()

    def _every_hour(self) -> bool:
        # As in Vixie cron, an hour field starting with "*" ("*", "*/1", "*/2") is a wildcard.
        hour = next(field for field in self.fields if field.name == "hour")
        return str(hour).startswith("*")


def _expand_weekdays(field: str) -> str:
    """Rewrite a crontab day-of-week field as day names, which APScheduler reads as cron does."""
    if field == "*":
        return "*"
    days: set[int] = set()
    for term in field.split(","):
        rng, _, step_text = term.partition("/")
        step = _to_int(step_text, field) if step_text else 1
        if step < 1:
            raise ValueError(f"step must be at least 1 in day-of-week field {field!r}")
        if rng == "*":
            first, last = 0, 6
        elif "-" in rng:
            a, b = rng.split("-", 1)
            first, last = _day(a, field), _day(b, field)
            if last < first:
                last += 7
        else:
            first = _day(rng, field)
            last = 6 if step_text else first
            if last < first:
                last += 7
        days.update(d % 7 for d in range(first, last + 1, step))
    return ",".join(_DAY_NAMES[d] for d in sorted(days))


def _day(text: str, field: str) -> int:
    text = text.strip().lower()
    if text in _DAY_NUMBERS:
        return _DAY_NUMBERS[text]
    if text.isdigit() and 0 <= int(text) <= 7:
        return int(text)  # 7 stays 7 here so that ranges such as 5-7 and 7-7 work; mod 7 later
    raise ValueError(f"{text!r} is not a weekday (0-7 or sun-sat) in {field!r}")


def _to_int(text: str, field: str) -> int:
    if not text.isdigit():
        raise ValueError(f"step {text!r} is not a number in {field!r}")
    return int(text)


def from_crontab(expr: str, tz: tzinfo, **options: Any) -> Any:
    """A trigger for a 5-field crontab string (or an ``@daily``-style macro)."""
    text = MACROS.get(expr.strip().lower(), expr)
    values = text.split()
    if len(values) != 5:
        raise ValueError(
            f"a crontab needs 5 fields (minute hour day month weekday), got {len(values)}"
        )
    minute, hour, day, month, weekday = values
    weekday = _expand_weekdays(weekday)
    fields: dict[str, Any] = {"minute": minute, "hour": hour, "month": month, "timezone": tz}
    # As in Vixie cron, a day field starting with "*" ("*/2") does not count as restricted.
    if not day.startswith("*") and not values[4].startswith("*"):
        # cron fires when either day field matches.
        return OrTrigger(
            [
                CronTrigger(day=day, day_of_week="*", **fields, **options),
                CronTrigger(day="*", day_of_week=weekday, **fields, **options),
            ]
        )
    return CronTrigger(day=day, day_of_week=weekday, **fields, **options)
