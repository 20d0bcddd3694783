"""Scheduled jobs for Django: declared in code, run by ``manage.py runapscheduler``.

The decorators load no model and can be imported from anywhere; the requests
(``schedule``, ``run_now``, ``pause``, ``resume``, ``cancel``) write rows and are
loaded on first use, once Django's apps are ready.
"""

from typing import TYPE_CHECKING, Any

from scheduler.registry import JobFunction, cron, interval, job
from scheduler.retries import Backoff

if TYPE_CHECKING:
    from scheduler.arguments import ArgumentError
    from scheduler.requests import UnknownJob, cancel, pause, resume, run_now, schedule

__all__ = [
    "ArgumentError",
    "Backoff",
    "JobFunction",
    "UnknownJob",
    "cancel",
    "cron",
    "interval",
    "job",
    "pause",
    "resume",
    "run_now",
    "schedule",
]
__version__ = "0.1.0"

_REQUESTS = ("UnknownJob", "cancel", "pause", "resume", "run_now", "schedule")


def __getattr__(name: str) -> Any:
    # The requests load the models: only when asked for, after django.setup().
    if name in _REQUESTS:
        from scheduler import requests

        return getattr(requests, name)
    if name == "ArgumentError":
        from scheduler.arguments import ArgumentError

        return ArgumentError
    raise AttributeError(f"module 'scheduler' has no attribute {name!r}")
