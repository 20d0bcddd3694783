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
"""

from __future__ import annotations

from datetime import datetime, timedelta, tzinfo
from typing import Any, TypeAlias

from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger as _APSCronTrigger
from apscheduler.util import datetime_utc_add

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


# APScheduler 3 ships no type information: its CronTrigger is Any to mypy.
class CronTrigger(_APSCronTrigger):  # type: ignore[misc]
    """A cron trigger that runs a fixed-hour job once on the daylight-saving fall-back day."""

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
        fire_time: datetime | None = super().get_next_fire_time(previous_fire_time, now)
        while fire_time is not None and self._is_repeated_wall_time(fire_time):
            after = datetime_utc_add(fire_time, timedelta(microseconds=1))
            fire_time = super().get_next_fire_time(after, after)
        if not self.jitter:
            self._memo = (key, fire_time)  # one tuple: safe across threads
        return fire_time

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
    fields = {"minute": minute, "hour": hour, "month": month, "timezone": tz}
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
