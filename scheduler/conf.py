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
    # What breaks, detected by the active scheduler and sent where people look
    # (ALERT_DEFAULTS below; see "Monitoring and alerts" in the README).
    "ALERTS": {},
    # The bearer token the Prometheus metrics view accepts (None: staff login only).
    "METRICS_TOKEN": None,
}

# SCHEDULER["ALERTS"]: the keys it may hold, and their defaults.
ALERT_DEFAULTS: dict[str, Any] = {
    # Where alerts go: "mail_admins" (Django's ADMINS, by its email settings), and
    # {"webhook": "https://...", "format": "json" | "slack" | "teams"}.
    "NOTIFY": [],
    # Failed (or timed-out) runs in a row that open a "failing" incident (jobs may say
    # otherwise with alert_after=).
    "FAILURES": 1,
    # Seconds past a job's expected interval before "no successful run" is an incident.
    "OVERDUE_GRACE": 300,
    # Seconds past a run's timeout before it is a stuck run.
    "STUCK_GRACE": 60,
    # Seconds between two passes of the detector over the history.
    "INTERVAL": 10,
    # The site's address, for links to the admin in alerts ("https://ops.example.com").
    "SITE_URL": "",
    # Sentry Crons check-ins for every job, through sentry_sdk (installed and initialised).
    "SENTRY_CRONS": False,
}
WEBHOOK_FORMATS = ("json", "slack", "teams")

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
    "ALERTS": "E025",
    "METRICS_TOKEN": "E026",
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
    if key == "ALERTS":
        return _alerts_problem(value)
    if key == "METRICS_TOKEN":
        if value is None or (isinstance(value, str) and len(value) >= 16):
            return None
        return f"{name} is {_what(value)}; expected None or a secret of at least 16 characters."
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


def _alerts_problem(value: Any) -> str | None:
    """What is wrong with ``SCHEDULER["ALERTS"]``, naming the key at fault; or None."""
    name = "SCHEDULER['ALERTS']"
    if not isinstance(value, dict):
        return f"{name} is {_what(value)}; expected a dict such as {{'NOTIFY': ['mail_admins']}}."
    unknown = sorted(map(str, set(value) - set(ALERT_DEFAULTS)))
    if unknown:
        return (
            f"Unknown key(s) in {name}: {', '.join(unknown)}. "
            f"Known keys: {', '.join(sorted(ALERT_DEFAULTS))}."
        )
    values = {**ALERT_DEFAULTS, **value}
    notify = values["NOTIFY"]
    if not isinstance(notify, (list, tuple)):
        return f"{name}['NOTIFY'] is {_what(notify)}; expected a list of notifiers."
    for index, item in enumerate(notify):
        problem = _notifier_problem(item)
        if problem:
            return f"{name}['NOTIFY'][{index}] is {_what(item)}: {problem}"
    failures = values["FAILURES"]
    if not (_is_int(failures) and 1 <= failures <= 1000):
        return f"{name}['FAILURES'] is {_what(failures)}; expected an integer from 1 to 1000."
    for key in ("OVERDUE_GRACE", "STUCK_GRACE"):
        if not _seconds(0, inclusive=True)[0](values[key]):
            return f"{name}[{key!r}] is {_what(values[key])}; expected {_seconds(0, True)[1]}."
    if not (_is_number(values["INTERVAL"]) and 1 <= values["INTERVAL"] <= 3600):
        return f"{name}['INTERVAL'] is {_what(values['INTERVAL'])}; expected 1 to 3600 seconds."
    site = values["SITE_URL"]
    if not isinstance(site, str) or (site and not site.startswith(("http://", "https://"))):
        return f"{name}['SITE_URL'] is {_what(site)}; expected '' or an http(s) address."
    if not isinstance(values["SENTRY_CRONS"], bool):
        return f"{name}['SENTRY_CRONS'] is {_what(values['SENTRY_CRONS'])}; expected True or False."
    return None


def _notifier_problem(item: Any) -> str | None:
    if item == "mail_admins":
        return None
    if not isinstance(item, dict):
        return "expected 'mail_admins' or {'webhook': 'https://...', 'format': 'json'}"
    unknown = sorted(map(str, set(item) - {"webhook", "format", "timeout"}))
    if unknown:
        return f"unknown key(s) {', '.join(unknown)} (a webhook has webhook, format, timeout)"
    url = item.get("webhook")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return "its 'webhook' must be an http:// or https:// address"
    if item.get("format", "json") not in WEBHOOK_FORMATS:
        return f"its 'format' must be one of {', '.join(map(repr, WEBHOOK_FORMATS))}"
    timeout = item.get("timeout", 10)
    if not (_is_number(timeout) and 0 < timeout <= 300):
        return "its 'timeout' must be a number of seconds from 0 to 300"
    return None


def alerts() -> dict[str, Any]:
    """``SCHEDULER["ALERTS"]`` with its defaults (checked when first read)."""
    return {**ALERT_DEFAULTS, **get("ALERTS")}


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
