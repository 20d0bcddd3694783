"""Human words for schedules, durations, statuses and times, in the active language."""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from cron_descriptor import ExpressionDescriptor, Options
from django.utils import timezone, translation
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext as _
from django.utils.translation import ngettext, pgettext

from scheduler import conf, crontab, registry
from scheduler.models import RunStatus, RunTrigger
from scheduler.retries import DEFAULT_BACKOFF

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise

    from scheduler.models import JobRun

_CRON_LOCALES = {
    "zh-hans": "zh_CN",
    "zh-hant": "zh_TW",
    "de": "de_DE",
    "fr": "fr_FR",
    "ja": "ja_JP",
}
_FIELD_ORDER = ["second", "minute", "hour", "day", "month", "day_of_week"]
# APScheduler's order of the same fields, most significant first.
_SIGNIFICANCE = ["month", "day", "day_of_week", "hour", "minute", "second"]


def _cron_words(expr: str) -> str | None:
    options = Options()
    options.use_24hour_time_format = True
    options.locale_code = _CRON_LOCALES.get(translation.get_language() or "en", "en_US")
    try:
        # cron-descriptor ships no type information; its description is text.
        return cast(str, ExpressionDescriptor(expr, options).get_description())
    except Exception:  # cron-descriptor raises bare exceptions on what it cannot word
        return None


# Field values that mean the same to APScheduler and to cron-descriptor: numbers, "*",
# ranges, steps and lists (and names, for months and weekdays). APScheduler's own
# forms ("last", "last fri", "2nd mon") and weekday numbers (Monday = 0, where cron
# counts from Sunday) would be worded wrongly, if at all: those show the raw text.
_NUMERIC = re.compile(r"[0-9*,/-]+")
_FIELD_VALUES = {
    "second": _NUMERIC,
    "minute": _NUMERIC,
    "hour": _NUMERIC,
    "day": _NUMERIC,
    "month": re.compile(r"[0-9a-z*,/-]+", re.IGNORECASE),
    "day_of_week": re.compile(r"[a-z*,/-]+", re.IGNORECASE),
}


def _fields_to_expr(fields: Mapping[str, Any]) -> str | None:
    """APScheduler cron fields as a 6-field (seconds first) expression, where one exists."""
    if not fields or set(fields) - set(_FIELD_ORDER):
        return None  # week and year have no place in a cron expression
    fields = {
        # APScheduler allows spaces around commas ("1, 2"); cron does not.
        name: re.sub(r"\s*,\s*", ",", value.strip()) if isinstance(value, str) else value
        for name, value in fields.items()
    }
    for name, value in fields.items():
        if not isinstance(value, str) or not _FIELD_VALUES[name].fullmatch(value):
            return None
    if fields.get("day", "*") != "*" and fields.get("day_of_week", "*") != "*":
        return None  # APScheduler wants both to match; cron words say either
    # APScheduler: the fields less significant than the least significant one given start
    # at their minimum, the others are "*". In its order the weekday comes between the day
    # and the hour: day_of_week="mon" is every Monday at 00:00, whatever the day and month.
    least = max(_SIGNIFICANCE.index(name) for name in fields)
    minimum = {"day": "1", "month": "1", "day_of_week": "*"}
    parts = []
    for name in _FIELD_ORDER:
        if name in fields:
            parts.append(fields[name])
        elif _SIGNIFICANCE.index(name) > least:
            parts.append(minimum.get(name, "0"))
        else:
            parts.append("*")
    return " ".join(parts)


def schedule_words(kind: str, fields: Mapping[str, Any] | None, text: str) -> str:
    """A schedule in words, from its fields as declared; ``text`` where it cannot be worded.

    Never raises: the admin's pages show every job the registry accepts.
    """
    words = None
    if kind == registry.ON_DEMAND:
        words = _("no schedule: runs when code schedules it")
    elif not isinstance(fields, Mapping):
        pass  # a row written before the fields were kept, until the scheduler syncs it
    elif kind == "interval":
        words = interval_words(fields)
    elif kind == "cron" and set(fields) == {"crontab"} and isinstance(fields["crontab"], str):
        expr = fields["crontab"]
        words = _cron_words(crontab.MACROS.get(expr.strip().lower(), expr))
    elif kind == "cron":
        fields_expr = _fields_to_expr(fields)
        words = _cron_words(fields_expr) if fields_expr else None
    return words or text


def interval_words(fields: Mapping[str, Any]) -> str | None:
    """``every 5 min``; None if the fields are not an interval the registry accepts."""
    seconds = 0.0
    for key, value in fields.items():
        unit = registry.UNIT_SECONDS.get(key)
        if unit is None or not registry.is_real(value) or value < 0:
            return None
        if value > registry.MAX_SECONDS:
            return None  # (and float() of a huge int would overflow)
        seconds += float(value) * unit
    if not 0 < seconds <= registry.MAX_SECONDS:
        return None
    return _("every %(duration)s") % {"duration": _exact_duration(seconds)}


def _exact_duration(seconds: float) -> str:
    """``1 h 30 s``: every unit, unlike duration_words, which rounds a run's duration."""
    # In whole milliseconds, so that 119.9999 s reads "2 min", not "1 min 60 s".
    days, rest = divmod(round(seconds * 1000), 86400_000)
    hours, rest = divmod(rest, 3600_000)
    minutes, millis = divmod(rest, 60_000)
    fraction = f"{millis / 1000:.3f}".rstrip("0").rstrip(".")
    parts = []
    if days:
        parts.append(ngettext("%(n)d day", "%(n)d days", days) % {"n": days})
    if hours:
        parts.append(_("%(n)d h") % {"n": hours})
    if minutes:
        parts.append(_("%(n)d min") % {"n": minutes})
    if fraction != "0":
        parts.append(_("%(s)s s") % {"s": fraction})
    return " ".join(parts)


def duration_words(seconds: float | None) -> str:
    """``0.25 s``, ``1 min 5 s``, ``2 h 3 min``, ``3 days 4 h``."""
    if seconds is None:
        return "—"
    if seconds < 1:
        return _("%(ms)d ms") % {"ms": round(seconds * 1000)}
    if seconds < 60:
        return _("%(s)s s") % {"s": f"{seconds:.1f}".removesuffix(".0")}
    total = round(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = []
    if days:
        parts.append(ngettext("%(n)d day", "%(n)d days", days) % {"n": days})
    if hours:
        parts.append(_("%(n)d h") % {"n": hours})
    if minutes and not days:
        parts.append(_("%(n)d min") % {"n": minutes})
    if secs and not days and not hours:
        parts.append(_("%(n)d s") % {"n": secs})
    return " ".join(parts)


def when(value: datetime | None) -> str:
    """A time in the active time zone, with the zone's name."""
    if value is None:
        return "—"
    local = timezone.localtime(value)
    return f"{local:%Y-%m-%d %H:%M:%S} {local.tzname()}"


def when_in(value: datetime, zone: str) -> str:
    """A time in the given time zone, with the zone's name."""
    local = value.astimezone(zoneinfo.ZoneInfo(zone))
    return f"{local:%Y-%m-%d %H:%M:%S} {local.tzname()}"


def percent(fraction: float | None) -> str:
    return "—" if fraction is None else f"{fraction * 100:.1f} %"


STATUS_COLOURS = {
    "queued": ("#475569", "#e2e8f0"),
    "running": ("#1d4ed8", "#dbeafe"),
    "succeeded": ("#166534", "#dcfce7"),
    "failed": ("#991b1b", "#fee2e2"),
    "missed": ("#92400e", "#fef3c7"),
    "skipped": ("#6b21a8", "#f3e8ff"),
    "interrupted": ("#9a3412", "#ffedd5"),
    "timed_out": ("#9f1239", "#ffe4e6"),
}


# A job's state and a scheduler instance's role: not run statuses, colours of their own.
STATE_COLOURS = {
    "active": ("#166534", "#dcfce7"),
    "paused": ("#92400e", "#fef3c7"),
    "disabled": ("#6b21a8", "#f3e8ff"),
    "standby": ("#475569", "#e2e8f0"),
    "stopped": ("#6b21a8", "#f3e8ff"),
    "runjob": ("#1d4ed8", "#dbeafe"),
}
_NEUTRAL = ("#111827", "#f3f4f6")


def status_badge(status: str | None, label: StrOrPromise | None = None) -> SafeString | str:
    """A run status as a badge: its name in text, not colour alone."""
    if not status:
        return "—"
    return _badge(f"scheduler-{status}", STATUS_COLOURS.get(status, _NEUTRAL), label or status)


def run_status(run: JobRun) -> SafeString | str:
    """A run's status badge; a pending retry, or a run scheduled from code (or enqueued as
    a task) not started, says when it is due (its ``scheduled_at``)."""
    badge = status_badge(run.status, run.get_status_display())
    if run.status == RunStatus.QUEUED and run.trigger == RunTrigger.RETRY:
        due = _("retry due at %(when)s") % {"when": when(run.scheduled_at)}
        return format_html('{} <span class="scheduler-due">{}</span>', badge, due)
    if run.status == RunStatus.QUEUED and run.trigger in (RunTrigger.CODE, RunTrigger.TASK):
        due = _("due at %(when)s") % {"when": when(run.scheduled_at)}
        return format_html('{} <span class="scheduler-due">{}</span>', badge, due)
    return badge


def state_badge(state: str, label: StrOrPromise) -> SafeString:
    """A job's state (active, paused, disabled) or an instance's role, as a badge."""
    return _badge(f"scheduler-state-{state}", STATE_COLOURS.get(state, _NEUTRAL), label)


def _badge(css_class: str, colours: tuple[str, str], label: object) -> SafeString:
    fg, bg = colours
    return format_html(
        '<span class="scheduler-badge {}" style="color:{};background:{};'
        'padding:1px 8px;border-radius:9px;font-weight:600;white-space:nowrap">{}</span>',
        css_class,
        fg,
        bg,
        label,
    )


def duration_chart(runs: list[dict[str, Any]], width: int = 640, height: int = 120) -> SafeString:
    """Recent run durations as an SVG bar chart, one bar per run, coloured by status.

    Server-rendered, so it reads without JavaScript; each bar has a tooltip
    (``<title>``) and the chart a text description for screen readers.
    """
    if not runs:
        return format_html("<p>{}</p>", _("No finished runs yet."))
    top = max((r["duration"] or 0) for r in runs) or 1.0
    slot = width / len(runs)
    bar = max(1.0, slot * 0.8)
    parts = []
    for index, run in enumerate(runs):
        seconds = run["duration"]
        h = max(2.0, (seconds or 0) / top * (height - 20)) if seconds is not None else 2.0
        x = index * slot + (slot - bar) / 2
        fg, _bg = STATUS_COLOURS.get(run["status"], _NEUTRAL)
        label = _("%(when)s: %(status)s, %(duration)s") % {
            "when": when(run["scheduled_at"]),
            "status": RunStatus(run["status"]).label,
            "duration": duration_words(seconds),
        }
        parts.append(
            format_html(
                '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}</title></rect>',
                f"{x:.1f}",
                f"{height - h:.1f}",
                f"{bar:.1f}",
                f"{h:.1f}",
                fg,
                label,
            )
        )
    title = _("Durations of the last %(count)d runs") % {"count": len(runs)}
    desc = _("Longest: %(longest)s. Bars are coloured by status.") % {
        "longest": duration_words(top)
    }
    return format_html(
        '<svg class="scheduler-chart" role="img" aria-labelledby="chart-title chart-desc" '
        'viewBox="0 0 {w} {h}" width="100%" height="{h}" preserveAspectRatio="none" '
        'xmlns="http://www.w3.org/2000/svg"><title id="chart-title">{t}</title>'
        '<desc id="chart-desc">{d}</desc>'
        '<line x1="0" y1="{h}" x2="{w}" y2="{h}" stroke="#94a3b8"/>{bars}</svg>',
        w=width,
        h=height,
        t=title,
        d=desc,
        bars=mark_safe("".join(parts)),  # noqa: S308 - each part was built by format_html
    )


# A job's run options ---------------------------------------------------------------------------

# (option, value in words, where the value comes from), as the job's page lists them.
RunOption = tuple[str, str, str]


def run_options(declared: object, max_instances: object) -> list[RunOption]:
    """A job's run options in words, each with where its value comes from.

    ``declared`` is the catalog's ``Job.run_options``: what the job declared, without
    the defaults, which are filled in here: the project's (``SCHEDULER``) or the app's.
    Never raises: a value this code does not know (a row written by other code) is
    shown as it is stored.
    """
    given: Mapping[str, Any] = declared if isinstance(declared, Mapping) else {}

    def source(key: str, setting: str | None = None) -> str:
        if key in given:
            return _("declared by the job")
        if setting:
            return _("project default (SCHEDULER['%(key)s'])") % {"key": setting}
        return _("default")

    timeout = given["timeout"] if "timeout" in given else conf.get("TIMEOUT")
    isolation = given["isolation"] if "isolation" in given else conf.get("ISOLATION")
    retries = given["retries"] if "retries" in given else conf.get("RETRIES")
    rows = [
        (
            _("timeout"),
            _("no limit") if timeout is None else _seconds_words(timeout),
            source("timeout", "TIMEOUT"),
        ),
        (_("isolation"), _isolation_words(isolation), source("isolation", "ISOLATION")),
        (
            _("retries"),
            _("none") if retries == 0 else str(retries),
            source("retries", "RETRIES"),
        ),
    ]
    # How and on what it retries matters only to a job that retries (or said how).
    if retries != 0 or "retry_backoff" in given:
        backoff = given.get("retry_backoff", DEFAULT_BACKOFF.as_json())
        rows.append((_("wait before a retry"), _backoff_words(backoff), source("retry_backoff")))
    if retries != 0 or "retry_on" in given:
        rows.append((_("retry on"), _retry_on_words(given.get("retry_on")), source("retry_on")))
    overlap = given.get("overlap")
    if overlap is None:
        instances = max_instances if registry.is_real(max_instances) else 1
        overlap = registry.default_overlap(cast(int, instances))
    rows.append((_("overlap"), _overlap_words(overlap), source("overlap")))
    executor = given["executor"] if "executor" in given else conf.get("EXECUTOR")
    rows.append((_("executor"), _executor_words(executor), source("executor", "EXECUTOR")))
    # How a run sent to a fleet is routed, as declared.
    for key, label in (("queue", _("queue")), ("priority", _("priority"))):
        if key in given:
            rows.append((label, str(given[key]), source(key)))
    if "expires" in given:
        rows.append((_("expires"), _seconds_words(given["expires"]), source("expires")))
    return rows


def _executor_words(value: object) -> str:
    words = {
        "local": _("this scheduler"),
        "celery": _("a Celery worker fleet"),
        "tasks": _("Django's task framework"),
    }
    return words.get(value, str(value)) if isinstance(value, str) else str(value)


def _seconds_words(value: object) -> str:
    if registry.is_real(value) and 0 <= cast(float, value) <= registry.MAX_SECONDS:
        seconds = float(cast(float, value))
        # _exact_duration says nothing of less than a millisecond.
        return _exact_duration(seconds) or _("%(s)s s") % {"s": f"{seconds:g}"}
    return str(value)


def _isolation_words(value: object) -> str:
    if value == "thread":
        return pgettext("run isolation", "thread")
    if value == "process":
        return pgettext("run isolation", "child process")
    return str(value)


def _backoff_words(value: object) -> str:
    fields = value if isinstance(value, Mapping) else {}
    base, cap, jitter = fields.get("base"), fields.get("cap"), fields.get("jitter")
    if not (registry.is_real(base) and registry.is_real(cap) and isinstance(jitter, bool)):
        return str(value)
    words = {"base": _seconds_words(base), "cap": _seconds_words(cap)}
    if cast(float, base) <= 0 or cast(float, cap) <= cast(float, base):
        # min(cap, base * 2 ** n): the same wait every time.
        words["wait"] = _seconds_words(min(cast(float, base), cast(float, cap)))
        if jitter:
            return _("a random time up to %(wait)s each time") % words
        return _("%(wait)s each time") % words
    if jitter:
        return _("%(base)s, doubling up to %(cap)s, with jitter") % words
    return _("%(base)s, doubling up to %(cap)s, without jitter") % words


def _retry_on_words(value: object) -> str:
    if value is None:
        return _("any exception, and a crash of its child process")
    if isinstance(value, list) and all(isinstance(name, str) for name in value):
        return ", ".join(name.removeprefix("builtins.") for name in value)
    return str(value)


def _overlap_words(value: object) -> str:
    words = {
        "skip": _("skip: a fire time that comes while a run is going is skipped"),
        "queue": _("queue: a fire time that comes while a run is going waits for it to end"),
        "replace": _("replace: a fire time that comes while a run is going stops it and runs"),
        "allow": _("allow: runs side by side, up to max_instances"),
    }
    return words.get(value, str(value)) if isinstance(value, str) else str(value)
