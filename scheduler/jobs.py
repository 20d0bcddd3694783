"""The app's own scheduled job: the history pruner, as Django ships ``clearsessions``.

Deletes finished runs older than ``SCHEDULER['HISTORY_DAYS']`` (30) every night at
03:17 in ``settings.TIME_ZONE``; with ``HISTORY_DAYS = None`` it is declared
disabled (shown so in the admin) and deletes nothing. ``manage.py prunehistory``
does the same by hand.
"""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from scheduler import conf
from scheduler.models import JobRun
from scheduler.registry import cron


@cron("17 3 * * *", id="scheduler.prune_history", enabled=conf.get("HISTORY_DAYS") is not None)
def prune_history() -> None:
    """Delete finished runs older than SCHEDULER['HISTORY_DAYS']."""
    days = conf.get("HISTORY_DAYS")
    if days is None:
        return
    deleted = JobRun.objects.prune(timezone.now() - timedelta(days=days))
    print(f"Deleted {deleted} finished run(s) older than {days} days.")
