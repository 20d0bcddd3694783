"""Template tags of the scheduler's admin pages."""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from django import template
from django.contrib.admin.templatetags.admin_list import date_hierarchy
from django.contrib.admin.views.main import ChangeList
from django.db.models import QuerySet, Subquery
from django.utils import formats, timezone
from django.utils.text import capfirst
from django.utils.translation import gettext as _

from scheduler import describe, health, paginator

if TYPE_CHECKING:
    from django.db.models import Field

    from scheduler.models import JobRun

register = template.Library()


@register.simple_tag
def scheduler_health() -> dict[str, Any]:
    """Whether an active scheduler is alive, for the warning on the scheduler's pages."""
    return health.alive_for_staff()


@register.simple_tag
def percent(fraction: float | None) -> str:
    return describe.percent(fraction)


@register.simple_tag
def badge(status: str, label: str) -> str:
    return describe.status_badge(status, label)


@register.simple_tag
def count_limit() -> int:
    """How far the runs list counts (see scheduler.paginator)."""
    return paginator.COUNT_LIMIT


@register.simple_tag
def status_badge(run: JobRun) -> str:
    return describe.run_status(run)


@register.simple_tag
def when(value: datetime | None) -> str:
    return describe.when(value)


@register.simple_tag
def duration(seconds: float | None) -> str:
    return describe.duration_words(seconds)


@register.inclusion_tag("admin/date_hierarchy.html")
def bounded_date_hierarchy(cl: ChangeList) -> dict[str, Any]:
    """Django's date hierarchy, with choices found by index lookups instead of a DISTINCT.

    Django lists the years, months or days that have rows with a
    ``SELECT DISTINCT`` over every matching row, which takes seconds on
    millions of runs. Here one query finds the first and the last run listed:
    their periods have runs, the periods before and after them have none. Only
    the periods in between are looked up, each by the first run at or after its
    start on the ``scheduled_at`` index, all in one more query. At most two
    queries, one when the runs span no more than two periods.
    """
    context = _bounded_date_hierarchy(cl)
    # Django 6 labels the links "Filter by <field>".
    field = cast("Field[Any, Any]", cl.model._meta.get_field(cl.date_hierarchy))  # scheduled_at
    context.setdefault("field_name", field.verbose_name)
    return context


# A period of the hierarchy: its start, its end (excluded) and its link.
Period = tuple[datetime, datetime, dict[str, Any]]


def _bounded_date_hierarchy(cl: ChangeList) -> dict[str, Any]:
    field = cl.date_hierarchy
    params = cl.params
    year = params.get(f"{field}__year")
    month = params.get(f"{field}__month")
    day = params.get(f"{field}__day")
    if day:
        # A single day is chosen: Django runs no query for it (None only without a field).
        return date_hierarchy(cl) or {"show": False}
    # The list is already narrowed to the chosen year or month, if any.
    first, last = _first_and_last(cl, field)
    if year and month:
        return _days(cl, field, int(year), int(month), first, last)
    if year:
        return _months(cl, field, int(year), first, last)
    if first is None or last is None:
        return {"show": True, "back": None, "choices": []}
    # Nothing chosen: like Django, open at the narrowest level the runs span.
    local_first, local_last = timezone.localtime(first), timezone.localtime(last)
    if local_first.year != local_last.year:
        return _years(cl, field, local_first.year, local_last.year, first, last)
    if local_first.month != local_last.month:
        return _months(cl, field, local_first.year, first, last)
    return _days(cl, field, local_first.year, local_first.month, first, last)


def _first_and_last(cl: ChangeList, field: str) -> tuple[datetime | None, datetime | None]:
    """The first and the last time listed, in one query: two walks into the index.

    (SQLite scans the table for MIN() and MAX() in one query.)
    """
    times = cl.queryset.order_by(field).values_list(field, flat=True)
    row = list(
        times.annotate(last_time=Subquery(times.order_by(f"-{field}")[:1])).values_list(
            field, "last_time"
        )[:1]
    )
    return row[0] if row else (None, None)


def _choices(
    cl: ChangeList, field: str, periods: list[Period], first: datetime | None, last: datetime | None
) -> list[dict[str, Any]]:
    """The links of those of ``periods`` (in time order) that hold runs listed."""
    if first is None or last is None:
        return []
    # Periods that end before the first run or start after the last hold none; those
    # of the first and the last run hold some; those in between are looked up.
    spanned = [period for period in periods if period[1] > first and period[0] <= last]
    between = [(start, end) for start, end, _ in spanned if first < start and end <= last]
    found = _first_at_or_after(cl, field, [start for start, _ in between])
    held = {start for (start, end), at in zip(between, found, strict=True) if at and at < end}
    return [
        link
        for start, end, link in spanned
        if start <= first < end or start <= last < end or start in held
    ]


def _first_at_or_after(cl: ChangeList, field: str, starts: list[datetime]) -> list[datetime | None]:
    """For each start, the first time listed at or after it, all in one query.

    Each is a walk into the index, compared with its period's end by the caller:
    a range EXISTS may be planned as a table scan on a large table.
    """
    if not starts:
        return []
    times = cl.queryset.order_by(field).values_list(field, flat=True)
    probes = {
        f"at_{index}": Subquery(_from(cl, field, start).values_list(field, flat=True)[:1])
        for index, start in enumerate(starts)
    }
    row = list(times.annotate(**probes).values_list(*probes)[:1])
    return list(row[0]) if row else [None] * len(starts)


def _from(cl: ChangeList, field: str, start: datetime) -> QuerySet[Any]:
    """The runs listed from ``start`` on, in time order, ``start`` first in the WHERE clause.

    With a year or month chosen, the list's own lower bound is in the WHERE clause
    too, and SQLite walks the index from the first of the two bounds it is given:
    from the year's or the month's start, it would read every run before ``start``
    (a second for the days of a month at 1,000,000 runs).
    """
    after: QuerySet[Any] = cl.model._default_manager.filter(**{f"{field}__gte": start})
    listed: QuerySet[Any] = cl.queryset
    if listed.query.distinct:  # (only a unique query combines with a unique query)
        after = after.distinct()
    return (after & listed).order_by(field)


def _aware(year: int, month: int, day: int) -> datetime:
    return timezone.make_aware(datetime(year, month, day))


def _link(cl: ChangeList, field: str, filters: dict[str, Any]) -> str:
    return cl.get_query_string(filters, [f"{field}__"])


def _years(
    cl: ChangeList, field: str, first_year: int, last_year: int, first: datetime, last: datetime
) -> dict[str, Any]:
    periods = [
        (
            _aware(y, 1, 1),
            _aware(y + 1, 1, 1),
            {"link": _link(cl, field, {f"{field}__year": str(y)}), "title": str(y)},
        )
        for y in range(first_year, last_year + 1)
    ]
    return {"show": True, "back": None, "choices": _choices(cl, field, periods, first, last)}


def _months(
    cl: ChangeList, field: str, year: int, first: datetime | None, last: datetime | None
) -> dict[str, Any]:
    periods = []
    for m in range(1, 13):
        start = _aware(year, m, 1)
        end = _aware(year + 1, 1, 1) if m == 12 else _aware(year, m + 1, 1)
        link = {
            "link": _link(cl, field, {f"{field}__year": year, f"{field}__month": m}),
            "title": capfirst(formats.date_format(start, "YEAR_MONTH_FORMAT")),
        }
        periods.append((start, end, link))
    return {
        "show": True,
        "back": {"link": _link(cl, field, {}), "title": _("All dates")},
        "choices": _choices(cl, field, periods, first, last),
    }


def _days(
    cl: ChangeList,
    field: str,
    year: int,
    month: int,
    first: datetime | None,
    last: datetime | None,
) -> dict[str, Any]:
    periods = []
    for d in range(1, calendar.monthrange(year, month)[1] + 1):
        start = _aware(year, month, d)
        link = {
            "link": _link(
                cl,
                field,
                {f"{field}__year": year, f"{field}__month": month, f"{field}__day": d},
            ),
            "title": capfirst(formats.date_format(start, "MONTH_DAY_FORMAT")),
        }
        periods.append((start, start + timedelta(days=1), link))
    return {
        "show": True,
        "back": {"link": _link(cl, field, {f"{field}__year": year}), "title": str(year)},
        "choices": _choices(cl, field, periods, first, last),
    }
