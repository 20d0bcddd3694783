"""The ``@cron`` and ``@interval`` decorators and the ``JobSpec`` they register."""

import dataclasses
import hashlib
import importlib
import inspect
import json
import math
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.interval import IntervalTrigger
from django.core.exceptions import ImproperlyConfigured

from scheduler import Backoff, cron, interval
from scheduler import registry as registry_module
from scheduler.crontab import from_crontab

MODULE = __name__  # "tests.test_registry"


@pytest.fixture(autouse=True)
def registry():
    """The global registry, restored after each test."""
    saved = dict(registry_module.registry)
    yield registry_module.registry
    registry_module.registry.clear()
    registry_module.registry.update(saved)


# Jobs must be module-level functions; the tests apply the decorators to these.


def documented_job():
    """Send the weekly newsletter.

    The rest of the docstring is not part of the name.
    """
    return "newsletter sent"


def undocumented_job():
    return "done"


def other_job():
    """Another job."""


def job_with_args(a, b=2):
    return a + b


def job_wants_time(scheduled_at):
    return scheduled_at


def job_with_args_and_time(a, *, scheduled_at=None):
    return a, scheduled_at


def flexible_job(*args, **kwargs):
    return args, kwargs


async def async_job(scheduled_at=None):
    """Refresh the cache asynchronously."""
    return scheduled_at


# --- decorator behaviour --------------------------------------------------------------------


@pytest.mark.parametrize(
    "decorator",
    [cron("0 3 * * *"), cron(minute="*/5"), interval(minutes=5)],
    ids=["crontab", "fields", "interval"],
)
def test_decorator_returns_the_function_unchanged(registry, decorator):
    decorated = decorator(documented_job)
    assert decorated is documented_job
    assert decorated() == "newsletter sent"
    assert registry[f"{MODULE}.documented_job"].func is documented_job


def test_default_id_name_and_options(registry, settings):
    settings.TIME_ZONE = "Europe/Berlin"
    cron("0 3 * * *")(documented_job)
    spec = registry[f"{MODULE}.documented_job"]
    assert spec.id == f"{MODULE}.documented_job"
    assert spec.name == "Send the weekly newsletter."
    assert spec.kind == "cron"
    assert spec.timezone == "Europe/Berlin"
    assert spec.make_trigger().timezone == ZoneInfo("Europe/Berlin")
    assert spec.func_ref == f"{MODULE}:documented_job"
    assert (spec.max_instances, spec.coalesce, spec.enabled) == (1, True, True)
    assert (spec.jitter, spec.start_date, spec.end_date, spec.misfire_grace_time) == (None,) * 4
    assert (spec.args, spec.kwargs) == ((), {})


def test_name_falls_back_to_the_function_name(registry):
    interval(hours=1)(undocumented_job)
    assert registry[f"{MODULE}.undocumented_job"].name == "undocumented_job"


def test_explicit_id_name_and_timezone(registry):
    cron("0 3 * * *", id="reports.nightly", name="Nightly report", timezone="Asia/Tokyo")(
        documented_job
    )
    spec = registry["reports.nightly"]
    assert (spec.id, spec.name, spec.timezone) == (
        "reports.nightly",
        "Nightly report",
        "Asia/Tokyo",
    )
    assert f"{MODULE}.documented_job" not in registry
    # 03:00 in Tokyo is 18:00 UTC the day before.
    first = spec.make_trigger().get_next_fire_time(None, datetime(2026, 1, 1, tzinfo=UTC))
    assert first.astimezone(UTC) == datetime(2026, 1, 1, 18, 0, tzinfo=UTC)


def test_timezone_may_be_a_tzinfo(registry):
    cron("0 3 * * *", id="tz.obj", timezone=ZoneInfo("America/Chicago"))(documented_job)
    assert registry["tz.obj"].timezone == "America/Chicago"


def test_long_name_is_truncated_to_the_column_size(registry):
    cron("0 3 * * *", id="long", name="x" * 300)(documented_job)
    assert registry["long"].name == "x" * 255


def test_all_options_are_stored(registry):
    start = datetime(2026, 1, 1, tzinfo=UTC)
    end = datetime(2027, 1, 1, tzinfo=UTC)
    cron(
        "*/5 * * * *",
        id="all.options",
        jitter=10,
        start_date=start,
        end_date=end,
        max_instances=3,
        coalesce=False,
        misfire_grace_time=60,
        args=[1],
        kwargs={"b": 5},
        enabled=False,
    )(job_with_args)
    spec = registry["all.options"]
    assert spec.jitter == 10
    assert (spec.start_date, spec.end_date) == (start, end)
    assert (spec.max_instances, spec.coalesce, spec.misfire_grace_time) == (3, False, 60)
    assert spec.effective_grace_time == 60
    assert (spec.args, spec.kwargs) == ((1,), {"b": 5})
    assert spec.enabled is False
    trigger = spec.make_trigger()
    assert (trigger.jitter, trigger.start_date, trigger.end_date) == (10, start, end)
    assert spec.func(*spec.args, **spec.call_kwargs(None)) == 6


def test_disabled_job_is_still_registered(registry):
    interval(minutes=5, id="off", enabled=False)(documented_job)
    assert registry["off"].enabled is False


def test_effective_grace_time_follows_the_setting(registry, settings):
    settings.SCHEDULER = {"MISFIRE_GRACE_TIME": 120}
    interval(minutes=5, id="default.grace")(documented_job)
    interval(minutes=5, id="own.grace", misfire_grace_time=30)(documented_job)
    assert registry["default.grace"].effective_grace_time == 120
    assert registry["own.grace"].effective_grace_time == 30


def test_iso_dates_are_parsed_and_naive_dates_get_the_job_timezone(registry):
    cron(
        "0 3 * * *",
        id="dates",
        timezone="Europe/Paris",
        start_date="2026-02-01T08:00:00",
        end_date=datetime(2026, 3, 1, 8, 0),
    )(documented_job)
    spec = registry["dates"]
    paris = ZoneInfo("Europe/Paris")
    assert spec.start_date == datetime(2026, 2, 1, 8, 0, tzinfo=paris)
    assert spec.start_date.tzinfo == paris
    assert spec.end_date == datetime(2026, 3, 1, 8, 0, tzinfo=paris)
    first = spec.make_trigger().get_next_fire_time(None, datetime(2026, 1, 1, tzinfo=UTC))
    assert first == datetime(2026, 2, 2, 3, 0, tzinfo=paris)


def test_async_job(registry):
    decorated = cron("0 * * * *")(async_job)
    assert decorated is async_job
    assert inspect.iscoroutinefunction(decorated)
    spec = registry[f"{MODULE}.async_job"]
    assert spec.is_async
    assert spec.wants_scheduled_at
    assert spec.name == "Refresh the cache asynchronously."


def test_sync_job_is_not_async(registry):
    cron("0 * * * *")(documented_job)
    assert not registry[f"{MODULE}.documented_job"].is_async


def test_scheduled_at_is_passed_only_to_functions_that_ask(registry):
    when = datetime(2026, 5, 1, 3, 0, tzinfo=UTC)
    cron("0 3 * * *")(job_wants_time)
    cron("0 3 * * *")(documented_job)
    cron("0 3 * * *", args=[7])(job_with_args_and_time)
    wants = registry[f"{MODULE}.job_wants_time"]
    plain = registry[f"{MODULE}.documented_job"]
    mixed = registry[f"{MODULE}.job_with_args_and_time"]
    assert wants.wants_scheduled_at and mixed.wants_scheduled_at
    assert not plain.wants_scheduled_at
    assert wants.call_kwargs(when) == {"scheduled_at": when}
    assert plain.call_kwargs(when) == {}
    assert wants.func(*wants.args, **wants.call_kwargs(when)) == when
    assert mixed.func(*mixed.args, **mixed.call_kwargs(when)) == (7, when)


def test_args_and_kwargs_reach_the_function(registry):
    interval(minutes=1, id="with.args", args=[1, "two"], kwargs={"three": [3]})(flexible_job)
    spec = registry["with.args"]
    assert spec.args == (1, "two")
    assert spec.kwargs == {"three": [3]}
    assert spec.func(*spec.args, **spec.call_kwargs(None)) == ((1, "two"), {"three": [3]})


def test_call_kwargs_is_a_fresh_dict(registry):
    interval(minutes=1, id="fresh", kwargs={"x": 1})(flexible_job)
    spec = registry["fresh"]
    spec.call_kwargs(None)["x"] = 99
    spec.call_kwargs(None)["y"] = 1
    assert spec.kwargs == {"x": 1}
    assert spec.call_kwargs(None) == {"x": 1}


def test_call_kwargs_adds_scheduled_at_to_the_kwargs(registry):
    when = datetime(2026, 1, 1, tzinfo=UTC)
    cron("* * * * *", id="both.kw", kwargs={"a": 1})(job_with_args_and_time)
    assert registry["both.kw"].call_kwargs(when) == {"a": 1, "scheduled_at": when}


def test_spec_is_frozen(registry):
    interval(minutes=1, id="frozen")(documented_job)
    with pytest.raises(dataclasses.FrozenInstanceError):
        registry["frozen"].enabled = False


@pytest.mark.parametrize(
    ("declare", "text"),
    [
        (cron("*/5 * * * mon-fri"), "*/5 * * * mon-fri"),
        (cron("@daily"), "@daily"),
        (cron(second="*/10", minute="*"), "minute=*, second=*/10"),
        (cron(hour=3, minute=0), "hour=3, minute=0"),
        (interval(minutes=5), "minutes=5"),
        (interval(hours=1, seconds=30), "hours=1, seconds=30"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_schedule_text(registry, declare, text):
    declare(documented_job)
    assert registry[f"{MODULE}.documented_job"].schedule_text == text


def test_cron_fields_make_a_cron_trigger(registry):
    cron(second="*/10", minute="*", id="fields", timezone="UTC")(documented_job)
    trigger = registry["fields"].make_trigger()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    first = trigger.get_next_fire_time(None, start + timedelta(seconds=1))
    assert first == datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC)
    assert trigger.get_next_fire_time(first, first) == first + timedelta(seconds=10)


def test_interval_makes_an_interval_trigger(registry):
    start = datetime(2026, 1, 1, tzinfo=UTC)
    interval(hours=1, minutes=30, id="every90", start_date=start, timezone="UTC")(documented_job)
    spec = registry["every90"]
    assert spec.kind == "interval"
    trigger = spec.make_trigger()
    assert isinstance(trigger, IntervalTrigger)
    assert trigger.interval == timedelta(minutes=90)
    assert trigger.get_next_fire_time(None, start + timedelta(minutes=1)) == start + timedelta(
        minutes=90
    )


def test_importing_a_module_again_replaces_its_jobs(registry):
    """A module imported twice (autoreload, test runners) must not be a duplicate."""
    module = importlib.import_module("tests.declared.reloadable")
    first = module.report
    module = importlib.reload(module)
    assert module.report is not first
    assert registry["tests.declared.reloadable.report"].func is module.report
    assert registry["tests.declared.reloadable.every_five"].func is module.report
    assert registry["tests.declared.reloadable.report"].schedule_text == "0 3 * * *"
    assert registry["tests.declared.reloadable.every_five"].schedule_text == "minutes=5"


def test_the_same_declaration_made_again_is_harmless(registry):
    """A discovery retried after a failed import may declare a job of another module again."""
    cron("0 3 * * *", id="again", kwargs={})(documented_job)
    cron("0 3 * * *", id="again")(documented_job)
    assert registry["again"].schedule_text == "0 3 * * *"


@pytest.mark.parametrize(
    "declare",
    [
        lambda: cron("0 3 * * *")(interval(minutes=5)(documented_job)),
        lambda: cron("0 4 * * *")(cron("0 3 * * *")(documented_job)),
        lambda: cron("0 3 * * *", id="both")(interval(minutes=5, id="both")(documented_job)),
        lambda: cron("0 3 * * *", name="Other")(cron("0 3 * * *")(documented_job)),
    ],
    ids=["default-ids", "two-crons", "same-explicit-id", "same-schedule-other-options"],
)
def test_two_schedules_on_one_function_need_an_id_each(registry, declare):
    with pytest.raises(ImproperlyConfigured) as excinfo:
        declare()
    message = str(excinfo.value)
    assert f"{MODULE}:documented_job has two schedules under this one id" in message
    assert "Pass a distinct id=... to each decorator." in message
    assert message.startswith("Scheduled job ")


def test_a_module_with_two_schedules_on_one_function_fails_to_import(registry):
    with pytest.raises(ImproperlyConfigured) as excinfo:
        importlib.import_module("tests.declared.two_schedules")
    assert str(excinfo.value) == (
        "Scheduled job 'tests.declared.two_schedules.report': tests.declared.two_schedules:report "
        "has two schedules under this one id (interval 'minutes=5' and cron '0 3 * * *'); the "
        "second would replace the first. Pass a distinct id=... to each decorator."
    )


def test_one_function_with_two_schedules_and_two_ids(registry):
    cron("0 3 * * *", id="report.nightly")(interval(minutes=5, id="report.often")(documented_job))
    nightly, often = registry["report.nightly"], registry["report.often"]
    assert (nightly.kind, nightly.schedule_text) == ("cron", "0 3 * * *")
    assert (often.kind, often.schedule_text) == ("interval", "minutes=5")
    assert nightly.func is often.func is documented_job


def test_one_function_under_two_ids(registry):
    cron("0 3 * * *", id="morning", kwargs={})(documented_job)
    cron("0 15 * * *", id="afternoon")(documented_job)
    assert registry["morning"].func is registry["afternoon"].func is documented_job


# --- errors -------------------------------------------------------------------------------


def nested_declaration(job_id):
    def inner():
        pass

    cron("0 3 * * *", id=job_id)(inner)


ERRORS = [
    # invalid crontab strings
    ("bad.minute", lambda i: cron("61 * * * *", id=i)(documented_job), "61"),
    ("bad.weekday", lambda i: cron("0 0 * * 8", id=i)(documented_job), "8"),
    ("bad.month", lambda i: cron("0 0 1 smarch *", id=i)(documented_job), "smarch"),
    ("four.fields", lambda i: cron("0 0 * *", id=i)(documented_job), "0 0 * *"),
    ("six.fields", lambda i: cron("0 0 0 * * *", id=i)(documented_job), "0 0 0 * * *"),
    ("bad.macro", lambda i: cron("@reboot", id=i)(documented_job), "@reboot"),
    ("bad.field.value", lambda i: cron(minute="75", id=i)(documented_job), "75"),
    ("not.a.string", lambda i: cron(5, id=i)(documented_job), "5"),
    ("both.forms", lambda i: cron("0 3 * * *", hour="3", id=i)(documented_job), "hour"),
    # unknown fields and options
    ("unknown.option", lambda i: cron("0 3 * * *", id=i, retry=3)(documented_job), "retry"),
    ("unknown.ioption", lambda i: interval(minutes=5, id=i, every=3)(documented_job), "every"),
    ("typo.field", lambda i: cron(minute="0", hours="3", id=i)(documented_job), "hours"),
    ("only.typo.field", lambda i: cron(minutes="*/5", id=i)(documented_job), "minutes"),
    ("interval.typo", lambda i: interval(minute=5, id=i)(documented_job), "minute"),
    ("interval.negative", lambda i: interval(minutes=-5, id=i)(documented_job), "-5"),
    ("interval.text", lambda i: interval(minutes="5", id=i)(documented_job), "'5'"),
    ("interval.zero", lambda i: interval(seconds=0, id=i)(documented_job), "seconds=0"),
    ("interval.bool", lambda i: interval(minutes=True, id=i)(documented_job), "minutes=True"),
    ("interval.none", lambda i: interval(minutes=None, id=i)(documented_job), "minutes=None"),
    ("interval.nan", lambda i: interval(seconds=math.nan, id=i)(documented_job), "seconds=nan"),
    ("interval.inf", lambda i: interval(hours=math.inf, id=i)(documented_job), "hours=inf"),
    (
        "interval.huge",
        lambda i: interval(seconds=1e300, id=i)(documented_job),
        "seconds=1e+300) is longer than the longest interval, 3653 days",
    ),
    (
        "interval.huge.int",
        lambda i: interval(weeks=10**400, minutes=1.5, id=i)(documented_job),
        "3653 days",
    ),
    (
        "interval.float.overflow",
        lambda i: interval(weeks=1e308, days=1e308, id=i)(documented_job),
        "3653 days",
    ),
    ("interval.too.long", lambda i: interval(days=3654, id=i)(documented_job), "days=3654"),
    (
        "interval.sum.too.long",
        lambda i: interval(weeks=520, days=14, id=i)(documented_job),
        "weeks=520, days=14",
    ),
    ("interval.sub.second", lambda i: interval(seconds=0.5, id=i)(documented_job), "seconds=0.5"),
    ("interval.empty", lambda i: interval(id=i)(documented_job), "@interval()"),
    # args and kwargs
    (
        "args.json",
        lambda i: cron("0 3 * * *", id=i, args=[datetime(2026, 1, 1)])(job_with_args),
        "datetime.datetime(2026, 1, 1, 0, 0)",
    ),
    (
        "kwargs.json",
        lambda i: cron("0 3 * * *", id=i, kwargs={"a": {1, 2}})(job_with_args),
        "{1, 2}",
    ),
    ("args.type", lambda i: cron("0 3 * * *", id=i, args="ab")(flexible_job), "'ab'"),
    ("kwargs.type", lambda i: cron("0 3 * * *", id=i, kwargs=[1])(flexible_job), "[1]"),
    (
        "args.too.many",
        lambda i: cron("0 3 * * *", id=i, args=[1, 2, 3])(job_with_args),
        "[1, 2, 3]",
    ),
    ("args.missing", lambda i: cron("0 3 * * *", id=i)(job_with_args), "args=()"),
    ("kwargs.unknown", lambda i: cron("0 3 * * *", id=i, kwargs={"c": 1})(job_with_args), "c"),
    (
        "args.clash.scheduled_at",
        lambda i: cron("0 3 * * *", id=i, args=[1, 2])(job_wants_time),
        "[1, 2]",
    ),
    # timezone
    ("bad.tz", lambda i: cron("0 3 * * *", id=i, timezone="Mars/Olympus")(documented_job), "Mars"),
    ("bad.tz.type", lambda i: cron("0 3 * * *", id=i, timezone=5)(documented_job), "5"),
    # numeric options
    ("instances.zero", lambda i: cron("0 3 * * *", id=i, max_instances=0)(documented_job), "0"),
    ("instances.text", lambda i: cron("0 3 * * *", id=i, max_instances="2")(documented_job), "'2'"),
    ("jitter.negative", lambda i: cron("0 3 * * *", id=i, jitter=-1)(documented_job), "-1"),
    ("jitter.text", lambda i: cron("0 3 * * *", id=i, jitter="10s")(documented_job), "'10s'"),
    ("grace.zero", lambda i: cron("0 3 * * *", id=i, misfire_grace_time=0)(documented_job), "0"),
    (
        "grace.huge",
        lambda i: cron("0 3 * * *", id=i, misfire_grace_time=10**12)(documented_job),
        "misfire_grace_time=1000000000000 must be a positive whole number of seconds, "
        "at most 315619200 (3653 days).",
    ),
    (
        "jitter.huge",
        lambda i: interval(hours=1, id=i, jitter=10**100)(documented_job),
        "at most 315619200 (3653 days)",
    ),
    (
        "kwargs.int.keys",
        lambda i: cron("0 3 * * *", id=i, kwargs={1: "a"})(flexible_job),
        "kwargs={1: 'a'}: keyword names must be strings.",
    ),
    (
        "grace.text",
        lambda i: interval(hours=1, id=i, misfire_grace_time="1h")(documented_job),
        "1h",
    ),
    # where a run happens, and for how long
    (
        "timeout.zero",
        lambda i: cron("0 3 * * *", id=i, timeout=0, isolation="process")(documented_job),
        "timeout=0 must be a positive number of seconds",
    ),
    (
        "timeout.text",
        lambda i: cron("0 3 * * *", id=i, timeout="1m", isolation="process")(documented_job),
        "timeout='1m'",
    ),
    (
        "timeout.bool",
        lambda i: cron("0 3 * * *", id=i, timeout=True, isolation="process")(documented_job),
        "timeout=True",
    ),
    (
        "isolation.unknown",
        lambda i: cron("0 3 * * *", id=i, isolation="fork")(documented_job),
        "isolation='fork' must be 'thread' or 'process'.",
    ),
    # executors and Celery routing
    (
        "executor.unknown",
        lambda i: cron("0 3 * * *", id=i, executor="rq")(documented_job),
        "executor='rq' must be 'local', 'celery' or 'tasks'",
    ),
    (
        "queue.local",
        lambda i: cron("0 3 * * *", id=i, executor="local", queue="q")(documented_job),
        "queue route runs sent to a worker fleet; this job runs here",
    ),
    (
        "queue.empty",
        lambda i: cron("0 3 * * *", id=i, executor="celery", queue="")(documented_job),
        "queue='' must be a queue name",
    ),
    (
        "priority.text",
        lambda i: cron("0 3 * * *", id=i, executor="celery", priority="high")(documented_job),
        "priority='high' must be an integer from -100 to 255",
    ),
    (
        "expires.zero",
        lambda i: cron("0 3 * * *", id=i, executor="celery", expires=0)(documented_job),
        "expires=0 must be a positive number of seconds",
    ),
    # retries and overlap
    ("retries.text", lambda i: cron("0 3 * * *", id=i, retries="3")(documented_job), "'3'"),
    ("retries.bool", lambda i: cron("0 3 * * *", id=i, retries=True)(documented_job), "True"),
    (
        "retries.negative",
        lambda i: cron("0 3 * * *", id=i, retries=-1)(documented_job),
        "retries=-1 must be an integer from 0 to 100",
    ),
    (
        "retries.huge",
        lambda i: cron("0 3 * * *", id=i, retries=10**6)(documented_job),
        "retries=1000000",
    ),
    (
        "backoff.text",
        lambda i: cron("0 3 * * *", id=i, retries=1, retry_backoff="1s")(documented_job),
        "retry_backoff='1s' must be a number of seconds",
    ),
    (
        "backoff.nan",
        lambda i: cron("0 3 * * *", id=i, retry_backoff=Backoff(base=math.nan))(documented_job),
        "base must be a number of seconds",
    ),
    (
        "backoff.jitter",
        lambda i: cron("0 3 * * *", id=i, retry_backoff=Backoff(jitter="no"))(documented_job),  # type: ignore[arg-type]
        "jitter must be True or False",
    ),
    (
        "retry_on.list",
        lambda i: cron("0 3 * * *", id=i, retry_on=[ValueError])(documented_job),
        "must be an exception class or a tuple of them",
    ),
    (
        "retry_on.instance",
        lambda i: cron("0 3 * * *", id=i, retry_on=ValueError("x"))(documented_job),
        "must be an exception class",
    ),
    (
        "retry_on.empty",
        lambda i: cron("0 3 * * *", id=i, retry_on=())(documented_job),
        "must be an exception class",
    ),
    (
        "overlap.unknown",
        lambda i: cron("0 3 * * *", id=i, overlap="forbid")(documented_job),
        "overlap='forbid' must be one of 'skip', 'queue', 'replace', 'allow'",
    ),
    (
        "overlap.queue.many",
        lambda i: cron("0 3 * * *", id=i, overlap="queue", max_instances=3)(documented_job),
        "overlap='queue' runs one at a time, but max_instances=3",
    ),
    # booleans
    ("enabled.text", lambda i: cron("0 3 * * *", id=i, enabled="no")(documented_job), "'no'"),
    ("enabled.int", lambda i: cron("0 3 * * *", id=i, enabled=0)(documented_job), "enabled=0"),
    (
        "coalesce.text",
        lambda i: interval(hours=1, id=i, coalesce="false")(documented_job),
        "coalesce='false'",
    ),
    (
        "coalesce.none",
        lambda i: interval(hours=1, id=i, coalesce=None)(documented_job),
        "coalesce=None",
    ),
    # dates
    (
        "start.after.end",
        lambda i: cron(
            "0 3 * * *",
            id=i,
            start_date="2027-01-01T00:00:00+00:00",
            end_date=datetime(2026, 6, 1, tzinfo=UTC),
        )(documented_job),
        "start_date=2027-01-01T00:00:00+00:00 is after end_date=2026-06-01T00:00:00+00:00",
    ),
    ("bad.start", lambda i: cron("0 3 * * *", id=i, start_date="soon")(documented_job), "'soon'"),
    ("bad.end", lambda i: cron("0 3 * * *", id=i, end_date=20260101)(documented_job), "20260101"),
    # schedules that never fire
    ("feb.30", lambda i: cron("0 0 30 2 *", id=i)(documented_job), "0 0 30 2 *"),
    ("past.year", lambda i: cron(year="2020", id=i)(documented_job), "2020"),
    # not a module-level function
    ("nested.job", nested_declaration, "inner"),
    # the id itself
    ("x" * 256, lambda i: cron("0 3 * * *", id=i)(documented_job), "x" * 256),
]


@pytest.mark.parametrize(("job_id", "declare", "bad_value"), ERRORS, ids=[e[0] for e in ERRORS])
def test_bad_declaration_names_the_job_and_the_value(registry, job_id, declare, bad_value):
    before = dict(registry)
    with pytest.raises(ImproperlyConfigured) as excinfo:
        declare(job_id)
    message = str(excinfo.value)
    assert job_id in message
    assert bad_value in message
    assert registry == before, "a bad declaration must not be registered"


@pytest.mark.parametrize(
    "declare",
    [
        lambda: cron(minutes="*/5")(documented_job),
        lambda: interval(minute=5)(documented_job),
        lambda: cron("0 0 * * 9")(documented_job),
    ],
)
def test_error_names_the_default_id(declare):
    with pytest.raises(ImproperlyConfigured, match=f"{MODULE}.documented_job"):
        declare()


def test_nested_function_error_names_the_default_id():
    def inner():
        pass

    with pytest.raises(ImproperlyConfigured, match="module-level") as excinfo:
        cron("0 3 * * *")(inner)
    assert f"{MODULE}.inner" in str(excinfo.value)


def test_duplicate_id_is_rejected(registry):
    cron("0 3 * * *", id="dup")(documented_job)
    with pytest.raises(ImproperlyConfigured) as excinfo:
        interval(minutes=5, id="dup")(other_job)
    message = str(excinfo.value)
    assert "'dup'" in message
    assert "duplicate" in message
    assert f"{MODULE}:documented_job" in message
    assert f"{MODULE}:other_job" in message
    assert registry["dup"].func is documented_job  # the first one stays


@pytest.mark.parametrize(
    ("fields", "seconds"),
    [
        ({"seconds": 1}, 1),
        ({"seconds": 1.5}, 1.5),
        ({"minutes": 0.5}, 30),
        ({"days": 3653}, 3653 * 86400),
        ({"weeks": 521, "days": 6}, 3653 * 86400),
        ({"hours": 0, "seconds": 1}, 1),
    ],
    ids=str,
)
def test_interval_limits_are_inclusive(registry, fields, seconds):
    assert registry_module.MIN_INTERVAL_SECONDS == 1
    assert registry_module.MAX_INTERVAL_DAYS == 3653
    interval(**fields, id="edge")(documented_job)
    assert registry["edge"].make_trigger().interval == timedelta(seconds=seconds)


def test_start_date_may_equal_end_date(registry):
    at = datetime(2030, 1, 1, 3, 0, tzinfo=UTC)
    cron("0 3 * * *", id="once", start_date=at, end_date=at, timezone="UTC")(documented_job)
    trigger = registry["once"].make_trigger()
    assert trigger.get_next_fire_time(None, datetime(2029, 1, 1, tzinfo=UTC)) == at


def test_schedule_with_end_date_in_the_past_is_allowed(registry):
    """A finished campaign may stay declared; it simply never fires again."""
    cron("0 3 * * *", id="finished", end_date="2020-01-01T00:00:00+00:00")(documented_job)
    trigger = registry["finished"].make_trigger()
    assert trigger.get_next_fire_time(None, datetime.now(UTC)) is None


# --- fingerprint ----------------------------------------------------------------------------

BASE = {
    "id": "fp",
    "timezone": "UTC",
    "kwargs": {"a": 1, "b": [2, 3]},
    "start_date": datetime(2026, 1, 1, tzinfo=UTC),
}


def fingerprint(expr="0 3 * * *", func=flexible_job, **changes):
    """Fingerprint of a declaration, leaving the registry as it was."""
    saved = dict(registry_module.registry)
    try:
        cron(expr, **{**BASE, **changes})(func)
        return registry_module.registry[changes.get("id", BASE["id"])].fingerprint
    finally:
        registry_module.registry.clear()
        registry_module.registry.update(saved)


def test_same_declaration_same_fingerprint():
    assert fingerprint() == fingerprint()
    assert len(fingerprint()) == 64


def test_equivalent_declarations_have_the_same_fingerprint():
    assert fingerprint(kwargs={"b": [2, 3], "a": 1}) == fingerprint()  # dict order
    assert fingerprint(start_date="2026-01-01T00:00:00+00:00") == fingerprint()  # ISO string
    assert fingerprint(args=[]) == fingerprint(args=())
    assert fingerprint(misfire_grace_time=3600) == fingerprint()  # the default grace time


def test_fingerprint_ignores_name_and_enabled():
    """Renaming or disabling a job does not make its stored schedule stale."""
    assert fingerprint(name="Another name") == fingerprint()
    assert fingerprint(enabled=False) == fingerprint()


@pytest.mark.parametrize(
    "changes",
    [
        {"expr": "0 4 * * *"},
        {"expr": "0 3 * * 1"},
        {"func": other_job, "kwargs": {}},
        {"timezone": "Europe/Berlin"},
        {"jitter": 5},
        {"start_date": datetime(2026, 1, 2, tzinfo=UTC)},
        {"end_date": datetime(2030, 1, 1, tzinfo=UTC)},
        {"max_instances": 2},
        {"coalesce": False},
        {"misfire_grace_time": 60},
        {"args": [1]},
        {"kwargs": {"a": 2, "b": [2, 3]}},
        {"kwargs": {"a": 1, "b": [3, 2]}},
    ],
    ids=lambda changes: ",".join(changes),
)
def test_changing_the_declaration_changes_the_fingerprint(changes):
    assert fingerprint(**changes) != fingerprint()


def test_cron_fields_and_interval_fingerprints_differ(registry):
    cron(minute="*/5", id="fp.fields")(documented_job)
    cron(minute="*/10", id="fp.fields2")(documented_job)
    cron("*/5 * * * *", id="fp.crontab")(documented_job)
    interval(minutes=5, id="fp.interval")(documented_job)
    interval(seconds=300, id="fp.seconds")(documented_job)
    fingerprints = {registry[i].fingerprint for i in registry if i.startswith("fp.")}
    assert len(fingerprints) == 5


def test_cron_field_values_are_normalised_to_text(registry):
    cron(hour=3, minute=0, id="fp.int")(documented_job)
    cron(hour="3", minute="0", id="fp.str")(documented_job)
    assert registry["fp.int"].fingerprint == registry["fp.str"].fingerprint


def test_changing_the_default_grace_time_changes_the_fingerprint(settings):
    before = fingerprint(), fingerprint(misfire_grace_time=60)
    settings.SCHEDULER = {"MISFIRE_GRACE_TIME": 10}
    after = fingerprint(), fingerprint(misfire_grace_time=60)
    assert after[0] != before[0]  # follows the setting
    assert after[1] == before[1]  # its own grace time: unaffected


@pytest.mark.parametrize(
    "crontab_text",
    ["*/5 * * * *", "0 3 * * 1-5", "0 0 29 2 *", "0 0 31 4 *", "0 0 * 2 *", "0 0 1 */2 *"],
)
def test_never_fires_agrees_with_computing_the_next_fire_time(crontab_text: str) -> None:
    trigger = from_crontab(crontab_text, ZoneInfo("UTC"))
    computed = trigger.get_next_fire_time(None, datetime.now(UTC)) is None
    assert registry_module._never_fires(trigger) == computed == (crontab_text == "0 0 31 4 *")


# -- start-up at scale: fingerprints, checked options, cron fields ------------------------


def reference_fingerprint_text(spec: registry_module.JobSpec) -> str:
    """What the fingerprint hashed before it was put together by hand: json.dumps."""
    data = {
        "func": spec.func_ref,
        "kind": spec.kind,
        "schedule": spec.schedule,
        "timezone": spec.timezone,
        **spec.options,
    }
    return json.dumps(data, sort_keys=True, default=str)


FINGERPRINT_VARIANTS = [
    {},
    {"schedule": {"crontab": "0 3 * * *"}},
    {"kind": "interval", "schedule": {"minutes": 5, "seconds": 1.5}},
    {"schedule": {"second": "5", "minute": "7", "hour": "13", "day_of_week": "mon-fri"}},
    {
        "args": (1, "é", None, [1, {"b": 2, "a": 1}], 2.5, True),
        "kwargs": {"z": 1, "a": {"y": [1, 2], "b": "\u2603"}},
    },
    {
        "jitter": 30,
        "max_instances": 3,
        "coalesce": False,
        "misfire_grace_time": 60,
        "start_date": datetime(2026, 1, 1, tzinfo=UTC),
        "end_date": datetime(2027, 1, 1, 5, 6, 7, 8, tzinfo=ZoneInfo("Europe/Paris")),
    },
    {"timezone": "Europe/Paris", "schedule": {"hour": "1-5", "minute": '"quoted"\\'}},
    {"schedule": {}},
    {"kwargs": {1: "x"}},
    {"args": (float("nan"), float("inf")), "schedule": {"x": -0.0}},
    {"args": (datetime(2026, 1, 1),), "kwargs": {"when": datetime(2026, 1, 1)}},
    {"id": "é.ü", "name": "naïve", "schedule": {"second": "*/10"}, "jitter": 0},
]


def fingerprint_spec(job_id: str, schedule: dict[str, str]) -> registry_module.JobSpec:
    """A declaration to vary in the fingerprint tests."""
    return registry_module.JobSpec(
        id=job_id, name="n", func=documented_job, kind="cron", schedule=schedule, timezone="UTC"
    )


@pytest.mark.parametrize("changes", FINGERPRINT_VARIANTS)
def test_the_fingerprint_is_the_json_it_always_was(changes, settings):
    """Put together by hand for speed, the text must be json.dumps's to the byte: a changed
    fingerprint would reschedule every stored job."""
    base = fingerprint_spec("fp.base", {"second": "*/10"})
    spec = dataclasses.replace(base, **changes)
    expected = reference_fingerprint_text(spec)
    assert registry_module._fingerprint_text(spec) == expected
    assert spec.fingerprint == hashlib.sha256(expected.encode()).hexdigest()
    settings.SCHEDULER = {"MISFIRE_GRACE_TIME": None}
    assert registry_module._fingerprint_text(spec) == reference_fingerprint_text(spec)


def test_options_checked_once_are_not_mistaken_for_equal_ones(registry):
    """Declarations in a loop share the check of their options; 1 == True must not let
    ``coalesce=1`` through after ``coalesce=True``, nor hand one job another's values."""
    for i in range(3):
        cron("0 3 * * *", id=f"loop.{i}", coalesce=True, max_instances=2)(other_job)
    assert {registry[f"loop.{i}"].max_instances for i in range(3)} == {2}
    with pytest.raises(ImproperlyConfigured, match="coalesce=1 must be True or False"):
        cron("0 3 * * *", id="loop.int", coalesce=1, max_instances=2)(other_job)
    with pytest.raises(ImproperlyConfigured, match="max_instances=True"):
        cron("0 3 * * *", id="loop.bool", coalesce=True, max_instances=True)(other_job)
    cron("0 3 * * *", id="args.true", args=(True,))(job_with_args)
    cron("0 3 * * *", id="args.one", args=(1,))(job_with_args)
    assert registry["args.true"].args[0] is True and registry["args.one"].args[0] is not True
    # The same options on another function are checked for that function.
    with pytest.raises(ImproperlyConfigured, match="cannot be called"):
        cron("0 3 * * *", id="loop.call", coalesce=True, max_instances=2)(job_with_args)


def test_a_checked_declaration_follows_the_default_timezone(registry, settings):
    cron("0 3 * * *", id="tz.a")(other_job)
    settings.TIME_ZONE = "Asia/Tokyo"
    cron("0 3 * * *", id="tz.b")(other_job)
    assert (registry["tz.a"].timezone, registry["tz.b"].timezone) == ("UTC", "Asia/Tokyo")
    assert registry["tz.a"].kwargs is not registry["tz.b"].kwargs  # each its own dict


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"second": "61"}, "second"),
        ({"minute": "*/0"}, "Increment must be higher than 0"),
        ({"hour": "5-2"}, "must not be higher"),
        ({"day_of_week": "mon-funday"}, "Invalid weekday name"),
        ({"day": "0 0 31 2 *"}, "Unrecognized expression"),
    ],
)
def test_cron_fields_are_checked_without_making_the_trigger(registry, fields, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        cron(**fields, id="bad.fields")(other_job)


def test_cron_fields_that_never_fire_are_still_found(registry):
    with pytest.raises(ImproperlyConfigured, match="never fires"):
        cron(month="2", day="30", id="never")(other_job)
    cron(month="2", day="29", id="leap")(other_job)  # fires in leap years
    assert "leap" in registry


def test_look_alike_jobs_keep_fingerprints_of_their_own(registry, settings):
    """Jobs declared in a loop share the fingerprint text around their schedules; any
    difference but the schedule still makes a fingerprint of its own."""
    base = fingerprint_spec("fp.loop", {"second": "1"})
    variants = [{"schedule": {"second": str(i), "minute": str(i % 7)}} for i in range(5)] + [
        {"coalesce": False},
        {"max_instances": 2},
        {"jitter": 0},
        {"misfire_grace_time": 5},
        {"timezone": "Europe/Paris"},
        {"func": other_job},
        {"kind": "interval", "schedule": {"seconds": 30}},
    ]
    seen = set()
    for changes in variants:
        spec = dataclasses.replace(base, **changes)
        text = registry_module._fingerprint_text(spec)
        assert text == reference_fingerprint_text(spec)
        seen.add(text)
    assert len(seen) == len(variants)
    settings.SCHEDULER = {"MISFIRE_GRACE_TIME": 7}  # the default grace is part of it
    assert registry_module._fingerprint_text(base) == reference_fingerprint_text(base)


def test_run_options_default_to_the_project_settings(registry, settings) -> None:
    cron("0 3 * * *", id="run.defaults")(documented_job)
    cron("0 3 * * *", id="run.own", timeout=5, isolation="thread", retries=0)(documented_job)
    spec, own = registry["run.defaults"], registry["run.own"]
    assert (spec.effective_timeout, spec.effective_isolation, spec.effective_retries) == (
        None,
        "thread",
        0,
    )
    assert spec.run_options == {}
    settings.SCHEDULER = {"TIMEOUT": 60, "ISOLATION": "process", "RETRIES": 2}
    assert (spec.effective_timeout, spec.effective_isolation, spec.effective_retries) == (
        60,
        "process",
        2,
    )
    # A job's own values win, even where they equal the built-in defaults.
    assert (own.effective_timeout, own.effective_isolation, own.effective_retries) == (
        5.0,
        "thread",
        0,
    )
    assert own.run_options == {"timeout": 5.0, "isolation": "thread", "retries": 0}


def test_overlap_follows_max_instances_unless_declared(registry) -> None:
    cron("0 3 * * *", id="o.one")(documented_job)
    cron("0 3 * * *", id="o.many", max_instances=3)(documented_job)
    cron("0 3 * * *", id="o.queue", overlap="queue")(documented_job)
    cron("0 3 * * *", id="o.allow", overlap="allow", max_instances=2)(documented_job)
    assert [registry[i].effective_overlap for i in ("o.one", "o.many", "o.queue", "o.allow")] == [
        "skip",
        "allow",
        "queue",
        "allow",
    ]


def test_retry_options_are_kept_and_shown_to_the_catalog(registry) -> None:
    cron(
        "0 3 * * *",
        id="r.all",
        retries=3,
        retry_backoff=Backoff(base=2, cap=30, jitter=False),
        retry_on=(ConnectionError, TimeoutError),
    )(documented_job)
    cron("0 3 * * *", id="r.number", retries=1, retry_backoff=0.5, retry_on=OSError)(documented_job)
    spec, number = registry["r.all"], registry["r.number"]
    assert spec.retry_on == (ConnectionError, TimeoutError)
    assert not spec.retries_any_failure and registry["r.number"].retry_on == (OSError,)
    assert number.retry_backoff == Backoff(base=0.5)
    assert spec.run_options == {
        "retries": 3,
        "retry_backoff": {"base": 2, "cap": 30, "jitter": False},
        "retry_on": ["builtins.ConnectionError", "builtins.TimeoutError"],
    }
    # Runtime options leave the fingerprint (and so the stored schedule) alone.
    cron("0 3 * * *", id="r.plain")(documented_job)
    plain = registry["r.plain"]
    assert spec.fingerprint == dataclasses.replace(plain, id="r.all").fingerprint


@pytest.mark.parametrize(
    ("backoff", "attempt", "expected"),
    [
        (Backoff(base=1, cap=600, jitter=False), 1, 1.0),
        (Backoff(base=1, cap=600, jitter=False), 2, 2.0),
        (Backoff(base=1, cap=600, jitter=False), 4, 8.0),
        (Backoff(base=3, cap=10, jitter=False), 5, 10.0),
        (Backoff(base=1, cap=600, jitter=False), 10_000, 600.0),
        (Backoff(base=0, cap=600, jitter=False), 3, 0.0),
    ],
)
def test_backoff_doubles_up_to_its_cap(backoff: Backoff, attempt: int, expected: float) -> None:
    assert backoff.delay(attempt) == expected


def test_backoff_jitter_stays_between_none_and_the_full_wait() -> None:
    import random

    rand = random.Random(7)
    waits = [Backoff(base=4, cap=600).delay(3, rand) for _ in range(500)]
    assert all(0 <= wait <= 16 for wait in waits)
    # Spread over the range, not bunched: many jobs failing together come back apart.
    assert min(waits) < 2 and max(waits) > 14


def test_celery_options_are_kept_and_shown_to_the_catalog(registry, settings) -> None:
    cron("0 3 * * *", id="c.all", executor="celery", queue="reports", priority=7, expires=60)(
        documented_job
    )
    cron("0 3 * * *", id="c.default")(documented_job)
    spec, plain = registry["c.all"], registry["c.default"]
    assert (spec.effective_executor, spec.queue, spec.priority, spec.expires) == (
        "celery",
        "reports",
        7,
        60.0,
    )
    assert spec.run_options == {
        "executor": "celery",
        "queue": "reports",
        "priority": 7,
        "expires": 60.0,
    }
    assert plain.effective_executor == "local"
    settings.SCHEDULER = {"EXECUTOR": "celery"}
    assert plain.effective_executor == "celery"
