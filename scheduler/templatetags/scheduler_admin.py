"""Template tags of the scheduler's admin pages."""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from django import template
from django.contrib.admin.templatetags.admin_list import date_hierarchy
from django.contrib.admin.views.main import ChangeList
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
    return health.for_staff()


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
    return describe.status_badge(run.status, run.get_status_display())


@register.simple_tag
def when(value: datetime | None) -> str:
    return describe.when(value)


@register.simple_tag
def duration(seconds: float | None) -> str:
    return describe.duration_words(seconds)


@register.inclusion_tag("admin/date_hierarchy.html")
def bounded_date_hierarchy(cl: ChangeList) -> dict[str, Any]:
    """Django's date hierarchy, with choices found by index probes instead of a DISTINCT.

    Django lists the years, months or days that have rows with a
    ``SELECT DISTINCT`` over every matching row, which takes seconds on
    millions of runs. Here each candidate period is checked with an
    ``EXISTS`` on the ``scheduled_at`` index: at most 31 cheap queries.
    """
    context = _bounded_date_hierarchy(cl)
    # Django 6 labels the links "Filter by <field>".
    field = cast("Field[Any, Any]", cl.model._meta.get_field(cl.date_hierarchy))  # scheduled_at
    context.setdefault("field_name", field.verbose_name)
    return context


def _bounded_date_hierarchy(cl: ChangeList) -> dict[str, Any]:
    field = cl.date_hierarchy
    params = cl.params
    year = params.get(f"{field}__year")
    month = params.get(f"{field}__month")
    day = params.get(f"{field}__day")
    if day:
        # A single day is chosen: Django runs no query for it. (Its tag gives None only
        # without a date hierarchy, and the template asks for this tag only with one.)
        return cast("dict[str, Any]", date_hierarchy(cl))
    if year and month:
        return _days(cl, field, int(year), int(month))
    if year:
        return _months(cl, field, int(year))
    # Nothing chosen: like Django, open at the narrowest level the runs span.
    # Two index lookups: SQLite scans the table for MIN() and MAX() in one query.
    dates = cl.queryset.order_by(field).values_list(field, flat=True)
    first, last = dates.first(), dates.order_by(f"-{field}").first()
    if first is None:
        return {"show": True, "back": None, "choices": []}
    first, last = timezone.localtime(first), timezone.localtime(last)
    if first.year != last.year:
        return _years(cl, field, first.year, last.year)
    if first.month != last.month:
        return _months(cl, field, first.year)
    return _days(cl, field, first.year, first.month)


def _exists(cl: ChangeList, field: str, start: datetime, end: datetime) -> bool:
    # The first row at or after the start, found by walking the index, then compared
    # with the end: a range EXISTS may be planned as a table scan on a large table.
    following = (
        cl.queryset.filter(**{f"{field}__gte": start})
        .order_by(field)
        .values_list(field, flat=True)
        .first()
    )
    return following is not None and following < end


def _aware(year: int, month: int, day: int) -> datetime:
    return timezone.make_aware(datetime(year, month, day))


def _link(cl: ChangeList, field: str, filters: dict[str, Any]) -> str:
    return cl.get_query_string(filters, [f"{field}__"])


def _years(cl: ChangeList, field: str, first: int, last: int) -> dict[str, Any]:
    choices = [
        {"link": _link(cl, field, {f"{field}__year": str(y)}), "title": str(y)}
        for y in range(first, last + 1)
        if _exists(cl, field, _aware(y, 1, 1), _aware(y + 1, 1, 1))
    ]
    return {"show": True, "back": None, "choices": choices}


def _months(cl: ChangeList, field: str, year: int) -> dict[str, Any]:
    choices = []
    for m in range(1, 13):
        start = _aware(year, m, 1)
        end = _aware(year + 1, 1, 1) if m == 12 else _aware(year, m + 1, 1)
        if _exists(cl, field, start, end):
            choices.append(
                {
                    "link": _link(cl, field, {f"{field}__year": year, f"{field}__month": m}),
                    "title": capfirst(formats.date_format(start, "YEAR_MONTH_FORMAT")),
                }
            )
    return {
        "show": True,
        "back": {"link": _link(cl, field, {}), "title": _("All dates")},
        "choices": choices,
    }


def _days(cl: ChangeList, field: str, year: int, month: int) -> dict[str, Any]:
    choices = []
    for d in range(1, calendar.monthrange(year, month)[1] + 1):
        start = _aware(year, month, d)
        if _exists(cl, field, start, start + timedelta(days=1)):
            choices.append(
                {
                    "link": _link(
                        cl,
                        field,
                        {f"{field}__year": year, f"{field}__month": month, f"{field}__day": d},
                    ),
                    "title": capfirst(formats.date_format(start, "MONTH_DAY_FORMAT")),
                }
            )
    return {
        "show": True,
        "back": {"link": _link(cl, field, {f"{field}__year": year}), "title": str(year)},
        "choices": choices,
    }
