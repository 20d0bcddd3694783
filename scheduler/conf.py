"""The ``SCHEDULER`` setting: one dict, every key documented with its default.

Every value is checked for type and range when first read (and by ``manage.py
check``): a value of the wrong type must stop the scheduler at start with a
message naming it, not quietly disable part of it.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

# This process's host, as recorded in the history and the instances table.
HOSTNAME = socket.gethostname()[:255]

DEFAULTS: dict[str, Any] = {
    # Dotted modules imported at start, besides the ``jobs`` module of every app.
    "JOB_MODULES": ["jobs"],
    # Database alias that holds jobs and run history.
    "DATABASE": "default",
    # Worker threads that run jobs: jobs due at the same moment start together up to this many.
    "THREADS": 20,
    # Seconds a run may start late before it is recorded as missed instead.
    # APScheduler's own default (1 s) silently drops runs after any hiccup.
    "MISFIRE_GRACE_TIME": 3600,
    # Seconds SIGTERM/SIGINT waits for running jobs before marking them interrupted.
    "SHUTDOWN_GRACE": 30,
    # Seconds between polls for admin requests (run now, pause, resume).
    "POLL_INTERVAL": 1.0,
    # Days of run history kept by the prune job; None keeps everything.
    "HISTORY_DAYS": 30,
    # Characters of a run's captured output kept (the tail is kept).
    "MAX_OUTPUT": 65536,
    # Seconds to keep retrying a database write while the database is away.
    "DB_RETRY_TIMEOUT": 600,
    # Seconds the leader lease lasts without renewal; a standby takes over after it.
    "LEASE_SECONDS": 15,
    # Seconds between heartbeats (lease renewals) of the active scheduler.
    "HEARTBEAT_INTERVAL": 5,
    # Missed fire times recorded one row each, per catch-up; older ones are counted.
    "MAX_MISSED_ROWS": 1000,
    # Defaults of the jobs that do not declare their own (see "When jobs go wrong" in the
    # README): seconds a run may take (None: no limit), where it runs ("thread" or
    # "process"), and how many times a failed run is tried again.
    "TIMEOUT": None,
    "ISOLATION": "thread",
    "RETRIES": 0,
    # Where the runs of jobs without executor= happen: "local" (this scheduler's threads or
    # child processes), "celery" (a Celery worker fleet) or "tasks" (Django's tasks).
    "EXECUTOR": "local",
    # The Celery app that sends runs ("module:attribute"); None: Celery's current app (the
    # one your project's celery.py makes, imported in its __init__.py as Celery advises).
    "CELERY_APP": None,
    # The django.tasks backend (an alias of TASKS) runs of executor="tasks" are enqueued on.
    "TASK_BACKEND": "default",
}

# The system check id of each kind of problem (``scheduler.E0NN``), stable across
# releases so that projects can silence or search for them. The README lists them.
NOT_A_DICT = "E001"
UNKNOWN_KEYS = "E002"
CHECK_IDS: dict[str, str] = {
    "JOB_MODULES": "E003",
    "DATABASE": "E004",
    "THREADS": "E005",
    "MISFIRE_GRACE_TIME": "E006",
    "SHUTDOWN_GRACE": "E007",
    "POLL_INTERVAL": "E008",
    "HISTORY_DAYS": "E009",
    "MAX_OUTPUT": "E010",
    "LEASE_SECONDS": "E011",
    "HEARTBEAT_INTERVAL": "E012",
    "DB_RETRY_TIMEOUT": "E013",
    "MAX_MISSED_ROWS": "E014",
    "TIMEOUT": "E015",
    "ISOLATION": "E016",
    "RETRIES": "E017",
    "EXECUTOR": "E018",
    "CELERY_APP": "E019",
    "TASK_BACKEND": "E024",
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the ``SCHEDULER`` setting: a one-line message, and its check id."""

    id: str
    message: str
    hint: str | None = None


def _is_number(value: Any) -> bool:
    # bool is an int in Python, but SCHEDULER = {"THREADS": True} is a mistake, not 1.
    # Infinity passes every lower bound and NaN fails every comparison, so neither can be
    # left to the range checks. An int is always finite (math.isfinite overflows on a huge one).
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _what(value: Any) -> str:
    """The value and its type, as a message shows them: ``'30' (str)``."""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


# The longest duration a key may give, in seconds: 3653 days (10 years). Beyond
# some point a duration no longer fits a timedelta or a thread's timeout, and fails
# at the first use instead of at start; None is there where "no limit" makes sense.
MAX_SECONDS = 3653 * 86400
# The most days of history to keep (100 years): older cut-offs leave the calendar.
MAX_HISTORY_DAYS = 36525


def _seconds(low: float, inclusive: bool) -> tuple[Callable[[Any], bool], str]:
    def accepts(value: Any) -> bool:
        return (
            _is_number(value)
            and (value >= low if inclusive else value > low)
            and value <= MAX_SECONDS
        )

    bound = ">=" if inclusive else ">"
    return accepts, f"a number of seconds {bound} {low:g} and at most {MAX_SECONDS} (3653 days)"


_SECONDS_ABOVE_0 = _seconds(0, inclusive=False)
# The most retries a job may have (scheduler.retries.MAX_RETRIES; conf imports nothing).
_MAX_RETRIES = 100


# key -> (accepts the value, what is expected, in words)
_SIMPLE: dict[str, tuple[Callable[[Any], bool], str]] = {
    "THREADS": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    # An integer: APScheduler refuses a float misfire_grace_time when the job is stored.
    "MISFIRE_GRACE_TIME": (
        lambda v: v is None or (_is_int(v) and 1 <= v <= MAX_SECONDS),
        f"a whole number of seconds >= 1 and at most {MAX_SECONDS}, or None for no limit",
    ),
    "SHUTDOWN_GRACE": _seconds(0, inclusive=True),
    "POLL_INTERVAL": _seconds(0, inclusive=False),
    "HISTORY_DAYS": (
        lambda v: v is None or (_is_int(v) and 1 <= v <= MAX_HISTORY_DAYS),
        f"an integer >= 1 and at most {MAX_HISTORY_DAYS}, or None to keep all history",
    ),
    "MAX_OUTPUT": (lambda v: _is_int(v) and v >= 1, "an integer >= 1 (characters)"),
    "LEASE_SECONDS": _seconds(0, inclusive=False),
    "HEARTBEAT_INTERVAL": _seconds(0, inclusive=False),
    "DB_RETRY_TIMEOUT": _seconds(0, inclusive=False),
    "MAX_MISSED_ROWS": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "TIMEOUT": (
        lambda v: v is None or _SECONDS_ABOVE_0[0](v),
        f"{_SECONDS_ABOVE_0[1]}, or None for no limit",
    ),
    "ISOLATION": (lambda v: v in ("thread", "process"), "'thread' or 'process'"),
    "RETRIES": (
        lambda v: _is_int(v) and 0 <= v <= _MAX_RETRIES,
        f"an integer from 0 to {_MAX_RETRIES}",
    ),
    "EXECUTOR": (lambda v: v in ("local", "celery", "tasks"), "'local', 'celery' or 'tasks'"),
    "TASK_BACKEND": (
        lambda v: isinstance(v, str) and bool(v),
        "the alias of a backend of the TASKS setting",
    ),
    "CELERY_APP": (
        lambda v: v is None or (isinstance(v, str) and v.count(":") == 1 and all(v.split(":"))),
        "None or the Celery app as 'module:attribute' (such as 'myproject.celery:app')",
    ),
}


def check(configured: Any, databases: Mapping[str, Any]) -> list[Problem]:
    """Every problem of a ``SCHEDULER`` setting, in the order of DEFAULTS; [] if it is valid."""
    if configured is None:
        configured = {}
    if not isinstance(configured, dict):
        return [
            Problem(
                NOT_A_DICT,
                f"The SCHEDULER setting is {_what(configured)}; expected a dict.",
                hint="For example SCHEDULER = {'THREADS': 10}.",
            )
        ]
    problems: list[Problem] = []
    unknown = sorted(map(str, set(configured) - set(DEFAULTS)))
    if unknown:
        problems.append(
            Problem(
                UNKNOWN_KEYS,
                f"Unknown key(s) in the SCHEDULER setting: {', '.join(unknown)}. "
                f"Known keys: {', '.join(sorted(DEFAULTS))}.",
            )
        )
    values = {**DEFAULTS, **configured}
    valid: dict[str, Any] = {}
    for key in DEFAULTS:
        value = values[key]
        message = _problem(key, value, databases)
        if message is None:
            valid[key] = value
        else:
            problems.append(Problem(CHECK_IDS[key], message))
    # Limits between keys, once each key is valid on its own.
    lease = valid.get("LEASE_SECONDS")
    heartbeat = valid.get("HEARTBEAT_INTERVAL")
    if lease is not None and heartbeat is not None and heartbeat > lease / 2:
        problems.append(
            Problem(
                CHECK_IDS["HEARTBEAT_INTERVAL"],
                f"SCHEDULER['HEARTBEAT_INTERVAL'] is {heartbeat!r}, more than half of "
                f"SCHEDULER['LEASE_SECONDS'] ({lease!r}); expected at most {lease / 2:g}.",
                hint="A lease must survive one late renewal: lower HEARTBEAT_INTERVAL or "
                "raise LEASE_SECONDS.",
            )
        )
    retry = valid.get("DB_RETRY_TIMEOUT")
    if lease is not None and retry is not None and retry < lease:
        problems.append(
            Problem(
                CHECK_IDS["DB_RETRY_TIMEOUT"],
                f"SCHEDULER['DB_RETRY_TIMEOUT'] is {retry!r}, less than "
                f"SCHEDULER['LEASE_SECONDS'] ({lease!r}); expected at least {lease!r}.",
                hint="A run's result must be retried for at least as long as a failover "
                "takes, or it is lost when the database fails over.",
            )
        )
    return problems


def _problem(key: str, value: Any, databases: Mapping[str, Any]) -> str | None:
    """What is wrong with one key's value on its own, or None."""
    name = f"SCHEDULER[{key!r}]"
    if key == "JOB_MODULES":
        if isinstance(value, str):
            return (
                f"{name} is {_what(value)}; expected a list of dotted module names such as "
                f"[{value!r}] (a plain string would be read one character at a time)."
            )
        if not isinstance(value, (list, tuple)):
            return f"{name} is {_what(value)}; expected a list of dotted module names."
        bad = [m for m in value if not isinstance(m, str) or not m.strip()]
        if bad:
            return (
                f"{name} is {_what(value)}; expected a list of non-empty module names, "
                f"but it holds {', '.join(_what(m) for m in bad)}."
            )
        return None
    if key == "DATABASE":
        if not isinstance(value, str):
            return f"{name} is {_what(value)}; expected a database alias (a string)."
        if value not in databases:
            known = ", ".join(repr(alias) for alias in databases)
            return f"{name} is {value!r}, which is not a key of DATABASES ({known})."
        return None
    accepts, expected = _SIMPLE[key]
    if accepts(value):
        return None
    return f"{name} is {_what(value)}; expected {expected}."


def problems() -> list[Problem]:
    """The problems of the ``SCHEDULER`` setting in effect."""
    return check(getattr(settings, "SCHEDULER", None), settings.DATABASES)


_cache: dict[str, Any] = {}


def get(name: str) -> Any:
    # Read on every run's hot path: validated once, until the settings change.
    if not _cache:
        _cache.update(_load())
    return _cache[name]


def _load() -> dict[str, Any]:
    found = problems()
    if found:
        # One line per problem: runapscheduler stops at start with all of them at once.
        raise ImproperlyConfigured("\n".join(problem.message for problem in found))
    return {**DEFAULTS, **(getattr(settings, "SCHEDULER", None) or {})}


def celery_app() -> Any:
    """The Celery app that sends runs (executor="celery"): ``CELERY_APP``, or Celery's
    current app. Raises ImportError (Celery, or the module, missing) or AttributeError
    (the module has no such app): the system check (E023) reports them."""
    path = get("CELERY_APP")
    if path is None:
        from celery import current_app

        return current_app
    module, _, attribute = str(path).partition(":")
    return getattr(import_module(module), attribute)


def database() -> str:
    alias: str = get("DATABASE")  # checked to be a key of DATABASES when first read
    return alias


@receiver(setting_changed)
def _forget(setting: str, **kwargs: Any) -> None:
    if setting in ("SCHEDULER", "DATABASES"):
        _cache.clear()
