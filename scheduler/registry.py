"""The code registry: jobs declared with ``@cron``, ``@interval`` and ``@job``.

Decorating registers a :class:`JobSpec` and returns the function itself, so it
stays directly callable; it gains ``schedule``, ``run_now``, ``pause`` and
``resume`` (``JobFunction``: the requests of ``scheduler.requests`` for its
job). ``@job`` declares a job without a schedule: it runs when code schedules
it. Every mistake in a declaration raises ``ImproperlyConfigured`` naming the
job id and the bad value, at import time.
"""

from __future__ import annotations

import gc
import hashlib
import inspect
import json
import logging
import math
import zoneinfo
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from importlib import import_module
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar, cast, overload

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger as ApsCronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from apscheduler.util import check_callable_args
from django.apps import apps
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import module_has_submodule

from scheduler import conf, crontab
from scheduler.retries import DEFAULT_BACKOFF, MAX_RETRIES, Backoff

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from scheduler.models import JobRun

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R_co = TypeVar("R_co", covariant=True)

# The kind of a job declared with @job: no schedule, its runs are scheduled from code.
ON_DEMAND = "on_demand"
# Options that shape a schedule, which a job without one does not take.
SCHEDULE_OPTIONS = ("jitter", "start_date", "end_date", "coalesce")


class JobFunction(Protocol[P, R_co]):
    """A function declared as a job: callable as it was, and able to ask the scheduler
    for runs of its job (``scheduler.requests``; from any process with the settings)."""

    scheduler_job_id: str

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    def schedule(
        self,
        *,
        at: datetime | None = None,
        delay: timedelta | float | None = None,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        key: str = "",
        requested_by: str = "",
    ) -> JobRun: ...

    def run_now(self, requested_by: str = "") -> JobRun: ...

    def pause(self) -> bool: ...

    def resume(self) -> bool: ...


CRON_FIELDS = ("year", "month", "day", "week", "day_of_week", "hour", "minute", "second")
INTERVAL_FIELDS = ("weeks", "days", "hours", "minutes", "seconds")
# Seconds in one unit of each interval field.
UNIT_SECONDS = {"weeks": 604800, "days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}
# The shortest and longest interval a job may declare. Every fire time is a history
# row, so sub-second schedules are not what this scheduler is for (and APScheduler
# silently turns an interval of 0 into 1 s); a longer one than ten years, or a
# huge value such as seconds=1e300, overflows the dates computed from it.
MIN_INTERVAL_SECONDS = 1
MAX_INTERVAL_DAYS = 3653
# The longest interval, and the most jitter and misfire_grace_time, in seconds.
MAX_SECONDS = MAX_INTERVAL_DAYS * 86400
OPTIONS = (
    "id",
    "name",
    "timezone",
    "jitter",
    "start_date",
    "end_date",
    "max_instances",
    "coalesce",
    "misfire_grace_time",
    "args",
    "kwargs",
    "enabled",
    "timeout",
    "isolation",
    "retries",
    "retry_backoff",
    "retry_on",
    "overlap",
    "executor",
    "queue",
    "priority",
    "expires",
    "alerts",
    "alert_after",
    "expected_every",
    "ping_url",
)
ISOLATIONS = ("thread", "process")
EXECUTORS = ("local", "celery", "tasks")
# Priorities: Celery's are 0-9 on Redis, 0-255 on RabbitMQ; Django's task framework's
# -100 to 100. The fleet's own checks refuse what it does not take (recorded failed).
MIN_PRIORITY, MAX_PRIORITY = -100, 255
# What a fire time does while the job's previous run still goes (see "When jobs go wrong"
# in the README).
OVERLAPS = ("skip", "queue", "replace", "allow")


# Slots: a spec per job, and 100,000 jobs; without a __dict__ each takes 100 bytes less.
@dataclass(frozen=True, slots=True)
class JobSpec:
    """One job as declared in code."""

    id: str
    name: str
    func: Callable[..., Any]
    kind: str  # "cron", "interval", or ON_DEMAND (no schedule)
    schedule: dict[str, Any]
    timezone: str
    jitter: int | None = None
    start_date: datetime | None = None
    end_date: datetime | None = None
    max_instances: int = 1
    coalesce: bool = True
    misfire_grace_time: int | None = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    enabled: bool = True
    # How a run happens: how long it may take, where (scheduler.isolation), how often it is
    # tried again (scheduler.retries), and what a fire time does while a run still goes.
    # None: the project's default (SCHEDULER's TIMEOUT, ISOLATION, RETRIES; overlap "skip",
    # or "allow" with max_instances > 1). Runtime options: they do not shape the stored
    # job, so they stay out of its fingerprint (the catalog keeps them, ``run_options``).
    timeout: float | None = None
    isolation: str | None = None
    retries: int | None = None
    retry_backoff: Backoff = DEFAULT_BACKOFF
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    overlap: str | None = None
    # Where a run's body runs (SCHEDULER's EXECUTOR by default), and how a run sent to
    # Celery is routed: its queue, priority and expiry (seconds after it was sent).
    executor: str | None = None
    queue: str | None = None
    priority: int | None = None
    expires: float | None = None
    # Monitoring (scheduler.incidents): whether the job raises alerts at all, after how
    # many failed runs in a row (None: ALERTS["FAILURES"]), within how many seconds a run
    # must succeed (None: from the schedule), and a Healthchecks-style URL pinged at each
    # run's start, success and failure.
    alerts: bool = True
    alert_after: int | None = None
    expected_every: float | None = None
    ping_url: str | None = None
    # The ``django.tasks`` task this job is, when a task was declared (its context, its
    # signals and its return value go with each run: scheduler.tasks).
    task: Any = None

    @property
    def func_ref(self) -> str:
        return f"{self.func.__module__}:{self.func.__qualname__}"

    @property
    def wants_scheduled_at(self) -> bool:
        return _wants_scheduled_at(self.func)

    @property
    def is_async(self) -> bool:
        return is_async(self.func)

    def call_kwargs(self, scheduled_at: datetime | None) -> dict[str, Any]:
        """Keyword arguments of one call; ``scheduled_at`` is added where the function asks."""
        if self.wants_scheduled_at:
            return {**self.kwargs, "scheduled_at": scheduled_at}
        return dict(self.kwargs)

    @property
    def on_demand(self) -> bool:
        """Whether the job has no schedule (``@job``): it runs when code schedules it."""
        return self.kind == ON_DEMAND

    @property
    def schedule_text(self) -> str:
        """The schedule in raw form: the crontab string, or its fields ("" for none)."""
        if self.kind == "cron" and "crontab" in self.schedule:
            return cast(str, self.schedule["crontab"])  # checked to be a str when declared
        return ", ".join(f"{key}={value}" for key, value in self.schedule.items())

    def make_trigger(self) -> BaseTrigger:
        if self.on_demand:
            raise ValueError(f"Job {self.id!r} has no schedule (declared with @job).")
        return build_trigger(
            self.kind,
            tuple(self.schedule.items()),
            self.timezone,
            self.jitter,
            self.start_date,
            self.end_date,
        )

    @property
    def fingerprint(self) -> str:
        """Changes whenever anything that shapes the stored job changes.

        The SHA-256 of ``json.dumps(data, sort_keys=True, default=str)`` of the job's
        function, kind, schedule, zone and ``options`` (``_fingerprint_text``).
        """
        return hashlib.sha256(_fingerprint_text(self).encode()).hexdigest()

    @property
    def options(self) -> dict[str, Any]:
        """The options, JSON-ready (for the fingerprint and the admin's catalog)."""
        return {
            "jitter": self.jitter,
            "start_date": self.start_date.isoformat() if self.start_date else None,
            "end_date": self.end_date.isoformat() if self.end_date else None,
            "max_instances": self.max_instances,
            "coalesce": self.coalesce,
            "misfire_grace_time": self.effective_grace_time,
            "args": list(self.args),
            "kwargs": self.kwargs,
        }

    @property
    def effective_timeout(self) -> float | None:
        if self.timeout is not None:
            return self.timeout
        return cast("float | None", conf.get("TIMEOUT"))

    @property
    def effective_isolation(self) -> str:
        return self.isolation or cast(str, conf.get("ISOLATION"))

    @property
    def effective_retries(self) -> int:
        return self.retries if self.retries is not None else cast(int, conf.get("RETRIES"))

    @property
    def effective_overlap(self) -> str:
        return self.overlap if self.overlap is not None else default_overlap(self.max_instances)

    @property
    def effective_executor(self) -> str:
        return self.executor or cast(str, conf.get("EXECUTOR"))

    @property
    def retries_any_failure(self) -> bool:
        """Whether ``retry_on`` is left at its default (a crash is retried too)."""
        return self.retry_on == (Exception,)

    @property
    def run_options(self) -> dict[str, Any]:
        """The run options as declared, JSON-ready, without the defaults (for the catalog)."""
        found: dict[str, Any] = {}
        if self.timeout is not None:
            found["timeout"] = self.timeout
        if self.isolation is not None:
            found["isolation"] = self.isolation
        if self.retries is not None:
            found["retries"] = self.retries
        if self.retry_backoff != DEFAULT_BACKOFF:
            found["retry_backoff"] = self.retry_backoff.as_json()
        if not self.retries_any_failure:
            found["retry_on"] = [f"{c.__module__}.{c.__qualname__}" for c in self.retry_on]
        if self.overlap is not None:
            found["overlap"] = self.overlap
        for key in ("executor", "queue", "priority", "expires"):
            if getattr(self, key) is not None:
                found[key] = getattr(self, key)
        if not self.alerts:
            found["alerts"] = False
        for key in ("alert_after", "expected_every", "ping_url"):
            if getattr(self, key) is not None:
                found[key] = getattr(self, key)
        return found

    @property
    def effective_grace_time(self) -> int | None:
        if self.misfire_grace_time is not None:
            return self.misfire_grace_time
        return cast("int | None", conf.get("MISFIRE_GRACE_TIME"))


# json.dumps(..., sort_keys=True, default=str), for the values without a plain JSON form.
_ENCODER = json.JSONEncoder(sort_keys=True, default=str)


def _json(value: Any) -> str:
    """``value`` as json.dumps(value, sort_keys=True, default=str) writes it, and as it
    appears inside a larger document so written."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    kind = type(value)
    if kind is str:
        return encode_basestring_ascii(value)
    if kind is int:
        return int.__repr__(value)
    if kind is dict:
        if not value:
            return "{}"
        items = []
        for key in value:
            if type(key) is not str:
                return _ENCODER.encode(value)
        for key in sorted(value):
            items.append(f"{encode_basestring_ascii(key)}: {_json(value[key])}")
        return f"{{{', '.join(items)}}}"
    return _ENCODER.encode(value)


def _fingerprint_text(spec: JobSpec) -> str:
    """The text the fingerprint hashes: json.dumps(data, sort_keys=True, default=str) of

    ``{"func": spec.func_ref, "kind": spec.kind, "schedule": spec.schedule,
    "timezone": spec.timezone, **spec.options}``, put together from each value's JSON
    in the order of the sorted keys. json.dumps made a new encoder at each call: 6 µs a
    job, 0.6 s of every start of 100,000 jobs; this takes 1.5 µs (the usual values
    written straight, the rest by ``_json``). tests/test_registry.py holds it to
    json.dumps.
    """
    start, end = spec.start_date, spec.end_date
    coalesce, jitter, kwargs = spec.coalesce, spec.jitter, spec.kwargs
    grace = spec.effective_grace_time
    if (
        not spec.args
        and type(kwargs) is dict
        and not kwargs
        and start is None
        and end is None
        and type(coalesce) is bool
        and type(spec.max_instances) is int
        and (jitter is None or type(jitter) is int)
        and (grace is None or type(grace) is int)
        and type(spec.kind) is str
        and type(spec.timezone) is str
    ):
        # Jobs declared in a loop differ in their schedule only: the text around it is
        # kept by what it is made of (exact types: 1 == True), 1 µs less a job.
        key = (spec.func, spec.kind, coalesce, jitter, spec.max_instances, grace, spec.timezone)
        around = _fingerprint_around.get(key)
        if around is None:
            # (A NUL stands for the schedule: JSON writes none of its own, "\u0000".)
            text = _fingerprint_text_of(spec, start, end, coalesce, jitter, kwargs, grace, "\0")
            head, _, tail = text.partition("\0")
            around = (head, tail)
            if len(_fingerprint_around) >= 1024:
                _fingerprint_around.clear()
            _fingerprint_around[key] = around
        return f"{around[0]}{_json(spec.schedule)}{around[1]}"
    schedule = _json(spec.schedule)
    return _fingerprint_text_of(spec, start, end, coalesce, jitter, kwargs, grace, schedule)


# The fingerprint text before and after a job's schedule, for look-alike jobs.
_fingerprint_around: dict[tuple[Any, ...], tuple[str, str]] = {}


def _fingerprint_text_of(
    spec: JobSpec,
    start: datetime | None,
    end: datetime | None,
    coalesce: Any,
    jitter: Any,
    kwargs: Any,
    grace: Any,
    schedule: str,
) -> str:
    return (
        f'{{"args": {_json(list(spec.args)) if spec.args else "[]"}, '
        f'"coalesce": {"true" if coalesce is True else _json(coalesce)}, '
        f'"end_date": {_json(end.isoformat()) if end else "null"}, '
        f'"func": {encode_basestring_ascii(spec.func_ref)}, '
        f'"jitter": {"null" if jitter is None else _json(jitter)}, '
        f'"kind": {_json(spec.kind)}, '
        f'"kwargs": {"{}" if type(kwargs) is dict and not kwargs else _json(kwargs)}, '
        f'"max_instances": {_json(spec.max_instances)}, '
        f'"misfire_grace_time": {_json(grace)}, '
        f'"schedule": {schedule}, '
        f'"start_date": {_json(start.isoformat()) if start else "null"}, '
        f'"timezone": {_json(spec.timezone)}}}'
    )


# Triggers are cheap to make (a few µs, crontab.CronTrigger shares its fields): the
# cache is for sharing between jobs, not for speed. A bigger one, holding a trigger per
# job of 100,000 with schedules of their own, held 30 MB for nothing.
@lru_cache(maxsize=4096)
def build_trigger(
    kind: str,
    schedule: tuple[tuple[str, Any], ...],
    tz_name: str,
    jitter: int | None,
    start_date: datetime | None,
    end_date: datetime | None,
) -> BaseTrigger:
    """Build a trigger; shared between jobs with the same schedule (triggers are immutable).

    Projects that declare thousands of jobs mostly repeat a few schedules, and
    parsing each again dominated start-up.
    """
    tz = zoneinfo.ZoneInfo(tz_name)
    options: dict[str, Any] = {"jitter": jitter, "start_date": start_date, "end_date": end_date}
    fields = dict(schedule)
    if kind == "interval":
        return IntervalTrigger(timezone=tz, **fields, **options)
    if "crontab" in fields:
        return crontab.from_crontab(fields["crontab"], tz, **options)
    return crontab.CronTrigger(timezone=tz, **fields, **options)


def _never_fires(trigger: BaseTrigger) -> bool:
    """Whether a trigger without an end date can never fire (say, "0 0 30 2 *")."""
    if isinstance(trigger, IntervalTrigger):
        return False
    if isinstance(trigger, ApsCronTrigger) and crontab.calendar_unrestricted(trigger.fields):
        # Most schedules; computing a fire time to know was 40 % of registering
        # 10,000 jobs with 1,200 schedules.
        return False
    return _computes_no_fire_time(trigger)


# (Not the check above: a cache of it held a trigger per job, 10 MB of 100,000 jobs.)
@lru_cache(maxsize=1024)
def _computes_no_fire_time(trigger: BaseTrigger) -> bool:
    return trigger.get_next_fire_time(None, datetime.now(UTC)) is None


registry: dict[str, JobSpec] = {}


class DeclarationError(ImproperlyConfigured):
    """A ``@cron``/``@interval`` declaration that cannot do what it says; names the job."""

    def __init__(self, message: str, job_id: str | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id


def _fail(job_id: str, message: str) -> DeclarationError:
    return DeclarationError(f"Scheduled job {job_id!r}: {message}", job_id)


def default_overlap(max_instances: int) -> str:
    """The overlap of a job that declares none: one run at a time skips the fire times
    that come during a run; several side by side are allowed."""
    return "allow" if max_instances > 1 else "skip"


def _int_between(value: Any, low: int, high: int) -> bool:
    """An int from ``low`` to ``high`` (not a bool, which Python counts as an int)."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def is_real(value: Any) -> bool:
    """An int or float that is a number: not a bool (an int in Python), not NaN or infinite."""
    if isinstance(value, bool):
        return False
    # An int is always finite (and math.isfinite overflows on one beyond a float's range).
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _job_id(func: Any, options: dict[str, Any]) -> str:
    """The id a declaration gets: ``id=...`` or ``<module>.<function>``."""
    default = f"{getattr(func, '__module__', None)}.{getattr(func, '__name__', func)}"
    return str(options.get("id") or default)


def _unknown_hint(options: dict[str, Any], fields: tuple[str, ...]) -> str:
    unknown = sorted(set(options) - set(OPTIONS))
    if not unknown:
        return "."
    return f"; unknown argument(s) {', '.join(unknown)} (fields are {', '.join(fields)})."


# A declaration's options, checked: (name, zone, jitter, max_instances, coalesce,
# misfire_grace_time, args, kwargs, enabled, (start_date, end_date), run options: the
# keyword arguments of JobSpec from ``timeout`` on).
_Checked = tuple[
    str,
    str,
    int | None,
    int,
    bool,
    int | None,
    tuple[Any, ...],
    dict[str, Any],
    bool,
    tuple[datetime | None, datetime | None],
    dict[str, Any],
]
# Options already checked, by (function, kind, options but the id, default zone).
_checked_options: dict[tuple[Any, ...], _Checked] = {}


# Option values a checked declaration is remembered by: only those whose equal values
# are the same value (1 == True, and equal datetimes may differ in their zone).
_KEY_TYPES: frozenset[type] = frozenset({str, int, bool, type(None)})


def _options_key(
    func: Callable[..., Any], kind: str, options: dict[str, Any]
) -> tuple[Any, ...] | None:
    """What ``_checked_options`` knows a declaration's options by; None: check them.

    The options as given (in the order given: a loop gives them in one order), each
    with its type, and the default zone where none is given.
    """
    types = tuple(map(type, options.values()))
    if not _KEY_TYPES.issuperset(types):
        return None  # args, kwargs, dates: checked at each declaration
    default_zone = None if options.get("timezone") else settings.TIME_ZONE
    key = (func, kind, tuple(options.items()), types, default_zone)
    try:
        hash(key)
    except TypeError:  # an unhashable callable
        return None
    return key


def _call_kwargs(func: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``JobSpec.call_kwargs(None)`` of a declaration with this function and kwargs."""
    return {**kwargs, "scheduled_at": None} if _wants_scheduled_at(func) else dict(kwargs)


def _check_options(
    func: Callable[..., Any], kind: str, job_id: str, options: dict[str, Any]
) -> _Checked:
    """A declaration's options, checked (``_Checked``); ``options`` is not changed."""
    options = dict(options)
    if "<locals>" in func.__qualname__:
        raise _fail(
            job_id,
            f"@{_decorator(kind)} on {func.__qualname__!r}: jobs must be module-level functions, "
            "so that the scheduler can import them.",
        )
    name = options.pop("name", None) or _first_docstring_line(func) or func.__name__
    tz_name = options.pop("timezone", None) or settings.TIME_ZONE
    if isinstance(tz_name, tzinfo):
        tz_name = str(tz_name)
    try:
        zoneinfo.ZoneInfo(tz_name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        raise _fail(job_id, f"unknown timezone {tz_name!r}.") from None

    for key in ("args", "kwargs"):
        value = options.get(key)
        if value is None:
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise _fail(job_id, f"{key}={value!r} is not JSON-serialisable ({exc}).") from None
    args = options.pop("args", None) or ()
    kwargs = options.pop("kwargs", None) or {}
    if not isinstance(args, (list, tuple)):
        raise _fail(job_id, f"args={args!r} must be a list or tuple.")
    if not isinstance(kwargs, dict):
        raise _fail(job_id, f"kwargs={kwargs!r} must be a dict.")
    if not all(isinstance(key, str) for key in kwargs):
        # JSON accepts {1: ...}, but a call with it fails at every run.
        raise _fail(job_id, f"kwargs={kwargs!r}: keyword names must be strings.")

    if kind == ON_DEMAND:
        given = [key for key in SCHEDULE_OPTIONS if key in options]
        if given:
            raise _fail(
                job_id,
                f"{', '.join(given)} shape a schedule; @job has none (use @cron or @interval).",
            )
    # A job without a schedule runs once per call its code schedules, each with its own
    # arguments: as many side by side as there are worker threads, unless it says less.
    default_instances = conf.get("THREADS") if kind == ON_DEMAND else 1
    max_instances = options.pop("max_instances", default_instances)
    if isinstance(max_instances, bool) or not isinstance(max_instances, int) or max_instances < 1:
        raise _fail(job_id, f"max_instances={max_instances!r} must be a positive integer.")
    # Both at most the longest interval: larger ones overflow a timedelta at the first run.
    grace = options.pop("misfire_grace_time", None)
    if grace is not None and (
        isinstance(grace, bool) or not isinstance(grace, int) or not 1 <= grace <= MAX_SECONDS
    ):
        raise _fail(
            job_id,
            f"misfire_grace_time={grace!r} must be a positive whole number of seconds, "
            f"at most {MAX_SECONDS} ({MAX_INTERVAL_DAYS} days).",
        )
    jitter = options.pop("jitter", None)
    if jitter is not None and (
        isinstance(jitter, bool) or not isinstance(jitter, int) or not 0 <= jitter <= MAX_SECONDS
    ):
        raise _fail(
            job_id,
            f"jitter={jitter!r} must be a non-negative whole number of seconds, "
            f"at most {MAX_SECONDS} ({MAX_INTERVAL_DAYS} days).",
        )
    dates = {}
    for key in ("start_date", "end_date"):
        value = options.pop(key, None)
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                raise _fail(job_id, f"{key}={value!r} is not an ISO 8601 date.") from None
        if value is not None and not isinstance(value, datetime):
            raise _fail(job_id, f"{key}={value!r} must be a datetime or an ISO 8601 string.")
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=zoneinfo.ZoneInfo(tz_name))
        dates[key] = value
    if dates["start_date"] and dates["end_date"] and dates["start_date"] > dates["end_date"]:
        raise _fail(
            job_id,
            f"start_date={dates['start_date'].isoformat()} is after "
            f"end_date={dates['end_date'].isoformat()}: the job could never run.",
        )
    # Anything else would be read as true or false by Python's rules: enabled="no" is true.
    coalesce = options.pop("coalesce", True)
    enabled = options.pop("enabled", True)
    for key, value in (("coalesce", coalesce), ("enabled", enabled)):
        if not isinstance(value, bool):
            raise _fail(job_id, f"{key}={value!r} must be True or False.")
    run = _check_run_options(job_id, options, max_instances)
    if options:
        raise _fail(job_id, f"unknown option(s) {', '.join(sorted(options))}.")

    try:
        if kind != ON_DEMAND:  # a job without a schedule gets the rest with each run
            _check_call(func, tuple(args), _call_kwargs(func, kwargs))
    except ValueError as exc:
        raise _fail(
            job_id, f"the function cannot be called with args={args!r}, kwargs={kwargs!r}: {exc}"
        ) from None
    return (
        str(name)[:255],
        tz_name,
        jitter,
        max_instances,
        coalesce,
        grace,
        tuple(args),
        dict(kwargs),
        enabled,
        (dates["start_date"], dates["end_date"]),
        run,
    )


def _check_run_options(job_id: str, options: dict[str, Any], max_instances: int) -> dict[str, Any]:
    """Take the run options out of ``options``, checked: JobSpec's keyword arguments."""
    timeout = options.pop("timeout", None)
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not 0 < timeout <= MAX_SECONDS
    ):
        raise _fail(
            job_id,
            f"timeout={timeout!r} must be a positive number of seconds, at most {MAX_SECONDS}.",
        )
    isolation = options.pop("isolation", None)
    if isolation is not None and isolation not in ISOLATIONS:
        raise _fail(job_id, f"isolation={isolation!r} must be 'thread' or 'process'.")
    retries = options.pop("retries", None)
    if retries is not None and not _int_between(retries, 0, MAX_RETRIES):
        raise _fail(job_id, f"retries={retries!r} must be an integer from 0 to {MAX_RETRIES}.")
    backoff = _check_backoff(job_id, options.pop("retry_backoff", DEFAULT_BACKOFF))
    retry_on = options.pop("retry_on", (Exception,))
    classes = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    if not classes or not all(
        isinstance(c, type) and issubclass(c, BaseException) for c in classes
    ):
        raise _fail(
            job_id,
            f"retry_on={retry_on!r} must be an exception class or a tuple of them "
            "(such as ConnectionError or (ConnectionError, TimeoutError)).",
        )
    overlap = options.pop("overlap", None)
    if overlap is not None and overlap not in OVERLAPS:
        raise _fail(job_id, f"overlap={overlap!r} must be one of {', '.join(map(repr, OVERLAPS))}.")
    if overlap in ("skip", "queue", "replace") and max_instances > 1:
        raise _fail(
            job_id,
            f"overlap={overlap!r} runs one at a time, but max_instances={max_instances}; "
            "use overlap='allow' for runs side by side.",
        )
    executor = options.pop("executor", None)
    if executor is not None and executor not in EXECUTORS:
        raise _fail(job_id, f"executor={executor!r} must be 'local', 'celery' or 'tasks'.")
    routing = {key: options.pop(key) for key in ("queue", "priority", "expires") if key in options}
    if routing and executor == "local":
        raise _fail(
            job_id,
            f"{', '.join(routing)} route runs sent to a worker fleet; this job runs here "
            "(executor='local').",
        )
    queue = routing.get("queue")
    if queue is not None and (not isinstance(queue, str) or not queue or len(queue) > 255):
        raise _fail(job_id, f"queue={queue!r} must be a queue name (a non-empty string).")
    priority = routing.get("priority")
    if priority is not None and not _int_between(priority, MIN_PRIORITY, MAX_PRIORITY):
        raise _fail(
            job_id,
            f"priority={priority!r} must be an integer from {MIN_PRIORITY} to {MAX_PRIORITY}.",
        )
    expires = routing.get("expires")
    if expires is not None and not (is_real(expires) and 0 < expires <= MAX_SECONDS):
        raise _fail(
            job_id, f"expires={expires!r} must be a positive number of seconds (at most 3653 days)."
        )
    monitoring = _check_monitoring(job_id, options)
    return {
        **monitoring,
        "executor": executor,
        "queue": queue,
        "priority": priority,
        "expires": None if expires is None else float(expires),
        "timeout": None if timeout is None else float(timeout),
        "isolation": isolation,
        "retries": retries,
        "retry_backoff": backoff,
        "retry_on": classes,
        "overlap": overlap,
    }


def _check_monitoring(job_id: str, options: dict[str, Any]) -> dict[str, Any]:
    """Take the monitoring options out of ``options``, checked."""
    alerts = options.pop("alerts", True)
    if not isinstance(alerts, bool):
        raise _fail(job_id, f"alerts={alerts!r} must be True or False.")
    after = options.pop("alert_after", None)
    if after is not None and not _int_between(after, 1, 1000):
        raise _fail(job_id, f"alert_after={after!r} must be an integer from 1 to 1000.")
    every = options.pop("expected_every", None)
    if isinstance(every, timedelta):
        every = every.total_seconds()
    if every is not None and not (is_real(every) and 1 <= every <= MAX_SECONDS):
        raise _fail(
            job_id,
            f"expected_every={every!r} must be a timedelta or a number of seconds from 1 to "
            f"{MAX_SECONDS}.",
        )
    ping = options.pop("ping_url", None)
    if ping is not None and (
        not isinstance(ping, str) or not ping.startswith(("http://", "https://"))
    ):
        raise _fail(job_id, f"ping_url={ping!r} must be an http:// or https:// address.")
    return {
        "alerts": alerts,
        "alert_after": after,
        "expected_every": None if every is None else float(every),
        "ping_url": ping,
    }


def _check_backoff(job_id: str, value: Any) -> Backoff:
    """``retry_backoff``: a Backoff, or a number of seconds (the base, other fields default)."""
    if isinstance(value, Backoff):
        fields = {"base": value.base, "cap": value.cap}
        for key, number in fields.items():
            if not is_real(number) or not 0 <= number <= MAX_SECONDS:
                raise _fail(
                    job_id,
                    f"retry_backoff={value!r}: {key} must be a number of seconds from 0 to "
                    f"{MAX_SECONDS}.",
                )
        if not isinstance(value.jitter, bool):
            raise _fail(job_id, f"retry_backoff={value!r}: jitter must be True or False.")
        return value
    if is_real(value) and 0 <= value <= MAX_SECONDS:
        return Backoff(base=float(value))
    raise _fail(
        job_id,
        f"retry_backoff={value!r} must be a number of seconds (the first wait) or "
        "Backoff(base=..., cap=..., jitter=...).",
    )


def _register(
    func: Callable[..., Any], kind: str, schedule: dict[str, Any], **options: Any
) -> JobSpec:
    if not callable(func):
        raise DeclarationError(f"@{_decorator(kind)} must decorate a function, got {func!r}.")
    job_id = options.pop("id", None) or f"{func.__module__}.{func.__name__}"
    if not isinstance(job_id, str) or len(job_id) > 255:
        raise _fail(str(job_id), "the id must be a string of at most 255 characters.")
    # Thousands of jobs declared in a loop differ in their id and schedule only: their
    # options are checked once (8 µs a job; 0.4 s of every start of 100,000 jobs).
    key = _options_key(func, kind, options)
    checked = _checked_options.get(key) if key is not None else None
    if checked is None:
        checked = _check_options(func, kind, job_id, options)
        if key is not None:
            if len(_checked_options) >= 1024:
                _checked_options.clear()
            _checked_options[key] = checked
    name, tz_name, jitter, max_instances, coalesce, grace, args, kwargs, enabled, dates, run = (
        checked
    )
    spec = JobSpec(
        id=job_id,
        name=name,
        func=func,
        kind=kind,
        schedule=schedule,
        timezone=tz_name,
        jitter=jitter,
        max_instances=max_instances,
        coalesce=coalesce,
        misfire_grace_time=grace,
        args=args,
        kwargs=dict(kwargs),
        enabled=enabled,
        start_date=dates[0],
        end_date=dates[1],
        **run,
    )
    try:
        # Cron fields: compiled one by one as the trigger would compile them (each shared,
        # crontab._field), and when no calendar field restricts them the schedule fires;
        # the trigger itself is made when a job needs it. Making it here was 8 µs a job
        # when every job has a schedule of its own (0.8 s of a restart at 100,000 jobs).
        fires = kind == "cron" and "crontab" not in schedule and crontab.fields_fire(schedule)
        trigger = None if fires or kind == ON_DEMAND else spec.make_trigger()
    except (ValueError, TypeError) as exc:
        raise _fail(job_id, f"invalid {kind} schedule {spec.schedule_text!r}: {exc}") from None
    if trigger is not None and not spec.end_date and _never_fires(trigger):
        raise _fail(job_id, f"schedule {spec.schedule_text!r} never fires.")

    if len(spec.func_ref) > 255:
        raise _fail(job_id, f"the function's path {spec.func_ref!r} is over 255 characters.")

    existing = registry.get(job_id)
    if existing is not None and existing.func_ref != spec.func_ref:
        raise _fail(
            job_id,
            f"duplicate job id: already registered by {existing.func_ref}, "
            f"registered again by {spec.func_ref}. Pass id=... to tell them apart.",
        )
    if existing is not None and existing.task is not None and existing.func is func:
        # A task of SchedulerBackend, declared on demand when it was defined, that
        # @cron/@interval now give a schedule: the job is the task, scheduled.
        spec = replace(spec, task=existing.task)
    elif existing is not None and existing.func is func and existing != spec:
        # Two decorators on one function that share an id (both default to
        # "<module>.<function>"): the second would replace the first without a word.
        # A module imported again makes a new function object, and replaces as before;
        # the very same declaration made twice (a failed import retried) is harmless.
        raise _fail(
            job_id,
            f"{spec.func_ref} has two schedules under this one id ({existing.kind} "
            f"{existing.schedule_text!r} and {kind} {spec.schedule_text!r}); the second would "
            "replace the first. Pass a distinct id=... to each decorator.",
        )
    registry[job_id] = spec
    _attach(func, job_id)
    return spec


def register_task(task: Any) -> JobSpec:
    """Declare a ``django.tasks`` task (of ``scheduler.tasks.SchedulerBackend``) as a job
    without a schedule, under its path, once: its runs are the task's enqueued runs. A
    task that @cron or @interval declared already keeps that schedule."""
    existing = registry.get(task.module_path)
    if existing is not None and existing.func is task.func:
        if existing.task is None:
            existing = registry[task.module_path] = replace(existing, task=task)
        return existing
    spec = _register(task.func, ON_DEMAND, {}, id=task.module_path)
    spec = registry[spec.id] = replace(spec, task=task)
    return spec


def _as_function(func: Any) -> tuple[Callable[..., Any], Any]:
    """(the function, the ``django.tasks`` task) of what a decorator was given: a task
    declares its function, or the function itself (and no task)."""
    task_class = _task_class()
    if task_class is not None and isinstance(func, task_class):
        return cast("Callable[..., Any]", getattr(func, "func")), func  # noqa: B009
    return func, None


@lru_cache(maxsize=1)
def _task_class() -> type | None:
    """``django.tasks``' Task (Django 6) or the backport's; None where neither is."""
    for module in ("django.tasks.base", "django_tasks.base"):
        try:
            return cast(type, import_module(module).Task)
        except ImportError:
            continue
    return None


def _decorator(kind: str) -> str:
    return "job" if kind == ON_DEMAND else kind


def _attach(func: Callable[..., Any], job_id: str) -> None:
    """Give ``func`` the requests of its job (``JobFunction``). A function declared under
    several ids has them refuse, naming the ids: which job was meant cannot be told."""
    ids = tuple(getattr(func, "scheduler_job_ids", ()))
    if job_id not in ids:
        ids += (job_id,)
    try:
        func.scheduler_job_ids = ids  # type: ignore[attr-defined]
        func.scheduler_job_id = job_id  # type: ignore[attr-defined]
        for name in ("schedule", "run_now", "pause", "resume"):
            setattr(func, name, _Request(name, func))
    except (AttributeError, TypeError):  # a callable that takes no attributes
        pass


class _Request:
    """``func.schedule`` and the like: ``scheduler.requests``' function for ``func``'s job."""

    __slots__ = ("func", "name")

    def __init__(self, name: str, func: Callable[..., Any]) -> None:
        self.name, self.func = name, func

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from scheduler import requests  # the models load when a request is made

        ids: tuple[str, ...] = tuple(getattr(self.func, "scheduler_job_ids", ()))
        if len(ids) != 1:
            raise TypeError(
                f"{self.func.__qualname__} is declared as {len(ids)} jobs ({', '.join(ids)}): "
                f"call scheduler.{self.name}(<job id>, ...) to say which."
            )
        return getattr(requests, self.name)(ids[0], *args, **kwargs)

    def __repr__(self) -> str:
        return f"<{self.name} of {self.func.__qualname__}>"


# Projects that declare thousands of jobs often register one function many
# times; inspecting its signature and docstring once is enough.


@lru_cache(maxsize=4096)
def _first_docstring_line(func: Callable[..., Any]) -> str:
    doc = inspect.getdoc(func) or ""
    return doc.strip().splitlines()[0].strip() if doc.strip() else ""


def is_async(func: Callable[..., Any]) -> bool:
    """Whether ``func`` is a coroutine function (asked at every run, so remembered)."""
    try:
        return _is_async(func)
    except TypeError:  # an unhashable callable
        return inspect.iscoroutinefunction(func)


@lru_cache(maxsize=4096)
def _is_async(func: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(func)


@lru_cache(maxsize=4096)
def _wants_scheduled_at(func: Callable[..., Any]) -> bool:
    return "scheduled_at" in inspect.signature(func).parameters


@lru_cache(maxsize=4096)
def _check_call_cached(
    func: Callable[..., Any], arg_count: int, kwarg_names: frozenset[str]
) -> None:
    check_callable_args(func, (None,) * arg_count, dict.fromkeys(kwarg_names))


def _check_call(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """APScheduler's check that the function accepts these arguments (names and count only)."""
    _check_call_cached(func, len(args), frozenset(kwargs))


def cron(
    crontab_expr: str | None = None, /, **options: Any
) -> Callable[[Callable[P, R_co]], JobFunction[P, R_co]]:
    """Run the decorated function on a cron schedule.

    ``@cron("0 3 * * mon-fri")`` takes a 5-field crontab string;
    ``@cron(second="*/10")`` takes APScheduler's ``CronTrigger`` fields.
    """
    fields = {key: options.pop(key) for key in CRON_FIELDS if key in options}
    # Mistakes are reported when the function is known, so that they can name the job id.
    problem = None
    if crontab_expr is not None and fields:
        problem = (
            f"@cron({crontab_expr!r}, {', '.join(fields)}=...): give a crontab string or "
            "cron fields, not both."
        )
    elif crontab_expr is not None and not isinstance(crontab_expr, str):
        problem = f"@cron({crontab_expr!r}): the crontab must be a string."
    elif crontab_expr is None and not fields:
        problem = (
            "@cron() needs a crontab string such as '0 3 * * *' or fields such as minute='*/5'"
            + _unknown_hint(options, CRON_FIELDS)
        )
    schedule: dict[str, Any] = (
        {"crontab": crontab_expr}
        if crontab_expr is not None
        else {k: str(v) for k, v in fields.items()}
    )

    def decorator(func: Callable[P, R_co]) -> JobFunction[P, R_co]:
        function, task = _as_function(func)
        if problem is not None:
            raise _fail(_job_id(function, options), problem)
        _declare(function, task, "cron", schedule, options)
        return cast("JobFunction[P, R_co]", func)

    return decorator


def interval(**options: Any) -> Callable[[Callable[P, R_co]], JobFunction[P, R_co]]:
    """Run the decorated function every ``weeks``/``days``/``hours``/``minutes``/``seconds``."""
    schedule = {key: options.pop(key) for key in INTERVAL_FIELDS if key in options}
    # Mistakes are reported when the function is known, so that they can name the job id.
    problem = _interval_problem(schedule, options)

    def decorator(func: Callable[P, R_co]) -> JobFunction[P, R_co]:
        function, task = _as_function(func)
        if problem is not None:
            raise _fail(_job_id(function, options), problem)
        _declare(function, task, "interval", schedule, options)
        return cast("JobFunction[P, R_co]", func)

    return decorator


@overload
def job(func: Callable[P, R_co], /) -> JobFunction[P, R_co]: ...


@overload
def job(**options: Any) -> Callable[[Callable[P, R_co]], JobFunction[P, R_co]]: ...


def job(func: Callable[P, R_co] | None = None, /, **options: Any) -> Any:
    """Declare a job without a schedule: it runs when code schedules it
    (``func.schedule(delay=..., kwargs=...)``), or when someone presses run now.

    ``@job`` or ``@job(timeout=60, retries=3, ...)``: the options of ``@cron`` but
    those that shape a schedule. Its runs, each with its own arguments, go side by
    side up to ``max_instances`` (by default ``SCHEDULER['THREADS']``).
    """

    def decorator(f: Callable[P, R_co]) -> JobFunction[P, R_co]:
        unknown = [key for key in (*CRON_FIELDS, *INTERVAL_FIELDS) if key in options]
        if unknown:
            raise _fail(
                _job_id(f, options),
                f"@job takes no schedule ({', '.join(unknown)}); use @cron or @interval.",
            )
        function, task = _as_function(f)
        _declare(function, task, ON_DEMAND, {}, options)
        return cast("JobFunction[P, R_co]", f)

    if func is not None:
        return decorator(func)
    return decorator


def _declare(
    func: Callable[..., Any], task: Any, kind: str, schedule: dict[str, Any], options: Any
) -> None:
    """Register a decorated function, or the function of a decorated ``django.tasks``
    task (whose runs then get its context and keep its return value)."""
    spec = _register(func, kind, schedule, **options)
    if task is not None:
        registry[spec.id] = replace(spec, task=task)


def _interval_problem(schedule: dict[str, Any], options: dict[str, Any]) -> str | None:
    given = f"@interval({', '.join(f'{k}={v!r}' for k, v in schedule.items())})"
    bad = {k: v for k, v in schedule.items() if not is_real(v) or v < 0}
    if bad:
        return (
            f"@interval({', '.join(f'{k}={v!r}' for k, v in bad.items())}): intervals must be "
            "finite non-negative numbers (int or float)."
        )
    # Each field on its own first: the sum of huge values (seconds=1e300, or an int
    # too large for a float) must give this message, not an OverflowError.
    too_long = any(v > MAX_SECONDS / UNIT_SECONDS[k] for k, v in schedule.items())
    total = math.inf if too_long else sum(float(v) * UNIT_SECONDS[k] for k, v in schedule.items())
    if total > MAX_SECONDS:
        return (
            f"{given} is longer than the longest interval, {MAX_INTERVAL_DAYS} days "
            "(10 years); use @cron with a year for rarer jobs."
        )
    if not schedule or total < MIN_INTERVAL_SECONDS:
        return (
            f"{given} needs an interval of at least {MIN_INTERVAL_SECONDS} second, e.g. "
            "@interval(minutes=5)" + _unknown_hint(options, INTERVAL_FIELDS)
        )
    return None


# Set only once every module imported: a discovery that raised (a bad declaration,
# a missing module) is tried again in full by the next call, which raises again
# until the code is fixed. Python forgets a module whose import raised.
_discovered = False


def autodiscover() -> dict[str, JobSpec]:
    """Import ``SCHEDULER['JOB_MODULES']`` and every installed app's ``jobs`` module (and
    its ``tasks`` module, where a ``TASKS`` backend is this scheduler's: its tasks are
    jobs to run)."""
    global _discovered
    if _discovered:
        return registry
    submodules = ["jobs", "tasks"] if _runs_tasks() else ["jobs"]
    with gc_paused():
        for app_config in apps.get_app_configs():
            for submodule in submodules:
                if module_has_submodule(app_config.module, submodule):
                    import_module(f"{app_config.name}.{submodule}")
        explicit = "JOB_MODULES" in (getattr(settings, "SCHEDULER", None) or {})
        for module in conf.get("JOB_MODULES"):
            try:
                import_module(module)
            except ModuleNotFoundError as exc:
                if exc.name != module:
                    raise
                if not explicit:
                    continue  # the default "jobs" module is optional
                raise ImproperlyConfigured(
                    f"SCHEDULER['JOB_MODULES'] lists {module!r}, which cannot be imported."
                ) from exc
    _discovered = True
    return registry


def _runs_tasks() -> bool:
    """Whether a backend of the ``TASKS`` setting is ``scheduler.tasks.SchedulerBackend``."""
    backends = getattr(settings, "TASKS", None)
    if not isinstance(backends, dict):
        return False
    return any(
        isinstance(params, dict) and params.get("BACKEND") == TASK_BACKEND
        for params in backends.values()
    )


TASK_BACKEND = "scheduler.tasks.SchedulerBackend"


@contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused while many lasting objects are made.

    A collection runs every 700 new objects and, every so often, goes over all of them
    again: registering 100,000 jobs (half a million objects, none of them garbage)
    spent 0.13 s of 0.97 in it, their first sync 0.6 s of 4.9. It runs as before
    afterwards, on the garbage made meanwhile too.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
