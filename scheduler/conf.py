"""The ``SCHEDULER`` setting: one dict, every key documented with its default."""

from __future__ import annotations

import socket
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
}


_cache: dict[str, Any] = {}


def get(name: str) -> Any:
    # Read on every run's hot path: validated once, until the settings change.
    if not _cache:
        _cache.update(_load())
    return _cache[name]


def _load() -> dict[str, Any]:
    configured = getattr(settings, "SCHEDULER", {}) or {}
    if not isinstance(configured, dict):
        raise ImproperlyConfigured("The SCHEDULER setting must be a dict.")
    unknown = set(configured) - set(DEFAULTS)
    if unknown:
        raise ImproperlyConfigured(
            f"Unknown key(s) in the SCHEDULER setting: {', '.join(sorted(unknown))}. "
            f"Known keys: {', '.join(sorted(DEFAULTS))}."
        )
    values = {**DEFAULTS, **configured}
    if values["DATABASE"] not in settings.DATABASES:
        raise ImproperlyConfigured(
            f"SCHEDULER['DATABASE'] is {values['DATABASE']!r}, which is not a key of DATABASES."
        )
    return values


def database() -> str:
    return get("DATABASE")


@receiver(setting_changed)
def _forget(setting: str, **kwargs: Any) -> None:
    if setting in ("SCHEDULER", "DATABASES"):
        _cache.clear()
