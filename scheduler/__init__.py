"""Scheduled jobs for Django: declared in code, run by ``manage.py runapscheduler``."""

from scheduler.registry import cron, interval
from scheduler.retries import Backoff

__all__ = ["Backoff", "cron", "interval"]
__version__ = "0.1.0"
