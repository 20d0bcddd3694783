"""The SCHEDULER setting: every key is checked for type and range when first read."""

from __future__ import annotations

import math
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test.utils import override_settings

from scheduler import conf


def load(scheduler: Any) -> dict[str, Any]:
    """Every value, as the scheduler reads them at start with this SCHEDULER setting."""
    with override_settings(SCHEDULER=scheduler):
        return {key: conf.get(key) for key in conf.DEFAULTS}


def failure(scheduler: Any) -> str:
    """The ImproperlyConfigured message that this SCHEDULER setting stops the scheduler with."""
    with pytest.raises(ImproperlyConfigured) as excinfo:
        load(scheduler)
    return str(excinfo.value)


NAN, INF = math.nan, math.inf

# (key, bad value, words the message must hold besides the key and the value)
BAD = [
    ("JOB_MODULES", "myapp.jobs", "character"),
    ("JOB_MODULES", ["myapp.jobs", ""], "non-empty"),
    ("JOB_MODULES", ["myapp.jobs", 5], "non-empty"),
    ("JOB_MODULES", None, "list"),
    ("JOB_MODULES", {"myapp.jobs": 1}, "list"),
    ("DATABASE", "jobs", "DATABASES"),
    ("DATABASE", 0, "alias"),
    ("THREADS", "4", "integer >= 1"),
    ("THREADS", True, "integer >= 1"),
    ("THREADS", 0, "integer >= 1"),
    ("THREADS", 2.5, "integer >= 1"),
    ("THREADS", None, "integer >= 1"),
    ("MISFIRE_GRACE_TIME", "30", "or None for no limit"),
    ("MISFIRE_GRACE_TIME", 0, "or None for no limit"),
    ("MISFIRE_GRACE_TIME", -5, "or None for no limit"),
    ("MISFIRE_GRACE_TIME", True, "or None for no limit"),
    ("MISFIRE_GRACE_TIME", NAN, "or None for no limit"),
    ("MISFIRE_GRACE_TIME", 1.5, "whole number"),
    ("SHUTDOWN_GRACE", -1, ">= 0"),
    ("SHUTDOWN_GRACE", "30", ">= 0"),
    ("SHUTDOWN_GRACE", INF, ">= 0"),
    ("SHUTDOWN_GRACE", False, ">= 0"),
    ("POLL_INTERVAL", 0, "> 0"),
    ("POLL_INTERVAL", NAN, "> 0"),
    ("POLL_INTERVAL", "1", "> 0"),
    ("HISTORY_DAYS", 0, "integer >= 1 and at most 36525, or None"),
    ("HISTORY_DAYS", 7.5, "integer >= 1 and at most 36525, or None"),
    ("HISTORY_DAYS", "30", "integer >= 1 and at most 36525, or None"),
    ("MAX_OUTPUT", 0, "integer >= 1"),
    ("MAX_OUTPUT", "64k", "integer >= 1"),
    ("LEASE_SECONDS", 0, "> 0"),
    ("LEASE_SECONDS", -INF, "> 0"),
    ("LEASE_SECONDS", "15", "> 0"),
    ("HEARTBEAT_INTERVAL", 0, "> 0"),
    ("HEARTBEAT_INTERVAL", NAN, "> 0"),
    ("HEARTBEAT_INTERVAL", 8, "half of SCHEDULER['LEASE_SECONDS'] (15)"),
    ("DB_RETRY_TIMEOUT", 0, "> 0"),
    ("DB_RETRY_TIMEOUT", INF, "> 0"),
    ("DB_RETRY_TIMEOUT", 10, "less than SCHEDULER['LEASE_SECONDS'] (15)"),
    ("MAX_MISSED_ROWS", 0, "integer >= 1"),
    ("MAX_MISSED_ROWS", True, "integer >= 1"),
    ("TIMEOUT", 0, "> 0"),
    ("TIMEOUT", "30", "> 0 and at most 315619200 (3653 days), or None for no limit"),
    ("TIMEOUT", True, "or None for no limit"),
    ("TIMEOUT", NAN, "or None for no limit"),
    ("ISOLATION", "fork", "'thread' or 'process'"),
    ("ISOLATION", None, "'thread' or 'process'"),
    ("RETRIES", -1, "an integer from 0 to 100"),
    ("RETRIES", "3", "an integer from 0 to 100"),
    ("RETRIES", True, "an integer from 0 to 100"),
    ("RETRIES", 1000, "an integer from 0 to 100"),
    ("EXECUTOR", "rq", "'local', 'celery' or 'tasks'"),
    ("EXECUTOR", None, "'local', 'celery' or 'tasks'"),
    ("CELERY_APP", "myproject.celery", "as 'module:attribute'"),
    ("CELERY_APP", ":app", "as 'module:attribute'"),
    ("CELERY_APP", 5, "as 'module:attribute'"),
    # Durations that would overflow a timedelta or a thread's timeout at the first use.
    ("MISFIRE_GRACE_TIME", 10**12, "at most 315619200, or None for no limit"),
    ("POLL_INTERVAL", 1e300, "at most 315619200 (3653 days)"),
    ("LEASE_SECONDS", 10**20, "at most 315619200 (3653 days)"),
    ("HISTORY_DAYS", 10**6, "at most 36525, or None"),
]


@pytest.mark.parametrize(("key", "value", "expected"), BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_a_bad_value_stops_the_scheduler_naming_key_value_and_expectation(key, value, expected):
    message = failure({key: value})
    assert f"SCHEDULER[{key!r}]" in message
    assert repr(value) in message
    assert expected in message
    assert "\n" not in message, "one problem, one line"


def test_a_plain_string_job_modules_is_not_read_character_by_character():
    message = failure({"JOB_MODULES": "myapp.jobs"})
    assert message == (
        "SCHEDULER['JOB_MODULES'] is 'myapp.jobs' (str); expected a list of dotted module names "
        "such as ['myapp.jobs'] (a plain string would be read one character at a time)."
    )


def test_a_string_where_a_number_belongs_says_so():
    assert failure({"SHUTDOWN_GRACE": "30"}) == (
        "SCHEDULER['SHUTDOWN_GRACE'] is '30' (str); expected a number of seconds >= 0 and at "
        "most 315619200 (3653 days)."
    )


def test_every_problem_is_reported_at_once_one_line_each():
    message = failure(
        {"THREADS": "4", "POLL_INTERVAL": 0, "MAX_MISSED_ROWS": None, "DATABASE": "nope"}
    )
    lines = message.splitlines()
    assert len(lines) == 4
    assert [line.split(" is ")[0] for line in lines] == [
        "SCHEDULER['DATABASE']",
        "SCHEDULER['THREADS']",
        "SCHEDULER['POLL_INTERVAL']",
        "SCHEDULER['MAX_MISSED_ROWS']",
    ]


def test_the_limits_between_keys_follow_the_configured_lease():
    # At most half the lease, and retries at least as long as the lease: both at the limit.
    values = load({"LEASE_SECONDS": 4, "HEARTBEAT_INTERVAL": 2, "DB_RETRY_TIMEOUT": 4})
    assert (values["HEARTBEAT_INTERVAL"], values["DB_RETRY_TIMEOUT"]) == (2, 4)
    message = failure({"LEASE_SECONDS": 4, "HEARTBEAT_INTERVAL": 2.5, "DB_RETRY_TIMEOUT": 3.5})
    assert message.splitlines() == [
        "SCHEDULER['HEARTBEAT_INTERVAL'] is 2.5, more than half of SCHEDULER['LEASE_SECONDS'] "
        "(4); expected at most 2.",
        "SCHEDULER['DB_RETRY_TIMEOUT'] is 3.5, less than SCHEDULER['LEASE_SECONDS'] (4); "
        "expected at least 4.",
    ]


def test_an_invalid_lease_is_reported_once_not_again_through_the_keys_that_depend_on_it():
    assert failure({"LEASE_SECONDS": "15"}).splitlines() == [
        "SCHEDULER['LEASE_SECONDS'] is '15' (str); expected a number of seconds > 0 and at "
        "most 315619200 (3653 days)."
    ]


@pytest.mark.parametrize(
    "scheduler",
    [
        None,
        {},
        {"THREADS": 1, "SHUTDOWN_GRACE": 0, "POLL_INTERVAL": 0.05, "MAX_OUTPUT": 1},
        {"MISFIRE_GRACE_TIME": None, "HISTORY_DAYS": None},
        {"JOB_MODULES": ("a.jobs", "b.jobs")},
        {"JOB_MODULES": []},
        {"LEASE_SECONDS": 2.5, "HEARTBEAT_INTERVAL": 1.25, "DB_RETRY_TIMEOUT": 2.5},
        {"MAX_MISSED_ROWS": 1, "DATABASE": "default"},
    ],
    ids=["none", "empty", "smallest", "no-limits", "tuple", "no-modules", "float-lease", "rows"],
)
def test_valid_settings_load(scheduler):
    values = load(scheduler)
    assert set(values) == set(conf.DEFAULTS)
    for key, value in (scheduler or {}).items():
        assert values[key] == value


def test_the_defaults_are_valid():
    assert conf.check({}, {"default": {}}) == []
    assert load({}) == conf.DEFAULTS


def test_a_setting_that_is_not_a_dict():
    assert failure(["THREADS", 4]) == (
        "The SCHEDULER setting is ['THREADS', 4] (list); expected a dict."
    )


def test_unknown_keys_are_listed_with_the_known_ones():
    message = failure({"THREAD": 4})
    assert message.startswith("Unknown key(s) in the SCHEDULER setting: THREAD. Known keys: ")
    assert "THREADS" in message


def test_each_problem_has_its_check_id():
    found = conf.check(
        {"THREADS": 0, "HEARTBEAT_INTERVAL": 10, "WHAT": 1, "DATABASE": "x"}, {"default": {}}
    )
    assert [problem.id for problem in found] == ["E002", "E004", "E005", "E012"]
    assert found[-1].hint and "LEASE_SECONDS" in found[-1].hint


def test_an_integer_beyond_a_float_is_judged_not_crashed_on():
    found = conf.check({"POLL_INTERVAL": -(10**400), "THREADS": 10**400}, {"default": {}})
    assert [problem.id for problem in found] == ["E008"]
    assert found[0].message.endswith(
        "(int); expected a number of seconds > 0 and at most 315619200 (3653 days)."
    )
